"""Test declarations shared by the core tests: small device types covering
every wire kind, registered in-process like a plugin would register them."""

from __future__ import annotations

import attrs

from migtree import builtin
from migtree.fields import (
    BOOL,
    U16,
    array,
    blob,
    boolean,
    bytes_,
    i8,
    i16,
    i32,
    i64,
    optional,
    string,
    struct,
    u8,
    u16,
    u32,
    u32_array,
    u64,
)
from migtree.hookspecs import hookimpl
from migtree.qom import Device
from migtree.registry import Registry


@attrs.define
class Point:
    x: int = i16()
    y: int = i16()


@attrs.define
class Sub:
    vector: int = u8()
    waiting: bool = boolean()


@attrs.define
class Everything:
    a8: int = u8()
    a16: int = u16()
    a32: int = u32(default=0xFEE00900)
    a64: int = u64()
    s8: int = i8()
    s16: int = i16()
    s32: int = i32()
    s64: int = i64(default=-1)
    flag: bool = boolean()
    name: str = string(max_length=16)
    fixed: bytes = bytes_(4)
    var: bytes = bytes_(max_length=32)
    regs: list = u32_array(8)
    shorts: list = array(U16, max_length=5)
    flags: list = array(BOOL, 3)
    points: list = array(Point, max_length=4)
    origin: Point = struct(Point)
    sub: Sub | None = optional(Sub)
    added_in_v2: int = u32(since=2)


class Widget(Device):
    TYPE = "test-widget"
    ABSTRACT = False
    STATE = Everything
    VERSION = 2
    MIN_VERSION = 1


@attrs.define
class BlobState:
    data: object = blob()
    tag: int = u8()


class Blobby(Device):
    TYPE = "test-blobby"
    ABSTRACT = False
    STATE = BlobState


class Plain(Device):
    """A stateless device."""

    TYPE = "test-plain"
    ABSTRACT = False


class TestTypes:
    @hookimpl
    def migtree_register_types(self, register):
        for cls in (Widget, Blobby, Plain):
            register(cls)


def make_registry() -> Registry:
    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    reg.add_plugin(TestTypes(), "test-types")
    return reg
