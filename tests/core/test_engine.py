"""The filter engine's documented semantics (docs/filters.md), one test per
rule: each fails if the rule changes."""

from __future__ import annotations

import copy
import json

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_engine_support import (
    F,
    NewDev,
    NewState,
    blk_filters,
    build_with,
    dest,
    dyn_registry,
    node,
    order,
    tree,
)

from migtree import ops
from migtree.engine import (
    MAX_APPLICATIONS,
    Destination,
    SchemaDumpError,
    apply_filters,
    compile_path_pattern,
    gather_filters,
)
from migtree.errors import FilterError
from migtree.filters import FilterPair
from migtree.tree import load_tree, save_tree

# -- target-directed -------------------------------------------------------------


def test_acceptable_nodes_are_never_rewritten_even_when_a_filter_matches():
    t = tree(dev=node("a@2", x=1))
    f = F("a-2-to-3", "a@2", "a@3")
    report = apply_filters(t, dest({"/dev": "a@1..2"}, {"a": "1..3"}), [f])
    assert t["dev"] == node("a@2", x=1)
    assert report.applications == []


def test_a_node_is_driven_to_what_the_destination_has_at_its_path():
    t = tree(dev=node("a@2"))
    f = F("a-2-to-3", "a@2", "a@3")
    report = apply_filters(t, dest({"/dev": "a@3"}, {"a": "2..3"}), [f])
    assert t["dev"]["__version__"] == 3
    assert order(report) == [("a-2-to-3", "/dev")]


def test_without_an_object_at_the_path_a_registered_type_in_range_is_acceptable():
    t = tree(extra=node("a@2"), old=node("a@1"))
    f = F("a-1-to-2", "a@1", "a@2")
    report = apply_filters(t, dest({}, {"a": "2..3"}), [f])
    # a@2 is in the registered range: untouched; a@1 is not: driven into it
    assert order(report) == [("a-1-to-2", "/old")]
    assert t["old"]["__version__"] == 2


def test_a_schema_destination_without_objects_judges_by_registered_types():
    t = tree(dev=node("kvm-a@1"))
    f = F("kvm-a-to-a", "kvm-a@1", "a@3")
    apply_filters(t, dest(None, {"a": "3"}), [f])
    assert t["dev"] == node("a@3")


def test_the_shortest_chain_wins_over_a_longer_one():
    fs = [F("a-1-2", "a@1", "a@2"), F("a-2-3", "a@2", "a@3"), F("a-3-4", "a@3", "a@4"),
          F("a-1-3-shortcut", "a@1", "a@3")]
    t = tree(dev=node("a@1"))
    report = apply_filters(t, dest({"/dev": "a@4"}, {"a": "4"}), fs)
    assert order(report) == [("a-1-3-shortcut", "/dev"), ("a-3-4", "/dev")]


# -- several filters match: priority, then name, never registration order -------


@given(st.permutations(range(4)))
def test_two_filters_matching_one_node_priority_then_name(perm):
    fs = [F("beta", "a@1", "b@1"), F("alpha", "a@1", "b@1"),
          F("unrelated", "z@1", "b@1"), F("gamma", "a@1", "c@1")]
    shuffled = [fs[i] for i in perm]
    d = dest({}, {"b": "1", "c": "1"})
    t = tree(dev=node("a@1"))
    report = apply_filters(t, d, shuffled)
    assert order(report) == [("alpha", "/dev")]  # equal priority: the name decides
    boosted = [attrs.evolve(f, priority=5) if f.name == "gamma" else f for f in shuffled]
    t = tree(dev=node("a@1"))
    report = apply_filters(t, d, boosted)
    assert order(report) == [("gamma", "/dev")]  # higher priority first
    assert t["dev"] == node("c@1")


def test_ties_between_equal_length_chains_are_broken_step_by_step():
    # two 2-step chains a -> x -> t and a -> y -> t: the first step decides
    fs = [F("p1", "a@1", "x@1"), F("p2", "a@1", "y@1"),
          F("q", "x@1", "t@1"), F("r", "y@1", "t@1", priority=9)]
    t = tree(dev=node("a@1"))
    report = apply_filters(t, dest({"/dev": "t@1"}), fs)
    assert order(report) == [("p1", "/dev"), ("q", "/dev")]


