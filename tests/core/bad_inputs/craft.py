"""Build migtree streams item by item, valid or deliberately broken, with a
correct footer (count and SHA-256) unless told otherwise, so a test reaches
the check it is about instead of the checksum."""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2

from migtree import stream

SCHEMA_OBJ = {"type": "container", "version": 1, "parent": "object", "plugin": "migtree",
              "fields": []}
SCHEMA_DEV = {"type": "dev", "version": 1, "parent": "device", "plugin": "x",
              "fields": [{"name": "a", "kind": "u32"}]}


def header(**over: Any) -> dict[str, Any]:
    h = {"magic": "MIGTREE", "version": 1,
         "producer": {"name": "migtree", "version": "0.1.0"},
         "plugins": {"migtree": "0.1.0"},
         "schemas": {"container@1": SCHEMA_OBJ, "dev@1": SCHEMA_DEV}}
    h.update(over)
    return h


def obj(path: str, type_: str = "container", version: int = 1,
        fields: dict | None = None, sizes: list | None = None) -> list:
    return [0, path, type_, version, fields or {}, sizes or []]


def raw(*items: Any) -> bytes:
    """Items encoded one after the other (bytes items are taken as they are)."""
    return b"".join(i if isinstance(i, (bytes, bytearray)) else cbor2.dumps(i) for i in items)


def footer_for(body: bytes, count: int) -> bytes:
    digest = hashlib.sha256(body).digest()
    return b"\x83\x02\x1b" + count.to_bytes(8, "big") + b"\x58\x20" + digest


def build(*sections: Any, hdr: Any = None, count: int | None = None) -> bytes:
    """A stream: header (default :func:`header`), sections, a correct footer."""
    body = raw(header() if hdr is None else hdr, *sections)
    return body + footer_for(body, len(sections) if count is None else count)


def minimal() -> bytes:
    return build(obj("/"), obj("/d", "dev", fields={"a": 1}))


def check(data: bytes) -> tuple[dict, dict]:
    return stream.read_tree(data)
