"""Wire metadata for device state declared as attrs classes.

A device declares its migratable state once, as an attrs class whose fields
are made with the helpers below::

    @attrs.define
    class ApicState:
        apicbase: int = u32(default=0xFEE00900)
        isr: list[int] = u32_array(8)
        count_shift: int = i32()
        timer_expiry: int = i64(default=-1, since=3)

Each helper returns an ``attrs.field`` whose ``metadata[WIRE]`` holds a
:class:`WireType` describing how the value looks on the wire (width,
signedness, array length, nested struct) and ``metadata[SINCE]`` the schema
version that introduced the field.  Only :mod:`migtree.visitor` reads this
metadata; devices never look at it, and the visitors (output, input, schema,
test data) all derive from it, so one declaration serves every format.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

#: metadata key holding the field's :class:`WireType`
WIRE = "migtree.wire"
#: metadata key holding the schema version that introduced the field
SINCE = "migtree.since"

_NOTHING = attrs.NOTHING


@attrs.frozen
class WireType:
    """Base of every wire description. ``kind`` names it in schemas."""

    @property
    def kind(self) -> str:  # pragma: no cover - overridden
        raise TypeError("abstract wire type")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


@attrs.frozen
class Int(WireType):
    bits: int
    signed: bool

    @property
    def kind(self) -> str:
        return f"{'i' if self.signed else 'u'}{self.bits}"

    @property
    def lo(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


@attrs.frozen
class Bool(WireType):
    @property
    def kind(self) -> str:
        return "bool"


@attrs.frozen
class Bytes(WireType):
    """A byte string: exactly ``length`` bytes, or at most ``max_length``."""

    length: int | None = None
    max_length: int | None = None

    @property
    def kind(self) -> str:
        return "bytes"

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "bytes"}
        if self.length is not None:
            d["length"] = self.length
        if self.max_length is not None:
            d["max_length"] = self.max_length
        return d


@attrs.frozen
class Str(WireType):
    max_length: int | None = None

    @property
    def kind(self) -> str:
        return "str"

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "str"}
        if self.max_length is not None:
            d["max_length"] = self.max_length
        return d


@attrs.frozen
class Array(WireType):
    """A list of ``element``: exactly ``length`` items, or at most ``max_length``."""

    element: WireType
    length: int | None = None
    max_length: int | None = None

    @property
    def kind(self) -> str:
        return "array"

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "array", "element": self.element.describe()}
        if self.length is not None:
            d["length"] = self.length
        if self.max_length is not None:
            d["max_length"] = self.max_length
        return d


@attrs.frozen
class Struct(WireType):
    """A nested attrs class, written as a plain map (no ``__type__``)."""

    cls: type

    @property
    def kind(self) -> str:
        return "struct"

    def describe(self) -> dict[str, Any]:
        return {"kind": "struct", "struct": self.cls.__name__}


@attrs.frozen
class Optional(WireType):
    """A value that is written only when present (QEMU's subsection).

    ``None`` in the object means absent; absent on the wire means ``None``.
    """

    inner: WireType

    @property
    def kind(self) -> str:
        return "optional"

    def describe(self) -> dict[str, Any]:
        return {"kind": "optional", "inner": self.inner.describe()}


@attrs.frozen
class Blob(WireType):
    """Large binary state (guest RAM, buffers): written in chunks.

    The attrs value is any object with ``__len__`` and ``iter_chunks(size)``
    on save; on load the visitor hands over a :class:`migtree.blob.Blob`.
    """

    @property
    def kind(self) -> str:
        return "blob"


def _field(wire: WireType, default: Any, factory: Callable[[], Any] | None,
           since: int, doc: str | None) -> Any:
    if since < 1:
        raise ValueError(f"since must be >= 1, got {since}")
    metadata = {WIRE: wire, SINCE: since}
    if doc:
        metadata["doc"] = doc
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata)
    return attrs.field(default=default, metadata=metadata)


def _int(bits: int, signed: bool):
    wire = Int(bits, signed)

    def make(default: int = 0, *, since: int = 1, doc: str | None = None) -> Any:
        if not wire.lo <= default <= wire.hi:
            raise ValueError(f"default {default} does not fit {wire.kind}")
        return _field(wire, default, None, since, doc)

    make.__name__ = wire.kind
    make.__doc__ = f"A {'signed' if signed else 'unsigned'} {bits}-bit integer field."
    return make


u8 = _int(8, False)
u16 = _int(16, False)
u32 = _int(32, False)
u64 = _int(64, False)
i8 = _int(8, True)
i16 = _int(16, True)
i32 = _int(32, True)
i64 = _int(64, True)


def boolean(default: bool = False, *, since: int = 1, doc: str | None = None) -> Any:
    """A boolean field."""
    return _field(Bool(), default, None, since, doc)


def bytes_(length: int | None = None, *, max_length: int | None = None,
           default: bytes | None = None, since: int = 1, doc: str | None = None) -> Any:
    """A byte string of exactly ``length`` bytes (zero-filled by default),
    or of at most ``max_length`` bytes (empty by default)."""
    if (length is None) == (max_length is None):
        raise ValueError("bytes_() needs exactly one of length or max_length")
    if default is None:
        default = bytes(length or 0)
    return _field(Bytes(length, max_length), default, None, since, doc)


def string(default: str = "", *, max_length: int | None = None, since: int = 1,
           doc: str | None = None) -> Any:
    """A text field."""
    return _field(Str(max_length), default, None, since, doc)


def _element_wire(element: Any) -> WireType:
    if isinstance(element, WireType):
        return element
    if isinstance(element, type) and attrs.has(element):
        return Struct(element)
    raise TypeError(f"array element must be a WireType or attrs class, got {element!r}")


def _element_default(wire: WireType) -> Any:
    if isinstance(wire, Int):
        return 0
    if isinstance(wire, Bool):
        return False
    if isinstance(wire, Bytes):
        return bytes(wire.length or 0)
    if isinstance(wire, Str):
        return ""
    if isinstance(wire, Struct):
        return wire.cls()
    if isinstance(wire, Array):
        return [_element_default(wire.element) for _ in range(wire.length or 0)]
    raise TypeError(f"no default element for {wire.kind}")


def array(element: Any, length: int | None = None, *, max_length: int | None = None,
          fill: Any = None, since: int = 1, doc: str | None = None) -> Any:
    """A list of ``element`` (a :class:`WireType` such as ``U32`` or an attrs
    class): exactly ``length`` items, or at most ``max_length`` items
    (defaulting to empty). A fixed-length array defaults to ``length`` copies
    of ``fill`` (zero values when not given): ``u32_array(6, fill=0x10000)``
    declares six masked LVT entries."""
    if (length is None) == (max_length is None):
        raise ValueError("array() needs exactly one of length or max_length")
    wire = Array(_element_wire(element), length, max_length)
    n = length or 0
    if fill is None:
        return _field(wire, _NOTHING,
                      lambda: [_element_default(wire.element) for _ in range(n)], since, doc)
    if isinstance(wire.element, Int) and not (type(fill) is int
                                              and wire.element.lo <= fill <= wire.element.hi):
        raise ValueError(f"fill {fill!r} does not fit {wire.element.kind}")
    if isinstance(wire.element, Struct):
        raise ValueError("fill is for arrays of scalars; give a struct array its defaults "
                         "in the struct class")
    return _field(wire, _NOTHING, lambda: [fill] * n, since, doc)


def u8_array(length: int, **kw: Any) -> Any:
    return array(U8, length, **kw)


def u32_array(length: int, **kw: Any) -> Any:
    return array(U32, length, **kw)


def u64_array(length: int, **kw: Any) -> Any:
    return array(U64, length, **kw)


def struct(cls: type, *, since: int = 1, doc: str | None = None) -> Any:
    """A nested attrs class, default-constructed."""
    if not attrs.has(cls):
        raise TypeError(f"struct() needs an attrs class, got {cls!r}")
    return _field(Struct(cls), _NOTHING, cls, since, doc)


def optional(inner: Any, *, since: int = 1, doc: str | None = None) -> Any:
    """A part written only when not ``None`` (QEMU's subsection with ``needed()``).
    ``inner`` is an attrs class or a :class:`WireType`."""
    return _field(Optional(_element_wire(inner)), None, None, since, doc)


def blob(*, since: int = 1, doc: str | None = None) -> Any:
    """Large binary state written in chunks (see :class:`Blob`); defaults to
    an empty :class:`migtree.blob.Blob`."""
    from .blob import Blob as BlobValue

    return _field(Blob(), _NOTHING, BlobValue, since, doc)


# Wire types for array elements: ``array(U16, 4)``.
U8, U16, U32, U64 = Int(8, False), Int(16, False), Int(32, False), Int(64, False)
I8, I16, I32, I64 = Int(8, True), Int(16, True), Int(32, True), Int(64, True)
BOOL = Bool()
STR = Str()


def wire_of(field: attrs.Attribute) -> WireType:
    """The wire type of an attrs field (raises if it has none)."""
    try:
        return field.metadata[WIRE]
    except KeyError:
        raise TypeError(
            f"field {field.name!r} has no wire metadata: declare it with a "
            "migtree.fields helper (u32(), array(), struct(), ...)") from None


def since_of(field: attrs.Attribute) -> int:
    return field.metadata.get(SINCE, 1)