# -- order: post-order, re-evaluation, splits, merges ------------------------------


def test_children_before_parent_and_children_in_key_order():
    fs = [F("p-up", "p@1", "p@2"), F("c-up", "c@1", "c@2")]
    t = tree(dev=node("p@1", zz=node("c@1"), aa=node("c@1"), mm=node("c@1")))
    d = dest({"/dev": "p@2", "/dev/zz": "c@2", "/dev/aa": "c@2", "/dev/mm": "c@2"})
    report = apply_filters(t, d, fs)
    assert order(report) == [("c-up", "/dev/zz"), ("c-up", "/dev/aa"), ("c-up", "/dev/mm"),
                             ("p-up", "/dev")]


def test_a_three_step_version_chain_runs_step_by_step():
    seen = []

    def make(v):
        def f(n, ctx):
            seen.append((n["__version__"], sorted(k for k in n if not k.startswith("__"))))
            n[f"from_v{v}"] = True
            n["__version__"] = v + 1
            return n
        return F(f"a-v{v}-to-v{v + 1}", f"a@{v}", f"a@{v + 1}", f)

    t = tree(dev=node("a@1"))
    report = apply_filters(t, dest({"/dev": "a@4"}), [make(3), make(1), make(2)])
    assert [a.filter for a in report.applications] == ["a-v1-to-v2", "a-v2-to-v3",
                                                      "a-v3-to-v4"]
    # each step saw the previous one's output: the node is re-evaluated in between
    assert seen == [(1, []), (2, ["from_v1"]), (3, ["from_v1", "from_v2"])]
    assert [(a.before, a.after) for a in report.applications] == [
        ("a@1", "a@2"), ("a@2", "a@3"), ("a@3", "a@4")]


def test_split_children_are_filtered_before_the_parent_is_looked_at_again():
    fs = blk_filters()
    pci_up = F("pci-v1-to-v2", "virtio-pci@1", "virtio-pci@2")
    t = tree(dev=node("virtio-blk-pci@1", cfg=b"\x01\x02", blk_q=[1, 2], blk_features=3))
    d = dest({"/dev": "virtio-pci@2", "/dev/virtio-backend": "virtio-blk@2"},
             {"virtio-pci": "1..2", "virtio-blk": "2", "virtio-blk-pci": "1"})
    report = apply_filters(t, d, [pci_up, *fs.values()])
    assert order(report) == [("blkpci-split", "/dev"), ("blk-v1-to-v2", "/dev/virtio-backend"),
                             ("pci-v1-to-v2", "/dev")]
    assert t["dev"] == node("virtio-pci@2", cfg=b"\x01\x02",
                            **{"virtio-backend": node("virtio-blk@2", queues=[1, 2],
                                                      features=3, wce=1)})


def test_a_child_is_upgraded_before_its_parent_merges_it():
    fs = blk_filters()
    merge2 = F("merge-needs-v2", "virtio-pci@1", "virtio-blk-pci@1",
               ops.chain(ops.merge_child("virtio-backend", prefix="blk_"),
                         ops.rename_type("virtio-blk-pci")),
               consumes={"virtio-backend": "virtio-blk@2"})
    t = tree(dev=node("virtio-pci@1", cfg=b"\x00",
                      **{"virtio-backend": node("virtio-blk@1", q=[7], features=1)}))
    d = dest({"/dev": "virtio-blk-pci@1"}, {"virtio-blk": "1"})
    report = apply_filters(t, d, [merge2, fs["up"], fs["down"]])
    assert order(report) == [("blk-v1-to-v2", "/dev/virtio-backend"),
                             ("merge-needs-v2", "/dev")]
    assert report.applications[0].reason == "consumed by filter merge-needs-v2 at /dev"
    # the merge saw the upgraded child
    assert t["dev"] == node("virtio-blk-pci@1", cfg=b"\x00", blk_queues=[7], blk_features=1,
                            blk_wce=1)


