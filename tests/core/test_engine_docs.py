"""docs/filters.md stays honest: its Python blocks run, in order, in one
namespace (the cookbook's prelude first), and every ops step it lists exists."""

from __future__ import annotations

import re
from pathlib import Path

from migtree import ops

DOC = Path(__file__).resolve().parents[2] / "docs" / "filters.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_cookbook_runs():
    blocks = python_blocks()
    cookbook = DOC.read_text().split("## 4. Cookbook", 1)[1]
    ns: dict = {}
    ran = 0
    for block in blocks:
        if block not in cookbook:
            continue  # the first sections' fragments are shown, not run
        exec(compile(block, str(DOC), "exec"), ns)
        ran += 1
    assert ran >= 7


def test_the_fragments_before_the_cookbook_compile():
    for block in python_blocks():
        compile(block, str(DOC), "exec")


def test_every_step_is_documented():
    text = DOC.read_text()
    for name in ops.__all__:
        if name == "OpError":
            continue
        assert re.search(rf"`(ops\.)?{name}\(", text), f"ops.{name} is missing from docs/filters.md"
