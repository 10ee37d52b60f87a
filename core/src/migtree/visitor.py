"""The Visitor: one walk over a state declaration, several purposes.

A state class is an attrs class declared with :mod:`migtree.fields`. The
walk is QAPI-style: every ``visit_*`` call takes the object's current value
and returns the value to keep, so the same walk

* writes a node (:class:`OutputVisitor`: object -> plain dict),
* reads one strictly (:class:`InputVisitor`: plain dict -> new object),
* describes the layout (:class:`SchemaVisitor`),

and :func:`strategy_for` turns the same declaration into hypothesis test
data. A state class with irregular layout defines a static method
``migtree_visit(visitor, value) -> value`` and calls the primitives itself;
every visitor then serves it unchanged.

Only this module reads wire metadata (:data:`migtree.fields.WIRE`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import attrs

from .blob import Blob as BlobValue
from .errors import RegistryError, StateError
from .fields import (
    Array,
    Blob,
    Bool,
    Bytes,
    Int,
    Optional,
    Str,
    Struct,
    WireType,
    since_of,
    wire_of,
)
from .qom import RESERVED_KEYS

_VISIT_HOOK = "migtree_visit"


class Visitor(ABC):
    """Walks a state value. Subclasses implement the primitives.

    ``version`` is the schema version being written or read: fields whose
    ``since`` is newer are skipped (kept at their default on input).
    """

    def __init__(self, version: int, path: str = "") -> None:
        self.version = version
        self.path = path
        self._names: list[str] = []

    # -- where we are, for error messages ----------------------------------
    def field_path(self, name: str | None = None) -> str:
        parts = list(self._names)
        if name is not None:
            parts.append(name)
        out = ""
        for p in parts:
            if p.startswith("["):
                out += p
            else:
                out += ("." if out else "") + p
        return out

    def error(self, name: str | None, message: str) -> StateError:
        return StateError(self.path, self.field_path(name), message)

    # -- the generic walk ---------------------------------------------------
    def visit(self, name: str, value: Any, wire: WireType) -> Any:
        t = type(wire)
        if t is Int:
            return self.visit_int(name, value, wire)
        if t is Array:
            return self.visit_array(name, value, wire)
        if t is Struct:
            return self.visit_struct(name, value, wire.cls)
        if t is Bytes:
            return self.visit_bytes(name, value, wire)
        if t is Bool:
            return self.visit_bool(name, value)
        if t is Str:
            return self.visit_str(name, value, wire)
        if t is Optional:
            return self.visit_optional(name, value, wire)
        if t is Blob:
            return self.visit_blob(name, value)
        raise TypeError(f"unknown wire type {wire!r}")

    def visit_fields(self, cls: type, value: Any) -> Any:
        """Visit every field of ``cls`` that exists at ``self.version``."""
        hook = getattr(cls, _VISIT_HOOK, None)
        if hook is not None:
            return hook(self, value)
        for f in attrs.fields(cls):
            if since_of(f) > self.version:
                continue
            new = self.visit(f.name, getattr(value, f.name), wire_of(f))
            object.__setattr__(value, f.name, new)
        return value

    # -- primitives (subclasses override) -----------------------------------
    @abstractmethod
    def visit_int(self, name: str, value: int, wire: Int) -> int:
        raise NotImplementedError

    @abstractmethod
    def visit_bool(self, name: str, value: bool) -> bool:
        raise NotImplementedError

    @abstractmethod
    def visit_bytes(self, name: str, value: bytes, wire: Bytes) -> bytes:
        raise NotImplementedError

    @abstractmethod
    def visit_str(self, name: str, value: str, wire: Str) -> str:
        raise NotImplementedError

    @abstractmethod
    def visit_array(self, name: str, value: list, wire: Array) -> list:
        raise NotImplementedError

    @abstractmethod
    def visit_struct(self, name: str, value: Any, cls: type) -> Any:
        raise NotImplementedError

    @abstractmethod
    def visit_optional(self, name: str, value: Any, wire: Optional) -> Any:
        raise NotImplementedError

    @abstractmethod
    def visit_blob(self, name: str, value: Any) -> Any:
        raise NotImplementedError


def _check_int(v: Visitor, name: str, value: Any, wire: Int) -> int:
    if type(value) is not int:
        raise v.error(name, f"expected {wire.kind}, got {_kind_of(value)}")
    if not wire.lo <= value <= wire.hi:
        raise v.error(name, f"{value} does not fit {wire.kind}")
    return value


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, BlobValue):
        return "blob"
    return {bool: "bool", int: "int", str: "str", bytes: "bytes", list: "array",
            dict: "map", float: "float"}.get(type(value), type(value).__name__)


class OutputVisitor(Visitor):
    """Object -> node. Values are range-checked, so a device bug that leaves
    an out-of-range value fails at save time, not on the destination."""

    def __init__(self, version: int, path: str = "") -> None:
        super().__init__(version, path)
        self._out: list[dict[str, Any]] = [{}]

    def result(self) -> dict[str, Any]:
        return self._out[0]

    def visit_int(self, name, value, wire):
        self._out[-1][name] = _check_int(self, name, value, wire)
        return value

    def visit_bool(self, name, value):
        if type(value) is not bool:
            raise self.error(name, f"expected bool, got {_kind_of(value)}")
        self._out[-1][name] = value
        return value

    def visit_bytes(self, name, value, wire):
        if type(value) is bytearray:
            value = bytes(value)
        if type(value) is not bytes:
            raise self.error(name, f"expected bytes, got {_kind_of(value)}")
        _check_len(self, name, len(value), wire.length, wire.max_length, "bytes")
        self._out[-1][name] = value
        return value

    def visit_str(self, name, value, wire):
        if type(value) is not str:
            raise self.error(name, f"expected str, got {_kind_of(value)}")
        _check_len(self, name, len(value), None, wire.max_length, "characters")
        self._out[-1][name] = value
        return value

    def visit_array(self, name, value, wire):
        if not isinstance(value, (list, tuple)):
            raise self.error(name, f"expected array, got {_kind_of(value)}")
        _check_len(self, name, len(value), wire.length, wire.max_length, "items")
        elem = wire.element
        if type(elem) is Int:
            lo, hi = elem.lo, elem.hi
            for i, x in enumerate(value):
                if type(x) is not int or not lo <= x <= hi:
                    self._names.append(name)
                    try:
                        _check_int(self, f"[{i}]", x, elem)
                    finally:
                        self._names.pop()
            self._out[-1][name] = list(value)
            return value
        out: list[Any] = []
        self._names.append(name)
        try:
            for i, x in enumerate(value):
                self._out.append({})
                self.visit(f"[{i}]", x, elem)
                out.append(self._out.pop()[f"[{i}]"])
        finally:
            self._names.pop()
        self._out[-1][name] = out
        return value

    def visit_struct(self, name, value, cls):
        if not isinstance(value, cls):
            raise self.error(name, f"expected {cls.__name__}, got {_kind_of(value)}")
        d: dict[str, Any] = {}
        self._out.append(d)
        self._names.append(name)
        try:
            self.visit_fields(cls, value)
        finally:
            self._names.pop()
            self._out.pop()
        self._out[-1][name] = d
        return value

    def visit_optional(self, name, value, wire):
        if value is not None:
            self.visit(name, value, wire.inner)
        return value

    def visit_blob(self, name, value):
        if value is None:
            raise self.error(name, "blob is missing")
        if not hasattr(value, "iter_chunks"):
            raise self.error(name, f"expected a blob source, got {_kind_of(value)}")
        self._out[-1][name] = value
        return value


def _check_len(v: Visitor, name: str, n: int, length: int | None, max_length: int | None,
               unit: str) -> None:
    if length is not None and n != length:
        raise v.error(name, f"expected {length} {unit}, got {n}")
    if max_length is not None and n > max_length:
        raise v.error(name, f"{n} {unit} exceeds the maximum of {max_length}")


class InputVisitor(Visitor):
    """Node -> new object, strictly: a missing field, an unexpected field, a
    wrong type, a value out of range for its width and a wrong array length
    are each a :class:`StateError` naming the object path and field."""

    def __init__(self, node: dict[str, Any], version: int, path: str = "") -> None:
        super().__init__(version, path)
        self._in: list[Any] = [node]

    def _take(self, name: str) -> Any:
        cur = self._in[-1]
        try:
            return cur[name]
        except KeyError:
            raise self.error(name, "missing") from None

    def visit_int(self, name, value, wire):
        return _check_int(self, name, self._take(name), wire)

    def visit_bool(self, name, value):
        x = self._take(name)
        if type(x) is not bool:
            raise self.error(name, f"expected bool, got {_kind_of(x)}")
        return x

    def visit_bytes(self, name, value, wire):
        x = self._take(name)
        if type(x) is not bytes:
            raise self.error(name, f"expected bytes, got {_kind_of(x)}")
        _check_len(self, name, len(x), wire.length, wire.max_length, "bytes")
        return x

    def visit_str(self, name, value, wire):
        x = self._take(name)
        if type(x) is not str:
            raise self.error(name, f"expected str, got {_kind_of(x)}")
        _check_len(self, name, len(x), None, wire.max_length, "characters")
        return x

    def visit_array(self, name, value, wire):
        x = self._take(name)
        if type(x) is not list:
            raise self.error(name, f"expected array, got {_kind_of(x)}")
        _check_len(self, name, len(x), wire.length, wire.max_length, "items")
        elem = wire.element
        if type(elem) is Int:
            lo, hi = elem.lo, elem.hi
            for i, e in enumerate(x):
                if type(e) is not int or not lo <= e <= hi:
                    self._names.append(name)
                    try:
                        _check_int(self, f"[{i}]", e, elem)
                    finally:
                        self._names.pop()
            return list(x)
        out = []
        self._names.append(name)
        try:
            for i, e in enumerate(x):
                self._in.append({f"[{i}]": e})
                try:
                    out.append(self.visit(f"[{i}]", _default_for(elem), elem))
                finally:
                    self._in.pop()
        finally:
            self._names.pop()
        return out

    def visit_struct(self, name, value, cls):
        x = self._take(name)
        return self._struct(name, x, cls)

    def _struct(self, name: str | None, x: Any, cls: type) -> Any:
        if type(x) is not dict:
            raise self.error(name, f"expected map, got {_kind_of(x)}")
        if "__type__" in x:
            raise self.error(name, "expected plain struct data, got an object node")
        obj = cls()
        if name is not None:
            self._names.append(name)
        self._in.append(x)
        try:
            self.visit_fields(cls, obj)
            self._reject_extra(x, cls)
        finally:
            self._in.pop()
            if name is not None:
                self._names.pop()
        return obj

    def visit_top(self, cls: type) -> Any:
        """Read the object's own state (the node itself is the struct)."""
        x = self._in[-1]
        obj = cls()
        self.visit_fields(cls, obj)
        self._reject_extra(x, cls, top=True)
        return obj

    def _reject_extra(self, x: dict, cls: type, top: bool = False) -> None:
        if getattr(cls, _VISIT_HOOK, None) is not None:
            known = _hand_written_keys(cls, self.version)
        else:
            known = {f.name for f in attrs.fields(cls) if since_of(f) <= self.version}
        for key in x:
            if key in known:
                continue
            if top and (key in RESERVED_KEYS or _is_object_node(x[key])):
                continue  # reserved keys and child objects belong to the loader
            raise self.error(key if isinstance(key, str) else repr(key), "unexpected field")

    def visit_optional(self, name, value, wire):
        cur = self._in[-1]
        if name not in cur:
            return None
        if cur[name] is None:
            raise self.error(name, "present but null: leave an absent part out")
        return self.visit(name, _default_for(wire.inner), wire.inner)

    def visit_blob(self, name, value):
        x = self._take(name)
        if isinstance(x, BlobValue):
            return x
        if type(x) is bytes:  # a small blob inlined by a filter or a JSON view
            return BlobValue(x)
        if hasattr(x, "iter_chunks") and hasattr(x, "__len__"):
            return x  # a live source (guest RAM) when a tree is loaded in-process
        raise self.error(name, f"expected blob, got {_kind_of(x)}")