def test_consumed_children_go_to_the_declared_range_not_to_the_destination():
    # the destination registers only virtio-blk@2 -- but the merge wants @1 and
    # gets it: the child is not driven to @2 and back
    fs = blk_filters()
    t = tree(dev=node("virtio-pci@1", **{"virtio-backend": node("virtio-blk@1", q=[1])}))
    d = dest({"/dev": "virtio-blk-pci@1"}, {"virtio-blk": "2"})
    report = apply_filters(t, d, list(fs.values()))
    assert order(report) == [("blkpci-merge", "/dev")]
    # and a destination that does not know the child type at all is fine too
    t = tree(dev=node("virtio-pci@1", **{"virtio-backend": node("virtio-blk@1", q=[1])}))
    apply_filters(t, dest({"/dev": "virtio-blk-pci@1"}), list(fs.values()))
    assert t["dev"] == node("virtio-blk-pci@1", blk_q=[1])


def test_split_then_merge_is_the_identity():
    fs = list(blk_filters().values())
    original = tree(dev=node("virtio-blk-pci@1", cfg=b"\x09", blk_q=[1, 2], blk_features=5))
    t = copy.deepcopy(original)
    apply_filters(t, dest({"/dev": "virtio-pci@1", "/dev/virtio-backend": "virtio-blk@1"}), fs)
    assert t != original
    apply_filters(t, dest({"/dev": "virtio-blk-pci@1"}), fs)
    assert t == original


def test_a_consumed_child_that_is_missing_is_an_error():
    fs = blk_filters()
    t = tree(dev=node("virtio-pci@1"))
    with pytest.raises(FilterError, match=r"/dev: filter blkpci-merge .*consumes child "
                                          r"'virtio-backend'.*no such child"):
        apply_filters(t, dest({"/dev": "virtio-blk-pci@1"}), [fs["merge"]])


# -- errors ----------------------------------------------------------------------------


def test_a_missing_chain_names_path_source_wanted_and_nearest():
    fs = [F("a-1-2", "a@1", "a@2"), F("a-2-3", "a@2", "a@3"), F("a-to-b", "a@3", "b@1")]
    t = tree(machine=node("container@1", dev=node("a@1")))
    with pytest.raises(FilterError) as e:
        apply_filters(t, dest({"/machine": "container@1", "/machine/dev": "a@5"}), fs)
    msg = str(e.value)
    assert msg.startswith("/machine/dev: no chain of filters turns a@1 into a@5 "
                          "(what the destination has here); nearest reachable: ")
    # same type first, closest version first
    assert "nearest reachable: a@3 (via a-1-2 -> a-2-3); a@2 (via a-1-2); " \
           "b@1 (via a-1-2 -> a-2-3 -> a-to-b)" in msg
    assert e.value.path == "/machine/dev" and e.value.source == "a@1"
    assert e.value.nearest == ["a@3", "a@2", "b@1"]


def test_a_missing_chain_with_nothing_reachable():
    t = tree(dev=node("kvm-a@1"))
    with pytest.raises(FilterError, match=r"^/dev: no chain of filters turns kvm-a@1 into a "
                                          r"type the destination registers \(kvm-a is not "
                                          r"registered there.*no filter matches kvm-a@1$"):
        apply_filters(t, dest({}, {"a": "3"}), [])


def test_a_cycle_in_the_filter_graph_is_never_followed_round():
    fs = [F("f", "a@1", "a@2"), F("g", "a@2", "a@1")]
    t = tree(dev=node("a@1"))
    with pytest.raises(FilterError, match=r"no chain of filters turns a@1 into a@3.*"
                                          r"nearest reachable: a@2 \(via f\)"):
        apply_filters(t, dest({"/dev": "a@3"}), fs)
    # with a way out, the cycle costs nothing
    report = apply_filters(t, dest({"/dev": "a@3"}), [*fs, F("h", "a@2", "a@3")])
    assert order(report) == [("f", "/dev"), ("h", "/dev")]


