"""Saving whole composition trees and loading them back, all-or-nothing."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mt_testtypes import Blobby, Everything, Plain, Widget, make_registry

from migtree.blob import Blob
from migtree.errors import LoadError
from migtree.qom import new_root
from migtree.tree import get_node, iter_object_nodes, load_tree, save_tree
from migtree.visitor import strategy_for


def build(n_widgets=2):
    root, machine = new_root()
    widgets = [machine.add_device(Widget(), f"w{i}") for i in range(n_widgets)]
    plain = machine.add_device(Plain())
    inner = widgets[0].add_child("inner", Widget())
    return root, machine, widgets, plain, inner


def test_tree_mirrors_the_composition():
    root, machine, widgets, plain, inner = build()
    tree = save_tree(root)
    paths = [p for p, _ in iter_object_nodes(tree)]
    assert paths == [o.path for o in root.walk()]
    node = get_node(tree, "/machine/peripheral/w0/inner")
    assert node["__type__"] == "test-widget" and node["__version__"] == 2
    assert get_node(tree, "/machine/peripheral/w0")["inner"] is node


@given(st.lists(strategy_for(Everything, 2), min_size=3, max_size=3), st.integers(0, 2**62))
def test_every_state_survives_save_and_load(states, clock):
    root, machine, widgets, plain, inner = build()
    for obj, state in zip([*widgets, inner], states, strict=True):
        obj.state = state
    machine.state.clock_ns = clock
    tree = save_tree(root)
    root2, machine2, widgets2, _, inner2 = build()
    report = load_tree(copy.deepcopy(tree), root2)
    assert [w.state for w in widgets2] + [inner2.state] == states
    assert machine2.state.clock_ns == clock
    assert report.missing == [] and report.unconsumed == []


def test_failed_load_changes_nothing():
    root, machine, widgets, plain, inner = build()
    widgets[0].state.a8 = 7
    tree = save_tree(root)
    tree["machine"]["peripheral"]["w1"]["a8"] = 999
    root2, machine2, widgets2, _, inner2 = build()
    widgets2[0].state.a8 = 42
    before = [copy.deepcopy(o.state) for o in root2.walk()]
    with pytest.raises(LoadError) as e:
        load_tree(tree, root2)
    assert "/machine/peripheral/w1: a8: 999 does not fit u8" in str(e.value)
    assert "nothing was changed" in str(e.value)
    assert [o.state for o in root2.walk()] == before


def test_all_errors_are_reported_at_once():
    root, *_ = build()
    tree = save_tree(root)
    tree["machine"]["peripheral"]["w0"]["a8"] = -1
    tree["machine"]["peripheral"]["w1"]["a16"] = -1
    root2, *_ = build()
    with pytest.raises(LoadError, match="2 errors") as e:
        load_tree(tree, root2)
    assert "w0: a8" in str(e.value) and "w1: a16" in str(e.value)


def test_post_load_failure_restores_every_object():
    class Fragile(Widget):
        TYPE = "fragile"
        calls = 0

        def post_load(self):
            Fragile.calls += 1
            if self.state.a8 == 13:
                raise RuntimeError("device refused")

    root, machine = new_root()
    a = machine.add_device(Widget(), "a")
    f = machine.add_device(Fragile(), "f")
    a.state.a8, f.state.a8 = 1, 13
    tree = save_tree(root)
    root2, machine2 = new_root()
    a2 = machine2.add_device(Widget(), "a")
    f2 = machine2.add_device(Fragile(), "f")
    old_a, old_f = a2.state, f2.state
    with pytest.raises(LoadError, match="post_load failed.*device refused"):
        load_tree(tree, root2)
    assert a2.state is old_a and f2.state is old_f


def test_coverage_both_ways_is_reported():
    root, machine, widgets, plain, inner = build(n_widgets=2)
    tree = save_tree(root)
    root2, machine2 = new_root()
    machine2.add_device(Widget(), "w0")          # no "inner" child, no w1
    machine2.add_device(Widget(), "w9")          # nothing in the tree for it
    machine2.add_device(Plain())
    with pytest.raises(LoadError) as e:
        load_tree(copy.deepcopy(tree), root2)
    msg = str(e.value)
    assert "/machine/peripheral/w9: the build has an object with state here" in msg
    assert "/machine/peripheral/w1: the tree has a node here that no object" in msg
    assert "/machine/peripheral/w0/inner: the tree has a node here" in msg
    report = load_tree(copy.deepcopy(tree), root2, allow_missing=True, allow_unconsumed=True)
    assert report.missing == ["/machine/peripheral/w9"]
    assert report.unconsumed == ["/machine/peripheral/w0/inner", "/machine/peripheral/w1"]


def test_type_and_version_mismatch_name_both_sides():
    root, machine, *_ = build()
    tree = save_tree(root)
    tree["machine"]["peripheral"]["w0"]["__type__"] = "kvm-widget"
    tree["machine"]["peripheral"]["w1"]["__version__"] = 9
    root2, *_ = build()
    with pytest.raises(LoadError) as e:
        load_tree(tree, root2)
    msg = str(e.value)
    assert "/machine/peripheral/w0: the tree holds kvm-widget@2 but the build has " \
           "test-widget@2 here" in msg
    assert "/machine/peripheral/w1: test-widget version 9 is outside the range this build " \
           "loads (1..2)" in msg


def test_blob_fields_round_trip_through_the_tree():
    reg = make_registry()
    assert reg.types.lookup("test-blobby")
    root, machine = new_root()
    b = machine.add_device(Blobby(), "b")
    b.state.data = Blob(b"x" * 100_000)
    tree = save_tree(root)
    root2, machine2 = new_root()
    b2 = machine2.add_device(Blobby(), "b")
    load_tree(tree, root2)
    assert b2.state.data.read() == b"x" * 100_000


def test_check_load_refuses_before_any_object_changes():
    from migtree.errors import MigtreeError

    class Picky(Widget):
        TYPE = "picky"

        def check_load(self, state):
            if state.a8 == 66:
                raise MigtreeError("this disk is 66 sectors, mine is 64")

    root, machine = new_root()
    machine.add_device(Widget(), "a").state.a8 = 1
    machine.add_device(Picky(), "p").state.a8 = 66
    tree = save_tree(root)
    root2, machine2 = new_root()
    a2 = machine2.add_device(Widget(), "a")
    machine2.add_device(Picky(), "p")
    with pytest.raises(LoadError, match="/machine/peripheral/p: this disk is 66 sectors"):
        load_tree(tree, root2)
    assert a2.state.a8 == 0


def test_irreversible_post_loads_run_last():
    calls = []

    class Early(Widget):
        TYPE = "early"

        def post_load(self):
            calls.append(self.name)

    class Irreversible(Early):
        TYPE = "irreversible"
        POST_LOAD_ORDER = 1000

    def make():
        root, machine = new_root()
        machine.add_device(Irreversible(), "ram")
        machine.add_device(Early(), "dev")
        return root

    load_tree(save_tree(make()), make())
    assert calls == ["dev", "ram"]
