"""The hookspec docstrings are the documentation, and the tests keep it honest
(datasette's pattern): every hook in ``migtree.hookspecs``

* has a docstring with a ``:param:`` line for each parameter (and no other),
  a ``:return:`` line and a ``.. versionadded::``;
* appears in ``docs/plugin-hooks.md`` with its exact signature and its
  docstring rendered to markdown (:func:`render_hook`); the docs list no hook
  that does not exist;
* has a ``test_hook_<name>`` test function somewhere under ``tests/``.

When a docstring changes, run ``python tests/core/test_hookspecs.py`` and
paste the printed section into the docs.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from migtree import hookspecs

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "plugin-hooks.md"
TESTS = REPO / "tests"

HOOKS = sorted(name for name, obj in vars(hookspecs).items()
               if name.startswith("migtree_") and callable(obj)
               and hasattr(obj, "migtree_spec"))


def signature(name: str) -> str:
    return f"{name}{inspect.signature(getattr(hookspecs, name))}"


_ROLE = re.compile(r":(?:class|mod|func|meth|attr|exc|data):`~?([^`]+)`")


def _inline(text: str) -> str:
    text = _ROLE.sub(r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _paragraphs(doc: str) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for line in doc.splitlines():
        if line.strip():
            out[-1].append(line)
        elif out[-1]:
            out.append([])
    return [p for p in out if p]


def _fields(lines: list[str]) -> list[tuple[str, str]]:
    """``:param x: text`` / ``:return: text`` with continuation lines."""
    fields: list[tuple[str, str]] = []
    for line in lines:
        m = re.match(r"\s*:(param \w+|return|returns):\s*(.*)$", line)
        if m:
            fields.append((m[1], m[2].strip()))
        elif fields:
            key, text = fields[-1]
            fields[-1] = (key, f"{text} {line.strip()}")
        else:
            raise AssertionError(f"text before the first field: {line!r}")
    return fields


def parse_docstring(doc: str) -> tuple[list[str], list[tuple[str, str]], str | None]:
    """(prose paragraphs, fields, versionadded)."""
    prose, fields, added = [], [], None
    for para in _paragraphs(doc):
        first = para[0].strip()
        if first.startswith(":"):
            fields.extend(_fields(para))
        elif first.startswith(".. versionadded::"):
            added = first.split("::", 1)[1].strip()
        else:
            prose.append(" ".join(line.strip() for line in para))
    return prose, fields, added


def render_hook(name: str) -> str:
    """The markdown a hook's docstring renders to in docs/plugin-hooks.md."""
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    prose, fields, added = parse_docstring(doc)
    lines = [f"### `{signature(name)}`", ""]
    for p in prose:
        lines += [_inline(p), ""]
    params = [(k.split()[1], v) for k, v in fields if k.startswith("param ")]
    if params:
        lines.append("Parameters:")
        lines.append("")
        lines += [f"- `{p}`: {_inline(text)}" for p, text in params]
        lines.append("")
    for key, text in fields:
        if key in ("return", "returns"):
            lines += [f"Returns: {_inline(text)}", ""]
    if added:
        lines.append(f"*Added in {added}.*")
    return "\n".join(lines).rstrip() + "\n"


def test_hookspec_module_defines_hooks():
    assert len(HOOKS) >= 7, HOOKS
    assert hookspecs.hookimpl.project_name == "migtree"


@pytest.mark.parametrize("name", HOOKS)
def test_hookspec_docstring_is_complete(name):
    func = getattr(hookspecs, name)
    doc = inspect.getdoc(func)
    assert doc, f"{name} has no docstring"
    prose, fields, added = parse_docstring(doc)
    assert prose, f"{name}: the docstring says nothing before its fields"
    params = [k.split()[1] for k, _ in fields if k.startswith("param ")]
    expected = list(inspect.signature(func).parameters)
    assert params == expected, (
        f"{name}: the docstring documents parameters {params}, the signature has {expected}")
    assert any(k in ("return", "returns") for k, _ in fields), f"{name}: no :return: line"
    assert added, f"{name}: no .. versionadded::"
    for key, text in fields:
        assert text, f"{name}: :{key}: is empty"


@pytest.mark.parametrize("name", HOOKS)
def test_hookspec_is_documented_with_its_exact_signature(name):
    docs = DOCS.read_text()
    assert f"### `{signature(name)}`" in docs, (
        f"docs/plugin-hooks.md has no heading for {signature(name)}")
    expected = render_hook(name)
    assert expected in docs, (
        f"docs/plugin-hooks.md does not carry {name}'s docstring as rendered; replace its "
        f"section with:\n\n{expected}")


def test_docs_list_no_hook_that_does_not_exist():
    documented = re.findall(r"^### `(migtree_\w+)\(", DOCS.read_text(), re.M)
    assert sorted(documented) == HOOKS
    assert len(documented) == len(set(documented)), "a hook is documented twice"


def _test_functions() -> set[str]:
    names = set()
    for path in TESTS.rglob("*.py"):
        names.update(re.findall(r"^\s*(?:async\s+)?def (test_hook_\w+)\(",
                                path.read_text(errors="replace"), re.M))
    return names


@pytest.mark.parametrize("name", HOOKS)
def test_hookspec_has_a_test_hook_function(name):
    assert f"test_hook_{name}" in _test_functions(), (
        f"no test function test_hook_{name} anywhere under tests/")


def test_renderer_turns_rst_into_markdown():
    doc = ('Summary with ``code``\nand :class:`~a.B`.\n\n:param x: first line\n    continued.\n'
           ':return: ignored.\n\n.. versionadded:: 0.2')
    prose, fields, added = parse_docstring(doc)
    assert prose == ["Summary with ``code`` and :class:`~a.B`."]
    assert fields == [("param x", "first line continued."), ("return", "ignored.")]
    assert added == "0.2"
    assert _inline(prose[0]) == "Summary with `code` and `a.B`."


if __name__ == "__main__":
    print("\n".join(render_hook(name) for name in HOOKS))