def test_the_bound_stops_a_node_and_names_the_filters():
    fs = [F(f"v{v}-v{v + 1}", f"a@{v}", f"a@{v + 1}") for v in range(1, 6)]
    t = tree(dev=node("a@1"))
    with pytest.raises(FilterError) as e:
        apply_filters(t, dest({"/dev": "a@6"}), fs, max_applications=3)
    msg = str(e.value)
    assert msg.startswith("/dev: gave up after 3 filter applications (the bound)")
    assert "filters involved: v1-v2, v2-v3, v3-v4" in msg
    assert "v1-v2 (a@1 -> a@2), v2-v3 (a@2 -> a@3), v3-v4 (a@3 -> a@4)" in msg
    assert e.value.report.applications[-1].filter == "v3-v4"


def test_the_default_bound_is_32_per_node():
    assert MAX_APPLICATIONS == 32
    fs = [F(f"v{v}", f"a@{v}", f"a@{v + 1}") for v in range(1, 40)]
    ok = tree(dev=node("a@1"))
    assert len(apply_filters(ok, dest({"/dev": "a@33"}), fs).applications) == 32
    with pytest.raises(FilterError, match="gave up after 32 filter applications"):
        apply_filters(tree(dev=node("a@1")), dest({"/dev": "a@34"}), fs)


def test_a_filter_that_lies_about_its_version():
    liar = F("liar", "a@1", "a@2", lambda n, ctx: n | {"__version__": 3})
    with pytest.raises(FilterError, match=r"^/dev: filter liar \(<in-process>\) declared a@2 "
                                          r"but produced a@3 \(from a@1\)$"):
        apply_filters(tree(dev=node("a@1")), dest({"/dev": "a@2"}), [liar])


def test_a_filter_that_lies_about_its_children():
    fs = blk_filters()
    no_child = attrs.evolve(fs["split"], func=ops.rename_type("virtio-pci"))
    t = tree(dev=node("virtio-blk-pci@1", blk_q=[1]))
    d = dest({"/dev": "virtio-pci@1"}, {"virtio-blk": "1"})
    with pytest.raises(FilterError, match="declared virtio-pci@1 creating child "
                                          "'virtio-backend' as virtio-blk@1 but produced no "
                                          "such child"):
        apply_filters(copy.deepcopy(t), d, [no_child])
    wrong = attrs.evolve(fs["split"], creates={"virtio-backend": "virtio-blk@2"})
    with pytest.raises(FilterError, match="declared child 'virtio-backend' as virtio-blk@2 "
                                          "but produced virtio-blk@1"):
        apply_filters(copy.deepcopy(t), d, [wrong])
    undeclared = attrs.evolve(fs["split"], creates={})
    with pytest.raises(FilterError, match="undeclared child 'virtio-backend'"):
        apply_filters(copy.deepcopy(t), d, [undeclared])
    sneaky = attrs.evolve(fs["merge"], consumes={})
    t = tree(dev=node("virtio-pci@1", **{"virtio-backend": node("virtio-blk@1")}))
    with pytest.raises(FilterError, match="removed child 'virtio-backend' \\(virtio-blk@1\\) "
                                          "without declaring it in consumes"):
        apply_filters(t, dest({"/dev": "virtio-blk-pci@1"}, {"virtio-blk": "1"}), [sneaky])
    keeps = attrs.evolve(fs["merge"], func=ops.rename_type("virtio-blk-pci"))
    t = tree(dev=node("virtio-pci@1", **{"virtio-backend": node("virtio-blk@1")}))
    with pytest.raises(FilterError, match="declared it consumes child 'virtio-backend' but "
                                          "produced a node that still has it"):
        apply_filters(t, dest({"/dev": "virtio-blk-pci@1"}), [keeps])


def test_a_filter_that_returns_garbage():
    with pytest.raises(FilterError, match="declared a@2 but returned a list, not a node"):
        apply_filters(tree(dev=node("a@1")), dest({"/dev": "a@2"}),
                      [F("bad", "a@1", "a@2", lambda n, ctx: [])])


