"""``migtree inspect STREAM [--json] [--full] [--inline-blobs]``: what a
stream holds -- format, producer, plugins, the types with their schemas'
origin, then every object (path, type@version) with its values.

Works without the plugins that wrote the stream (the header carries the
schemas) and on foreign formats a plugin registered (QEMU's QEVM). Values
are shortened for people unless ``--full``; ``--json`` prints the JSON view
(docs/wire-format.md, "JSON view"), which ``migtree.jsonview.stream_from_json``
reads back.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Any

HELP = "show what a stream holds: header, producer, plugins, objects and values"

#: how much of a value the text view shows unless --full
MAX_BYTES = 32
MAX_ITEMS = 16
MAX_LINE = 160


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("inspect", help=HELP, description=HELP + ". Reads migtree "
                              "streams and every format an installed plugin registered.")
    p.add_argument("stream", metavar="STREAM", help="the stream file ('-' for stdin)")
    p.add_argument("--json", action="store_true", help="print the JSON view instead of text")
    p.add_argument("--full", action="store_true", help="do not shorten long values")
    p.add_argument("--inline-blobs", action="store_true",
                   help="with --json: include blob contents (hex), not only size and sha256")
    p.set_defaults(func=run)


def run(args: Any) -> int:
    from ..errors import StreamError
    from ..formats import open_stream
    from ..jsonview import dumps, stream_to_json
    from ..plugins import get_registry

    registry = get_registry()
    if args.stream == "-":
        fmt, header, tree = open_stream(sys.stdin.buffer, registry)
        size = None
    else:
        fmt, header, tree = open_stream(args.stream, registry)
        size = os.path.getsize(args.stream)
    if args.json:
        try:
            doc = stream_to_json(fmt, header, tree, inline_blobs=args.inline_blobs)
        except TypeError as e:  # a foreign reader left a value the view cannot render
            raise StreamError(f"{fmt} stream: {e}") from e
        print(dumps(doc))
    else:
        print(render_text(fmt, header, tree, name=args.stream, size=size, full=args.full))
    return 0


# -- the text view -------------------------------------------------------------

def render_text(fmt: str, header: dict[str, Any], tree: dict[str, Any], *, name: str = "",
                size: int | None = None, full: bool = False) -> str:
    from ..textsafe import safe
    from ..tree import STASH_KEY, TYPE_KEY, VERSION_KEY, is_object_node, iter_object_nodes

    out: list[str] = []
    nodes = list(iter_object_nodes(tree))
    where = f"{name}: " if name else ""
    bits = [f"{fmt} stream"]
    if fmt == "migtree":
        bits.append(f"format version {header.get('version')}")
    if size is not None:
        bits.append(f"{size:,} bytes")
    bits.append(f"{len(nodes)} objects")
    out.append(where + ", ".join(bits))
    if fmt == "migtree":
        p = header.get("producer") or {}
        prod = f"{p.get('name')} {p.get('version')}"
        if p.get("build"):
            prod += f", build {p['build']!r}"
        out.append(f"producer: {prod}")
        plugins = header.get("plugins") or {}
        out.append("plugins: " + (", ".join(f"{k} {v or '(no version)'}"
                                            for k, v in plugins.items()) or "(none)"))
        schemas = header.get("schemas") or {}
        out.append("types: " + ", ".join(
            f"{k}" + (f" ({e.get('plugin')})" if isinstance(e, dict) and e.get("plugin") else "")
            for k, e in sorted(schemas.items())))
        if header.get("extra"):
            out.append("extra: " + _short(header["extra"], full))
    else:
        for k, v in header.items():
            if k == "schemas" and isinstance(v, dict) and not full:
                out.append(f"schemas: {len(v)} types: {', '.join(sorted(map(str, v)))}")
            else:
                out.append(f"{k}: {_short(v, full)}")
    out.append("")
    for path, node in nodes:
        out.append(f"{path}  {node.get(TYPE_KEY)}@{node.get(VERSION_KEY)}")
        for k, v in node.items():
            if k in (TYPE_KEY, VERSION_KEY) or is_object_node(v):
                continue
            label = "__stash__ (kept for the way back)" if k == STASH_KEY else k
            _field_lines(out, label, v, "    ", full)
    # every line holds names and values from the stream: escaped, so a
    # stream cannot drive the terminal (migtree.textsafe); --json stays exact
    return "\n".join(_clip(safe(line), full) for line in out)


def _clip(line: str, full: bool) -> str:
    if full or len(line) <= MAX_LINE:
        return line
    return line[:MAX_LINE - 1] + "…"


def _field_lines(out: list[str], name: str, value: Any, ind: str, full: bool) -> None:
    if type(value) is dict and value and not full and len(_short(value, full)) > 80:
        out.append(f"{ind}{name}:")
        for k, v in value.items():
            _field_lines(out, k, v, ind + "    ", full)
        return
    if (type(value) is list and value and all(type(v) is dict for v in value)
            and len(_short(value, full)) > 80):
        out.append(f"{ind}{name}: {len(value)} items")
        shown = value if full else value[:MAX_ITEMS]
        for i, v in enumerate(shown):
            _field_lines(out, f"[{i}]", v, ind + "    ", full)
        if len(shown) < len(value):
            out.append(f"{ind}    … {len(value) - len(shown)} more")
        return
    out.append(f"{ind}{name} = {_short(value, full)}")


def _short(value: Any, full: bool) -> str:
    t = type(value)
    if t is bool or value is None:
        return repr(value).lower() if value is not None else "null"
    if t is int:
        return f"{value} (0x{value:x})" if value > 9 else str(value)
    if t is str:
        s = value if full or len(value) <= 64 else value[:64] + "…"
        return repr(s)
    if t in (bytes, bytearray):
        return _bytes(bytes(value), full)
    if t is list:
        items = value if full else value[:MAX_ITEMS]
        if items and all(type(v) is int for v in items):  # registers: hex when large
            big = any(v > 1023 or v < 0 for v in items)
            inner = ", ".join(f"0x{v:x}" if big and v >= 0 else str(v) for v in items)
        else:
            inner = ", ".join(_short(v, full) for v in items)
        if len(items) < len(value):
            inner += f", … {len(value) - len(items)} more ({len(value)} items)"
        return f"[{inner}]"
    if t is dict:
        return "{" + ", ".join(f"{k}: {_short(v, full)}" for k, v in value.items()) + "}"
    if hasattr(value, "iter_chunks") and hasattr(value, "__len__"):
        h = hashlib.sha256()
        for c in value.iter_chunks():
            h.update(c)
        return f"blob, {len(value):,} bytes, sha256 {h.hexdigest()[:16]}…"
    return repr(value)


def _bytes(b: bytes, full: bool) -> str:
    if not b:
        return "bytes[0]"
    if not any(b):
        return f"bytes[{len(b)}] all zero"
    if full or len(b) <= MAX_BYTES:
        return f"bytes[{len(b)}] {b.hex(' ')}"
    return (f"bytes[{len(b)}] {b[:MAX_BYTES].hex(' ')} … "
            f"(sha256 {hashlib.sha256(b).hexdigest()[:16]}…)")
