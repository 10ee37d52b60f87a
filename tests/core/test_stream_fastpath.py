"""The compiled fast path of state_to_node / node_to_state (visitor.py) must
behave exactly like the generic visitor: same nodes, same states, and on
bad input the same StateError message (it falls back to the generic visitor
for anything it does not expect)."""

from __future__ import annotations

import copy

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mt_testtypes import BlobState, Everything, Point, Sub

from migtree import visitor
from migtree.errors import StateError
from migtree.fields import BOOL, STR, U8, array, optional, struct, u8, u16, u32
from migtree.fields import Array as WArray
from migtree.fields import Bytes as WBytes
from migtree.fields import Optional as WOptional
from migtree.fields import Struct as WStruct
from migtree.visitor import (
    InputVisitor,
    OutputVisitor,
    compiled,
    node_to_state,
    state_to_node,
    strategy_for,
)


def generic_out(cls, value, version):
    ov = OutputVisitor(version, "/p")
    ov.visit_fields(cls, value)
    return ov.result()


def generic_in(cls, node, version):
    return InputVisitor(node, version, "/p").visit_top(cls)


@attrs.define
class Nested:
    rows: list = array(Point, max_length=3)
    blobs: list = array(WBytes(2), length=2)
    names: list = array(STR, max_length=2)
    grid: list = array(WArray(U8, 2), max_length=2)
    bits: list = array(BOOL, 2)
    maybe: list | None = optional(WArray(U8, max_length=3))
    inner: Sub = struct(Sub)
    tail: int = u16(since=2)


@attrs.define
class Validated:
    x: int = u8(default=1)
    checked: int = attrs.field(default=0, validator=attrs.validators.instance_of(int),
                               metadata=u32().metadata)


@attrs.define
class HandWritten:
    a: int = u8()

    @staticmethod
    def migtree_visit(v, value):
        value.a = v.visit_int("a", value.a, U8)
        return value


@attrs.define
class OptionalElements:
    xs: list = array(WOptional(WStruct(Point)), max_length=2)


CLASSES = [(Everything, 1), (Everything, 2), (BlobState, 1), (Nested, 1), (Nested, 2),
           (Validated, 1)]


@pytest.mark.parametrize("cls, version", CLASSES)
def test_declarations_compile(cls, version):
    assert compiled(cls, version) is not None


def test_hand_written_and_optional_elements_stay_generic():
    assert compiled(HandWritten, 1) is None
    assert compiled(OptionalElements, 1) is None
    assert state_to_node(HandWritten, HandWritten(3), 1) == {"a": 3}
    assert node_to_state(HandWritten, {"a": 3}, 1) == HandWritten(3)


@pytest.mark.parametrize("cls, version", CLASSES)
@given(data=st.data())
def test_same_nodes_and_states_as_the_generic_visitor(cls, version, data):
    value = data.draw(strategy_for(cls, version))
    node = state_to_node(cls, copy.deepcopy(value), version, "/p")
    assert node == generic_out(cls, copy.deepcopy(value), version)
    assert list(node) == list(generic_out(cls, copy.deepcopy(value), version))  # key order
    back = node_to_state(cls, node, version, "/p")
    assert back == generic_in(cls, node, version) == value
    # the state owns its lists: the node is not aliased into it
    for f in attrs.fields(cls):
        if isinstance(getattr(back, f.name), list) and f.name in node:
            assert getattr(back, f.name) is not node[f.name]


def _mutations(node):
    """(description, mutated node) pairs: every value replaced by wrong
    things, every key dropped, one key added."""
    def walk(x, path):
        if isinstance(x, dict):
            for k in list(x):
                yield path + (k,)
                yield from walk(x[k], path + (k,))
        elif isinstance(x, list):
            for i in range(len(x)):
                yield path + (i,)
                yield from walk(x[i], path + (i,))

    for path in list(walk(node, ())):
        for bad in (-1, 2**64, 1.5, True, None, "s", b"\x00" * 300, [], {}, [1.5],
                    {"__type__": "x"}):
            n = copy.deepcopy(node)
            parent = n
            for p in path[:-1]:
                parent = parent[p]
            parent[path[-1]] = bad
            yield f"{path} = {bad!r}", n
        n = copy.deepcopy(node)
        parent = n
        for p in path[:-1]:
            parent = parent[p]
        if isinstance(parent, dict):
            del parent[path[-1]]
            yield f"del {path}", n
    for extra in ("unknown", "__stash__", "__type__"):
        n = copy.deepcopy(node)
        n[extra] = 1
        yield f"+{extra}", n
    n = copy.deepcopy(node)
    n["child"] = {"__type__": "c", "__version__": 1}
    yield "+child object", n


@pytest.mark.parametrize("cls, version", [(Everything, 2), (Nested, 1), (BlobState, 1)])
def test_bad_nodes_give_the_generic_errors(cls, version):
    node = generic_out(cls, cls(), version)
    for what, bad in _mutations(node):
        try:
            want = generic_in(cls, copy.deepcopy(bad), version)
        except StateError as e:
            with pytest.raises(StateError) as got:
                node_to_state(cls, copy.deepcopy(bad), version, "/p")
            assert str(got.value) == str(e), what
        else:
            assert node_to_state(cls, copy.deepcopy(bad), version, "/p") == want, what


def test_bad_states_give_the_generic_errors():
    for attr, bad in [("a8", 256), ("a8", -1), ("a8", True), ("s64", 2**63), ("flag", 1),
                      ("name", "x" * 17), ("fixed", b"123"), ("var", "str"),
                      ("regs", [0] * 7), ("regs", [0] * 7 + [2**32]), ("regs", (0,) * 8),
                      ("points", [Point()] * 5), ("points", [Sub()]), ("origin", Sub()),
                      ("sub", Point()), ("fixed", bytearray(4))]:
        value = Everything()
        setattr(value, attr, bad)
        try:
            want = generic_out(Everything, copy.deepcopy(value), 2)
        except StateError as e:
            with pytest.raises(StateError) as got:
                state_to_node(Everything, value, 2, "/p")
            assert str(got.value) == str(e), attr
        else:
            assert state_to_node(Everything, value, 2, "/p") == want, attr


def test_validators_are_bypassed_as_the_generic_visitor_does():
    # the generic input visitor sets fields with object.__setattr__; so does the
    # compiled path for a class whose __init__ would run validators
    assert not visitor._plain_init(Validated)
    assert node_to_state(Validated, {"x": 2, "checked": 7}, 1) == Validated(2, 7)


def test_generated_source_names_only_declared_fields():
    comp = visitor._Compiler(2)
    comp.compile(Everything)
    source = "\n".join(comp.src)
    names = {f.name for f in attrs.fields(Everything)} | {"x", "y", "vector", "waiting"}
    import re
    quoted = set(re.findall(r"node\['([^']+)'\]|d\['([^']+)'\]", source))
    assert {a or b for a, b in quoted} <= names
