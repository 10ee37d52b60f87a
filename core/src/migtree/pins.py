"""Version pins: a build that writes and loads an older version of a type.

A build file's ``[pins]`` table maps a type to an older version it
registers (``"dg-device" = 1``), as a QEMU machine type pins compat
properties. Every object of that type in the build keeps its device code
and its current state class; only what goes on the wire changes:

* **saving**, its node (at ``VERSION``) is driven down to the pinned version
  by the build's installed filters (the same chain a migration would use),
  before it is written -- so a pinned build writes what the older release
  writes, stash included;
* **loading**, the build announces the pinned version as the only one it
  loads at that path (``Destination.of_build``), and a node at the pinned
  version is driven up to ``VERSION`` by the same filters before the input
  visitor reads it.

So one environment can run both ends of a v1 <-> v2 migration
(``migtree migrate new.toml pinned.toml``). A pin needs the filters both
ways, and the version must be one the type knows (``HISTORY``): both are
checked when the build is loaded, naming the build file's key.
"""

from __future__ import annotations

from typing import Any

import attrs

from .errors import MigtreeError

PIN_ATTR = "_migtree_pin"


@attrs.frozen
class Pin:
    """An object's pinned wire version and the filters that reach it."""

    version: int
    filters: tuple[Any, ...]


def pin_of(obj: Any) -> Pin | None:
    return obj.__dict__.get(PIN_ATTR)


def wire_version(obj: Any) -> int:
    """The version ``obj`` writes."""
    pin = pin_of(obj)
    return pin.version if pin is not None else obj.VERSION


def wire_range(obj: Any) -> tuple[int, int]:
    """The versions ``obj`` loads, ``(lo, hi)``."""
    pin = pin_of(obj)
    return (pin.version, pin.version) if pin is not None else (obj.MIN_VERSION, obj.VERSION)


def _drive(obj: Any, node: dict[str, Any], version: int, filters: tuple[Any, ...],
           path: str) -> dict[str, Any]:
    """The object's own node (children left out) driven to ``version``."""
    from .engine import TYPE_KEY, Destination, Slot, apply_filters
    from .errors import FilterError
    from .tree import is_object_node

    own = {k: v for k, v in node.items() if not is_object_node(v)}
    dest = Destination(types={obj.TYPE: (version, version)},
                       root=Slot(obj.TYPE, version, version, obj.STATE is not None),
                       name=f"pinned {obj.TYPE}@{version}")
    try:
        apply_filters(own, dest, filters)
    except FilterError as e:
        raise MigtreeError(f"{path}: pinned {obj.TYPE}: {e}") from None
    assert own[TYPE_KEY] == obj.TYPE
    return own


def to_wire(obj: Any, node: dict[str, Any], path: str) -> dict[str, Any]:
    """``node`` (own fields at ``VERSION``) as the pinned build writes it."""
    pin = pin_of(obj)
    if pin is None:
        return node
    return _drive(obj, node, pin.version, pin.filters, path)


def from_wire(obj: Any, node: dict[str, Any], path: str) -> dict[str, Any]:
    """A node at the pinned version, as ``VERSION`` (own fields only)."""
    from .engine import VERSION_KEY

    pin = pin_of(obj)
    if pin is None or node.get(VERSION_KEY) != pin.version:
        return node
    return _drive(obj, node, obj.VERSION, pin.filters, path)


def apply_pins(config: dict[str, Any], root: Any, registry: Any, fail: Any) -> list[str]:
    """Pin every object of each type ``config["pins"]`` names; notes for the
    user. ``fail(key, message)`` makes the build error."""
    from .engine import check, gather_filters

    pins = config.get("pins") or {}
    if not isinstance(pins, dict):
        raise fail("pins", "must be a table of TYPE = VERSION")
    notes = []
    filters = tuple(gather_filters(registry))
    for tname, version in pins.items():
        key = f"pins.{tname}"
        info = registry.types.get(tname)
        if info is None:
            raise fail(key, f"type {tname!r} is not registered by any installed plugin")
        if type(version) is not int:
            raise fail(key, f"expected a version number, got {version!r}")
        known = sorted(info.versions()) if info.state_class is not None else [info.version]
        if version not in known:
            raise fail(key, f"{tname} has no version {version} (known: "
                       f"{', '.join(map(str, known))})")
        objs = [o for o in root.walk() if o.TYPE == tname]
        if not objs:
            raise fail(key, f"the build has no object of type {tname!r}")
        # both ways must have a chain, or the pinned build could not save or load
        for lo, hi in ((info.version, version), (version, info.version)):
            rep = check({"format": "migtree-schema", "types": {tname: {"version": lo}}},
                        {"types": {tname: {"version": hi, "min_version": hi}}}, filters)
            if not rep.compatible:
                raise fail(key, f"cannot pin {tname} to version {version}: no installed "
                           f"filter chain from {tname}@{lo} to {tname}@{hi}")
        for obj in objs:
            obj.__dict__[PIN_ATTR] = Pin(version, filters)
        notes.append(f"{tname} pinned to version {version} (writes and loads "
                     f"{tname}@{version}; the device runs at version {info.version})")
    return notes
