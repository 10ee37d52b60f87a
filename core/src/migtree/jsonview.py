"""A JSON view of streams and state trees, for people (the CBOR is the
contract; this is how one reads it, diffs it, or edits it by hand).

Plain values map to JSON directly. The rest becomes a one-key object whose
key starts with ``$`` (keys of the state tree never do: field names are
Python identifiers and child names are QOM names):

``{"$bytes": "00ff10"}``
    a byte string, lower-case hex (device state is read as hex: PCI config
    space, register pages)
``{"$blob": {"size": N, "sha256": "…"}}``
    a blob, summarised; with ``inline_blobs=True`` it also has ``"hex"``
``{"$map": {…}}``
    a map that has a key starting with ``$`` (written so it cannot be
    mistaken for the above)

:func:`from_json` is the exact inverse (a summarised blob cannot be read
back: the error says to use ``inline_blobs``). Integers stay JSON numbers of
any size: Python's json reads them exactly; tools that use doubles (jq,
JavaScript) lose precision above 2**53.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .blob import Blob
from .errors import MigtreeError

BYTES_KEY = "$bytes"
BLOB_KEY = "$blob"
MAP_KEY = "$map"


def _is_blob(value: Any) -> bool:
    return hasattr(value, "iter_chunks") and hasattr(value, "__len__")


def to_json(value: Any, *, inline_blobs: bool = False) -> Any:
    """A JSON-able rendering of ``value`` (a tree, a node, a header, a field)."""
    t = type(value)
    if t is dict:
        out = {}
        escape = False
        for k, v in value.items():
            if type(k) is not str:
                raise ValueError(f"map key {k!r} is not text: the JSON view needs text keys")
            escape = escape or k.startswith("$")
            out[k] = to_json(v, inline_blobs=inline_blobs)
        return {MAP_KEY: out} if escape else out
    if t in (list, tuple):
        return [to_json(v, inline_blobs=inline_blobs) for v in value]
    if t in (int, bool, str, float) or value is None:
        return value
    if t in (bytes, bytearray, memoryview):
        return {BYTES_KEY: bytes(value).hex()}
    if _is_blob(value):
        h = hashlib.sha256()
        parts = [] if inline_blobs else None
        for c in value.iter_chunks():
            h.update(c)
            if parts is not None:
                parts.append(bytes(c).hex())
        d: dict[str, Any] = {"size": len(value), "sha256": h.hexdigest()}
        if parts is not None:
            d["hex"] = "".join(parts)
        return {BLOB_KEY: d}
    raise TypeError(f"the JSON view has no rendering for a {t.__name__}")


class JsonViewError(MigtreeError, ValueError):
    """A JSON view that cannot be read back (a ValueError too, as before)."""


#: the JSON view of a stream is nested at most as deep as the stream allows
#: (migtree.stream.MAX_DEPTH_CEILING) plus the tree's own object levels; each
#: level costs two Python frames here, well inside the recursion limit
MAX_JSON_DEPTH = 320


def from_json(value: Any, _depth: int = 0) -> Any:
    """The value :func:`to_json` rendered (blobs come back as
    :class:`migtree.blob.Blob`). Raises :class:`JsonViewError` (a
    ValueError) on what it cannot invert."""
    if _depth > MAX_JSON_DEPTH:
        raise JsonViewError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    t = type(value)
    if t is dict:
        if len(value) == 1:
            (k, v), = value.items()
            if k == BYTES_KEY:
                return _hex(v, BYTES_KEY)
            if k == BLOB_KEY:
                if not isinstance(v, dict) or "hex" not in v:
                    raise JsonViewError("a blob in the JSON view is only summarised (size and "
                                     "sha256); write the view with inline_blobs to read it back")
                data = _hex(v["hex"], BLOB_KEY)
                if "size" in v and v["size"] != len(data):
                    raise JsonViewError(f"a blob says size {v['size']} but has {len(data)} bytes")
                return Blob(data)
            if k == MAP_KEY:
                if not isinstance(v, dict):
                    raise JsonViewError(f"{MAP_KEY} must hold an object")
                return {kk: from_json(vv, _depth + 1) for kk, vv in v.items()}
        for k in value:
            if k.startswith("$"):
                raise JsonViewError(f"unknown key {k!r}: keys starting with '$' are reserved "
                                 "for the JSON view's own forms")
        return {k: from_json(v, _depth + 1) for k, v in value.items()}
    if t is list:
        return [from_json(v, _depth + 1) for v in value]
    return value


def _hex(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise JsonViewError(f"{what} must hold a hex string")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise JsonViewError(f"{what}: {text[:40]!r} is not hex") from None


def stream_to_json(format_name: str, header: dict[str, Any], tree: dict[str, Any], *,
                   inline_blobs: bool = False) -> dict[str, Any]:
    """The document ``migtree inspect --json`` prints::

        {"format": "migtree", "header": {...},
         "objects": [{"path": "/", "type": "container", "version": 1}, ...],
         "tree": {...}}

    ``objects`` lists every object node in pre-order (an index; the values
    are in ``tree``, which mirrors the QOM composition)."""
    from .tree import iter_object_nodes

    objects = [{"path": p, "type": n.get("__type__"), "version": n.get("__version__")}
               for p, n in iter_object_nodes(tree)]
    return {"format": format_name, "header": to_json(header, inline_blobs=inline_blobs),
            "objects": objects, "tree": to_json(tree, inline_blobs=inline_blobs)}


def stream_from_json(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(header, tree)`` from a :func:`stream_to_json` document."""
    if not isinstance(doc, dict) or "tree" not in doc:
        raise JsonViewError("not a migtree JSON view: it has no 'tree'")
    return from_json(doc.get("header", {})), from_json(doc["tree"])


def dumps(doc: Any, *, indent: int | None = 2) -> str:
    return json.dumps(doc, indent=indent, ensure_ascii=False)