def test_a_filter_that_raises_names_filter_plugin_path_and_cause():
    def boom(n, ctx):
        raise KeyError("tpr")

    f = attrs.evolve(F("boom", "a@1", "a@2", boom), plugin="migtree-apic")
    with pytest.raises(FilterError) as e:
        apply_filters(tree(dev=node("a@1")), dest({"/dev": "a@2"}), [f])
    assert str(e.value) == ("/dev: filter boom (migtree-apic, static) failed on a@1: "
                            "KeyError: 'tpr'")
    assert isinstance(e.value.__cause__, KeyError)


def test_an_op_error_inside_a_filter_keeps_its_path_and_field():
    f = F("ren", "a@1", "a@2", ops.chain(ops.rename_field("tpr", "task_priority"),
                                         ops.set_version(2)))
    with pytest.raises(FilterError, match=r"^/dev: filter ren \(<in-process>, static\) failed "
                                          r"on a@1: OpError: /dev: rename_field\('tpr', "
                                          r"'task_priority'\): field 'tpr': no such field "
                                          r"\(fields: esr\)$"):
        apply_filters(tree(dev=node("a@1", esr=0)), dest({"/dev": "a@2"}), [f])


def test_malformed_nodes_are_reported_by_path():
    with pytest.raises(FilterError, match=r"^/dev: malformed object node: __type__ 'a', "
                                          r"__version__ '2'"):
        apply_filters(tree(dev={"__type__": "a", "__version__": "2"}), dest({"/dev": "a@2"}), [])


# -- the same filter twice, names --------------------------------------------------------


def test_the_same_filter_given_twice_counts_once_and_a_clashing_name_is_an_error():
    f = F("a-up", "a@1", "a@2")
    report = apply_filters(tree(dev=node("a@1")), dest({"/dev": "a@2"}), [f, f, f])
    assert order(report) == [("a-up", "/dev")]
    clash = F("a-up", "a@1", "a@3")
    with pytest.raises(FilterError, match="filter name 'a-up' is used by two different "
                                          "declarations"):
        apply_filters(tree(dev=node("a@1")), dest({"/dev": "a@2"}), [f, clash])


def test_filter_pairs_are_expanded_with_their_shared_stash_key():
    fwd = F("a-fwd", "a@1", "a@2", ops.chain(ops.drop_field("x"), ops.set_version(2)))
    back = F("a-back", "a@2", "a@1", ops.chain(ops.add_field("x", 0), ops.set_version(1)))
    t = tree(dev=node("a@1", x=42))
    apply_filters(t, dest({"/dev": "a@2"}), [FilterPair("a-pair", fwd, back)])
    assert t["dev"]["__stash__"] == {"a-pair": {"x": 42}}


# -- path patterns -----------------------------------------------------------------------


@pytest.mark.parametrize("pattern, path, hit", [
    ("/machine/**", "/machine", True),
    ("/machine/**", "/machine/unattached/device[0]/lapic", True),
    ("/machine/**", "/other", False),
    ("/machine/unattached/*/lapic", "/machine/unattached/device[3]/lapic", True),
    ("/machine/unattached/*/lapic", "/machine/unattached/lapic", False),
    ("/machine/unattached/*/lapic", "/machine/unattached/a/b/lapic", False),
    ("/machine/unattached/device[*]/lapic", "/machine/unattached/device[12]/lapic", True),
    ("/machine/unattached/device[*]/lapic", "/machine/unattached/cpu0/lapic", False),
    ("/**/lapic", "/machine/unattached/device[0]/lapic", True),
    ("/**/lapic", "/lapic", True),
    ("/", "/", True),
    ("/**", "/", True),
    ("/*", "/", False),
])
def test_path_patterns(pattern, path, hit):
    from migtree.engine import _match_path

    assert _match_path(compile_path_pattern(pattern), path) is hit


