"""Destinations described by a file: what ``convert --target`` and
``explain --target`` filter a stream towards, offline.

A *target* is anything that can say what a destination loads:

* a build configuration (``.toml``): the build's objects at their versions,
  its static and dynamic filters; the output is a migtree stream;
* a schema dump (``migtree schema --json``): the types and versions it
  lists; the filters installed here; a migtree stream;
* a description a stream format recognises: a plugin's format may have
  ``read_target(path) -> Target | None`` (the QEMU plugin recognises a
  ``-dump-vmstate`` dump and writes a QEMU stream).

A :class:`Target` has a ``name``, the ``format`` it loads (the output
format when ``--to`` is not given), ``destination(tree)`` (an
:class:`migtree.engine.Destination`), ``filters()`` (filters that come
with the target itself, like a build's dynamic ones), ``notes(tree)``
(lines to print after filtering) and may have ``schemas(tree)`` (the
header schemas of the filtered tree, for a migtree stream).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from .errors import MigtreeError


class Target(Protocol):
    name: str
    format: str

    def destination(self, tree: dict[str, Any]) -> Any: ...

    def filters(self) -> list[Any]: ...

    def notes(self, tree: dict[str, Any]) -> list[str]: ...


class BuildTarget:
    """A build configuration as a target."""

    format = "migtree"

    def __init__(self, build: Any) -> None:
        self.build = build
        self.name = f"build {build.name}"

    def destination(self, tree: dict[str, Any]) -> Any:
        from .engine import Destination

        return Destination.of_build(self.build)

    def filters(self) -> list[Any]:
        from .engine import gather_filters

        return gather_filters(self.build)

    def notes(self, tree: dict[str, Any]) -> list[str]:
        return list(self.build.notes)


class SchemaTarget:
    """A schema dump (``migtree schema --json``) as a target; the filters
    are the ones installed here."""

    format = "migtree"

    def __init__(self, doc: dict[str, Any], name: str) -> None:
        self.doc = doc
        self.name = f"schema dump {doc.get('name') or name}"

    def destination(self, tree: dict[str, Any]) -> Any:
        from .engine import Destination

        return Destination.of_schema(self.doc, name=self.name)

    def filters(self) -> list[Any]:
        return []

    def notes(self, tree: dict[str, Any]) -> list[str]:
        return ["the filters are the ones installed here"]


def open_target(path: str, registry: Any, *, accept: list[str] | tuple[str, ...] = (),
                ) -> Target:
    """The target *path* describes (see the module docstring). *accept*
    names refusals the target should take as warnings; only a target with
    an ``accept(keys)`` method has refusals that can be accepted."""
    from .build import load_build
    from .formats import formats

    p = Path(path)
    if not p.exists():
        raise MigtreeError(f"{path}: no such file")
    target: Any = None
    if p.suffix == ".toml":
        target = BuildTarget(load_build(p, registry))
    for fmt in formats(registry).values() if target is None else ():
        reader = getattr(fmt, "read_target", None)
        if reader is None:
            continue
        target = reader(p)
        if target is not None:
            break
    if target is not None:
        if accept:
            if not hasattr(target, "accept"):
                raise MigtreeError(f"{path}: {target.name} has no refusals to accept "
                                   f"(--accept {accept[0]})")
            target.accept(list(accept))
        return target
    try:
        doc = json.loads(p.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MigtreeError(f"{path}: not a build .toml, a schema dump or a description a "
                           f"plugin recognises ({e})") from None
    if not isinstance(doc, dict) or "types" not in doc:
        raise MigtreeError(f"{path}: not a build .toml, a schema dump (no 'types') or a "
                           "description a plugin recognises")
    if accept:
        raise MigtreeError(f"{path}: a schema dump has no refusals to accept")
    return SchemaTarget(doc, p.name)


def filter_to_target(tree: dict[str, Any], target: Target, registry: Any, *,
                     explain: bool = True, notes: bool = True) -> tuple[Any, list[str]]:
    """Drive *tree* (in place) to *target* with the installed filters and
    the target's own: ``(FilterReport, notes)``.  Raises
    :class:`migtree.errors.FilterError` (with ``.report``) when it cannot:
    nothing is written by anyone before that.  ``notes=False`` leaves the
    notes out (an empty list): they only inform, so a live relay asks for
    them (``target.notes(tree)``) after the converted state is on its way,
    not inside the guest's pause."""
    from .engine import apply_filters, gather_filters

    filters = gather_filters(registry) + list(target.filters())
    report = apply_filters(tree, target.destination(tree), filters, explain=explain)
    return report, list(target.notes(tree)) if notes else []
