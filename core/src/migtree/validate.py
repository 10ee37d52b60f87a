"""Validate before filtering: every node of a tree read from a stream is
checked against the layout of *its own* ``type@version`` -- the one the
stream says it wrote -- before any filter touches it, so an error names the
stream's field and the stream offset of the node's section, not the
destination's field for data the stream never had; and a value a filter
would move into the stash has been checked first. After the filters, the
load checks every node again against the destination (the strict input
visitor, all-or-nothing).

The layout is the one the stream's header carries for that
``type@version`` (``schemas``): it is turned into a state declaration
(:func:`class_from_schema`: plain data into migtree's own field types --
nothing is imported or run) and the node goes through the strict input
visitor against it. When the installed plugins also declare that version
(the type's ``STATE`` or ``HISTORY``), the header must describe it the
same way, or the node is refused (the stream and this build disagree on
what that version is). A ``type@version`` neither describes is left to the
filters that know it; they are named in the result. A stream converted
from a foreign format (its header's ``extra.source_format``, e.g. QEMU's)
is left to that format, whose reader checked its input.
"""

from __future__ import annotations

from typing import Any

import attrs

from .errors import MigtreeError, StateError


class StreamStateError(StateError):
    """A node does not fit the layout of its own ``type@version``, found
    before any filter ran; carries the stream ``offset`` of its section."""

    def __init__(self, path: str, field: str, message: str, offset: int | None) -> None:
        self.offset = offset
        super().__init__(path, field, message)
        if offset is not None:
            self.args = (f"stream offset {offset}: {self.args[0]}",)

    def __str__(self) -> str:
        return str(self.args[0])


class _Unsupported(Exception):
    """A schema description this module cannot turn into a declaration."""


def _wire(desc: Any, depth: int = 0) -> tuple[Any, Any]:
    """``(WireType, default factory)`` for one field description."""
    from . import fields as F
    from .blob import Blob as BlobValue

    if depth > 32 or not isinstance(desc, dict):
        raise _Unsupported(desc)
    kind = desc.get("kind")
    if isinstance(kind, str) and len(kind) >= 2 and kind[0] in "ui" and kind[1:].isdigit() \
            and int(kind[1:]) in (8, 16, 32, 64):
        return F.Int(int(kind[1:]), kind[0] == "i"), lambda: 0
    if kind == "bool":
        return F.Bool(), lambda: False
    if kind == "bytes":
        n, m = desc.get("length"), desc.get("max_length")
        return F.Bytes(n, m), lambda: bytes(n or 0)
    if kind == "str":
        return F.Str(desc.get("max_length")), lambda: ""
    if kind == "blob":
        return F.Blob(), BlobValue
    if kind == "optional":
        inner, _ = _wire(desc.get("inner"), depth + 1)
        return F.Optional(inner), lambda: None
    if kind == "struct":
        cls = class_from_schema(desc.get("fields") or [], str(desc.get("struct") or "S"),
                                depth + 1)
        return F.Struct(cls), cls
    if kind == "array":
        elem, elem_default = _wire(desc.get("element"), depth + 1)
        n = desc.get("length")
        return (F.Array(elem, n, desc.get("max_length")),
                lambda: [elem_default() for _ in range(n or 0)])
    raise _Unsupported(desc)


def class_from_schema(fields: list[Any], name: str = "StreamState", depth: int = 0) -> type:
    """An attrs state class with the layout a stream header describes
    (``migtree.visitor.schema_of``'s output), for the strict input visitor."""
    from .fields import SINCE, WIRE

    if not isinstance(fields, list):
        raise _Unsupported(fields)
    attrs_fields = {}
    for f in fields:
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise _Unsupported(f)
        wire, factory = _wire(f, depth)
        since = f.get("since", 1)
        if type(since) is not int or since < 1:
            raise _Unsupported(f)
        attrs_fields[f["name"]] = attrs.field(factory=factory,
                                              metadata={WIRE: wire, SINCE: since})
    ident = "".join(c if c.isalnum() else "_" for c in name) or "S"
    return attrs.make_class(ident, attrs_fields)


def validate_tree(tree: dict[str, Any], registry: Any, *,
                  header: dict[str, Any] | None = None,
                  offsets: dict[str, int] | None = None) -> list[str]:
    """Check every object node of ``tree`` against its own ``type@version``.
    Raises :class:`StreamStateError` on the first node that does not fit
    (nothing is changed: the tree is only read). Returns the
    ``type@version`` s that could not be checked (no declaration here)."""
    from .engine import TYPE_KEY, VERSION_KEY
    from .tree import iter_object_nodes
    from .visitor import node_to_state, schema_of

    extra = (header or {}).get("extra") if isinstance(header, dict) else None
    origin = extra.get("source_format") if isinstance(extra, dict) else None
    if isinstance(origin, str) and origin != "migtree":
        # converted from a foreign format (QEMU's): its nodes carry that
        # format's own metadata, and its reader validated the input
        return [f"every node (converted from the {origin} format, which checks its own)"]
    schemas = (header or {}).get("schemas") if isinstance(header, dict) else None
    unchecked: set[str] = set()
    seen: dict[tuple[str, int], Any] = {}
    for path, node in iter_object_nodes(tree):
        t, v = node.get(TYPE_KEY), node.get(VERSION_KEY)
        if not isinstance(t, str) or type(v) is not int:
            continue  # the engine names a malformed node
        key = (t, v)
        if key not in seen:
            info = registry.types.get(t)
            cls = info.versions().get(v) if info is not None else None
            entry = schemas.get(f"{t}@{v}") if isinstance(schemas, dict) else None
            described = entry.get("fields") if isinstance(entry, dict) else None
            if cls is not None and described is not None and described != schema_of(cls, v):
                raise StreamStateError(
                    path, "", f"the stream's header describes {t}@{v} differently from "
                    f"the plugin installed here ({info.plugin}): they disagree on what "
                    "that version is", (offsets or {}).get(path))
            if cls is None and described is not None:
                try:  # the stream's own description of a version unknown here
                    cls = class_from_schema(described, f"{t}_v{v}")
                except _Unsupported:
                    cls = None
            seen[key] = cls
        cls = seen[key]
        if cls is None:
            unchecked.add(f"{t}@{v}")
            continue
        try:
            node_to_state(cls, node, v, path)
        except StateError as e:
            raise StreamStateError(
                e.path, e.field, f"{e.reason} (the stream's own {t}@{v}, before any filter)",
                (offsets or {}).get(path)) from None
        except MigtreeError as e:
            raise StreamStateError(path, "", f"{e} (the stream's own {t}@{v}, before any "
                                   "filter)", (offsets or {}).get(path)) from None
    return sorted(unchecked)


def with_offsets(error: MigtreeError, offsets: dict[str, int]) -> MigtreeError:
    """A load error found after the filters, each ``PATH: ...`` line
    prefixed with the stream offset of that path's section (when the path
    came from the stream as it is: a split's new child has none)."""
    import re

    if not offsets:
        return error
    lines = []
    for line in str(error).splitlines():
        m = re.match(r"^(\s*)(/[^:\s]*): ", line)
        if m and m.group(2) in offsets:
            line = f"{m.group(1)}stream offset {offsets[m.group(2)]}: {line[len(m.group(1)):]}"
        lines.append(line)
    out = type(error).__new__(type(error))
    out.__dict__.update(error.__dict__)
    out.args = ("\n".join(lines),)
    return out