def _is_object_node(value: Any) -> bool:
    return type(value) is dict and "__type__" in value


def _default_for(wire: WireType) -> Any:
    if type(wire) is Struct:
        return wire.cls()
    return None


def _hand_written_keys(cls: type, version: int) -> set[str]:
    """Keys a hand-written visit reads, found by running it in schema mode."""
    sv = SchemaVisitor(version)
    sv.visit_fields(cls, _blank(cls))
    return {f["name"] for f in sv.result()}


def _blank(cls: type) -> Any:
    try:
        return cls()
    except TypeError:
        return None


class SchemaVisitor(Visitor):
    """Describes a layout: a list of ``{"name", "kind", ...}`` dicts."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self._out: list[list[dict[str, Any]]] = [[]]
        self._since: dict[str, int] = {}

    def result(self) -> list[dict[str, Any]]:
        return self._out[0]

    def _add(self, name: str, desc: dict[str, Any]) -> None:
        self._out[-1].append({"name": name, **desc})

    def visit_fields(self, cls, value):
        hook = getattr(cls, _VISIT_HOOK, None)
        if hook is not None:
            return hook(self, value)
        for f in attrs.fields(cls):
            if since_of(f) > self.version:
                continue
            before = len(self._out[-1])
            self.visit(f.name, getattr(value, f.name, None) if value is not None else None,
                       wire_of(f))
            if since_of(f) > 1:
                for d in self._out[-1][before:]:
                    d["since"] = since_of(f)
        return value

    def visit_int(self, name, value, wire):
        self._add(name, wire.describe())
        return value

    def visit_bool(self, name, value):
        self._add(name, {"kind": "bool"})
        return value

    def visit_bytes(self, name, value, wire):
        self._add(name, wire.describe())
        return value

    def visit_str(self, name, value, wire):
        self._add(name, wire.describe())
        return value

    def visit_array(self, name, value, wire):
        self._add(name, self._describe(wire))
        return value

    def visit_struct(self, name, value, cls):
        self._add(name, self._describe(Struct(cls)))
        return value

    def visit_optional(self, name, value, wire):
        self._add(name, {"kind": "optional", "inner": self._describe(wire.inner)})
        return value

    def visit_blob(self, name, value):
        self._add(name, {"kind": "blob"})
        return value

    def _describe(self, wire: WireType) -> dict[str, Any]:
        if type(wire) is Struct:
            sub = SchemaVisitor(self.version)
            sub.visit_fields(wire.cls, _blank(wire.cls))
            # "struct", not "name": a field entry is {"name": FIELD, **this}
            return {"kind": "struct", "struct": wire.cls.__name__, "fields": sub.result()}
        if type(wire) is Array:
            d = wire.describe()
            d["element"] = self._describe(wire.element)
            return d
        if type(wire) is Optional:
            return {"kind": "optional", "inner": self._describe(wire.inner)}
        return wire.describe()


# -- entry points used by the rest of migtree --------------------------------

def check_state_class(cls: type, label: str) -> None:
    """Reject a state declaration the visitors cannot serve, at registration
    time rather than at the first migration."""
    if getattr(cls, _VISIT_HOOK, None) is not None:
        return
    if not attrs.has(cls):
        raise RegistryError(f"{label}: state class {cls!r} is not an attrs class")
    for f in attrs.fields(cls):
        if f.name in RESERVED_KEYS or f.name.startswith("__"):
            raise RegistryError(f"{label}: field name {f.name!r} is reserved")
        try:
            wire = wire_of(f)
        except TypeError as e:
            raise RegistryError(f"{label}: {cls.__name__}: {e}") from None
        while type(wire) in (Array, Optional):
            wire = wire.element if type(wire) is Array else wire.inner
        if type(wire) is Struct:
            check_state_class(wire.cls, label)
    try:
        cls()
    except Exception as e:
        raise RegistryError(f"{label}: {cls.__name__}() must construct a default state: {e}") from e


def state_to_node(cls: type, value: Any, version: int, path: str = "") -> dict[str, Any]:
    """The output visit of one object's state: its fields as a plain dict."""
    fns = _compiled.get((cls, version), False)
    if fns is False:
        fns = compiled(cls, version)
    if fns is not None:
        try:
            return fns[0](value)
        except Exception:  # anything unexpected: the generic visitor decides
            pass
    ov = OutputVisitor(version, path)
    ov._out[-1] = {}
    ov.visit_fields(cls, value)
    return ov.result()


