"""``migtree diff A B [--json] [--path PATH] [--ignore FIELD]``: what differs
between two streams, by object path and field.

A and B may be of any format ``migtree inspect`` reads (each is recognised
on its own: a QEMU stream can be compared with the migtree stream it was
converted to). Objects are matched by path; an object only in one stream
is reported once; for objects in both, a different ``__type__`` or
``__version__`` and every differing field are reported, fields named by
their place in the node (``queues[0].last_avail_idx``). Blobs (guest RAM)
compare by size and SHA-256, read chunk by chunk.

Exit status 0 when the streams hold the same state, 1 when they differ, 2
when one cannot be read (as diff(1)).
"""

from __future__ import annotations

import fnmatch
import hashlib
import sys
from collections.abc import Iterator
from typing import Any

HELP = "show what differs between two streams (any format), by path and field"

#: values longer than this are shortened in the text view
MAX_BYTES = 16
MAX_TEXT = 48


class Absent:
    """A field one of the two nodes does not have."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT = Absent()


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("diff", help=HELP, description=HELP + ". Exit status 0 when "
                              "they are the same, 1 when they differ, 2 on errors.")
    p.add_argument("a", metavar="A", help="a stream ('-' for stdin)")
    p.add_argument("b", metavar="B", help="another stream")
    p.add_argument("--json", action="store_true", help="print the differences as JSON")
    p.add_argument("--path", metavar="PATH",
                   help="compare only the object at PATH and the objects under it")
    p.add_argument("--ignore", metavar="FIELD", action="append", default=[],
                   help="leave out fields matching this pattern (fnmatch on the field name, "
                        "e.g. '__qemu__*' or 'env.tsc'); repeatable")
    p.set_defaults(func=run)


def run(args: Any) -> int:
    from ..errors import MigtreeError
    from ..formats import open_stream
    from ..plugins import get_registry

    if args.a == "-" and args.b == "-":
        print("migtree: error: only one of A and B can be stdin", file=sys.stderr)
        return 2
    registry = get_registry()
    read = []
    for name in (args.a, args.b):
        try:
            src = sys.stdin.buffer if name == "-" else name
            read.append(open_stream(src, registry))
        except (MigtreeError, OSError) as e:
            from ..textsafe import safe_lines

            print(f"migtree: error: {name}: {safe_lines(e)}", file=sys.stderr)
            return 2
    (fa, _, ta), (fb, _, tb) = read
    result = diff_trees(ta, tb, path=args.path, ignore=args.ignore)
    if args.json:
        from ..jsonview import dumps

        doc = {"a": {"stream": args.a, "format": fa, "objects": result["objects_a"]},
               "b": {"stream": args.b, "format": fb, "objects": result["objects_b"]},
               **as_json(result)}
        print(dumps(doc))
    else:
        from ..textsafe import safe_block

        print(safe_block(format_text(result, args.a, fa, args.b, fb)))
    return 0 if result["equal"] else 1


# -- comparing -------------------------------------------------------------------

def _under(path: str, prefix: str | None) -> bool:
    if not prefix or prefix == "/":
        return True
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


def diff_trees(a: dict[str, Any], b: dict[str, Any], *, path: str | None = None,
               ignore: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The differences of two state trees.

    ``{"equal", "objects_a", "objects_b", "only_in_a": [(path, type@v)],
    "only_in_b": [...], "changed": [(path, type@v in a, type@v in b,
    [(field, value in a, value in b)])]}`` — objects in path order, fields in
    node order; a value a node lacks is :data:`ABSENT`.
    """
    from ..tree import TYPE_KEY, VERSION_KEY, iter_object_nodes

    na = {p: n for p, n in iter_object_nodes(a) if _under(p, path)}
    nb = {p: n for p, n in iter_object_nodes(b) if _under(p, path)}

    def tv(n: dict[str, Any]) -> str:
        return f"{n.get(TYPE_KEY)}@{n.get(VERSION_KEY)}"

    only_a = [(p, tv(na[p])) for p in sorted(na) if p not in nb]
    only_b = [(p, tv(nb[p])) for p in sorted(nb) if p not in na]
    changed = []
    for p in sorted(set(na) & set(nb)):
        x, y = na[p], nb[p]
        fields = []
        for key in (TYPE_KEY, VERSION_KEY):
            if x.get(key) != y.get(key):
                fields.append((key, x.get(key, ABSENT), y.get(key, ABSENT)))
        fields.extend(f for f in _diff_fields(_own(x), _own(y), "")
                      if not any(fnmatch.fnmatchcase(f[0], pat) for pat in ignore))
        if fields:
            changed.append((p, tv(x), tv(y), fields))
    return {"equal": not (only_a or only_b or changed), "objects_a": len(na),
            "objects_b": len(nb), "only_in_a": only_a, "only_in_b": only_b,
            "changed": changed}


def _own(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in ("__type__", "__version__")
            and not (type(v) is dict and "__type__" in v)}


def _is_blob(v: Any) -> bool:
    return hasattr(v, "iter_chunks") and hasattr(v, "__len__")


def _blob_id(v: Any) -> tuple[int, str]:
    h = hashlib.sha256()
    for chunk in v.iter_chunks():
        h.update(chunk)
    return len(v), h.hexdigest()


