"""The declarative building blocks: what each does, the errors (naming path
and field), and property tests that every inverse pair round-trips."""

from __future__ import annotations

import copy

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from test_engine_support import F, node

from migtree import ops
from migtree.errors import FilterError
from migtree.filters import FilterContext
from migtree.ops import OpError

PATH = "/machine/peripheral/dev"


def ctx(name: str = "f", pair: str | None = "p") -> FilterContext:
    return FilterContext(PATH, F(name, "a@1", "a@2", pair=pair))


def run(step, n, c=None):
    return step(n, c or ctx())


# -- strategies ------------------------------------------------------------------------

names = st.text(alphabet="abcdxyz_", min_size=1, max_size=4)
scalars = st.integers() | st.binary(max_size=8) | st.text(max_size=4) | st.booleans() | st.none()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(names, inner, min_size=1, max_size=3), max_leaves=8)
fields = st.dictionaries(names, values, max_size=6)


def obj(tv: str = "a@1", **kw):
    @st.composite
    def make(draw):
        return node(tv, **draw(fields), **kw)
    return make()


# -- behaviour --------------------------------------------------------------------------


def test_chain_runs_steps_in_order_and_compares_by_value():
    c = ops.chain(ops.rename_type("apic"), ops.set_version(3))
    assert run(c, node("kvm-apic@1", x=1)) == node("apic@3", x=1)
    assert c == ops.chain(ops.rename_type("apic"), ops.set_version(3))
    assert "rename_type(new='apic')" in repr(c)
    with pytest.raises(TypeError, match="not callable"):
        ops.chain(ops.set_version(1), 3)


def test_rename_field_keeps_the_key_position_and_reaches_into_structs():
    n = node("a@1", a=1, b=2, s={"vector": 3, "w": 0})
    run(ops.rename_field("a", "z"), n)
    assert list(n) == ["__type__", "__version__", "z", "b", "s"]
    run(ops.rename_field("s.vector", "vec"), n)
    assert n["s"] == {"vec": 3, "w": 0}
    with pytest.raises(ValueError, match="bare name"):
        ops.rename_field("a", "s.b")


def test_move_field_creates_and_prunes_plain_dicts():
    n = node("a@1", a=1, s={"b": 2})
    run(ops.move_field("a", "t.u.a"), n)
    assert n == node("a@1", s={"b": 2}, t={"u": {"a": 1}})
    run(ops.move_field("s.b", "b"), n)
    assert n == node("a@1", t={"u": {"a": 1}}, b=2)  # s left empty: removed
    run(ops.move_field("t.u.a", "a"), n)
    assert n == node("a@1", b=2, a=1)


def test_drop_and_add_use_the_stash_under_the_stash_key():
    n = node("a@1", a=1, b=[1])
    c = ctx(pair="apic-v2-v3")
    run(ops.drop_field("b"), n, c)
    assert n == node("a@1", a=1, __stash__={"apic-v2-v3": {"b": [1]}})
    run(ops.add_field("b", []), n, c)
    assert n == node("a@1", a=1, b=[1])  # stash entry and empty stash dicts removed
    assert c.defaulted == {}
    run(ops.add_field("c", [0]), n, c)
    assert n["c"] == [0] and c.defaulted == {"c": [0]}
    # without a pair, the filter's own name is the key
    n = node("a@1", a=1)
    run(ops.drop_field("a"), n, ctx("lonely", pair=None))
    assert n["__stash__"] == {"lonely": {"a": 1}}


def test_add_field_defaults_are_copied_and_factories_called():
    step = ops.add_field("l", [])
    a, b = run(step, node("a@1")), run(step, node("a@1"))
    a["l"].append(1)
    assert b["l"] == []
    assert run(ops.add_field("n", factory=lambda: 5), node("a@1"))["n"] == 5


def test_stashes_of_different_keys_do_not_mix():
    n = node("a@1", a=1)
    run(ops.drop_field("a"), n, ctx(pair="one"))
    run(ops.add_field("a", 9), n, ctx(pair="two"))
    assert n["a"] == 9 and n["__stash__"] == {"one": {"a": 1}}


def test_drop_field_with_default_does_not_stash_what_add_would_make():
    n = node("a@1", a=0, b=1)
    run(ops.chain(ops.drop_field("a", default=0), ops.drop_field("b", default=0)), n)
    assert n == node("a@1", __stash__={"p": {"b": 1}})
    n = node("a@1", a=False)
    run(ops.drop_field("a", default=0), n)  # False is not 0 here: kept
    assert n["__stash__"] == {"p": {"a": False}}


