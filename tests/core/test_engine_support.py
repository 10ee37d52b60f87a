"""Helpers shared by the engine, ops and check tests (no tests here)."""

from __future__ import annotations

from typing import Any

import attrs

from migtree import builtin, ops
from migtree.build import Backend, load_build
from migtree.engine import Destination
from migtree.fields import u32
from migtree.filters import Filter, TypeVersion
from migtree.hookspecs import hookimpl
from migtree.qom import Device
from migtree.registry import Registry


def node(tv: str, **fields: Any) -> dict[str, Any]:
    """``node("apic@3", tpr=1)`` -> ``{"__type__": "apic", "__version__": 3, "tpr": 1}``."""
    t = TypeVersion.parse(tv)
    return {"__type__": t.type, "__version__": t.version, **fields}


def tree(**children: Any) -> dict[str, Any]:
    """A root container holding ``children``."""
    return node("container@1", **children)


def dest(objects: dict[str, str] | None = None, types: dict[str, str] | None = None,
         name: str = "dest") -> Destination:
    """A destination from ``{path: "T@V" | "T@LO..HI"}`` and registered
    ``{type: "V" | "LO..HI"}``, through the schema-dump shape. The root
    container is added when ``objects`` is given without it."""
    ty: dict[str, Any] = {"container": {"version": 1}}
    for t, rng in (types or {}).items():
        lo, _, hi = str(rng).partition("..")
        ty[t] = {"version": int(hi or lo), "min_version": int(lo)}
    dump: dict[str, Any] = {"name": name, "types": ty}
    if objects is not None:
        objs = {"/": "container@1", **objects}
        dump["objects"] = objs
    return Destination.of_schema(dump)


def step(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """The plainest filter function: become what the filter declares."""
    p = ctx.filter.produces
    node["__type__"], node["__version__"] = p.type, p.version
    return node


def F(name: str, match: str, produces: str, func: Any = None, **kw: Any) -> Filter:
    return Filter(name=name, match=match, produces=produces, func=func or step, **kw)


def order(report: Any) -> list[tuple[str, str]]:
    """(filter, path) of every application, in order."""
    return [(a.filter, a.path) for a in report.applications]


def blk_filters() -> dict[str, Filter]:
    """The virtio-blk-pci <-> virtio-pci + virtio-blk pair and blk versions,
    as the design notes describe them (fields are made up)."""
    split = F("blkpci-split", "virtio-blk-pci@1", "virtio-pci@1",
              ops.chain(ops.split_child("virtio-backend", "virtio-blk@1", prefix="blk_"),
                        ops.rename_type("virtio-pci")),
              creates={"virtio-backend": "virtio-blk@1"}, pair="blkpci")
    merge = F("blkpci-merge", "virtio-pci@1", "virtio-blk-pci@1",
              ops.chain(ops.merge_child("virtio-backend", prefix="blk_"),
                        ops.rename_type("virtio-blk-pci")),
              consumes={"virtio-backend": "virtio-blk@1"}, pair="blkpci")
    up = F("blk-v1-to-v2", "virtio-blk@1", "virtio-blk@2",
           ops.chain(ops.rename_field("q", "queues"), ops.add_field("wce", 1),
                     ops.set_version(2)), pair="blk12")
    down = F("blk-v2-to-v1", "virtio-blk@2", "virtio-blk@1",
             ops.chain(ops.drop_field("wce"), ops.rename_field("queues", "q"),
                       ops.set_version(1)), pair="blk12")
    return {"split": split, "merge": merge, "up": up, "down": down}


# -- a plugin whose new device registers a dynamic filter --------------------------


@attrs.define
class OldState:
    value: int = u32()


@attrs.define
class NewState:
    value: int = u32()
    extra: int = u32()


class OldDev(Device):
    TYPE = "t-old"
    ABSTRACT = False
    STATE = OldState


class NewDev(Device):
    TYPE = "t-new"
    ABSTRACT = False
    STATE = NewState
    VERSION = 2
    MIN_VERSION = 2

    def realize(self):
        # the proposal: the device registers the filter for its own migration
        if getattr(self, "register_dynamic", False):
            self.machine.register_filter(old_to_new(self.path, "device"))


def old_to_new(path, how):
    return F(f"old-to-new-{how}", "t-old@1", "t-new@2",
             ops.chain(ops.rename_type("t-new"), ops.add_field("extra", 7), ops.set_version(2)),
             path=path)


class DynPlugin:
    @hookimpl
    def migtree_register_types(self, register):
        register(OldDev)
        register(NewDev)

    @hookimpl
    def migtree_register_backends(self, register):
        register(Backend("test", "no vCPUs", lambda machine, count, registry: None))

    @hookimpl
    def migtree_object_realized(self, obj, register_filter):
        if obj.TYPE == "t-new":
            register_filter(old_to_new(obj.path, "hook"))


def dyn_registry():
    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    reg.add_plugin(DynPlugin(), "dyn-plugin")
    return reg


def build_with(type_name, reg):
    return load_build({"machine": {"backend": "test"},
                       "device": [{"type": type_name, "id": "d0"}]}, reg)