def node_to_state(cls: type, node: dict[str, Any], version: int, path: str = "") -> Any:
    """The strict input visit of one object's node into a new state value."""
    fns = _compiled.get((cls, version), False)
    if fns is False:
        fns = compiled(cls, version)
    if fns is not None:
        try:
            return fns[1](node)
        except Exception:  # anything unexpected: the generic visitor decides
            pass
    return InputVisitor(node, version, path).visit_top(cls)


def schema_of(cls: type | None, version: int) -> list[dict[str, Any]]:
    if cls is None:
        return []
    sv = SchemaVisitor(version)
    sv.visit_fields(cls, _blank(cls))
    return sv.result()


def strategy_for(cls: type, version: int | None = None):
    """A hypothesis strategy producing valid states of ``cls`` (at ``version``:
    newer fields keep their defaults). Imports hypothesis lazily: it is a test
    dependency, not a runtime one."""
    from hypothesis import strategies as st

    custom = getattr(cls, "migtree_strategy", None)
    if custom is not None:
        return custom()
    version = version if version is not None else 1 << 30
    kwargs = {}
    for f in attrs.fields(cls):
        if since_of(f) <= version:
            kwargs[f.name] = _wire_strategy(wire_of(f), version)
    return st.builds(cls, **kwargs)


def _wire_strategy(wire: WireType, version: int):
    from hypothesis import strategies as st

    t = type(wire)
    if t is Int:
        return st.integers(wire.lo, wire.hi)
    if t is Bool:
        return st.booleans()
    if t is Bytes:
        if wire.length is not None:
            return st.binary(min_size=wire.length, max_size=wire.length)
        return st.binary(max_size=min(wire.max_length or 64, 64))
    if t is Str:
        return st.text(max_size=min(wire.max_length or 32, 32))
    if t is Array:
        elem = _wire_strategy(wire.element, version)
        if wire.length is not None:
            return st.lists(elem, min_size=wire.length, max_size=wire.length)
        return st.lists(elem, max_size=min(wire.max_length or 8, 8))
    if t is Struct:
        return strategy_for(wire.cls, version)
    if t is Optional:
        return st.none() | _wire_strategy(wire.inner, version)
    if t is Blob:
        return st.binary(max_size=256).map(BlobValue)
    raise TypeError(f"no strategy for {wire!r}")


