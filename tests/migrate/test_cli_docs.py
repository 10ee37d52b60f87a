"""docs/cli.md documents every command the CLI has, each with an example,
and every option of the commands this issue added."""

from __future__ import annotations

import argparse
import re

from mig_helpers import HERE

from migtree.cli import build_parser

DOC = (HERE.parent.parent / "docs" / "cli.md").read_text()


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _section(title: str) -> str:
    m = re.search(rf"^## `{re.escape(title)}`\n(.*?)(?=^## |\Z)", DOC, re.S | re.M)
    assert m, f"docs/cli.md has no section '## `{title}`'"
    return m.group(1)


def test_every_command_has_a_section_with_an_example():
    for name in _subcommands():
        title = f"migtree {name}"
        if name == "build":
            title = "migtree build show"
        body = _section(title)
        assert "```" in body and f"$ migtree {name}" in body, f"{title}: no example"


def test_every_option_of_the_migration_commands_is_documented():
    cmds = _subcommands()
    for name in ("migrate", "serve", "send", "save", "restore"):
        body = _section(f"migtree {name}")
        for action in cmds[name]._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert opt in body, f"migtree {name} {opt} is not in its section"
