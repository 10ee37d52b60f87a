"""A QOM-style object model: registered types, objects in a composition tree,
canonical paths and QEMU's path resolution.

Every migratable thing is an :class:`Object` subclass that names its type::

    class Apic(Device):
        TYPE = "apic"
        STATE = ApicState      # attrs class declared with migtree.fields
        VERSION = 3            # schema version this build writes
        MIN_VERSION = 3        # oldest version the input visitor loads directly
        HISTORY = {2: ApicStateV2}   # older layouts, reached only through filters

Objects hang off each other by name (``add_child``), exactly as QOM children,
and the state tree mirrors that composition (see docs/architecture.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, ClassVar

import attrs

from .errors import AmbiguousPath, PathNotFound, RegistryError, UnknownTypeError
from .fields import i64

_AUTO = "[*]"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+\-\[\]:,]+$")
RESERVED_KEYS = frozenset({"__type__", "__version__", "__stash__"})


class Object:
    """Base of every object. Subclasses set the class attributes below."""

    TYPE: ClassVar[str] = "object"
    #: defaults to the TYPE of the nearest Object base class
    PARENT: ClassVar[str | None] = None
    ABSTRACT: ClassVar[bool] = True
    STATE: ClassVar[type | None] = None
    VERSION: ClassVar[int] = 1
    MIN_VERSION: ClassVar[int] = 1
    HISTORY: ClassVar[dict[int, type]] = {}
    DESCRIPTION: ClassVar[str] = ""
    #: post_load runs in ascending order; an object whose post_load cannot be
    #: undone (guest RAM) sets a high value so it runs after every other
    #: object accepted its state
    POST_LOAD_ORDER: ClassVar[int] = 0

    def __init__(self) -> None:
        self.state: Any = self.STATE() if self.STATE is not None else None
        self.parent: Object | None = None
        self.name: str | None = None
        self._children: dict[str, Object] = {}

    # -- composition -------------------------------------------------------
    def add_child(self, name: str, child: Object) -> Object:
        """Attach ``child`` under ``name``. A name ending in ``[*]`` gets the
        lowest free index (``device[*]`` -> ``device[0]``, ``device[1]`` ...)."""
        if child.parent is not None:
            raise ValueError(f"{child.TYPE} is already a child of {child.parent.path}")
        if name.endswith(_AUTO):
            stem = name[: -len(_AUTO)]
            i = 0
            while f"{stem}[{i}]" in self._children:
                i += 1
            name = f"{stem}[{i}]"
        if not _NAME_RE.fullmatch(name) or name in RESERVED_KEYS:
            raise ValueError(f"invalid child name {name!r}")
        if name in self._children:
            raise ValueError(f"{self.path} already has a child {name!r}")
        if self.STATE is not None and name in attrs.fields_dict(self.STATE):
            raise ValueError(f"{self.path}: child name {name!r} collides with a state field")
        self._children[name] = child
        child.parent, child.name = self, name
        return child

    def remove_child(self, name: str) -> Object:
        child = self._children.pop(name)
        child.parent = child.name = None
        return child

    @property
    def children(self) -> dict[str, Object]:
        return dict(self._children)

    def child(self, name: str) -> Object:
        return self._children[name]

    @property
    def path(self) -> str:
        return canonical_path(self)

    @property
    def root(self) -> Object:
        obj = self
        while obj.parent is not None:
            obj = obj.parent
        return obj

    @property
    def machine(self) -> Machine | None:
        obj: Object | None = self
        while obj is not None and not isinstance(obj, Machine):
            obj = obj.parent
        return obj

    def walk(self) -> Iterator[Object]:
        """This object and every descendant, parents before children, children
        in the order they were added."""
        yield self
        for child in self._children.values():
            yield from child.walk()

    # -- life cycle hooks a device may override ----------------------------
    def realize(self) -> None:
        """Called once the object is placed in a build (its path is final)."""

    def pre_save(self) -> None:
        """Called before the output visitor reads ``self.state``: sync derived
        state (e.g. from a kernel) into it."""

    def check_load(self, state: Any) -> None:
        """Called with the new state before any object changes: raise a
        :class:`migtree.errors.MigtreeError` to refuse it (a disk of another
        size, guest RAM of another size). The default accepts anything the
        input visitor accepted."""

    def post_load(self) -> None:
        """Called after a load replaced ``self.state``: rebuild anything
        derived from it (timers, kernel state). Runs in ``POST_LOAD_ORDER``,
        then composition order."""

    def __repr__(self) -> str:
        where = canonical_path(self) if self.parent is not None else "(detached)"
        return f"<{self.TYPE} {where}>"


class Container(Object):
    """A stateless object that only holds children (QOM's ``container``)."""

    TYPE = "container"


class Device(Object):
    """Base of devices (QOM's ``device``)."""

    TYPE = "device"
    ABSTRACT = True


@attrs.define
class MachineState:
    clock_ns: int = i64(doc="the machine's virtual clock, nanoseconds")


class VirtualClock:
    """The machine's virtual time. Tests and workloads move it explicitly, so
    nothing in migtree depends on wall-clock time."""

    def __init__(self, machine: Machine):
        self._machine = machine

    @property
    def ns(self) -> int:
        return self._machine.state.clock_ns

    def advance(self, ns: int) -> None:
        if ns < 0:
            raise ValueError("the virtual clock never goes backwards")
        self.set(self.ns + ns)

    def set(self, ns: int) -> None:
        if ns < self.ns:
            raise ValueError("the virtual clock never goes backwards")
        self._machine.state.clock_ns = ns
        for listener in list(self._machine.clock_listeners):
            listener(ns)


class Machine(Object):
    """``/machine``: holds ``peripheral`` (devices with an id),
    ``peripheral-anon`` (devices without) and ``unattached`` containers."""

    TYPE = "machine"
    STATE = MachineState

    def __init__(self) -> None:
        super().__init__()
        self.clock_listeners: list[Any] = []
        self.clock = VirtualClock(self)
        self.dynamic_filters: list[Any] = []
        self.memory: Any = None
        for name in ("peripheral", "peripheral-anon", "unattached"):
            self.add_child(name, Container())

    def add_device(self, device: Object, id: str | None = None) -> Object:
        if id is None:
            return self.child("peripheral-anon").add_child("device[*]", device)
        return self.child("peripheral").add_child(id, device)

    def add_unattached(self, obj: Object) -> Object:
        return self.child("unattached").add_child("device[*]", obj)

    def register_filter(self, flt: Any) -> None:
        """A device registers a filter for the migrations this build takes part
        in (the proposal's userspace APIC registering kvm-apic -> apic)."""
        self.dynamic_filters.append(flt)


def new_root() -> tuple[Container, Machine]:
    """A QOM root ``/`` with ``/machine`` under it."""
    root = Container()
    machine = Machine()
    root.add_child("machine", machine)
    return root, machine


def canonical_path(obj: Object) -> str:
    parts: list[str] = []
    while obj.parent is not None:
        parts.append(obj.name or "")
        obj = obj.parent
    return "/" + "/".join(reversed(parts))


def split_path(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def resolve_path(root: Object, path: str) -> Object:
    """QEMU's ``object_resolve_path``: an absolute path resolves component by
    component; a partial path (no leading ``/``) resolves when exactly one
    object's path ends with it."""
    parts = split_path(path)
    if path.startswith("/"):
        obj = root
        for i, part in enumerate(parts):
            try:
                obj = obj._children[part]
            except KeyError:
                at = "/" + "/".join(parts[:i]) if i else "/"
                raise PathNotFound(f"{path}: {at} has no child {part!r}") from None
        return obj
    if not parts:
        raise PathNotFound("empty partial path")
    matches = [o for o in root.walk() if _ends_with(o, parts)]
    if not matches:
        raise PathNotFound(f"partial path {path!r} matches no object")
    if len(matches) > 1:
        raise AmbiguousPath(path, sorted(canonical_path(m) for m in matches))
    return matches[0]


def _ends_with(obj: Object, parts: list[str]) -> bool:
    for part in reversed(parts):
        if obj.parent is None or obj.name != part:
            return False
        obj = obj.parent
    return True


# -- the type registry -----------------------------------------------------

@attrs.frozen
class TypeInfo:
    name: str
    parent: str | None
    abstract: bool
    cls: type[Object]
    version: int
    min_version: int
    plugin: str

    @property
    def state_class(self) -> type | None:
        return self.cls.STATE

    def versions(self) -> dict[int, type]:
        """Every known schema version -> the attrs class describing it."""
        out = dict(self.cls.HISTORY)
        if self.cls.STATE is not None:
            for v in range(self.min_version, self.version + 1):
                out[v] = self.cls.STATE
        return dict(sorted(out.items()))

    def accepts(self, version: int) -> bool:
        return self.min_version <= version <= self.version


class TypeRegistry:
    """Type name -> :class:`TypeInfo`, remembering which plugin gave each."""

    def __init__(self) -> None:
        self._types: dict[str, TypeInfo] = {}

    def register(self, cls: type[Object], *, plugin: str = "<in-process>") -> TypeInfo:
        from .visitor import check_state_class

        if not (isinstance(cls, type) and issubclass(cls, Object)):
            raise RegistryError(f"{plugin}: register() needs an Object subclass, got {cls!r}")
        name = cls.__dict__.get("TYPE")
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{plugin}: {cls.__qualname__} does not set its own TYPE")
        if name in self._types:
            other = self._types[name]
            raise RegistryError(
                f"type {name!r} registered twice: by {other.plugin} "
                f"({other.cls.__module__}.{other.cls.__qualname__}) and by {plugin} "
                f"({cls.__module__}.{cls.__qualname__})")
        if not 1 <= cls.MIN_VERSION <= cls.VERSION:
            raise RegistryError(f"{plugin}: type {name!r}: need 1 <= MIN_VERSION <= VERSION")
        for v, state_cls in cls.HISTORY.items():
            if cls.MIN_VERSION <= v <= cls.VERSION:
                raise RegistryError(
                    f"{plugin}: type {name!r}: HISTORY version {v} overlaps the loadable "
                    f"range {cls.MIN_VERSION}..{cls.VERSION}")
            check_state_class(state_cls, f"{name}@{v}")
        if cls.STATE is not None:
            check_state_class(cls.STATE, f"{name}@{cls.VERSION}")
        parent = cls.__dict__.get("PARENT")
        if parent is None and cls is not Object:
            # QOM's parent is the type of the nearest Python base class
            parent = next(b.TYPE for b in cls.__mro__[1:] if issubclass(b, Object))
        info = TypeInfo(name, parent, bool(cls.__dict__.get("ABSTRACT", False)), cls,
                        cls.VERSION, cls.MIN_VERSION, plugin)
        self._types[name] = info
        return info

    def unregister_plugin(self, plugin: str) -> None:
        for name in [n for n, t in self._types.items() if t.plugin == plugin]:
            del self._types[name]

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[TypeInfo]:
        return iter(sorted(self._types.values(), key=lambda t: t.name))

    def __len__(self) -> int:
        return len(self._types)

    def get(self, name: str) -> TypeInfo | None:
        return self._types.get(name)

    def lookup(self, name: str) -> TypeInfo:
        """The registered type ``name``; a stream's type name never resolves
        to anything else (no import, no attribute lookup)."""
        try:
            return self._types[name]
        except KeyError:
            raise UnknownTypeError(
                f"type {name!r} is not registered by any installed plugin") from None

    def is_a(self, name: str, ancestor: str) -> bool:
        seen = set()
        while name is not None and name not in seen:
            if name == ancestor:
                return True
            seen.add(name)
            info = self._types.get(name)
            name = info.parent if info else None
        return False

    def create(self, name: str, **props: Any) -> Object:
        info = self.lookup(name)
        if info.abstract:
            raise UnknownTypeError(f"type {name!r} is abstract and cannot be instantiated")
        return info.cls(**props)