def test_convert_and_default_missing():
    n = node("a@1", a=1, s={"x": 2})
    run(ops.chain(ops.convert("a", str), ops.convert("s.x", lambda v: v * 10)), n)
    assert n == node("a@1", a="1", s={"x": 20})
    c = ctx()
    run(ops.default_missing({"s.y": 0}, a=5, b=[1]), n, c)
    assert n == node("a@1", a="1", s={"x": 20, "y": 0}, b=[1])
    assert c.defaulted == {"s.y": 0, "b": [1]}


def test_hoist_and_plunge():
    n = node("p@1", a=1, b=2, c=3)
    run(ops.plunge("kid", "k@1", ["a", "b"]), n)
    assert n == node("p@1", c=3, kid=node("k@1", a=1, b=2))
    run(ops.hoist("kid", {"a": "ka"}), n)
    assert n == node("p@1", c=3, ka=1, kid=node("k@1", b=2))  # not empty: kept
    run(ops.hoist("kid", ["b"]), n)
    assert n == node("p@1", c=3, ka=1, b=2)  # emptied: removed
    run(ops.plunge("s", None, {"c": "cc"}), n)
    assert n["s"] == {"cc": 3}  # a plain struct


def test_merge_and_split_child_with_prefix_and_child_stash():
    kid = node("k@1", q=[1], f=2, __stash__={"old": {"z": 1}})
    n = node("p@1", cfg=b"\x00", kid=kid)
    run(ops.merge_child("kid", prefix="k_"), n)
    assert n == node("p@1", cfg=b"\x00", k_q=[1], k_f=2,
                     __stash__={"p": {"kid.__stash__": {"old": {"z": 1}}}})
    run(ops.split_child("kid", "k@1", prefix="k_"), n)
    assert n == node("p@1", cfg=b"\x00", kid=node("k@1", q=[1], f=2,
                                                   __stash__={"old": {"z": 1}}))


def test_merge_child_with_listed_fields_refuses_to_lose_the_rest():
    n = node("p@1", kid=node("k@1", a=1, b=2))
    with pytest.raises(OpError, match=r"merge_child\('kid'\): field 'kid': would lose fields b"):
        run(ops.merge_child("kid", ["a"]), n)
    run(ops.merge_child("kid", {"a": "x", "b": "y"}), n)
    assert n == node("p@1", x=1, y=2)
    run(ops.split_child("kid", "k@1", {"a": "x", "b": "y"}), n)
    assert n == node("p@1", kid=node("k@1", a=1, b=2))


@pytest.mark.parametrize("step, n, message", [
    (ops.rename_field("a", "b"), node("a@1", x=1),
     "rename_field('a', 'b'): field 'a': no such field (fields: x)"),
    (ops.rename_field("a", "b"), node("a@1", a=1, b=2),
     "rename_field('a', 'b'): field 'b': already exists"),
    (ops.rename_field("s.a", "b"), node("a@1", s=3),
     "rename_field('s.a', 'b'): field 's.a': s is a int, not a struct"),
    (ops.move_field("a", "b"), node("a@1", a=1, b=1), "field 'b': already exists"),
    (ops.move_field("a", "s.b"), node("a@1", a=1, s=[]), "field 's.b': s is a list"),
    (ops.drop_field("a"), node("a@1"), "drop_field('a'): field 'a': no such field (fields: "
                                      "none)"),
    (ops.drop_field("a"), node("a@1", a=1, __stash__={"p": {"a": 0}}),
     "the stash 'p' already holds a value for it"),
    (ops.add_field("a"), node("a@1", a=1), "add_field('a'): field 'a': already exists"),
    (ops.convert("a", int), node("a@1", a="x"),
     "convert('a', int): field 'a': ValueError: invalid literal"),
    (ops.hoist("kid", ["a"]), node("p@1"), "hoist('kid'): field 'kid': the child is missing"),
    (ops.hoist("kid", ["a"]), node("p@1", kid=node("k@1")),
     "field 'kid.a': no such field"),
    (ops.hoist("kid", ["a"]), node("p@1", a=0, kid=node("k@1", a=1)),
     "field 'a': already exists in the node"),
    (ops.plunge("kid", "k@1", ["a"]), node("p@1"), "plunge('kid'): field 'a': no such field"),
    (ops.plunge("kid", "k@1", ["a"]), node("p@1", a=1, kid=1),
     "field 'kid': the node already has it"),
    (ops.merge_child("kid"), node("p@1", a=1, kid=node("k@1", a=2)),
     "field 'a': already exists in the node (use prefix= or a mapping to rename)"),
    (ops.split_child("kid", "k@1", ["a"]), node("p@1"), "field 'a': no such field"),
])
def test_errors_name_the_path_the_step_and_the_field(step, n, message):
    with pytest.raises(OpError) as e:
        run(step, n)
    assert str(e.value).startswith(f"{PATH}: ")
    assert message in str(e.value)
    assert isinstance(e.value, FilterError)
    assert e.value.path == PATH


