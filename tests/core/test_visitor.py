"""The Visitor: output, strict input, schema and test-data visitors, all from
one declaration."""

from __future__ import annotations

import copy

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mt_testtypes import Everything, Point, Sub

from migtree.errors import StateError
from migtree.fields import U32, Array, u8, u32
from migtree.visitor import node_to_state, schema_of, state_to_node, strategy_for

PATH = "/machine/unattached/device[0]/lapic"


@given(strategy_for(Everything, 2))
def test_any_valid_state_round_trips(state):
    node = state_to_node(Everything, state, 2, PATH)
    assert node_to_state(Everything, copy.deepcopy(node), 2, PATH) == state


@given(strategy_for(Everything, 1))
def test_version_1_nodes_load_with_newer_fields_at_their_default(state):
    node = state_to_node(Everything, state, 1, PATH)
    assert "added_in_v2" not in node
    loaded = node_to_state(Everything, node, 1, PATH)
    assert loaded.added_in_v2 == Everything().added_in_v2
    assert attrs.evolve(loaded, added_in_v2=state.added_in_v2) == state


def _node(**changes):
    node = state_to_node(Everything, Everything(), 2, PATH)
    node.update(changes)
    return node


@pytest.mark.parametrize("change, message", [
    ({"regs": [0, 0, 0, 1 << 32, 0, 0, 0, 0]}, f"{PATH}: regs[3]: 4294967296 does not fit u32"),
    ({"a8": 256}, f"{PATH}: a8: 256 does not fit u8"),
    ({"s8": -129}, f"{PATH}: s8: -129 does not fit i8"),
    ({"a8": True}, f"{PATH}: a8: expected u8, got bool"),
    ({"a32": "1"}, f"{PATH}: a32: expected u32, got str"),
    ({"regs": [0] * 7}, f"{PATH}: regs: expected 8 items, got 7"),
    ({"shorts": [0] * 6}, f"{PATH}: shorts: 6 items exceeds the maximum of 5"),
    ({"fixed": b"abc"}, f"{PATH}: fixed: expected 4 bytes, got 3"),
    ({"name": "x" * 17}, f"{PATH}: name: 17 characters exceeds the maximum of 16"),
    ({"origin": {"x": 1}}, f"{PATH}: origin.y: missing"),
    ({"origin": {"x": 1, "y": 2, "z": 3}}, f"{PATH}: origin.z: unexpected field"),
    ({"origin": [1, 2]}, f"{PATH}: origin: expected map, got array"),
    ({"points": [{"x": 1, "y": 70000}]}, f"{PATH}: points[0].y: 70000 does not fit i16"),
    ({"sub": None}, f"{PATH}: sub: present but null: leave an absent part out"),
    ({"sub": {"vector": 1, "waiting": 1}}, f"{PATH}: sub.waiting: expected bool, got int"),
    ({"extra": 1}, f"{PATH}: extra: unexpected field"),
    ({"flags": [True, 0, False]}, f"{PATH}: flags[1]: expected bool, got int"),
])
def test_input_is_strict_and_names_path_and_field(change, message):
    with pytest.raises(StateError) as e:
        node_to_state(Everything, _node(**change), 2, PATH)
    assert str(e.value) == message


def test_missing_field_is_an_error():
    node = _node()
    del node["a16"]
    with pytest.raises(StateError, match=r"device\[0\]/lapic: a16: missing$"):
        node_to_state(Everything, node, 2, PATH)


def test_field_newer_than_node_version_is_unexpected():
    node = _node()
    with pytest.raises(StateError, match="added_in_v2: unexpected field"):
        node_to_state(Everything, node, 1, PATH)


def test_output_refuses_out_of_range_values_at_save_time():
    bad = Everything(a16=1 << 16)
    with pytest.raises(StateError, match="a16: 65536 does not fit u16"):
        state_to_node(Everything, bad, 2, PATH)


def test_optional_part_is_absent_when_none_and_present_when_set():
    assert "sub" not in state_to_node(Everything, Everything(), 2)
    node = state_to_node(Everything, Everything(sub=Sub(3, True)), 2)
    assert node["sub"] == {"vector": 3, "waiting": True}


def test_schema_describes_widths_lengths_and_since():
    fields = {f["name"]: f for f in schema_of(Everything, 2)}
    assert fields["a32"]["kind"] == "u32"
    assert fields["s64"]["kind"] == "i64"
    assert fields["regs"] == {"name": "regs", "kind": "array", "element": {"kind": "u32"},
                              "length": 8}
    assert fields["points"]["element"]["fields"] == [
        {"name": "x", "kind": "i16"}, {"name": "y", "kind": "i16"}]
    assert fields["added_in_v2"]["since"] == 2
    assert "added_in_v2" not in {f["name"] for f in schema_of(Everything, 1)}
    assert fields["sub"]["inner"]["struct"] == "Sub"
    # a struct field keeps its own name; the class is under "struct"
    assert fields["origin"]["struct"] == "Point" and "Point" not in fields


@attrs.define
class Irregular:
    """A state whose array length is another field: visited by hand."""

    count: int = u32()
    items: list = attrs.field(factory=list)

    @staticmethod
    def migtree_visit(v, value):
        value.count = v.visit_int("count", value.count, U32)
        value.items = v.visit_array("items", value.items,
                                    Array(U32, max_length=value.count if value.count else 0))
        return value

    @staticmethod
    def migtree_strategy():
        return st.lists(st.integers(0, 2**32 - 1), max_size=5).map(
            lambda xs: Irregular(len(xs), xs))


@given(strategy_for(Irregular))
def test_hand_written_visit_serves_every_visitor(state):
    node = state_to_node(Irregular, state, 1)
    assert set(node) == {"count", "items"}
    assert node_to_state(Irregular, node, 1) == state


def test_hand_written_visit_is_strict_too():
    with pytest.raises(StateError, match="items: 3 items exceeds the maximum of 2"):
        node_to_state(Irregular, {"count": 2, "items": [1, 2, 3]}, 1, PATH)
    with pytest.raises(StateError, match="bogus: unexpected field"):
        node_to_state(Irregular, {"count": 0, "items": [], "bogus": 1}, 1, PATH)
    assert [f["name"] for f in schema_of(Irregular, 1)] == ["count", "items"]


def test_default_out_of_range_is_refused_at_declaration():
    with pytest.raises(ValueError, match="does not fit u8"):
        u8(default=300)
    with pytest.raises(ValueError, match="does not fit u32"):
        u32(default=-1)


def test_struct_defaults_are_independent():
    a, b = Everything(), Everything()
    a.regs[0] = 5
    a.origin.x = 3
    assert b.regs[0] == 0 and b.origin == Point()


def test_array_fill_declares_non_zero_defaults():
    import attrs as _attrs

    from migtree.fields import u32_array

    @_attrs.define
    class Lvt:
        lvt: list = u32_array(6, fill=0x10000)

    assert Lvt().lvt == [0x10000] * 6
    assert Lvt().lvt is not Lvt().lvt
    with pytest.raises(ValueError, match="does not fit u32"):
        u32_array(6, fill=-1)