def test_a_path_pattern_limits_where_a_filter_applies():
    f = F("lapic-only", "kvm-a@1", "a@3", path="/machine/unattached/*/lapic")
    cpu = node("container@1", lapic=node("kvm-a@1"))
    t = tree(machine=node("container@1", unattached=node("container@1", **{"device[0]": cpu}),
                          other=node("kvm-a@1")))
    d = dest(None, {"a": "3", "container": "1"})
    with pytest.raises(FilterError, match=r"^/machine/other: no chain .*no filter matches "
                                          r"kvm-a@1 at this path \(path-limited filters that "
                                          r"match it elsewhere: lapic-only\)"):
        apply_filters(copy.deepcopy(t), d, [f])
    del t["machine"]["other"]
    report = apply_filters(t, d, [f])
    assert order(report) == [("lapic-only", "/machine/unattached/device[0]/lapic")]


def test_relative_path_patterns_are_refused():
    with pytest.raises(FilterError, match="must be absolute"):
        apply_filters(tree(), dest({}), [F("x", "a@1", "a@2", path="machine/**")])


# -- dynamic filters ---------------------------------------------------------------------


def test_dynamic_filters_registered_by_a_build_apply_to_migrations_into_it():
    reg = dyn_registry()
    src = build_with("t-old", reg)
    src.machine.child("peripheral").child("d0").state.value = 99
    dst = build_with("t-new", reg)
    filters = gather_filters(dst)
    dyn = [f for f in filters if f.dynamic]
    assert [(f.name, f.path, f.plugin) for f in dyn] == [
        ("old-to-new-hook", "/machine/peripheral/d0", "dyn-plugin")]
    # static filters alone do not get there
    with pytest.raises(FilterError, match="/machine/peripheral/d0: no chain of filters turns "
                                          "t-old@1 into t-new@2"):
        apply_filters(save_tree(src.root), Destination.of_build(dst), gather_filters(reg))
    t = save_tree(src.root)
    report = apply_filters(t, Destination.of_build(dst), filters, explain=True)
    (app,) = report.applications
    assert (app.filter, app.plugin, app.kind) == ("old-to-new-hook", "dyn-plugin", "dynamic")
    assert app.defaulted == {"extra": 7}
    load_tree(t, dst.root)
    assert dst.machine.child("peripheral").child("d0").state == NewState(99, 7)


def test_dynamic_filters_on_a_machine_are_gathered_from_a_qom_root():
    reg = dyn_registry()
    NewDev.register_dynamic = True
    try:
        dst = build_with("t-new", reg)
    finally:
        del NewDev.register_dynamic
    names = sorted(f.name for f in gather_filters(dst.root, reg) if f.dynamic)
    assert names == ["old-to-new-device"]
    assert sorted(f.name for f in gather_filters(dst) if f.dynamic) == [
        "old-to-new-device", "old-to-new-hook"]


def test_a_failing_filter_leaves_the_destination_build_unchanged():
    reg = dyn_registry()
    src = build_with("t-old", reg)
    dst = build_with("t-new", reg)
    dev = dst.machine.child("peripheral").child("d0")
    dev.state.value = 5
    before = save_tree(dst.root)

    def boom(n, ctx):
        n["value"] = 0  # half-done work on the tree ...
        raise RuntimeError("no")

    f = F("old-to-new", "t-old@1", "t-new@2", boom)
    with pytest.raises(FilterError, match="failed on t-old@1: RuntimeError: no"):
        apply_filters(save_tree(src.root), Destination.of_build(dst), [f])
    assert save_tree(dst.root) == before  # ... never reaches the build
    assert dev.state.value == 5


# -- explain -------------------------------------------------------------------------------


