"""VMState values decoded from a QEMU stream, field by field.

QEMU writes a device's state as the concatenation of its fields, with no
names and no lengths; the JSON description ("vmdesc") appended at the end of
the stream names each field, its VMStateInfo type and the bytes it took.
:func:`decode_object` walks one vmdesc object over the bytes and builds a
:class:`VMStateObject`; :func:`encode_object` writes it back and
:func:`describe_object` regenerates its vmdesc entry, so an unmodified
object re-encodes to the same bytes and the same JSON.

Value types (``Field.value``):

* integer types (``uint8`` .. ``int64``, ``int32 equal``, ``int32 le``,
  ``timer`` ...): ``int`` — width and signedness come from :data:`INT_TYPES`;
* ``bool``: ``bool``;
* ``float64``: ``float``;
* ``pci irq state``: ``list[int]`` (four int32);
* structs and ``tmp``: :class:`VMStateObject`;
* a null pointer in an array of pointers: :data:`NULLPTR`;
* everything else (``buffer``, ``unused_buffer``, ``pci config``,
  ``virtio``, ``bitmap``, unknown types): ``bytes``, kept verbatim; these are
  the "opaque" fields a device plugin may decode further.

A field with ``array_len`` holds a ``list`` of such values.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from .errors import (
    QemuEncodeError,
    QemuTruncatedError,
    QemuUnknownSubsectionError,
    QemuVmdescMismatchError,
)

QEMU_VM_SUBSECTION = 0x05
VMS_NULLPTR_MARKER = 0x30

#: VMStateInfo name -> (byte width, signed)
INT_TYPES: dict[str, tuple[int, bool]] = {
    "int8": (1, True),
    "int16": (2, True),
    "int32": (4, True),
    "int64": (8, True),
    "uint8": (1, False),
    "uint16": (2, False),
    "uint32": (4, False),
    "uint64": (8, False),
    "int32 equal": (4, True),
    "int32 le": (4, True),
    "uint8 equal": (1, False),
    "uint16 equal": (2, False),
    "uint32 equal": (4, False),
    "uint64 equal": (8, False),
    # a QEMUTimer is saved as its signed expire time (-1: not armed)
    "timer": (8, True),
    "CPU_Double_U": (8, False),
}

#: Types kept as bytes on purpose: their layout is not described by the
#: vmdesc (device code reads them), see README.md "What stays opaque".
OPAQUE_TYPES = frozenset(
    {"buffer", "unused_buffer", "pci config", "virtio", "bitmap", "qtailq",
     "qlist", "gtree"}
)


class _NullPtr:
    """Placeholder QEMU writes for a NULL entry of an array of pointers."""

    _instance: _NullPtr | None = None

    def __new__(cls) -> _NullPtr:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NULLPTR"


NULLPTR = _NullPtr()


@attrs.define(eq=True)
class VMStateObject:
    """The state of one VMStateDescription instance: a section body, a
    struct field's value, a ``tmp`` field's value, or a subsection.

    :ivar vmsd_name: the VMStateDescription name (``"apic"``,
        ``"apic/timer"`` for a subsection)
    :ivar version: the version the fields were written at
    :ivar fields: the fields in stream order
    :ivar subsections: the subsections present, in stream order; each is a
        VMStateObject whose ``vmsd_name`` is the subsection name
    """

    vmsd_name: str
    version: int
    fields: list[Field] = attrs.field(factory=list)
    subsections: list[VMStateObject] = attrs.field(factory=list)
    #: where it started in the stream it was decoded from (for a subsection:
    #: its marker byte); not part of the value
    offset: int | None = attrs.field(default=None, eq=False, repr=False)

    # -- convenience access -----------------------------------------------
    def field(self, name: str, index: int | None = None) -> Field:
        """The field called *name* (and with vmdesc ``index`` *index*, for
        arrays QEMU describes element by element)."""
        for f in self.fields:
            if f.name == name and (index is None or f.index == index):
                return f
        raise KeyError(name if index is None else f"{name}[{index}]")

    def __getitem__(self, name: str) -> Any:
        return self.field(name).value

    def __setitem__(self, name: str, value: Any) -> None:
        self.field(name).value = value

    def __contains__(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    def subsection(self, name: str) -> VMStateObject:
        """The subsection *name*; a short name (``"timer"``) is taken
        relative to this object (``"apic/timer"``)."""
        for s in self.subsections:
            if s.vmsd_name == name or s.vmsd_name == f"{self.vmsd_name}/{name}":
                return s
        raise KeyError(name)

    def walk(self, prefix: str = "") -> Iterator[tuple[str, Field]]:
        """Yield ``(path, field)`` for every field, depth first, including
        fields of structs and subsections."""
        for f in self.fields:
            path = f"{prefix}{f.label}"
            yield path, f
            values = f.value if f.array_len is not None else [f.value]
            for i, v in enumerate(values):
                if isinstance(v, VMStateObject):
                    sub = f"{path}[{i}]." if f.array_len is not None else f"{path}."
                    yield from v.walk(sub)
        for s in self.subsections:
            yield from s.walk(f"{prefix}{s.vmsd_name}:")


@attrs.define(eq=True)
class Field:
    """One entry of the vmdesc ``fields`` list with its decoded value.

    :ivar name: the vmdesc field name
    :ivar type: the VMStateInfo name (``"uint32"``, ``"struct"``, ``"tmp"``,
        ``"virtio"``...), or None when QEMU wrote none
    :ivar value: see the module docstring
    :ivar index: element index when QEMU describes an array element by
        element (each element is its own Field)
    :ivar array_len: element count when QEMU describes an array once
        (``value`` is then a list)
    :ivar keys: the key order of the vmdesc entry, to regenerate it exactly
    :ivar size: bytes of one element as the vmdesc gave it; used only for
        opaque values of unknown types
    """

    name: str
    type: str | None
    value: Any
    index: int | None = None
    array_len: int | None = None
    keys: tuple[str, ...] = ("name", "type", "size")
    size: int | None = None

    @property
    def label(self) -> str:
        return self.name if self.index is None else f"{self.name}[{self.index}]"


# ---------------------------------------------------------------------------
# decoding


#: the decoding budget of a QEMU stream (docs/wire-format.md, "Cost"): every
#: element QEMU writes takes at least one byte except empty structs and
#: zero-sized fields, which real devices use sparingly
ELEMENTS_PER_BYTE = 2
ELEMENTS_BASE = 1 << 16


def element_budget(size: int) -> int:
    return ELEMENTS_PER_BYTE * max(size, 0) + ELEMENTS_BASE


class Cursor:
    """Reads big-endian values from a buffer, tracking the offset and the
    context (section, field path) for error messages."""

    __slots__ = ("buf", "pos", "end", "ctx", "path", "elements_left")

    def __init__(self, buf: Any, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end
        self.ctx: dict[str, Any] = {}
        self.path: list[str] = []
        #: what decoding may still materialise (objects, fields, array
        #: elements): bounded by the input's size, so a description whose
        #: arrays of empty structs nest cannot multiply its cost per level
        self.elements_left = element_budget(self.end - pos)

    def charge(self, n: int, what: str) -> None:
        """Account for ``n`` decoded elements; refuse past the budget."""
        self.elements_left -= n
        if self.elements_left < 0:
            raise QemuVmdescMismatchError(
                f"the vmdesc describes more elements than a stream of {self.end} bytes can "
                f"hold ({what}): at most {ELEMENTS_PER_BYTE} per byte plus "
                f"{ELEMENTS_BASE} are decoded (docs/wire-format.md, 'Cost')",
                **self.where())

    def where(self, offset: int | None = None) -> dict[str, Any]:
        return dict(
            self.ctx,
            field=".".join(self.path) if self.path else None,
            offset=self.pos if offset is None else offset,
        )

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.end:
            raise QemuTruncatedError(
                f"stream truncated: {what} needs {n} bytes, "
                f"{max(self.end - self.pos, 0)} left",
                **self.where(),
            )

    def take(self, n: int, what: str = "data") -> bytes:
        self.need(n, what)
        b = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return b

    def uint(self, n: int, what: str = "integer") -> int:
        self.need(n, what)
        v = int.from_bytes(self.buf[self.pos : self.pos + n], "big")
        self.pos += n
        return v

    def peek(self, n: int = 1, at: int = 0) -> bytes:
        return bytes(self.buf[self.pos + at : min(self.pos + at + n, self.end)])


def _decode_scalar(cur: Cursor, ftype: str | None, size: int) -> Any:
    """Decode one non-struct element of *ftype* that the vmdesc says took
    *size* bytes."""
    if ftype in INT_TYPES:
        width, signed = INT_TYPES[ftype]
        if size != width:
            raise QemuVmdescMismatchError(
                f"vmdesc says a {ftype!r} took {size} bytes, but it is {width}",
                **cur.where(),
            )
        cur.need(width, ftype)
        v = int.from_bytes(cur.buf[cur.pos : cur.pos + width], "big", signed=signed)
        cur.pos += width
        return v
    if ftype == "bool":
        if size != 1:
            raise QemuVmdescMismatchError(
                f"vmdesc says a bool took {size} bytes", **cur.where()
            )
        b = cur.uint(1, "bool")
        if b > 1:
            raise QemuVmdescMismatchError(
                f"bool field holds byte 0x{b:02x}, not 0 or 1", **cur.where(cur.pos - 1)
            )
        return bool(b)
    if ftype == "float64" and size == 8:
        raw = cur.take(8, "float64")
        (v,) = struct.unpack(">d", raw)
        if struct.pack(">d", v) != raw:  # a NaN payload Python would change
            return raw
        return v
    if ftype == "pci irq state" and size == 16:
        raw = cur.take(16, ftype)
        return list(struct.unpack(">4i", raw))
    return cur.take(size, ftype or "opaque field")


def _decode_element(cur: Cursor, desc: dict[str, Any]) -> Any:
    if "struct" in desc:
        sdesc = desc["struct"]
        if not sdesc:  # NULL entry of an array of pointers
            marker = cur.uint(1, "null pointer marker")
            if marker != VMS_NULLPTR_MARKER:
                raise QemuVmdescMismatchError(
                    f"expected null pointer marker 0x30, found 0x{marker:02x}",
                    **cur.where(cur.pos - 1),
                )
            return NULLPTR
        return decode_object(cur, sdesc)
    if "fields" in desc:  # a 'tmp' field: the vmsd is inline in the entry
        return decode_object(cur, desc)
    return _decode_scalar(cur, desc.get("type"), desc["size"])


def decode_object(
    cur: Cursor, desc: dict[str, Any], check_unknown: bool = True
) -> VMStateObject:
    """Decode the fields and subsections *desc* (a vmdesc object with
    ``vmsd_name``, ``version``, ``fields`` and maybe ``subsections``)
    describes, starting at ``cur.pos``."""
    obj = VMStateObject(desc.get("vmsd_name", ""), desc.get("version", 0),
                        offset=cur.pos)
    fdescs = desc.get("fields", [])
    cur.charge(1 + len(fdescs), "objects and fields")
    for fdesc in fdescs:
        name = fdesc["name"]
        n = fdesc.get("array_len")
        label = name if "index" not in fdesc else f"{name}[{fdesc['index']}]"
        cur.path.append(label)
        start = cur.pos
        if n is None:
            value = _decode_element(cur, fdesc)
            used = cur.pos - start
        else:
            size = fdesc.get("size") or 0
            if n > cur.end - cur.pos + 1 or (size and n * size > cur.end - cur.pos):
                raise QemuTruncatedError(
                    f"array {label!r} of {n} elements of {size} bytes does not fit in "
                    f"the {cur.end - cur.pos} bytes left",
                    **cur.where(),
                )
            cur.charge(n, f"array {label!r} of {n} elements")
            value = []
            used = None
            for i in range(n):
                cur.path[-1] = f"{label}[{i}]"
                s = cur.pos
                value.append(_decode_element(cur, fdesc))
                if used is None:
                    used = cur.pos - s
            cur.path[-1] = label
        size = fdesc.get("size")
        if size is not None and used is not None and used != size:
            raise QemuVmdescMismatchError(
                f"vmdesc says field {label!r} took {size} bytes, decoding it "
                f"used {used}",
                **cur.where(start),
            )
        obj.fields.append(
            Field(
                name=name,
                type=fdesc.get("type"),
                value=value,
                index=fdesc.get("index"),
                array_len=n,
                keys=tuple(fdesc),
                size=size,
            )
        )
        cur.path.pop()
    for sdesc in desc.get("subsections", []):
        obj.subsections.append(_decode_subsection(cur, sdesc))
    if check_unknown:
        _check_no_unknown_subsection(cur, obj.vmsd_name)
    return obj


def _decode_subsection(cur: Cursor, sdesc: dict[str, Any]) -> VMStateObject:
    name = sdesc["vmsd_name"]
    start = cur.pos
    cur.path.append(name)
    marker = cur.uint(1, "subsection marker")
    if marker != QEMU_VM_SUBSECTION:
        raise QemuVmdescMismatchError(
            f"vmdesc lists subsection {name!r} but the stream has byte "
            f"0x{marker:02x} where its marker 0x05 should be",
            **cur.where(start),
        )
    ln = cur.uint(1, "subsection name length")
    got = cur.take(ln, "subsection name").decode("latin-1")
    if got != name:
        raise QemuVmdescMismatchError(
            f"vmdesc lists subsection {name!r} but the stream has {got!r}",
            **cur.where(start),
        )
    version = cur.uint(4, "subsection version")
    if version != sdesc.get("version"):
        raise QemuVmdescMismatchError(
            f"subsection {name!r} has version {version} in the stream but "
            f"{sdesc.get('version')} in the vmdesc",
            **cur.where(cur.pos - 4),
        )
    obj = decode_object(cur, sdesc)
    obj.offset = start
    cur.path.pop()
    return obj


def _check_no_unknown_subsection(cur: Cursor, vmsd_name: str) -> None:
    """After an object's described subsections, a further subsection marker
    whose name belongs to this object (``vmsd_name/...``) is one the vmdesc
    does not know.  (QEMU's loader applies the same prefix test.)"""
    if cur.pos >= cur.end or cur.buf[cur.pos] != QEMU_VM_SUBSECTION:
        return
    if cur.pos + 2 > cur.end:
        return
    ln = cur.buf[cur.pos + 1]
    if ln < len(vmsd_name) + 1 or cur.pos + 2 + ln > cur.end:
        return
    name = bytes(cur.buf[cur.pos + 2 : cur.pos + 2 + ln]).decode("latin-1")
    if name.startswith(vmsd_name):
        cur.path.append(name)
        raise QemuUnknownSubsectionError(
            f"unknown subsection {name!r} of {vmsd_name!r}: the stream has it, "
            f"the vmdesc does not describe it",
            **cur.where(),
        )


# ---------------------------------------------------------------------------
# encoding


def _encode_scalar(out: bytearray, ftype: str | None, value: Any, size: int | None,
                   path: str) -> None:
    if ftype in INT_TYPES:
        width, signed = INT_TYPES[ftype]
        if isinstance(value, bool) or not isinstance(value, int):
            raise QemuEncodeError(
                f"{ftype} field needs an int, got {type(value).__name__}", field=path
            )
        try:
            out += value.to_bytes(width, "big", signed=signed)
        except OverflowError:
            lo = -(1 << (8 * width - 1)) if signed else 0
            hi = (1 << (8 * width - 1)) - 1 if signed else (1 << (8 * width)) - 1
            raise QemuEncodeError(
                f"{value} does not fit {ftype} ({lo}..{hi})", field=path
            ) from None
        return
    if ftype == "bool" and isinstance(value, bool):
        out.append(1 if value else 0)
        return
    if ftype == "capability" and isinstance(value, str):
        raw = value.encode("latin-1")
        out.append(len(raw))
        out += raw
        return
    if ftype == "float64" and isinstance(value, float):
        out += struct.pack(">d", value)
        return
    if ftype == "pci irq state" and isinstance(value, list):
        try:
            out += struct.pack(">4i", *value)
        except struct.error as exc:
            raise QemuEncodeError(f"pci irq state: {exc}", field=path) from None
        return
    if isinstance(value, (bytes, bytearray, memoryview)):
        out += value
        return
    raise QemuEncodeError(
        f"cannot encode {type(value).__name__} as {ftype!r}", field=path
    )


def _encode_element(out: bytearray, f: Field, value: Any, path: str) -> None:
    if value is NULLPTR:
        out.append(VMS_NULLPTR_MARKER)
    elif isinstance(value, VMStateObject):
        encode_object(out, value, path + ".")
    else:
        _encode_scalar(out, f.type, value, f.size, path)


def encode_object(out: bytearray, obj: VMStateObject, prefix: str = "") -> None:
    """Append the wire form of *obj* (fields, then subsections) to *out*."""
    for f in obj.fields:
        path = prefix + f.label
        if f.array_len is None:
            _encode_element(out, f, f.value, path)
        else:
            if not isinstance(f.value, list) or len(f.value) != f.array_len:
                raise QemuEncodeError(
                    f"array field needs a list of {f.array_len} values", field=path
                )
            for i, v in enumerate(f.value):
                _encode_element(out, f, v, f"{path}[{i}]")
    for s in obj.subsections:
        name = s.vmsd_name.encode("latin-1")
        out.append(QEMU_VM_SUBSECTION)
        out.append(len(name))
        out += name
        out += s.version.to_bytes(4, "big")
        encode_object(out, s, prefix + s.vmsd_name + ":")


def encoded_size(obj: Any, f: Field | None = None) -> int:
    """The bytes *obj* (an object, or an element of field *f*) takes on the
    wire: counted, not encoded (describing a vmdesc asks for the size of
    every field, and encoding each struct again at every level made that
    quadratic in the nesting -- this runs inside a relay's pause).  A value
    the counting does not know is encoded, which also raises what the
    encoder would."""
    size = _size_of(obj, f)
    if size is not None:
        return size
    buf = bytearray()
    if isinstance(obj, VMStateObject):
        encode_object(buf, obj)
    else:
        assert f is not None
        _encode_element(buf, f, obj, f.label)
    return len(buf)


def _size_of(value: Any, f: Field | None) -> int | None:
    """:func:`encode_object`'s / :func:`_encode_element`'s output length,
    or None when only encoding can tell (or refuse)."""
    if isinstance(value, VMStateObject):
        total = 0
        for g in value.fields:
            if g.array_len is None:
                n = _size_of(g.value, g)
            else:
                if not isinstance(g.value, list) or len(g.value) != g.array_len:
                    return None
                n = 0
                for v in g.value:
                    m = _size_of(v, g)
                    if m is None:
                        return None
                    n += m
            if n is None:
                return None
            total += n
        for sub in value.subsections:
            n = _size_of(sub, None)
            if n is None:
                return None
            total += 6 + len(sub.vmsd_name.encode("latin-1")) + n
        return total
    if value is NULLPTR:
        return 1
    if f is None:
        return None
    ftype = f.type
    if ftype in INT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        width, signed = INT_TYPES[ftype]
        lo = -(1 << (8 * width - 1)) if signed else 0
        return width if lo <= value < lo + (1 << (8 * width)) else None
    if ftype == "bool" and isinstance(value, bool):
        return 1
    if isinstance(value, (bytes, bytearray, memoryview)) and ftype not in (
            "capability", "float64", "pci irq state"):
        return len(value)
    return None


# ---------------------------------------------------------------------------
# regenerating the vmdesc


def describe_object(obj: VMStateObject) -> dict[str, Any]:
    """The vmdesc object QEMU would write for *obj* (key order included)."""
    d: dict[str, Any] = {"vmsd_name": obj.vmsd_name, "version": obj.version}
    d["fields"] = [describe_field(f) for f in obj.fields]
    if obj.subsections:
        d["subsections"] = [describe_object(s) for s in obj.subsections]
    return d


def describe_field(f: Field) -> dict[str, Any]:
    first = f.value[0] if f.array_len is not None else f.value
    if f.array_len is not None and not f.value:
        first = None
    d: dict[str, Any] = {}
    for k in f.keys:
        if k == "name":
            d[k] = f.name
        elif k == "array_len":
            d[k] = f.array_len
        elif k == "index":
            d[k] = f.index
        elif k == "type":
            d[k] = f.type
        elif k == "struct":
            d[k] = {} if first is NULLPTR else describe_object(first)
        elif k in ("vmsd_name", "version", "fields", "subsections"):
            inline = describe_object(first)
            if k in inline:
                d[k] = inline[k]
        elif k == "size":
            d[k] = encoded_size(first, f) if first is not None else f.size
        else:  # pragma: no cover - keys QEMU 7.2 does not write
            raise QemuEncodeError(f"unknown vmdesc key {k!r}", field=f.label)
    return d


#: how a QEMU version writes its vmdesc JSON: ``"json-writer"`` (QEMU >= 6.2,
#: ``qobject/json-writer.c``) or ``"qjson"`` (QEMU <= 6.1, the old
#: ``migration/qjson.c``: ``{ "key" : value }`` with spaces inside brackets
#: and strings copied unescaped)
VMDESC_STYLES = ("json-writer", "qjson")


def vmdesc_style_of(text: bytes) -> str:
    """The style a vmdesc's JSON text was written in."""
    return "qjson" if text.startswith(b"{ ") else "json-writer"


def qemu_json(value: Any, style: str = "json-writer") -> str:
    """Serialise like QEMU's JSONWriter (``", "`` and ``": "`` separators,
    ``\\uXXXX`` upper-case escapes for control characters and non-ASCII),
    or with *style* ``"qjson"`` like QEMU 5.2's qjson.c."""
    if style == "json-writer":
        # The standard library writes the same text with these separators
        # (same short escapes, \uXXXX for the same characters) but in
        # lower-case hex: use it, ten times faster (the relay converts
        # device state while the guest is paused), unless it escaped
        # anything that way or met a value JSON has no spelling for.
        try:
            text = json.dumps(value, separators=(", ", ": "), allow_nan=False)
        except (TypeError, ValueError):
            text = "\\u"
        if "\\u" not in text:
            return text
    parts: list[str] = []
    _qjson(value, parts.append, _STYLES[style])
    return "".join(parts)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
            "\r": "\\r", "\t": "\\t"}