def test_declarations_are_checked_when_made():
    with pytest.raises(ValueError, match="reserved"):
        ops.drop_field("__stash__")
    with pytest.raises(ValueError, match="dotted path"):
        ops.move_field("a..b", "c")
    with pytest.raises(ValueError, match="give fields, or a prefix"):
        ops.split_child("kid", "k@1")
    with pytest.raises(ValueError, match="not a string"):
        ops.hoist("kid", "ab")


# -- every inverse pair round-trips (property tests) ---------------------------------------


def roundtrip(forward, backward, n, c=None):
    c = c or ctx()
    original = copy.deepcopy(n)
    mid = forward(copy.deepcopy(n), c)
    back = backward(copy.deepcopy(mid), c)
    assert back == original
    return mid


@given(obj(), names, values)
def test_drop_then_add_is_the_identity(n, name, value):
    n[name] = value
    mid = roundtrip(ops.drop_field(name), ops.add_field(name, "whatever"), n)
    assert name not in mid


@given(obj(), names, values)
def test_add_then_drop_with_default_is_the_identity(n, name, default):
    n.pop(name, None)
    roundtrip(ops.add_field(name, default), ops.drop_field(name, default=default), n)


@given(obj(), names, names)
def test_rename_then_rename_back_is_the_identity(n, a, b):
    assume(a != b)
    n.pop(b, None)
    n[a] = 1
    roundtrip(ops.rename_field(a, b), ops.rename_field(b, a), n)


@given(obj(), names, names, names, values)
def test_move_then_move_back_is_the_identity(n, a, s, b, value):
    assume(a != s)
    n[a] = value
    n.pop(s, None)
    roundtrip(ops.move_field(a, f"{s}.{b}"), ops.move_field(f"{s}.{b}", a), n)


@given(obj(), st.lists(names, min_size=1, max_size=4, unique=True), values)
def test_plunge_then_hoist_is_the_identity(n, moved, value):
    for f in moved:
        n[f] = value
    n.pop("kid", None)
    mid = roundtrip(ops.plunge("kid", "k@1", moved), ops.hoist("kid", moved), n)
    assert set(mid["kid"]) == {"__type__", "__version__", *moved}


@given(fields, st.lists(names, min_size=1, max_size=4, unique=True), values)
def test_hoist_then_plunge_is_the_identity(parent_fields, moved, value):
    for f in moved:
        parent_fields.pop(f, None)
    n = node("p@1", **parent_fields, kid=node("k@2", **dict.fromkeys(moved, value)))
    roundtrip(ops.hoist("kid", moved), ops.plunge("kid", "k@2", moved), n)


@given(fields, fields, st.sampled_from(["blk_", "k_"]), st.booleans())
def test_merge_child_then_split_child_is_the_identity(parent_fields, kid_fields, prefix,
                                                        stash):
    parent_fields = {k: v for k, v in parent_fields.items() if not k.startswith(prefix)}
    kid = node("k@1", **kid_fields)
    if stash:
        kid["__stash__"] = {"elsewhere": {"x": 1}}
    n = node("p@1", **parent_fields, kid=kid)
    roundtrip(ops.merge_child("kid", prefix=prefix),
              ops.split_child("kid", "k@1", prefix=prefix), n)


@given(obj(), st.integers())
def test_convert_with_an_inverse_is_the_identity(n, value):
    n["v"] = value
    roundtrip(ops.convert("v", lambda x: x ^ 0xFFFF), ops.convert("v", lambda x: x ^ 0xFFFF), n)


@given(obj("kvm-apic@1"))
def test_rename_type_and_version_back_is_the_identity(n):
    roundtrip(ops.chain(ops.rename_type("apic"), ops.set_version(3)),
              ops.chain(ops.rename_type("kvm-apic"), ops.set_version(1)), n)