# -- the compiled fast path ---------------------------------------------------
#
# The visitors above walk a declaration field by field through method calls;
# that costs a few microseconds per field. For every state class without a
# hand-written visit, state_to_node / node_to_state instead run straight-line
# Python generated once per (class, version) from the class's own attrs
# fields -- never from stream data: the only names in the generated source
# are the registered class's field names (Python identifiers, quoted with
# repr) and integer bounds. The compiled code only handles the valid case: on
# anything unexpected it gives up (_Miss) and the generic visitor runs on the
# same input, so results and error messages are exactly the generic ones.
# tests/core/test_stream_fastpath.py checks the two against each other.

class _Miss(Exception):
    """The compiled path cannot handle this value: use the generic visitor."""


class _Unsupported(Exception):
    """This declaration is not compiled (hand-written visit, optional array
    elements): the generic visitor always serves it."""


_compiled: dict[tuple[type, int], tuple[Any, Any] | None] = {}


def _miss() -> Any:
    raise _Miss


def _extras_ok(node: dict, known: frozenset) -> bool:
    for k in node.keys() - known:
        v = node[k]
        if k in RESERVED_KEYS or (type(v) is dict and "__type__" in v):
            continue
        return False
    return True


def _plain_init(cls: type) -> bool:
    """Whether ``cls(**fields)`` equals ``cls()`` followed by setting the
    fields (what the generic input visitor does): an attrs-generated
    ``__init__`` with no validators, converters or init hooks."""
    init = cls.__dict__.get("__init__")
    code = getattr(init, "__code__", None)
    if code is None or not code.co_filename.startswith("<attrs generated"):
        return False
    if hasattr(cls, "__attrs_post_init__") or hasattr(cls, "__attrs_pre_init__"):
        return False
    return all(f.init and f.validator is None and f.converter is None
               for f in attrs.fields(cls))