def _same(x: Any, y: Any) -> bool:
    if _is_blob(x) or _is_blob(y):
        if not (_is_blob(x) and _is_blob(y)):
            return False
        return len(x) == len(y) and _blob_id(x) == _blob_id(y)
    return type(x) is type(y) and x == y


def _diff_fields(x: Any, y: Any, name: str) -> Iterator[tuple[str, Any, Any]]:
    """``(field, a, b)`` for every leaf that differs, structs and lists
    entered when both sides have one."""
    if type(x) is dict and type(y) is dict:
        for k in list(x) + [k for k in y if k not in x]:
            sub = f"{name}.{k}" if name else str(k)
            if k not in x:
                yield sub, ABSENT, y[k]
            elif k not in y:
                yield sub, x[k], ABSENT
            else:
                yield from _diff_fields(x[k], y[k], sub)
        return
    if type(x) is list and type(y) is list and not _scalar_list(x, y):
        for i in range(max(len(x), len(y))):
            sub = f"{name}[{i}]"
            if i >= len(x):
                yield sub, ABSENT, y[i]
            elif i >= len(y):
                yield sub, x[i], ABSENT
            else:
                yield from _diff_fields(x[i], y[i], sub)
        return
    if not _same(x, y):
        yield name, x, y


def _scalar_list(x: list, y: list) -> bool:
    """Lists of plain numbers of the same length are compared element by
    element; of different lengths, as one value (a register file that
    changed size is one difference, not hundreds)."""
    if len(x) == len(y):
        return False
    return all(type(v) in (int, bool) for v in x) and all(type(v) in (int, bool) for v in y)


# -- showing ---------------------------------------------------------------------

def short(v: Any) -> str:
    """A value for people: integers also in hex, bytes and blobs summarised."""
    t = type(v)
    if v is ABSENT:
        return "<absent>"
    if t is bool or v is None:
        return "null" if v is None else str(v).lower()
    if t is int:
        return f"{v} (0x{v:x})" if v > 9 else str(v)
    if t in (bytes, bytearray):
        b = bytes(v)
        if len(b) <= MAX_BYTES:
            return f"bytes[{len(b)}] {b.hex(' ')}" if b else "bytes[0]"
        return (f"bytes[{len(b)}] {b[:MAX_BYTES].hex(' ')} … "
                f"(sha256 {hashlib.sha256(b).hexdigest()[:16]}…)")
    if t is str:
        return repr(v) if len(v) <= MAX_TEXT else \
            f"{v[:MAX_TEXT]!r}… ({len(v)} characters, sha256 " \
            f"{hashlib.sha256(v.encode()).hexdigest()[:16]}…)"
    if _is_blob(v):
        n, digest = _blob_id(v)
        return f"blob, {n:,} bytes, sha256 {digest[:16]}…"
    if t is list:
        inner = ", ".join(short(e) for e in v[:8])
        more = f", … ({len(v)} items)" if len(v) > 8 else ""
        return f"[{inner}{more}]"
    if t is dict:
        items = list(v.items())
        inner = ", ".join(f"{k}: {short(e)}" for k, e in items[:6])
        return "{" + inner + (", …" if len(items) > 6 else "") + "}"
    return repr(v)


def format_text(result: dict[str, Any], name_a: str, fmt_a: str, name_b: str,
                fmt_b: str) -> str:
    lines = [f"A: {name_a} ({fmt_a} stream, {result['objects_a']} objects)",
             f"B: {name_b} ({fmt_b} stream, {result['objects_b']} objects)"]
    if result["equal"]:
        lines.append("the same state")
        return "\n".join(lines)
    nfields = 0
    for path, ta, tb, fields in result["changed"]:
        lines.append(f"{path}  {ta}" + (f" -> {tb}" if tb != ta else ""))
        for field, x, y in fields:
            lines.append(f"    {field}: {short(x)} -> {short(y)}")
        nfields += len(fields)
    for path, t in result["only_in_a"]:
        lines.append(f"only in A: {path}  {t}")
    for path, t in result["only_in_b"]:
        lines.append(f"only in B: {path}  {t}")
    parts = [f"{nfields} field{'s' if nfields != 1 else ''} differ in "
             f"{len(result['changed'])} object{'s' if len(result['changed']) != 1 else ''}"]
    if result["only_in_a"] or result["only_in_b"]:
        parts.append(f"{len(result['only_in_a'])} objects only in A, "
                     f"{len(result['only_in_b'])} only in B")
    lines.append("; ".join(parts))
    return "\n".join(lines)


def as_json(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON view of a result: values as ``migtree inspect --json`` shows
    them (``$bytes``, ``$blob`` summaries); a value a node lacks is left
    out (``"a"`` or ``"b"`` missing)."""
    from ..jsonview import to_json

    def side(x: Any, y: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if x is not ABSENT:
            out["a"] = to_json(x)
        if y is not ABSENT:
            out["b"] = to_json(y)
        return out

    return {
        "equal": result["equal"],
        "changed": [{"path": p, "a_type": ta, "b_type": tb,
                     "fields": [{"field": f, **side(x, y)} for f, x, y in fields]}
                    for p, ta, tb, fields in result["changed"]],
        "only_in_a": [{"path": p, "type": t} for p, t in result["only_in_a"]],
        "only_in_b": [{"path": p, "type": t} for p, t in result["only_in_b"]],
    }
