"""A well-behaved plugin implementing every hook: ``migtree plugins`` must list
all of it, with this distribution's name and version."""

from __future__ import annotations

import attrs

from migtree import hookimpl
from migtree.build import Backend, Workload
from migtree.fields import u8, u16, u32
from migtree.filters import Filter, FilterPair
from migtree.qom import Device


@attrs.define
class GoodStateV1:
    level: int = u8()


@attrs.define
class GoodState:
    level: int = u16()
    mode: int = u32(since=2)


class GoodDevice(Device):
    TYPE = "fixture-good"
    ABSTRACT = False
    STATE = GoodState
    VERSION = 2
    MIN_VERSION = 2
    HISTORY = {1: GoodStateV1}


def _up(node, ctx):
    node["__version__"] = 2
    node["mode"] = node.get("__stash__", {}).pop(ctx.stash_key, {}).get("mode", 0)
    if node.get("__stash__") == {}:
        del node["__stash__"]
    return node


def _down(node, ctx):
    node["__version__"] = 1
    mode = node.pop("mode")
    if mode:
        node.setdefault("__stash__", {})[ctx.stash_key] = {"mode": mode}
    return node


PAIR = FilterPair(
    "fixture-good-v1-v2",
    Filter(name="fixture-good-v1-to-v2", match="fixture-good@1", produces="fixture-good@2",
           func=_up),
    Filter(name="fixture-good-v2-to-v1", match="fixture-good@2", produces="fixture-good@1",
           func=_down),
)


@attrs.define
class GoodFormat:
    name: str = "fixture-format"
    plugin: str = ""

    def sniff(self, head: bytes) -> bool:
        return head.startswith(b"FIXT")

    def read(self, fp):
        """A fixture stream is ``FIXT`` followed by a migtree stream."""
        from migtree.errors import StreamError
        from migtree.stream import read_tree

        if fp.read(4) != b"FIXT":
            raise StreamError("not a fixture-format stream: no FIXT magic")
        return read_tree(fp)


@attrs.define
class GoodDecoder:
    format: str = "fixture-format"
    key: str = "fixture-blob"
    plugin: str = ""

    def decode(self, data: bytes, context) -> dict:
        return {"data": data}

    def encode(self, node: dict, context) -> bytes:
        return node["data"]


@hookimpl
def migtree_register_types(register):
    register(GoodDevice)


@hookimpl
def migtree_register_filters(register):
    register(PAIR)


@hookimpl
def migtree_register_backends(register):
    register(Backend("fixture-backend", "a backend that creates no CPUs",
                     create_cpus=lambda machine, count, registry: None))


@hookimpl
def migtree_register_stream_formats(register):
    register(GoodFormat())


@hookimpl
def migtree_register_opaque_decoders(register):
    register(GoodDecoder())


@hookimpl
def migtree_register_workloads(register):
    register(Workload("fixture-idle", applies=lambda m: True, start=lambda m, seed: None,
                      finish=lambda m: None, check=lambda m: {}))


@hookimpl
def migtree_object_realized(obj, register_filter):
    if obj.TYPE == "fixture-good":
        register_filter(Filter(name="fixture-good-dynamic", match="fixture-good@1",
                               produces="fixture-good@2", func=_up, path=obj.path))