def _qstr(s: str) -> str:
    out = ['"']
    for ch in s:
        cp = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif cp > 0xFFFF:
            cp -= 0x10000
            out.append(f"\\u{0xD800 + (cp >> 10):04X}\\u{0xDC00 + (cp & 0x3FF):04X}")
        elif cp < 0x20 or cp >= 0x7F:
            out.append(f"\\u{cp:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


#: (object open, object close, array open, array close, key separator, string)
_STYLES: dict[str, tuple[str, str, str, str, str, Callable[[str], str]]] = {
    "json-writer": ("{", "}", "[", "]", ": ", _qstr),
    # QEMU <= 6.1's qjson.c: spaces inside brackets, '"key" : ', strings as they are
    "qjson": ("{ ", " }", "[ ", " ]", " : ", lambda s: f'"{s}"'),
}


def _qjson(v: Any, emit: Callable[[str], None], style: tuple) -> None:
    obj_open, obj_close, arr_open, arr_close, colon, string = style
    if isinstance(v, dict):
        emit(obj_open)
        for i, (k, x) in enumerate(v.items()):
            if i:
                emit(", ")
            emit(string(k))
            emit(colon)
            _qjson(x, emit, style)
        emit(obj_close)
    elif isinstance(v, list):
        emit(arr_open)
        for i, x in enumerate(v):
            if i:
                emit(", ")
            _qjson(x, emit, style)
        emit(arr_close)
    elif isinstance(v, bool):
        emit("true" if v else "false")
    elif isinstance(v, int):
        emit(str(v))
    elif isinstance(v, float):
        emit(repr(v) if math.isfinite(v) else str(v))
    elif isinstance(v, str):
        emit(string(v))
    elif v is None:
        emit("null")
    else:
        raise TypeError(f"not JSON: {v!r}")