def test_explain_records_diff_stash_restore_and_defaults():
    fwd = F("a-v1-to-v2", "a@1", "a@2",
            ops.chain(ops.drop_field("legacy"), ops.rename_field("tpr", "task_priority"),
                      ops.convert("regs.r0", lambda v: v + 1), ops.add_field("fresh", [0, 0]),
                      ops.set_version(2)), pair="a12")
    back = F("a-v2-to-v1", "a@2", "a@1",
             ops.chain(ops.add_field("legacy", b""), ops.drop_field("fresh"),
                       ops.rename_field("task_priority", "tpr"),
                       ops.convert("regs.r0", lambda v: v - 1), ops.set_version(1)), pair="a12")
    t = tree(dev=node("a@1", legacy=b"\xff", tpr=3, regs={"r0": 1, "r1": 2}))
    report = apply_filters(t, dest({"/dev": "a@2"}), [fwd, back], explain=True)
    (app,) = report.applications
    assert app.diff == {"added": {"task_priority": 3, "fresh": [0, 0]},
                        "removed": {"legacy": b"\xff", "tpr": 3},
                        "changed": {"regs.r0": (1, 2)}}
    assert app.stashed == {"a12.legacy": b"\xff"}
    assert app.restored == {}
    assert app.defaulted == {"fresh": [0, 0]}
    report = apply_filters(t, dest({"/dev": "a@1"}), [fwd, back], explain=True)
    (app,) = report.applications
    assert app.restored == {"a12.legacy": b"\xff"}
    assert app.stashed == {"a12.fresh": [0, 0]}
    assert app.defaulted == {}
    doc = json.loads(json.dumps(report.as_dict()))
    assert doc["applications"][0]["restored"] == {"a12.legacy": {"hex": "ff"}}
    assert doc["chains"] == {"/dev": ["a-v2-to-v1"]}


def test_explain_shows_children_created_and_consumed_and_text():
    fs = list(blk_filters().values())
    t = tree(dev=node("virtio-blk-pci@1", cfg=b"\x01", blk_q=[1]))
    report = apply_filters(
        t, dest({"/dev": "virtio-pci@1", "/dev/virtio-backend": "virtio-blk@2"},
                {"virtio-blk": "2"}), fs, explain=True)
    split, up = report.applications
    assert split.diff == {"removed": {"blk_q": [1]},
                          "created": {"virtio-backend": "virtio-blk@1"}}
    assert up.diff == {"added": {"queues": [1], "wce": 1}, "removed": {"q": [1]}}
    text = report.format_text()
    assert "/dev: virtio-blk-pci@1 -> virtio-pci@1 (1 filter)" in text
    assert "1. blkpci-split [<in-process>, static]: virtio-blk-pci@1 -> virtio-pci@1" in text
    assert "created: virtio-backend='virtio-blk@1'" in text
    back = apply_filters(t, dest({"/dev": "virtio-blk-pci@1"}), fs, explain=True)
    assert back.applications[-1].diff["consumed"] == {"virtio-backend": "virtio-blk@1"}


def test_without_explain_applications_are_still_listed_but_without_diffs():
    report = apply_filters(tree(dev=node("a@1")), dest({"/dev": "a@2"}),
                           [F("up", "a@1", "a@2")])
    (app,) = report.applications
    assert (app.path, app.before, app.after, app.diff) == ("/dev", "a@1", "a@2", None)


# -- the tree itself -------------------------------------------------------------------------


def test_filters_may_return_a_new_node_and_the_root_may_be_rewritten():
    def fresh(n, ctx):
        p = ctx.filter.produces
        return {"__type__": p.type, "__version__": p.version,
                **{k: v for k, v in n.items() if not k.startswith("__")}}

    t = node("r@1", dev=node("a@1"))
    keep = t
    apply_filters(t, dest(None, {"r": "2", "a": "2"}),
                  [F("r-up", "r@1", "r@2", fresh), F("a-up", "a@1", "a@2", fresh)])
    assert keep is t and t == node("r@2", dev=node("a@2"))


