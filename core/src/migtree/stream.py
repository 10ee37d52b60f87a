"""The migtree wire format: a CBOR sequence (RFC 8742).

::

    header  {"magic": "MIGTREE", "version": 1, "producer": {...}, "plugins": {...},
             "schemas": {"TYPE@V": {...}}, ? "extra": {...}}
    section [0, path, type, version, fields, blob_sizes]     one per object, pre-order
    section [1, path, blob_index, offset, data]              blob chunks, <= 1 MiB each
    ...
    footer  [2, section_count, sha256]                       always exactly 45 bytes

``docs/wire-format.md`` is the specification and ``migtree.cddl`` (shipped in
this package) the CDDL schema; tests validate real streams against it.

Reading is for untrusted input: every decode runs under :class:`Limits`, no
CBOR tag is accepted, floats and other simple values are rejected, and every
failure is a :class:`~migtree.errors.StreamError` that names the byte offset
of the section and, where known, the object path and field. Nothing here
consults a device or a plugin: the schemas in the header are data.
"""

from __future__ import annotations

import gc
import hashlib
import io
import operator
import os
import re
from collections.abc import Iterator
from itertools import chain, compress, repeat
from typing import IO, Any

import attrs
import cbor2

from .blob import Blob
from .errors import MigtreeError, StreamError, UnknownTypeError
from .qom import RESERVED_KEYS, Object, canonical_path

MAGIC = "MIGTREE"
FORMAT_VERSION = 1
#: the largest ``data`` of one chunk section (and the size the writer uses)
CHUNK_SIZE = 1 << 20
#: section kinds (first element of every section array)
KIND_OBJECT, KIND_CHUNK, KIND_FOOTER = 0, 1, 2
#: the footer's count uses the 8-byte argument so the footer has a fixed size
FOOTER_SIZE = 45
_FOOTER_HEAD = b"\x83\x02\x1b"
_DIGEST_HEAD = b"\x58\x20"
#: a stream's bytes after the header map's initial byte: text "magic", text "MIGTREE"
MAGIC_PREFIX = b"\x65magic\x67MIGTREE"
HEADER_KEYS = ("magic", "version", "producer", "plugins", "schemas", "extra")
BLOB_KEY = "$blob"
TYPE_KEY, VERSION_KEY = "__type__", "__version__"

_NAME_RE = re.compile(r"^[A-Za-z0-9_.+\-\[\]:,]+$")
_NONE = type(None)
_SCALARS = frozenset({int, bool, _NONE})
_PLAIN = frozenset({int, bool, _NONE, str, bytes, dict, list})


#: the largest Limits.max_depth: the precise checker and the JSON view recurse
#: once per nesting level, and Python's recursion limit is 1000
MAX_DEPTH_CEILING = 256


@attrs.frozen
class Limits:
    """Bounds on what a reader accepts. Each bound is checked before the
    reader acts on a value; see docs/wire-format.md, "Limits"."""

    #: bytes in the whole stream
    max_total_size: int = 64 << 30
    #: bytes in one item (header, section or footer); bounds the reader's buffer
    max_section_size: int = 64 << 20
    #: container nesting inside one item (cbor2's ``max_depth``)
    max_depth: int = 64
    #: characters in a text string (paths, names, string fields, map keys)
    max_str_length: int = 1 << 20
    #: bytes in a byte string outside blob chunks (chunks are at most CHUNK_SIZE)
    max_bytes_length: int = 16 << 20
    #: items in an array
    max_array_length: int = 1 << 20
    #: entries in a map
    max_map_size: int = 1 << 16
    #: sections between header and footer
    max_sections: int = 1 << 24

    def __attrs_post_init__(self) -> None:
        for f in attrs.fields(Limits):
            v = getattr(self, f.name)
            if type(v) is not int or v < 1:
                raise ValueError(f"Limits.{f.name} must be a positive int, got {v!r}")
        if self.max_depth > MAX_DEPTH_CEILING:
            raise ValueError(f"Limits.max_depth must be at most {MAX_DEPTH_CEILING} (the "
                             f"checks recurse once per level), got {self.max_depth}")

    @property
    def implied(self) -> int:
        """An item no larger than this cannot break a length limit (a string
        needs as many bytes as characters, an array item one byte, a map
        entry two), so its length checks are skipped."""
        return min(self.max_str_length, self.max_bytes_length, self.max_array_length,
                   2 * self.max_map_size)


DEFAULT_LIMITS = Limits()

#: The reader's cost bound (docs/wire-format.md, "Cost"): read_tree keeps at
#: most this many bytes of Python objects per input byte, plus READ_BYTES_BASE.
#: It holds by construction: every decoded value is charged to bytes of the
#: input (cbor2 never preallocates an announced length; a section is at least
#: 8 bytes; no value is repeated or shared), and the worst case -- millions
#: of empty sections, each a node, a path and its bookkeeping -- measures
#: about 40 (tests/core/test_hostile_inputs.py keeps it under the bound).
READ_BYTES_PER_INPUT_BYTE = 64
READ_BYTES_BASE = 1 << 20


@attrs.define
class Section:
    """One item of a stream as :func:`iter_sections` yields it.

    ``kind`` is ``"header"``, ``"object"``, ``"chunk"`` or ``"footer"``;
    ``offset``/``size`` locate its bytes. Object sections carry ``path``,
    ``type``, ``version``, ``fields`` (blobs still as ``{"$blob": i}``
    placeholders) and ``blobs`` (one :class:`BlobRef` per placeholder). Chunk
    sections carry ``path``, ``index``, ``chunk_offset`` and ``data``.
    """

    kind: str
    offset: int
    size: int
    path: str | None = None
    type: str | None = None
    version: int | None = None
    fields: dict[str, Any] | None = None
    blobs: list[BlobRef] = attrs.Factory(list)
    blob_sizes: list[int] = attrs.Factory(list)
    header: dict[str, Any] | None = None
    index: int | None = None
    chunk_offset: int | None = None
    data: bytes | None = None
    count: int | None = None


@attrs.define
class BlobRef:
    """Where a blob placeholder sits in an object section's fields."""

    index: int
    size: int
    field: str
    container: Any
    key: Any