class _Compiler:
    def __init__(self, version: int) -> None:
        self.version = version
        self.src: list[str] = []
        self.ns: dict[str, Any] = {"_Miss": _Miss, "_miss": _miss, "_Blob": BlobValue,
                                   "_SET_INT": frozenset({int}), "_extras_ok": _extras_ok,
                                   "_set": set, "_map": map, "_type": type, "_min": min,
                                   "_max": max, "_len": len, "_isinstance": isinstance,
                                   "_hasattr": hasattr, "_setattr": object.__setattr__}
        self.index: dict[type, int] = {}
        self.done: set[str] = set()
        self.elem = 0

    def const(self, obj: Any) -> str:
        name = f"_k{len(self.ns)}"
        self.ns[name] = obj
        return name

    def compile(self, cls: type) -> tuple[Any, Any]:
        i = self.struct(cls)
        self.top_in(cls)
        # the source is built from our own registered classes, never from stream data
        exec("\n".join(self.src), self.ns)
        return self.ns[f"_out_{i}"], self.ns["_top_in"]

    def fields(self, cls: type) -> list[Any]:
        if getattr(cls, _VISIT_HOOK, None) is not None or not attrs.has(cls):
            raise _Unsupported
        return [f for f in attrs.fields(cls) if since_of(f) <= self.version]

    # -- one struct class: _out_i(value) -> dict and _in_i(map) -> value ----
    def struct(self, cls: type) -> int:
        if cls in self.index:
            return self.index[cls]
        i = self.index[cls] = len(self.index)
        fields = self.fields(cls)
        out = [f"def _out_{i}(v):", "    d = {}"]
        for f in fields:
            out.append(f"    x = v.{f.name}")
            self.out_field(out, f.name, wire_of(f), "    ")
        out.append("    return d")
        self.src.append("\n".join(out))
        body = [f"def _in_{i}(node):",
                "    if _type(node) is not dict or '__type__' in node: raise _Miss"]
        body += self.in_body(cls, fields)
        body.append("    if _len(node) != n: raise _Miss")
        body.append(self.construct(cls, fields))
        self.src.append("\n".join(body))
        return i

    def top_in(self, cls: type) -> None:
        fields = self.fields(cls)
        known = self.const(frozenset(f.name for f in fields))
        body = ["def _top_in(node):"] + self.in_body(cls, fields)
        body.append(f"    if _len(node) != n and not _extras_ok(node, {known}): raise _Miss")
        body.append(self.construct(cls, fields))
        self.src.append("\n".join(body))

    def in_body(self, cls: type, fields: list[Any]) -> list[str]:
        required = sum(1 for f in fields if type(wire_of(f)) is not Optional)
        lines = [f"    n = {required}"]
        for f in fields:
            wire, key, var = wire_of(f), repr(f.name), f"f_{f.name}"
            if type(wire) is Optional:
                lines.append(f"    if {key} in node:")
                lines.append(f"        x = node[{key}]")
                lines.append("        if x is None: raise _Miss")
                expr = self.in_value(lines, wire.inner, "x", "        ")
                lines.append(f"        {var} = {expr}")
                lines.append("        n += 1")
                lines.append("    else:")
                lines.append(f"        {var} = None")
            else:
                lines.append(f"    x = node[{key}]")
                expr = self.in_value(lines, wire, "x", "    ")
                lines.append(f"    {var} = {expr}")
        return lines

    def construct(self, cls: type, fields: list[Any]) -> str:
        c = self.const(cls)
        if _plain_init(cls):
            args = ", ".join(f"{f.alias}=f_{f.name}" for f in fields)
            return f"    return {c}({args})"
        sets = "".join(f"; _setattr(o, {f.name!r}, f_{f.name})" for f in fields)
        return f"    o = {c}(){sets}; return o"

    # -- output of one value in variable `var` -------------------------------
    def out_field(self, lines: list[str], name: str, wire: WireType, ind: str) -> None:
        if type(wire) is Optional:
            lines.append(f"{ind}if x is not None:")
            ind += "    "
            wire = wire.inner
        expr = self.out_value(lines, wire, "x", ind)  # appends the checks first
        lines.append(f"{ind}d[{name!r}] = {expr}")

    def out_value(self, lines: list[str], wire: WireType, var: str, ind: str) -> str:
        t = type(wire)
        if t is Int:
            lines.append(f"{ind}if _type({var}) is not int or {var} < {wire.lo} or "
                         f"{var} > {wire.hi}: raise _Miss")
            return var
        if t is Bool:
            lines.append(f"{ind}if _type({var}) is not bool: raise _Miss")
            return var
        if t is Bytes:
            lines.append(f"{ind}if _type({var}) is not bytes: raise _Miss")
            self.lengths(lines, wire, var, ind)
            return var
        if t is Str:
            lines.append(f"{ind}if _type({var}) is not str: raise _Miss")
            if wire.max_length is not None:
                lines.append(f"{ind}if _len({var}) > {wire.max_length}: raise _Miss")
            return var
        if t is Struct:
            j = self.struct(wire.cls)
            lines.append(f"{ind}if not _isinstance({var}, {self.const(wire.cls)}): raise _Miss")
            return f"_out_{j}({var})"
        if t is Blob:
            lines.append(f"{ind}if {var} is None or not _hasattr({var}, 'iter_chunks'): "
                         "raise _Miss")
            return var
        if t is Array:
            lines.append(f"{ind}if _type({var}) is not list: raise _Miss")
            self.lengths(lines, wire, var, ind)
            elem = wire.element
            if type(elem) is Int:
                self.int_items(lines, elem, var, ind)
                return f"{var}[:]"
            return f"[{self.elem_fn(elem, 'out')}(e) for e in {var}]"
        raise _Unsupported

    # -- input of one value in variable `var` --------------------------------
    def in_value(self, lines: list[str], wire: WireType, var: str, ind: str) -> str:
        t = type(wire)
        if t in (Int, Bool, Bytes, Str):
            return self.out_value(lines, wire, var, ind)  # same checks, same value
        if t is Struct:
            return f"_in_{self.struct(wire.cls)}({var})"
        if t is Blob:
            return (f"({var} if _isinstance({var}, _Blob) else _Blob({var}) "
                    f"if _type({var}) is bytes else _miss())")
        if t is Array:
            lines.append(f"{ind}if _type({var}) is not list: raise _Miss")
            self.lengths(lines, wire, var, ind)
            elem = wire.element
            if type(elem) is Int:
                self.int_items(lines, elem, var, ind)
                return f"{var}[:]"
            return f"[{self.elem_fn(elem, 'in')}(e) for e in {var}]"
        raise _Unsupported

    def elem_fn(self, elem: WireType, direction: str) -> str:
        if type(elem) is Optional:
            raise _Unsupported
        if type(elem) is Struct:
            j = self.struct(elem.cls)
            if direction == "in":
                return f"_in_{j}"
            name = f"_eo_{j}"
            if name not in self.done:
                self.done.add(name)
                c = self.const(elem.cls)
                self.src.append(f"def {name}(e):\n    if not _isinstance(e, {c}): raise _Miss\n"
                                f"    return _out_{j}(e)")
            return name
        self.elem += 1
        name = f"_e{direction}_{self.elem}"
        lines = [f"def {name}(e):"]
        expr = (self.in_value if direction == "in" else self.out_value)(lines, elem, "e", "    ")
        lines.append(f"    return {expr}")
        self.src.append("\n".join(lines))
        return name

    def lengths(self, lines: list[str], wire: Any, var: str, ind: str) -> None:
        if wire.length is not None:
            lines.append(f"{ind}if _len({var}) != {wire.length}: raise _Miss")
        if wire.max_length is not None:
            lines.append(f"{ind}if _len({var}) > {wire.max_length}: raise _Miss")

    def int_items(self, lines: list[str], elem: Int, var: str, ind: str) -> None:
        lines.append(f"{ind}if {var} and (_set(_map(_type, {var})) != _SET_INT or "
                     f"_min({var}) < {elem.lo} or _max({var}) > {elem.hi}): raise _Miss")


def precompile(registry: Any) -> int:
    """Compile the visitor of every registered type at every version it
    declares, now rather than on first use; returns how many. A live relay
    does this before its source connects, so that the first conversion --
    inside the guest's pause -- does not pay for it."""
    n = 0
    for info in registry.types:
        for version, cls in info.versions().items():
            if cls is not None:
                compiled(cls, version)
                n += 1
    return n


def compiled(cls: type, version: int) -> tuple[Any, Any] | None:
    """The compiled ``(output, input)`` functions of ``cls`` at ``version``,
    generated on first use (None when the declaration is not compiled)."""
    key = (cls, version)
    try:
        return _compiled[key]
    except KeyError:
        pass
    try:
        fns: tuple[Any, Any] | None = _Compiler(version).compile(cls)
    except _Unsupported:
        fns = None
    _compiled[key] = fns
    return fns
