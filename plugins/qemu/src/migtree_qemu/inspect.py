"""Human views of QEMU streams: a section summary (with what stays opaque)
and a diff of two streams by path and field.

``python -m migtree_qemu inspect FILE`` / ``diff A B`` print them; the
functions return plain data for other front ends (``migtree inspect``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .qevm import RAM_MEM_SIZE, QemuStream, RamSection
from .tree import QEMU_KEY, TYPE_KEY, VERSION_KEY
from .vmstate import OPAQUE_TYPES, VMStateObject


def summary(stream: QemuStream) -> dict[str, Any]:
    """Sections in stream order with their size, field count and opaque
    fields; RAM blocks and page counts."""
    sections = []
    ram = {"blocks": {}, "zero_pages": 0, "full_pages": 0, "sections": 0}
    for sec in stream.sections:
        entry: dict[str, Any] = {
            "kind": sec.kind_name, "section_id": sec.section_id, "idstr": sec.idstr,
            "instance_id": sec.instance_id, "version": sec.version_id,
            "offset": sec.offset, "size": sec.body_end - sec.body_offset,
        }
        if isinstance(sec.body, RamSection):
            ram["sections"] += 1
            ram["zero_pages"] += sec.body.zero_pages
            ram["full_pages"] += sec.body.full_pages
            for r in sec.body.records:
                if r.flags & RAM_MEM_SIZE and isinstance(r.data, list):
                    ram["blocks"] = {b.name: b.length for b in r.data}
        elif isinstance(sec.body, VMStateObject):
            fields = list(sec.body.walk())
            entry["vmsd_name"] = sec.body.vmsd_name
            entry["fields"] = len(fields)
            entry["subsections"] = [s.vmsd_name for s in sec.body.subsections]
            entry["opaque"] = [
                {"field": path, "type": f.type, "bytes": len(f.value)}
                for path, f in fields
                if isinstance(f.value, bytes) and (f.type in OPAQUE_TYPES or f.type not in
                                                   _KNOWN_SCALAR)
            ]
        sections.append(entry)
    return {
        "format": "QEVM", "version": stream.version,
        "machine_type": stream.configuration.machine if stream.configuration else None,
        "size": stream.size, "page_size": stream.page_size, "vmdesc": stream.vmdesc,
        "sections": sections, "ram": ram,
    }


_KNOWN_SCALAR = frozenset({"float64"})


def format_summary(s: Mapping[str, Any]) -> str:
    lines = [f"QEVM version {s['version']}, machine {s['machine_type']}, "
             f"{s['size']} bytes, page size {s['page_size']}"]
    ram = s["ram"]
    blocks = ", ".join(f"{n} ({ln >> 10} KiB)" for n, ln in ram["blocks"].items())
    lines.append(f"RAM: {ram['sections']} sections, {ram['full_pages']} pages, "
                 f"{ram['zero_pages']} zero pages; blocks: {blocks}")
    for e in s["sections"]:
        if e["kind"] != "FULL":
            continue
        head = (f"  {e['idstr']}#{e['instance_id']} v{e['version']} "
                f"@{e['offset']} {e['size']} bytes, {e['fields']} fields")
        if e["subsections"]:
            head += f", subsections {', '.join(e['subsections'])}"
        lines.append(head)
        for o in e["opaque"]:
            lines.append(f"      opaque {o['field']} ({o['type']}, {o['bytes']} bytes)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# diff


def _object_nodes(tree: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping]]:
    yield path or "/", tree
    for k, v in tree.items():
        if isinstance(v, Mapping) and TYPE_KEY in v:
            yield from _object_nodes(v, f"{path}/{k}")


def _leaves(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping) and TYPE_KEY not in value:
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{prefix}[{i}]")
    elif hasattr(value, "iter_chunks"):
        import hashlib

        h = hashlib.sha256()
        for c in value.iter_chunks():
            h.update(c)
        yield prefix, f"<{len(value)} bytes sha256 {h.hexdigest()[:16]}>"
    else:
        yield prefix, value


def diff_trees(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """``(path, field, value in a, value in b)`` for every difference
    between two trees; a node only in one tree is one entry with field
    ``"<node>"``.  ``__qemu__`` layouts and RAM bodies compare by content."""
    na = dict(_object_nodes(a))
    nb = dict(_object_nodes(b))
    out: list[tuple[str, str, Any, Any]] = []
    for path in sorted(set(na) | set(nb)):
        x, y = na.get(path), nb.get(path)
        if x is None or y is None:
            out.append((path, "<node>", x and x.get(TYPE_KEY), y and y.get(TYPE_KEY)))
            continue
        for key in (TYPE_KEY, VERSION_KEY):
            if x.get(key) != y.get(key):
                out.append((path, key, x.get(key), y.get(key)))
        fx = {k: v for k, v in x.items() if k not in (TYPE_KEY, VERSION_KEY, QEMU_KEY)
              and not (isinstance(v, Mapping) and TYPE_KEY in v)}
        fy = {k: v for k, v in y.items() if k not in (TYPE_KEY, VERSION_KEY, QEMU_KEY)
              and not (isinstance(v, Mapping) and TYPE_KEY in v)}
        lx, ly = dict(_leaves(fx, "")), dict(_leaves(fy, ""))
        for field in sorted(set(lx) | set(ly)):
            if lx.get(field, _MISSING) != ly.get(field, _MISSING):
                out.append((path, field, lx.get(field, _MISSING), ly.get(field, _MISSING)))
    return out


class _Missing:
    def __repr__(self) -> str:
        return "<absent>"


_MISSING = _Missing()


def _short(v: Any) -> str:
    if isinstance(v, bytes):
        return f"<{len(v)} bytes {v[:8].hex()}{'...' if len(v) > 8 else ''}>"
    if isinstance(v, int) and not isinstance(v, bool) and (v > 9 or v < 0):
        return f"{v} (0x{v & ((1 << 64) - 1):x})"
    return repr(v)


def format_diff(entries: list[tuple[str, str, Any, Any]]) -> str:
    if not entries:
        return "no differences"
    return "\n".join(f"{p}: {f}: {_short(x)} -> {_short(y)}" for p, f, x, y in entries)