def test_stash_round_trip_through_the_engine_is_the_identity():
    # neither drop stashes a value the other direction's add would make anyway
    fwd = F("f", "a@1", "a@2", ops.chain(ops.drop_field("old", default=None),
                                         ops.add_field("new", 0), ops.set_version(2)))
    back = F("b", "a@2", "a@1", ops.chain(ops.drop_field("new", default=0),
                                          ops.add_field("old", None), ops.set_version(1)))
    pair = FilterPair("ab", fwd, back)
    a1, a2 = dest({"/dev": "a@1"}), dest({"/dev": "a@2"})

    @given(st.dictionaries(st.sampled_from(["x", "y", "z"]), st.integers() | st.binary()),
           st.integers() | st.lists(st.integers()), st.integers(-2, 2))
    def run(fields, old, new):
        original = tree(dev=node("a@1", old=old, **fields))
        t = copy.deepcopy(original)
        apply_filters(t, a2, [pair])
        assert t["dev"]["new"] == 0 and "old" not in t["dev"]
        apply_filters(t, a1, [pair])
        assert t == original  # A -> B -> A
        b = tree(dev=node("a@2", new=new, **fields))
        t = copy.deepcopy(b)
        apply_filters(t, a1, [pair])
        apply_filters(t, a2, [pair])
        assert t == b  # B -> A -> B

    run()


# -- destinations ------------------------------------------------------------------------------


def test_destination_of_build_and_its_schema_round_trip():
    reg = dyn_registry()
    b = build_with("t-new", reg)
    d = Destination.of_build(b)
    s = d.slot("/machine/peripheral/d0")
    assert (s.type, s.lo, s.hi, s.stateful) == ("t-new", 2, 2, True)
    assert d.slot("/machine/peripheral").stateful is False
    assert d.types["t-old"] == (1, 1)
    again = Destination.of_schema(json.loads(json.dumps(d.as_schema())))
    assert again.as_schema() == d.as_schema()
    assert Destination.of_build(b.root, reg).as_schema()["objects"] == d.as_schema()["objects"]


@pytest.mark.parametrize("dump, message", [
    ([], "expected a map with a 'types' map"),
    ({"types": {"a": {"version": "3"}}}, r"types.a.version: expected a non-negative integer"),
    ({"types": {"a": {"version": 1, "min_version": 2}}}, "min_version 2 > version 1"),
    ({"types": {}, "objects": {"/x": "a@1"}}, "the root '/' is not listed"),
    ({"types": {}, "objects": {"/": "container@1", "/a/b": "a@1"}},
     "/a/b: its parent /a is not listed"),
    ({"types": {}, "objects": {"/": {"version": 1}}}, r'expected \{"type"'),
])
def test_schema_dump_errors(dump, message):
    with pytest.raises(SchemaDumpError, match=message):
        Destination.of_schema(dump)


# -- properties over random filter graphs ------------------------------------------------------

VERTICES = [f"{t}@{v}" for t in "abc" for v in (1, 2, 3)]


@st.composite
def graphs(draw):
    edges = draw(st.lists(st.tuples(st.sampled_from(VERTICES), st.sampled_from(VERTICES),
                                    st.integers(0, 2)), max_size=14))
    fs = [F(f"f{i}-{m.replace('@', '')}-{p.replace('@', '')}", m, p, priority=prio)
          for i, (m, p, prio) in enumerate(edges) if m != p]
    return fs, draw(st.sampled_from(VERTICES)), draw(st.sampled_from(VERTICES)), \
        draw(st.permutations(range(len(fs))))


def shortest(fs, src, dst):
    dist, frontier = {src: 0}, [src]
    while frontier:
        nxt = []
        for cur in frontier:
            for f in fs:
                if str(f.match) == cur and str(f.produces) not in dist:
                    dist[str(f.produces)] = dist[cur] + 1
                    nxt.append(str(f.produces))
        frontier = nxt
    return dist.get(dst)


@given(graphs())
def test_the_engine_takes_a_shortest_chain_whatever_the_order_given(g):
    fs, src, dst, perm = g
    want = shortest(fs, src, dst)
    results = []
    for order_given in (fs, [fs[i] for i in perm]):
        t = tree(dev=node(src))
        try:
            report = apply_filters(t, dest({"/dev": dst}), order_given)
        except FilterError as e:
            assert want is None
            assert str(e).startswith(f"/dev: no chain of filters turns {src} into {dst}")
            results.append(None)
            continue
        assert want is not None and len(report.applications) == want
        assert t["dev"] == node(dst)
        results.append([a.filter for a in report.applications])
    assert results[0] == results[1]
