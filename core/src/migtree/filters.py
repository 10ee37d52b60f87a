"""Filter declarations: what a filter matches, what it produces, and the
function that rewrites a node. The engine that applies them lives in
:mod:`migtree.engine`; the common rewrites are in :mod:`migtree.ops`.

A filter is a function ``node -> node`` (the proposal's
``QDict *filter(QDict *state, void *opaque)``) plus a declaration the engine
chains and ``migtree check`` reasons about without running anything::

    Filter(name="kvm-apic-to-apic", match="kvm-apic@1", produces="apic@3",
           func=kvm_page_to_apic)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .errors import RegistryError

_TV_RE = re.compile(r"^(?P<type>[A-Za-z0-9_.+:,\-]+)@(?P<lo>\d+)(?:\.\.(?P<hi>\d+))?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]+$")


@attrs.frozen(order=True)
class TypeVersion:
    """``type@version``, e.g. ``apic@3``."""

    type: str
    version: int

    @classmethod
    def parse(cls, text: str | TypeVersion) -> TypeVersion:
        if isinstance(text, TypeVersion):
            return text
        if not isinstance(text, str):  # declarations also come from peers and files
            raise RegistryError(f"expected TYPE@VERSION text, got {text!r}")
        m = _TV_RE.fullmatch(text)
        if not m or m["hi"] is not None:
            raise RegistryError(f"expected TYPE@VERSION, got {text!r}")
        return cls(m["type"], int(m["lo"]))

    def __str__(self) -> str:
        return f"{self.type}@{self.version}"


@attrs.frozen
class TypeRange:
    """``type@lo..hi`` (or ``type@v``, or a bare ``type`` for any version)."""

    type: str
    lo: int = 1
    hi: int = 1 << 31

    @classmethod
    def parse(cls, text: str | TypeRange) -> TypeRange:
        if isinstance(text, TypeRange):
            return text
        if not isinstance(text, str):  # a map here would become an unhashable type name
            raise RegistryError(f"expected TYPE, TYPE@V or TYPE@LO..HI text, got {text!r}")
        if "@" not in text:
            return cls(text)
        m = _TV_RE.fullmatch(text)
        if not m:
            raise RegistryError(f"expected TYPE, TYPE@V or TYPE@LO..HI, got {text!r}")
        lo = int(m["lo"])
        hi = int(m["hi"]) if m["hi"] is not None else lo
        if hi < lo:
            raise RegistryError(f"empty version range in {text!r}")
        return cls(m["type"], lo, hi)

    def contains(self, tv: TypeVersion) -> bool:
        return tv.type == self.type and self.lo <= tv.version <= self.hi

    def __str__(self) -> str:
        if self.lo == 1 and self.hi == 1 << 31:
            return self.type
        return f"{self.type}@{self.lo}" + (f"..{self.hi}" if self.hi != self.lo else "")


def _tv(x: Any) -> TypeVersion:
    return TypeVersion.parse(x)


def _tr(x: Any) -> TypeRange:
    return TypeRange.parse(x)


def _tv_map(m: Mapping[str, Any]) -> dict[str, TypeVersion]:
    return {k: TypeVersion.parse(v) for k, v in dict(m).items()}


def _tr_map(m: Mapping[str, Any]) -> dict[str, TypeRange]:
    return {k: TypeRange.parse(v) for k, v in dict(m).items()}


@attrs.frozen
class Filter:
    """One rewrite.

    :param name: unique across all plugins (``"kvm-apic-to-apic"``).
    :param match: the ``__type__`` (and optional version range) it rewrites:
        ``"kvm-apic"``, ``"apic@2"``, ``"apic@1..2"``.
    :param produces: what the node is afterwards, ``"apic@3"``; the engine
        checks the function kept its word.
    :param func: ``func(node, ctx) -> node``; may mutate and return ``node``.
    :param creates: children a split adds: child name -> ``type@version``.
    :param consumes: children a merge folds in: child name -> ``type@lo..hi``
        they must have reached first (the engine drives them there).
    :param path: optional QOM path pattern (``*`` is one component, ``**``
        any number) limiting where the filter applies.
    :param priority: higher runs first when several filters match; ties go to
        the filter name, so the order never depends on plugin load order.
    :param pair: the name shared by a reversible pair (their stash key).
    :param drops: dotted keys of optional parts (a QEMU subsection, a field
        a newer build added) the filter removes from the node; checked. A
        filter that keeps the node's ``type@version`` (``produces`` equals
        what it matched) runs only when the destination names one of these
        parts as a misfit (docs/filters.md 2.15).
    :param restores: dotted keys of optional parts the filter puts back
        (from the stash) when the destination can hold them.
    """

    name: str
    match: TypeRange = attrs.field(converter=_tr)
    produces: TypeVersion = attrs.field(converter=_tv)
    func: Callable[[dict[str, Any], Any], dict[str, Any]] = attrs.field(repr=False)
    creates: dict[str, TypeVersion] = attrs.field(factory=dict, converter=_tv_map)
    consumes: dict[str, TypeRange] = attrs.field(factory=dict, converter=_tr_map)
    path: str | None = None
    priority: int = 0
    pair: str | None = None
    drops: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    restores: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    description: str = ""
    plugin: str = "<in-process>"
    dynamic: bool = False

    def __attrs_post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise RegistryError(f"invalid filter name {self.name!r}")
        if not callable(self.func):
            raise RegistryError(f"filter {self.name!r}: func is not callable")

    def sort_key(self) -> tuple[int, str]:
        return (-self.priority, self.name)


@attrs.frozen
class FilterPair:
    """A forward filter and the backward filter that undoes it. Registering a
    pair registers both, with the pair's name as their shared stash key."""

    name: str
    forward: Filter
    backward: Filter

    def filters(self) -> tuple[Filter, Filter]:
        return (attrs.evolve(self.forward, pair=self.name),
                attrs.evolve(self.backward, pair=self.name))


@attrs.define
class FilterContext:
    """What a filter function gets besides the node.

    ``defaulted`` collects the fields the filter filled with a default rather
    than from the stash (``migtree explain`` shows them); :mod:`migtree.ops`
    records them through :meth:`note_default`.
    """

    path: str
    filter: Filter
    defaulted: dict[str, Any] = attrs.Factory(dict)
    #: the whole tree being filtered, for reading context a node does not
    #: carry (the source machine's virtual clock at ``tree["machine"]``); a
    #: filter rewrites only the node it is given
    tree: dict[str, Any] | None = None

    def source_clock_ns(self) -> int | None:
        """The source machine's virtual clock when the stream was saved."""
        machine = (self.tree or {}).get("machine")
        value = machine.get("clock_ns") if type(machine) is dict else None
        return value if type(value) is int else None

    @property
    def stash_key(self) -> str:
        return self.filter.pair or self.filter.name

    def note_default(self, field: str, value: Any) -> None:
        """Record that ``field`` was given ``value`` by default."""
        self.defaulted[field] = value