class _gc_paused:
    """Pause the cyclic garbage collector while a stream or a tree is built:
    they are acyclic (reference counting frees them), and with millions of
    young objects the collector's passes cost more than the decoding
    (benchmarks/bench_core.py). On exit the objects made meanwhile are moved
    to the oldest generation without a scan (``gc.freeze()`` then
    ``gc.unfreeze()``; skipped when the application froze objects itself), so
    the next automatic collections do not walk the whole new tree; the
    previous enabled state is restored. Nesting is fine."""

    def __enter__(self) -> None:
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: Any) -> None:
        if self.was:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


# -- decoding primitives ------------------------------------------------------

class _TagRejected(Exception):
    def __init__(self, tag: Any):
        super().__init__(tag)
        self.tag = tag


def _reject_semantic(tag: int):
    def reject(*_args: Any) -> Any:
        raise _TagRejected(tag)
    return reject


def _reject_tag_hook(*args: Any) -> Any:
    for a in args:
        if isinstance(a, cbor2.CBORTag):
            raise _TagRejected(a.tag)
    raise _TagRejected(None)


#: every tag cbor2 6.x decodes natively (found by probing 0..70000 and 2**32,
#: 2**63, 2**64-1; tests/core/test_badinput.py repeats the probe), each mapped
#: to a rejection; every other tag reaches the tag hook, which rejects it too.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260,
                 261, 1004, 43000, 55799)
_SEMANTIC_REJECT = {t: _reject_semantic(t) for t in _BUILTIN_TAGS}


class _Window:
    """A seekable view of a binary file for cbor2's decoder that holds only
    the bytes of the current item, refuses to read past the item and stream
    limits, and never seeks the underlying file (pipes and sockets work)."""

    def __init__(self, fp: IO[bytes], limit_total: int) -> None:
        self._fp = fp
        self._buf = bytearray()
        self._base = 0  # absolute offset of _buf[0]
        self._pos = 0
        self._eof = False
        self._limit_total = limit_total
        self.item_limit = limit_total
        self.hit: str | None = None

    # the file protocol cbor2 uses
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        new = offset if whence == 0 else self._pos + offset if whence == 1 else None
        if new is None or new < self._base:
            raise OSError("window cannot seek there")
        self._pos = new
        return new

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 16
        want = self._pos + n
        cap = min(self.item_limit, self._limit_total)
        if want > cap:
            self._fill(cap + 1)
            if self._base + len(self._buf) > cap:
                self.hit = "total" if cap == self._limit_total else "item"
            want = cap
        self._fill(want)
        start = self._pos - self._base
        end = min(want, self._base + len(self._buf)) - self._base
        if end <= start:
            return b""
        self._pos = self._base + end
        with memoryview(self._buf) as m:
            return bytes(m[start:end])

    # for the reader
    def _fill(self, upto: int) -> None:
        have = self._base + len(self._buf)
        while have < upto and not self._eof:
            chunk = self._fp.read(max(upto - have, 1 << 16))
            if not chunk:
                self._eof = True
                break
            self._buf += chunk
            have += len(chunk)

    def at_eof(self) -> bool:
        self._fill(self._pos + 1)
        return self._pos >= self._base + len(self._buf)

    def begin_item(self, limit: int) -> None:
        """Allow ``limit`` more bytes; forget those before the current position
        once they are many (compacting after every small item would move the
        read-ahead again and again)."""
        drop = self._pos - self._base
        if drop > (1 << 20) or (drop and drop == len(self._buf)):
            del self._buf[:drop]
            self._base = self._pos
        self.item_limit = self._pos + limit + 1  # one past: an oversized item is seen
        self.hit = None

    def view(self, start: int, end: int) -> memoryview:
        return memoryview(self._buf)[start - self._base:end - self._base]


class _Input:
    """Items of a CBOR sequence with their byte offsets."""

    def __init__(self, src: Any, limits: Limits) -> None:
        self.limits = limits
        self.footer_at: int | None = None  # known when the size is known
        self.digest: bytes | None = None  # precomputed when the input is seekable
        self._bytes: bytes | None = None
        self._win: _Window | None = None
        self._hash: Any = None
        self._unhashed: tuple[int, int] | None = None
        if isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
            self._bytes = data
            self.size: int | None = len(data)
            self._check_total(len(data))
            fp: Any = io.BytesIO(data)
            self._fp = fp
        else:
            if not hasattr(src, "read") or isinstance(src, io.TextIOBase):
                raise TypeError(f"read a stream from bytes or a binary file, not {src!r}")
            self.size, base = _seekable_size(src)
            if self.size is not None:
                self._check_total(self.size)
            self._src, self._base_pos = src, base
            self._win = _Window(src, limits.max_total_size)
            fp = self._fp = self._win
        self.decoder = cbor2.CBORDecoder(
            fp, max_depth=limits.max_depth, allow_indefinite=False,
            allow_duplicate_keys=False, semantic_decoders=_SEMANTIC_REJECT,
            tag_hook=_reject_tag_hook, str_errors="strict")

    def _check_total(self, size: int) -> None:
        if size > self.limits.max_total_size:
            raise StreamError(f"the stream is {size} bytes, above the limit of "
                              f"{self.limits.max_total_size}", offset=0)

    def precheck(self, header_end: int) -> None:
        """When the size is known, find the footer at the end and verify the
        checksum over every byte before it, before decoding any section."""
        if self.size is None:
            self._hash = hashlib.sha256()
            self._unhashed = (0, header_end)
            return
        if self.size < FOOTER_SIZE:
            raise StreamError("truncated: the stream is too short to hold a footer",
                              offset=self.size)
        at = self.size - FOOTER_SIZE
        h = hashlib.sha256()
        if self._bytes is not None:
            data = memoryview(self._bytes)
            h.update(data[:at])
            tail = bytes(data[at:])
        else:
            src = self._src
            resume = src.tell()
            src.seek(self._base_pos)
            left = at
            while left:
                block = src.read(min(left, 1 << 20))
                if not block:
                    raise StreamError("the file shrank while it was read", offset=at - left)
                h.update(block)
                left -= len(block)
            tail = src.read(FOOTER_SIZE)
            src.seek(resume)
        if not (tail.startswith(_FOOTER_HEAD) and tail[11:13] == _DIGEST_HEAD):
            raise StreamError("truncated or damaged: the stream does not end with a footer "
                              f"(the last {FOOTER_SIZE} bytes are not [2, count, sha256])",
                              offset=at)
        if h.digest() != tail[13:]:
            raise StreamError(
                f"checksum mismatch: the SHA-256 of bytes 0..{at} is {h.hexdigest()}, the "
                f"footer says {tail[13:].hex()}; the stream is corrupted", offset=at)
        self.footer_at = at
        self.digest = tail[13:]

    def tell(self) -> int:
        return self._fp.tell()

    def peek(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end), without consuming them."""
        if self._win is not None:
            pos = self._win.tell()
            self._win._fill(pos + n)
            return bytes(self._win.view(pos, pos + n))
        pos = self._fp.tell()
        return self._bytes[pos:pos + n]  # type: ignore[index]

    def at_eof(self) -> bool:
        if self._win is not None:
            return self._win.at_eof()
        return self._fp.tell() >= self.size  # type: ignore[operator]

    def next(self, what: str) -> tuple[int, int, Any]:
        """Decode the next item: ``(start, end, value)``."""
        start = self.tell()
        limit = self.limits.max_section_size
        if self._unhashed is not None:  # hash the previous item before it is dropped
            self._hash.update(self._view(*self._unhashed))  # type: ignore[union-attr]
            self._unhashed = None
        if self._win is not None:
            self._win.begin_item(limit)
        if self.at_eof():
            raise StreamError(f"truncated: the stream ends where {what} should start",
                              offset=start)
        try:
            value = self.decoder.decode()
        except cbor2.CBORDecodeEOF:
            if self._win is not None and self._win.hit:
                raise self._limit_error(start) from None
            raise StreamError(f"truncated: the stream ends inside {what}",
                              offset=start) from None
        except cbor2.CBORDecodeError as e:
            if self._win is not None and self._win.hit:
                raise self._limit_error(start) from None
            raise StreamError(f"{what}: {_cbor_message(e, self.limits)}", offset=start) from None
        except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
            raise StreamError(f"{what}: undecodable CBOR ({e.__class__.__name__}: {e})",
                              offset=start) from None
        end = self.tell()
        if end - start > limit:
            raise StreamError(f"{what} is {end - start} bytes, above the limit of {limit}",
                              offset=start)
        if self._hash is not None:
            self._unhashed = (start, end)
        return start, end, value

    def _limit_error(self, start: int) -> StreamError:
        if self._win is not None and self._win.hit == "total":
            return StreamError(f"the stream is longer than the limit of "
                               f"{self.limits.max_total_size} bytes", offset=start)
        return StreamError(f"the item here is longer than the limit of "
                           f"{self.limits.max_section_size} bytes", offset=start)

    def _view(self, start: int, end: int) -> Any:
        if self._win is not None:
            return self._win.view(start, end)
        return memoryview(self._bytes)[start:end]  # type: ignore[index]

    def running_digest(self) -> bytes | None:
        """SHA-256 of every item before the last one decoded."""
        return self._hash.digest() if self._hash is not None else None


def _seekable_size(fp: Any) -> tuple[int | None, int]:
    try:
        if not fp.seekable():
            return None, 0
        base = fp.tell()
        end = fp.seek(0, os.SEEK_END)
        fp.seek(base)
        return end - base, base
    except (AttributeError, OSError, ValueError):
        return None, 0


def _cbor_message(e: Exception, limits: Limits) -> str:
    cause = e.__cause__ or e.__context__
    if isinstance(cause, _TagRejected):
        tag = f"CBOR tag {cause.tag}" if cause.tag is not None else "a CBOR tag"
        return f"{tag} is not allowed (migtree streams use no tags)"
    msg = str(e)
    if "nesting depth" in msg:
        return f"nested deeper than the limit of {limits.max_depth}"
    if "indefinite" in msg:
        return "indefinite-length items are not allowed"
    if "duplicate" in msg.lower():
        return f"a map has a duplicate key ({msg})"
    return f"invalid CBOR ({msg})"


# -- checking decoded values ---------------------------------------------------

def _dotted(parts: tuple) -> str:
    out = ""
    for p in parts:
        if type(p) is int:
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def _kind(value: Any) -> str:
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, cbor2.CBORSimpleValue):
        return f"simple value {value.value}"
    if value is cbor2.undefined:
        return "undefined"
    return type(value).__name__


class _Checker:
    """Checks that decoded values are plain data (the migtree data model:
    int, bool, null, text, bytes, arrays, maps with text keys) within the
    limits, and finds blob placeholders."""

    def __init__(self, limits: Limits, offset: int, path: str | None,
                 lengths: bool, blobs: list | None) -> None:
        self.limits = limits
        self.offset = offset
        self.path = path
        self.lengths = lengths
        self.blobs = blobs  # None: placeholders are not allowed here

    def fail(self, parts: tuple, message: str) -> StreamError:
        where = _dotted(parts)
        return StreamError(f"{where}: {message}" if where else message,
                           offset=self.offset, path=self.path)

    def check(self, c: Any, parts: tuple = ()) -> None:
        L = self.limits
        if type(c) is dict:
            if self.lengths and len(c) > L.max_map_size:
                raise self.fail(parts, f"a map of {len(c)} entries exceeds the limit of "
                                f"{L.max_map_size}")
            if c:
                kt = set(map(type, c))
                if kt != {str}:
                    bad = next(k for k in c if type(k) is not str)
                    raise self.fail(parts, f"map key {bad!r} is not text")
                if self.lengths and max(map(len, c)) > L.max_str_length:
                    raise self.fail(parts, f"a map key exceeds the limit of "
                                    f"{L.max_str_length} characters")
            if BLOB_KEY in c:
                raise self.fail(parts, "a blob placeholder is only allowed as a field value")
            values: Any = c.values()
            pairs: Any = c.items()
        else:
            if self.lengths and len(c) > L.max_array_length:
                raise self.fail(parts, f"an array of {len(c)} items exceeds the limit of "
                                f"{L.max_array_length}")
            values = c
            pairs = None
        types = set(map(type, values))
        if types <= _SCALARS:
            return
        if not types <= _PLAIN:
            for k, v in (pairs if pairs is not None else enumerate(values)):
                if type(v) not in _PLAIN:
                    raise self.fail((*parts, k), f"{_kind(v)} is not allowed (the migtree "
                                    "data model has no floats, simple values or undefined)")
        if self.lengths and (str in types or bytes in types):
            for k, v in (pairs if pairs is not None else enumerate(values)):
                t = type(v)
                if t is str and len(v) > L.max_str_length:
                    raise self.fail((*parts, k), f"text of {len(v)} characters exceeds the "
                                    f"limit of {L.max_str_length}")
                if t is bytes and len(v) > L.max_bytes_length:
                    raise self.fail((*parts, k), f"{len(v)} bytes exceed the limit of "
                                    f"{L.max_bytes_length}")
        if dict in types or list in types:
            for k, v in (pairs if pairs is not None else enumerate(values)):
                t = type(v)
                if t is dict:
                    if BLOB_KEY in v and self.blobs is not None:
                        self.placeholder(c, k, v, (*parts, k))
                    else:
                        self.check(v, (*parts, k))
                elif t is list:
                    self.check(v, (*parts, k))

    def placeholder(self, container: Any, key: Any, v: dict, parts: tuple) -> None:
        idx = v[BLOB_KEY]
        if len(v) != 1 or type(idx) is not int:
            raise self.fail(parts, 'a blob placeholder must be {"$blob": index}')
        self.blobs.append((idx, _dotted(parts), container, key))  # type: ignore[union-attr]


# -- reading -------------------------------------------------------------------

def _need(cond: bool, message: str, offset: int, path: str | None = None) -> None:
    if not cond:
        raise StreamError(message, offset=offset, path=path)


def _check_header(h: Any, start: int, end: int, limits: Limits) -> dict[str, Any]:
    _need(type(h) is dict, "not a migtree stream: the first item is not a header map", start)
    _need(h.get("magic") == MAGIC, f"not a migtree stream: the header's magic is "
          f"{h.get('magic')!r}, not {MAGIC!r}", start)
    version = h.get("version")
    _need(type(version) is int, f"the header's format version {version!r} is not an integer",
          start)
    _need(version == FORMAT_VERSION, f"format version {version} is not supported (this "
          f"migtree reads version {FORMAT_VERSION}); upgrade migtree to read it", start)
    return h


def _check_header_body(h: dict[str, Any], start: int, end: int,
                       limits: Limits) -> dict[str, Any]:
    try:
        _Checker(limits, start, None, end - start > limits.implied, None).check(h)
    except StreamError as e:
        raise StreamError(f"header: {e.reason}", offset=start) from None
    unknown = sorted(set(h) - set(HEADER_KEYS))
    _need(not unknown, f"header: unknown keys {unknown} (format version 1 has "
          f"{list(HEADER_KEYS)})", start)
    for key in ("producer", "plugins", "schemas"):
        _need(key in h, f"header: {key!r} is missing", start)
    p = h["producer"]
    _need(type(p) is dict and type(p.get("name")) is str and type(p.get("version")) is str,
          "header: producer must be {name: text, version: text, ? build: text}", start)
    _need(set(p) <= {"name", "version", "build"} and type(p.get("build", "")) is str,
          f"header: producer has unknown keys or a non-text build: {sorted(p)}", start)
    plugins = h["plugins"]
    _need(type(plugins) is dict and all(type(v) in (str, _NONE) for v in plugins.values()),
          "header: plugins must map distribution names to versions (text or null)", start)
    schemas = h["schemas"]
    _need(type(schemas) is dict, "header: schemas must be a map", start)
    for key, entry in schemas.items():
        _check_schema_entry(key, entry, start)
    if "extra" in h:
        _need(type(h["extra"]) is dict, "header: extra must be a map", start)
    return h


def _check_schema_entry(key: str, e: Any, offset: int) -> None:
    what = f"header: schemas[{key!r}]"
    _need(type(e) is dict, f"{what} is not a map", offset)
    _need(type(e.get("type")) is str and type(e.get("version")) is int
          and e.get("version") >= 0 and key == f"{e.get('type')}@{e.get('version')}",
          f"{what} must have type and version matching its key", offset)
    _need(set(e) <= _ENTRY_KEYS, f"{what} has unknown keys {sorted(set(e) - _ENTRY_KEYS)}",
          offset)
    for k in ("parent", "plugin"):
        _need(type(e.get(k)) in (str, _NONE), f"{what}.{k} must be text or null", offset)
    fields = e.get("fields")
    _need(type(fields) is list, f"{what}.fields must be an array", offset)
    for i, f in enumerate(fields):
        _check_field_desc(f, f"{what}.fields[{i}]", offset, named=True)


_KINDS = frozenset({"u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "bool", "bytes", "str",
                    "array", "struct", "optional", "blob"})
_ENTRY_KEYS = {"type", "version", "parent", "plugin", "fields"}
_DESC_KEYS = {"name", "kind", "length", "max_length", "element", "inner", "struct", "fields",
              "since", "doc"}


def _check_field_desc(f: Any, what: str, offset: int, named: bool) -> None:
    # the kind is looked up only once it is known to be text: a map or an
    # array there is unhashable and would escape as a TypeError
    _need(type(f) is dict and type(f.get("kind")) is str and f["kind"] in _KINDS,
          f"{what} must be a map with a kind out of {sorted(_KINDS)}", offset)
    _need(not named or type(f.get("name")) is str, f"{what} has no name", offset)
    _need(set(f) <= _DESC_KEYS, f"{what} has unknown keys {sorted(set(f) - _DESC_KEYS)}",
          offset)
    for k in ("length", "max_length", "since"):
        _need(type(f.get(k, 0)) is int, f"{what}.{k} must be an integer", offset)
    for k in ("struct", "doc"):
        _need(type(f.get(k, "")) is str, f"{what}.{k} must be text", offset)
    if "element" in f:
        _check_field_desc(f["element"], f"{what}.element", offset, named=False)
    if "inner" in f:
        _check_field_desc(f["inner"], f"{what}.inner", offset, named=False)
    if "fields" in f:
        _need(type(f["fields"]) is list, f"{what}.fields must be an array", offset)
        for i, g in enumerate(f["fields"]):
            _check_field_desc(g, f"{what}.fields[{i}]", offset, named=True)


def iter_sections(src: Any, *, limits: Limits = DEFAULT_LIMITS) -> Iterator[Section]:
    """Every item of a stream, checked, as :class:`Section` objects: the
    header first, then object and chunk sections in stream order, then the
    footer.

    ``src`` is the stream's bytes, a binary file (read from its current
    position) or a path. When the size is known (bytes, a regular file) the
    checksum is verified before the first section is decoded; otherwise at the
    footer. Raises :class:`StreamError` on the first problem; sections before
    it may already have been yielded.
    """
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as fp:
            yield from iter_sections(fp, limits=limits)
        return
    inp = _Input(src, limits)
    first = inp.peek(15)
    if first == b"":
        raise StreamError("not a migtree stream: the stream is empty", offset=0)
    if not (0xA1 <= first[0] <= 0xB7 and first[1:] == MAGIC_PREFIX):
        raise StreamError("not a migtree stream: it does not start with a header map holding "
                          f"the {MAGIC} magic (first bytes: {first[:8].hex(' ')})", offset=0)
    start, end, h = inp.next("the header")
    header = _check_header(h, start, end, limits)  # magic and version first
    inp.precheck(end)  # then the checksum, before anything else is believed
    _check_header_body(header, start, end, limits)
    yield Section("header", start, end - start, header=header)
    yield from _Sections(inp, header["schemas"], limits).run()


class _Sections:
    """The section loop of :func:`iter_sections`.

    Structure (kinds, paths, pre-order, chunk order, counts) is checked as
    each item is decoded. The values inside object sections are checked in
    batches: :func:`_census` looks at every value of up to BATCH sections
    level by level with a handful of C-level calls (gc.get_referents, type
    sets), and only when it sees something wrong (or a section needs more:
    blobs, a size above Limits.implied) does the precise, path-naming
    :class:`_Checker` run. A section is yielded only once it is checked.
    """

    BATCH = 1024
    BATCH_BYTES = 4 << 20

    def __init__(self, inp: _Input, schemas: dict[str, Any], limits: Limits) -> None:
        self.inp, self.schemas, self.limits = inp, schemas, limits
        self.keys: dict[str, set] = {}  # path -> keys of that node so far (fields + children)
        self.first_at: dict[str, int] = {}
        self.count = 0
        self.pending: list[tuple[int, int]] = []  # (index, size) of blobs still due
        self.done = 0  # bytes of pending[0] seen
        self.owner: str | None = None
        self.batch: list[Section] = []
        self.batch_bytes = 0
        self.names: dict[int, str] = {}  # blob index -> field path, for messages

    def blob(self, idx: int) -> str:
        field = self.names.get(idx)
        return f"blob {idx} ({field})" if field else f"blob {idx}"

    def run(self) -> Iterator[Section]:
        inp, limits = self.inp, self.limits
        footer_at = inp.footer_at
        implied = limits.implied
        while True:
            start, end, item = inp.next(f"section {self.count + 1}")
            if footer_at is not None and start < footer_at < end:
                raise StreamError("an item overlaps the footer", offset=start)
            if type(item) is not list or not item or type(item[0]) is not int:
                raise StreamError("a section must be an array starting with its kind "
                                  "(0, 1 or 2)", offset=start)
            kind = item[0]
            if kind == KIND_OBJECT:
                sec = self.object(item, start, end)
                if sec.blobs or sec.size > implied:
                    yield from self.flush()
                    self.check(sec)
                    self.names = {b.index: b.field for b in sec.blobs}
                    yield sec
                else:
                    self.batch.append(sec)
                    self.batch_bytes += sec.size
                    if len(self.batch) >= self.BATCH or self.batch_bytes >= self.BATCH_BYTES:
                        yield from self.flush()
            elif kind == KIND_CHUNK:
                yield from self.flush()
                yield self.chunk(item, start, end)
            elif kind == KIND_FOOTER:
                yield from self.flush()
                if self.pending:
                    idx, size = self.pending[0]
                    raise StreamError(f"{self.blob(idx)} has {self.done} of its {size} bytes when "
                                      "the stream ends", offset=start, path=self.owner)
                yield _footer(inp, item, start, end, self.count)
                return
            else:
                raise StreamError(f"unknown section kind {kind}", offset=start)

    def flush(self) -> Iterator[Section]:
        batch = self.batch
        if not batch:
            return
        if not _census([s.fields for s in batch]):
            for sec in batch:  # find the culprit and say precisely what is wrong
                self.check(sec)
        self.batch, self.batch_bytes = [], 0
        yield from batch

    def check(self, sec: Section) -> None:
        found: list = []
        fields = sec.fields
        _Checker(self.limits, sec.offset, sec.path, sec.size > self.limits.implied,
                 found).check(fields)
        for key in (TYPE_KEY, VERSION_KEY):
            if key in fields:  # type: ignore[operator]
                raise StreamError(f"field {key!r} is reserved", offset=sec.offset,
                                  path=sec.path)
        for key, value in fields.items():  # type: ignore[union-attr]
            if type(value) is dict and TYPE_KEY in value:
                raise StreamError(f"field {key!r} holds an object node; objects are "
                                  "sections of their own", offset=sec.offset, path=sec.path)
        sizes = sec.blob_sizes
        seen = sorted(i for i, *_ in found)
        if seen != list(range(len(sizes))):
            raise StreamError(f"blob placeholders {seen} do not match the {len(sizes)} blob "
                              "sizes", offset=sec.offset, path=sec.path)
        by_index = {i: (f, c, k) for i, f, c, k in found}
        sec.blobs = [BlobRef(i, sizes[i], *by_index[i]) for i in range(len(sizes))]

    def object(self, item: list, start: int, end: int) -> Section:
        if self.pending:
            idx, size = self.pending[0]
            raise StreamError(f"{self.blob(idx)} has {self.done} of its {size} bytes when the next "
                              "object section starts", offset=start, path=self.owner)
        self.count += 1
        if self.count > self.limits.max_sections:
            raise StreamError(f"more than {self.limits.max_sections} sections", offset=start)
        if len(item) != 6:
            raise StreamError("an object section is [0, path, type, version, fields, "
                              "blob_sizes]", offset=start)
        _, path, tname, version, fields, sizes = item
        if type(path) is not str or len(path) > self.limits.max_str_length:
            raise StreamError("the section's path is not text", offset=start)
        self.place(path, start)
        if type(tname) is not str or type(version) is not int or version < 0:
            raise StreamError("type must be text and version an unsigned integer",
                              offset=start, path=path)
        if f"{tname}@{version}" not in self.schemas:
            raise StreamError(f"type {tname}@{version} has no schema in the header",
                              offset=start, path=path)
        if type(fields) is not dict:
            raise StreamError("fields must be a map", offset=start, path=path)
        if type(sizes) is not list or (sizes and not all(type(n) is int and n >= 0
                                                          for n in sizes)):
            raise StreamError("blob sizes must be an array of unsigned integers",
                              offset=start, path=path)
        self.keys[path] = set(fields)
        sec = Section("object", start, end - start, path=path, type=tname, version=version,
                      fields=fields)
        if sizes:
            sec.blob_sizes = sizes
            sec.blobs = [None]  # type: ignore[list-item]  # resolved by check()
            self.pending = [(i, n) for i, n in enumerate(sizes) if n > 0]
            self.done = 0
        self.owner = path
        return sec

    def place(self, path: str, offset: int) -> None:
        first_at = self.first_at
        if path in first_at:
            raise StreamError(f"duplicate section for {path} (the first is at offset "
                              f"{first_at[path]})", offset=offset, path=path)
        if not first_at:
            if path != "/":
                raise StreamError(f"the first section must be the root '/', not {path!r}",
                                  offset=offset)
        else:
            head, _, name = path.rpartition("/")
            if not (path.startswith("/") and name and head != "/"
                    and name not in RESERVED_KEYS and _NAME_RE.fullmatch(name) is not None):
                raise StreamError(f"malformed path {path!r}", offset=offset)
            parent = head or "/"
            keys = self.keys.get(parent)
            if keys is None:
                raise StreamError(f"no section for its parent {parent} precedes it (sections "
                                  "are in pre-order)", offset=offset, path=path)
            if name in keys:
                raise StreamError(f"its parent already has a field named {name!r}",
                                  offset=offset, path=path)
            keys.add(name)
        first_at[path] = offset

    def chunk(self, item: list, start: int, end: int) -> Section:
        self.count += 1
        if self.count > self.limits.max_sections:
            raise StreamError(f"more than {self.limits.max_sections} sections", offset=start)
        if len(item) != 5:
            raise StreamError("a chunk section is [1, path, index, offset, data]", offset=start)
        _, path, idx, off, data = item
        owner = self.owner
        if not self.pending:
            raise StreamError(f"chunk section for {path!r} where no blob data is due",
                              offset=start)
        exp_idx, size = self.pending[0]
        if not (path == owner and type(idx) is int and idx == exp_idx
                and type(off) is int and off == self.done):
            raise StreamError(f"expected the chunk of {self.blob(exp_idx)} at offset {self.done}, "
                              f"got path {path!r}, blob {idx!r}, offset {off!r}",
                              offset=start, path=owner)
        if type(data) is not bytes or not 1 <= len(data) <= CHUNK_SIZE:
            raise StreamError(f"chunk data must be 1..{CHUNK_SIZE} bytes", offset=start,
                              path=owner)
        if self.done + len(data) > size:
            raise StreamError(f"{self.blob(idx)}: chunks exceed its size of {size} bytes",
                              offset=start, path=owner)
        self.done += len(data)
        if self.done == size:
            self.pending.pop(0)
            self.done = 0
        return Section("chunk", start, end - start, path=path, index=idx, chunk_offset=off,
                       data=data)


_CONTAINER = frozenset({dict, list}).__contains__
_IS_DICT = frozenset({dict}).__contains__
_IS_LIST = frozenset({list}).__contains__
_STR_ONLY = frozenset({str})


def _probe_referents() -> bool:
    """Whether gc.get_referents lists a dict's values only when its keys are
    all text, and its keys too otherwise (CPython's dict_traverse): then a
    count tells whether some map has a non-text key. Checked, not assumed."""
    try:
        return (gc.get_referents({"a": 1}) == [1]
                and sorted(map(repr, gc.get_referents({1: 2, "b": 3}))) == ["'b'", "1", "2", "3"]
                and gc.get_referents([5, "x"]) in ([5, "x"], ["x", 5]))
    except Exception:  # pragma: no cover - another interpreter
        return False


_KEYS_SHOW_IN_REFERENTS = _probe_referents()


def _census(roots: list[dict]) -> bool:
    """Whether every value under ``roots`` (object sections' fields maps)
    is plain data with text keys, no reserved or blob keys and no object node
    among the top-level values. Works level by level over all roots at once
    with C-level calls only: gc.get_referents gives a dict's values (its keys
    too when they are not all text) and a list's items."""
    dicts: list = roots
    lists: list = []
    contains = operator.contains
    level = 0
    while dicts or lists:
        if dicts:
            if not _KEYS_SHOW_IN_REFERENTS:
                keytypes = set(map(type, chain.from_iterable(dicts)))
                if keytypes and keytypes != _STR_ONLY:
                    return False
            if any(map(contains, dicts, repeat(BLOB_KEY))):
                return False
            if level <= 1 and any(map(contains, dicts, repeat(TYPE_KEY))):
                return False  # reserved in fields, or an object node as a field value
            if level == 0 and any(map(contains, dicts, repeat(VERSION_KEY))):
                return False
        children = gc.get_referents(*dicts, *lists)
        if _KEYS_SHOW_IN_REFERENTS and len(children) != sum(map(len, dicts)) + sum(
                map(len, lists)):
            return False  # some map has a key that is not text: its keys were listed too
        types = list(map(type, children))
        kinds = set(types)
        if not kinds <= _PLAIN:
            return False
        if dict not in kinds and list not in kinds:
            return True
        dicts = list(compress(children, map(_IS_DICT, types)))
        lists = list(compress(children, map(_IS_LIST, types)))
        level += 1
    return True


def _footer(inp: _Input, item: list, start: int, end: int, count: int) -> Section:
    _need(len(item) == 3 and type(item[1]) is int and type(item[2]) is bytes
          and len(item[2]) == 32, "the footer is [2, section_count, sha256]", start)
    if inp.footer_at is not None:
        _need(start == inp.footer_at, "the footer is not at the end of the stream", start)
    else:
        digest = inp.running_digest()
        if digest != item[2]:
            raise StreamError(f"checksum mismatch: the SHA-256 of bytes 0..{start} is "
                              f"{(digest or b'').hex()}, the footer says {item[2].hex()}; "
                              "the stream is corrupted", offset=start)
        _need(end - start == FOOTER_SIZE, "the footer must be 45 bytes", start)
        _need(inp.at_eof(), "data follows the footer", end)
    _need(item[1] == count, f"the footer counts {item[1]} sections, the stream has {count}",
          start)
    return Section("footer", start, end - start, count=count, data=item[2])


def read_tree(src: Any, *, limits: Limits = DEFAULT_LIMITS,
              offsets: dict[str, int] | None = None) -> tuple[dict[str, Any],
                                                              dict[str, Any]]:
    """Read a whole stream into ``(header, tree)`` without consulting any
    device or plugin. Blob fields become :class:`migtree.blob.Blob` values
    (spooled to a temporary file when large). ``src``: bytes, a binary file
    or a path. ``offsets``, when given, is filled with each object path's
    section offset (for errors found later, migtree.validate)."""
    with _gc_paused():
        return _read_tree(src, limits, offsets)


def _read_tree(src: Any, limits: Limits,
               offsets: dict[str, int] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    header: dict[str, Any] | None = None
    nodes: dict[str, dict[str, Any]] = {}
    blobs: list[Blob] = []
    tree: dict[str, Any] | None = None
    for sec in iter_sections(src, limits=limits):
        kind = sec.kind
        if kind == "object":
            node = {TYPE_KEY: sec.type, VERSION_KEY: sec.version}
            node.update(sec.fields)  # type: ignore[arg-type]
            blobs = []
            for ref in sec.blobs:
                b = Blob()
                blobs.append(b)
                if ref.container is sec.fields:
                    node[ref.key] = b
                else:
                    ref.container[ref.key] = b
            path = sec.path
            if tree is None:
                tree = node
            else:
                head, _, name = path.rpartition("/")  # type: ignore[union-attr]
                nodes[head or "/"][name] = node
            nodes[path] = node  # type: ignore[index]
            if offsets is not None:
                offsets[path] = sec.offset  # type: ignore[index]
        elif kind == "chunk":
            blobs[sec.index].append(sec.data)  # type: ignore[index, arg-type]
        elif kind == "header":
            header = sec.header
    if tree is None:
        raise StreamError("the stream has no object sections (not even the root '/')")
    return header, tree  # type: ignore[return-value]


def load(tree: dict[str, Any], root: Object, *, registry: Any = None, **kwargs: Any) -> Any:
    """Hand a tree to the objects under ``root``: :func:`migtree.tree.load_tree`
    (all-or-nothing; keyword arguments are passed on). When the load is
    refused and the reason is a ``__type__`` that neither the build nor the
    registry (default: the installed plugins) knows, the error is an
    :class:`UnknownTypeError` naming the first such path instead."""
    from .errors import LoadError
    from .tree import iter_object_nodes, load_tree

    try:
        with _gc_paused():
            return load_tree(tree, root, **kwargs)
    except LoadError as e:
        known = {o.TYPE for o in root.walk()}
        for path, node in iter_object_nodes(tree):
            t = node.get(TYPE_KEY)
            if t in known:
                continue
            if registry is None:
                from .plugins import get_registry
                registry = get_registry()
            if not isinstance(t, str) or t not in registry.types:
                raise UnknownTypeError(f"{path}: type {t!r} is not registered by any "
                                       "installed plugin; nothing was loaded") from e
            known.add(t)
        raise


# -- writing -------------------------------------------------------------------

class _Writer:
    def __init__(self, fp: IO[bytes] | None) -> None:
        self.fp = fp
        self.parts: list[bytes] = []
        self.hash = hashlib.sha256()
        self.count = 0
        self.blobs: list[Any] = []
        self.sizes: list[int] = []
        self.path = "/"

    def _emit(self, data: bytes) -> None:
        self.hash.update(data)
        if self.fp is None:
            self.parts.append(data)
        else:
            self.fp.write(data)

    def header(self, header: dict[str, Any]) -> None:
        self._emit(_dumps(header, None, "the header"))

    def _default(self, encoder: Any, value: Any) -> None:
        if hasattr(value, "iter_chunks") and hasattr(value, "__len__"):
            self.blobs.append(value)
            self.sizes.append(len(value))
            encoder.encode({BLOB_KEY: len(self.blobs) - 1})
            return
        raise StreamError(f"cannot write a value of type {type(value).__name__}",
                          path=self.path)

    def object(self, path: str, tname: str, version: int, fields: dict[str, Any]) -> None:
        self.path = path
        blobs, sizes = self.blobs, self.sizes = [], []
        data = _dumps([KIND_OBJECT, path, tname, version, fields, sizes], self._default, path)
        if len(data) > DEFAULT_LIMITS.max_section_size:
            raise StreamError(f"the section is {len(data)} bytes, above the readers' default "
                              f"limit of {DEFAULT_LIMITS.max_section_size}: declare large "
                              "state with blob()", path=path)
        self._emit(data)
        self.count += 1
        for idx, value in enumerate(blobs):
            self._chunks(path, idx, value, sizes[idx])

    def _chunks(self, path: str, idx: int, value: Any, size: int) -> None:
        done = 0
        for chunk in value.iter_chunks(CHUNK_SIZE):
            chunk = bytes(chunk)
            for at in range(0, len(chunk), CHUNK_SIZE):
                piece = chunk[at:at + CHUNK_SIZE]
                self._emit(cbor2.dumps([KIND_CHUNK, path, idx, done, piece]))
                self.count += 1
                done += len(piece)
        if done != size:
            raise StreamError(f"blob {idx}: its length was {size} but its chunks gave "
                              f"{done} bytes", path=path)

    def footer(self) -> bytes | None:
        digest = self.hash.digest()
        data = _FOOTER_HEAD + self.count.to_bytes(8, "big") + _DIGEST_HEAD + digest
        if self.fp is None:
            self.parts.append(data)
            return b"".join(self.parts)
        self.fp.write(data)
        return None


def _dumps(value: Any, default: Any, what: str) -> bytes:
    try:
        return cbor2.dumps(value, default=default)
    except StreamError:
        raise
    except (cbor2.CBOREncodeError, TypeError, ValueError) as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, MigtreeError):
            raise cause from None
        raise StreamError(f"cannot encode {what}: {e}") from e


def _producer(build_name: str | None) -> dict[str, str]:
    from . import __version__

    p = {"name": "migtree", "version": __version__}
    if build_name is not None:
        p["build"] = str(build_name)
    return p


def _plugins(registry: Any) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name, rec in sorted(getattr(registry, "plugins", {}).items()):
        if getattr(rec, "error", None) is None:
            out[name] = rec.version
    return out


def schema_entry(name: str, version: int, registry: Any, cls: type | None = None,
                 ) -> dict[str, Any] | None:
    """The header's description of ``name@version``: from ``cls`` (an
    Object subclass) when given, else from the registry; None if neither
    knows it."""
    from .visitor import schema_of

    info = registry.types.get(name) if registry is not None else None
    state = None
    if cls is not None:
        state = cls.STATE if version == cls.VERSION else cls.HISTORY.get(version)
        parent = info.parent if info is not None else _parent_of(cls)
        plugin = info.plugin if info is not None else None
    elif info is not None:
        versions = info.versions()
        if version not in versions and not (info.state_class is None
                                            and version == info.version):
            return None
        state = versions.get(version)
        parent, plugin = info.parent, info.plugin
    else:
        return None
    return {"type": name, "version": version, "parent": parent, "plugin": plugin,
            "fields": schema_of(state, version)}


def _parent_of(cls: type) -> str | None:
    parent = cls.__dict__.get("PARENT")
    if parent is None:
        parent = next((b.TYPE for b in cls.__mro__[1:]
                       if isinstance(b, type) and issubclass(b, Object)), None)
    return parent


def _header(schemas: dict[str, Any], registry: Any, build_name: str | None,
            extra: dict[str, Any] | None) -> dict[str, Any]:
    h: dict[str, Any] = {"magic": MAGIC, "version": FORMAT_VERSION,
                         "producer": _producer(build_name), "plugins": _plugins(registry),
                         "schemas": schemas}
    if extra:
        _check_plain(extra, "header extra")
        h["extra"] = dict(extra)
    return h


def _check_plain(value: Any, what: str) -> None:
    try:
        _Checker(DEFAULT_LIMITS, 0, None, True, None).check(value)
    except StreamError as e:
        raise StreamError(f"{what}: {e.reason}", path=e.path) from None


def save(root: Object, fp: IO[bytes] | None = None, *, registry: Any = None,
         build_name: str | None = None) -> bytes | None:
    """Write the state of ``root`` and everything under it as a stream:
    ``pre_save`` and the output visit of every object, one section each (in
    pre-order), blob chunks after their object. Returns the bytes when ``fp``
    is None. On an error the partial output has no footer, so no reader
    accepts it."""
    from .tree import object_node

    if registry is None:
        from .plugins import get_registry
        registry = get_registry()
    order: list[tuple[Object, str]] = []

    def walk(obj: Object, path: str) -> None:
        order.append((obj, path))
        for name, child in obj._children.items():
            walk(child, f"{path}/{name}" if path != "/" else f"/{name}")

    walk(root, "/")
    from .pins import wire_version

    schemas: dict[str, Any] = {}
    for obj, _ in order:
        version = wire_version(obj)  # a pinned object writes its pinned version
        key = f"{obj.TYPE}@{version}"
        if key not in schemas:
            schemas[key] = schema_entry(obj.TYPE, version, registry, type(obj))
    prefix = canonical_path(root)
    w = _Writer(fp)
    w.header(_header(schemas, registry, build_name, None))
    with _gc_paused():
        for obj, path in order:
            where = path if prefix == "/" else prefix + (path if path != "/" else "")
            node = object_node(obj, where)
            tname = node.pop(TYPE_KEY)
            version = node.pop(VERSION_KEY)
            w.object(path, tname, version, node)
    return w.footer()


def write_tree(fp: IO[bytes] | None, header_extra: dict[str, Any] | None,
               tree: dict[str, Any], registry: Any = None, *, build_name: str | None = None,
               schemas: dict[str, Any] | None = None) -> bytes | None:
    """Write an already-built tree (e.g. one filters rewrote). The header's
    schemas come from ``registry`` (default: the installed plugins); a
    type@version it cannot describe must be given in ``schemas``
    (``{"TYPE@V": entry}``) or the write fails with UnknownTypeError.
    ``header_extra`` goes under the header's ``extra``. Values are checked to
    be plain data first. Returns the bytes when ``fp`` is None."""
    from .tree import iter_object_nodes

    if registry is None:
        from .plugins import get_registry
        registry = get_registry()
    given = dict(schemas or {})
    found: dict[str, Any] = {}
    sections: list[tuple[str, str, int, dict[str, Any]]] = []
    for path, node in iter_object_nodes(tree):
        for name, child in node.items():
            if type(child) is dict and TYPE_KEY in child and (
                    type(name) is not str or name in RESERVED_KEYS
                    or _NAME_RE.fullmatch(name) is None):
                # the reader's own rule (_Sections.place): never write a path it refuses
                raise StreamError(f"child object name {name!r} is not a valid name "
                                  "(letters, digits and _.+-[]:, only)", path=path)
        tname, version = node.get(TYPE_KEY), node.get(VERSION_KEY)
        if type(tname) is not str or type(version) is not int or version < 0:
            raise StreamError(f"node has __type__ {tname!r} and __version__ {version!r}",
                              path=path)
        fields = {k: v for k, v in node.items()
                  if k != TYPE_KEY and k != VERSION_KEY
                  and not (type(v) is dict and TYPE_KEY in v)}
        _check_tree_fields(fields, path)
        key = f"{tname}@{version}"
        if key not in found:
            entry = given.get(key) or schema_entry(tname, version, registry)
            if entry is None:
                raise UnknownTypeError(
                    f"{path}: cannot describe {key} in the header: no installed plugin "
                    "registers that type and version; pass its schema in schemas=")
            found[key] = entry
        sections.append((path, tname, version, fields))
    w = _Writer(fp)
    w.header(_header(found, registry, build_name, header_extra))
    for path, tname, version, fields in sections:
        w.object(path, tname, version, fields)
    return w.footer()


def _check_tree_fields(fields: dict[str, Any], path: str) -> None:
    """Plain data only, blobs as blob objects; what the reader would reject
    is refused at write time."""
    def blob_free(v: Any) -> Any:
        t = type(v)
        if t is dict:
            if BLOB_KEY in v:
                raise StreamError(f"the key {BLOB_KEY!r} is reserved for blob placeholders",
                                  path=path)
            return {k: blob_free(x) for k, x in v.items()}
        if t is list:
            return [blob_free(x) for x in v]
        if t is tuple:
            return [blob_free(x) for x in v]
        if hasattr(v, "iter_chunks") and hasattr(v, "__len__"):
            return None
        return v

    try:
        _Checker(DEFAULT_LIMITS, 0, path, True, None).check(blob_free(fields))
    except StreamError as e:
        raise StreamError(f"cannot write: {e.reason}", path=path) from None
