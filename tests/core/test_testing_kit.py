"""migtree.testing, the vendors' test kit: the pytest plugin's fixtures and
the one-line assertions, each shown to pass on a correct plugin and to fail,
saying why, on a broken one. (docs/writing-a-plugin.md's walkthrough runs the
kit from a vendor's own project, in test_plugins_installed.py.)"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import attrs
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin_fixtures"))

from mt_fakedist import ONE_TYPE, FakeDists

import migtree.testing
from migtree import hookimpl, ops
from migtree.errors import PluginError
from migtree.fields import u8, u16, u32
from migtree.filters import Filter, FilterPair
from migtree.qom import Device, new_root
from migtree.stream import save
from migtree.testing import (
    assert_explain,
    assert_round_trips,
    assert_stream_loads,
    make_registry,
    tree_diff,
)


@attrs.define
class KitV1:
    ctrl: int = u32()
    counter: int = u16()


@attrs.define
class KitV2:
    ctrl: int = u32()
    count: int = u16()
    irq_mask: int = u8()


class KitDev(Device):
    TYPE = "kit-dev"
    ABSTRACT = False
    STATE = KitV2
    VERSION = 2
    MIN_VERSION = 2
    HISTORY = {1: KitV1}


class OldKitDev(Device):
    """The same type as an older build has it: writes version 1."""

    TYPE = "kit-dev"
    ABSTRACT = False
    STATE = KitV1


UP = Filter(name="kit-v1-to-v2", match="kit-dev@1", produces="kit-dev@2",
            func=ops.chain(ops.rename_field("counter", "count"), ops.add_field("irq_mask", 0),
                           ops.set_version(2)))
DOWN = Filter(name="kit-v2-to-v1", match="kit-dev@2", produces="kit-dev@1",
              func=ops.chain(ops.drop_field("irq_mask"), ops.rename_field("count", "counter"),
                             ops.set_version(1)))


def plugin(*filters, types_=(KitDev,)):
    ns = types.SimpleNamespace()

    @hookimpl
    def migtree_register_types(register):
        for t in types_:
            register(t)

    @hookimpl
    def migtree_register_filters(register):
        for f in filters:
            register(f)

    ns.migtree_register_types = migtree_register_types
    ns.migtree_register_filters = migtree_register_filters
    return ns


# -- the pytest plugin and its fixtures --------------------------------------------------

def test_the_pytest_plugin_is_active_through_its_entry_point(request):
    assert request.config.pluginmanager.get_plugin("migtree") is migtree.testing


def test_testing_is_importable_without_hypothesis():
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import migtree.testing\n"
            "print(sorted(m for m in sys.modules if m.startswith(('hypothesis', 'migtree.engine',"
            " 'migtree.stream'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['hypothesis']"  # only the None placeholder


def test_migtree_registry_fixture_holds_the_core_only(migtree_registry):
    assert sorted(t.name for t in migtree_registry.types) == [
        "container", "device", "guest-memory", "machine", "object"]
    assert list(migtree_registry.plugins) == ["migtree"]
    migtree_registry.add_plugin(plugin(), "mutating-is-fine")


def test_migtree_registry_fixture_is_fresh_each_time(migtree_registry):
    assert "kit-dev" not in migtree_registry.types


def test_factory_registers_in_process_plugins(migtree_registry_factory):
    reg = migtree_registry_factory(("kit", plugin(UP, DOWN)))
    assert reg.types.lookup("kit-dev").plugin == "kit"
    assert sorted(reg.filters) == ["kit-v1-to-v2", "kit-v2-to-v1"]
    module = types.ModuleType("acme_kit_module")
    module.migtree_register_types = plugin(types_=(OldKitDev,)).migtree_register_types
    reg = migtree_registry_factory(module)
    assert reg.types.lookup("kit-dev").plugin == "acme_kit_module"


def test_factory_loads_installed_distributions_through_entry_points(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    dists = FakeDists(tmp_path)
    dists.add("acme-kit", ONE_TYPE.format(type="acme-kit-thing"), version="2.0")
    dists.add("acme-other", ONE_TYPE.format(type="acme-other-thing"))
    dists.add("acme-broken", "raise RuntimeError('nope')\n")
    try:
        reg = make_registry("ACME_kit")
        assert reg.plugins["acme-kit"].version == "2.0"
        assert "acme-kit-thing" in reg.types
        assert "acme-other-thing" not in reg.types, "only what was asked for"
        with pytest.raises(PluginError, match="acme-nowhere: not installed"):
            make_registry("acme-nowhere")
        with pytest.raises(PluginError, match="acme-broken: failed to import .*RuntimeError"):
            make_registry("acme-broken")
    finally:
        dists.forget_modules()


# -- assert_round_trips -------------------------------------------------------------------

def test_round_trip_passes_for_a_lossless_pair():
    reg = make_registry(("kit", plugin(FilterPair("kit-pair", UP, DOWN))))
    assert_round_trips(reg, "kit-v2-to-v1", "kit-v1-to-v2", "kit-dev@2", max_examples=30)


def test_round_trip_from_the_old_version_catches_the_leftover_stash():
    # v1 -> v2 defaults irq_mask, v2 -> v1 stashes it: the v1 node comes back
    # with a __stash__ it did not have, which the kit reports.
    reg = make_registry(("kit", plugin(FilterPair("kit-pair", UP, DOWN))))
    with pytest.raises(AssertionError) as e:
        assert_round_trips(reg, "kit-v1-to-v2", "kit-v2-to-v1", "kit-dev@1", max_examples=10)
    assert "kit-v1-to-v2 then kit-v2-to-v1 changed kit-dev@1 at /machine/peripheral/dut" in \
        str(e.value)
    assert "__stash__: only after ({'kit-pair': {'irq_mask': 0}})" in str(e.value)


def test_round_trip_both_ways_when_the_drop_knows_the_default():
    down = Filter(name="kit-v2-to-v1", match="kit-dev@2", produces="kit-dev@1",
                  func=ops.chain(ops.drop_field("irq_mask", default=0),
                                 ops.rename_field("count", "counter"), ops.set_version(1)))
    reg = make_registry(("kit", plugin(FilterPair("kit-pair", UP, down))))
    assert_round_trips(reg, "kit-v1-to-v2", "kit-v2-to-v1", "kit-dev@1", max_examples=20)
    assert_round_trips(reg, "kit-v2-to-v1", "kit-v1-to-v2", "kit-dev@2", max_examples=20)


def test_round_trip_fails_for_a_lossy_pair():
    lossy_down = Filter(name="kit-v2-to-v1", match="kit-dev@2", produces="kit-dev@1",
                        func=ops.chain(ops.drop_field("irq_mask"),
                                       ops.rename_field("count", "counter"),
                                       ops.set_version(1)))
    forgetful_up = Filter(name="kit-v1-to-v2", match="kit-dev@1", produces="kit-dev@2",
                          func=ops.chain(ops.rename_field("counter", "count"),
                                         ops.set_version(2),
                                         lambda node, ctx: {k: v for k, v in node.items()
                                                            if k != "__stash__"}
                                         | {"irq_mask": 0}))
    reg = make_registry(("kit", plugin(lossy_down, forgetful_up)))
    with pytest.raises(AssertionError) as e:
        assert_round_trips(reg, "kit-v2-to-v1", "kit-v1-to-v2", "kit-dev@2")
    assert "irq_mask: 1 -> 0" in str(e.value), "hypothesis shrinks to the smallest loss"


def test_round_trip_checks_declarations_and_the_middle_node():
    liar = Filter(name="kit-v2-to-v1", match="kit-dev@2", produces="kit-dev@1",
                  func=lambda node, ctx: node)
    reg = make_registry(("kit", plugin(liar, UP)))
    with pytest.raises(AssertionError, match="declares it produces kit-dev@1 but returned "
                       "kit-dev@2"):
        assert_round_trips(reg, "kit-v2-to-v1", "kit-v1-to-v2", "kit-dev@2", max_examples=5)

    bad_middle = Filter(name="kit-v2-to-v1", match="kit-dev@2", produces="kit-dev@1",
                        func=ops.chain(ops.rename_field("count", "counter"),
                                       ops.set_version(1)))   # keeps irq_mask: v1 has none
    reg = make_registry(("kit", plugin(bad_middle, UP)))
    with pytest.raises(AssertionError, match=r"after kit-v2-to-v1: kit-dev@1 does not load: "
                       r"/machine/peripheral/dut: irq_mask: unexpected field"):
        assert_round_trips(reg, "kit-v2-to-v1", "kit-v1-to-v2", "kit-dev@2", max_examples=5)


@pytest.mark.parametrize("args, message", [
    (("kit-v1-to-v2", "kit-v2-to-v1", "kit-dev@2"), "kit-v1-to-v2 matches kit-dev@1, not "
                                                    "kit-dev@2"),
    (("kit-v2-to-v1", "kit-v2-to-v1", "kit-dev@2"), "kit-v2-to-v1 produces kit-dev@1, which "
                                                    "kit-v2-to-v1 (matching kit-dev@2) does not"),
    (("nope", "kit-v1-to-v2", "kit-dev@2"), "no filter named 'nope' is registered"),
])
def test_round_trip_refuses_a_pair_that_is_not_one(args, message):
    reg = make_registry(("kit", plugin(UP, DOWN)))
    with pytest.raises(AssertionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        assert_round_trips(reg, *args)


def test_round_trip_needs_the_state_declaration_of_the_version():
    up3 = Filter(name="kit-v3-to-v2", match="kit-dev@3", produces="kit-dev@2",
                 func=lambda n, c: n)
    down3 = Filter(name="kit-v2-to-v3", match="kit-dev@2", produces="kit-dev@3",
                   func=lambda n, c: n)
    reg = make_registry(("kit", plugin(up3, down3)))
    with pytest.raises(AssertionError, match=r"kit-dev has no state declaration for version 3 "
                       r"\(known: \[1, 2\]\); declare older layouts in HISTORY"):
        assert_round_trips(reg, "kit-v3-to-v2", "kit-v2-to-v3", "kit-dev@3")


# a split/merge pair: box@1 holds everything; box@2 keeps `a` and has a child
# `inner` (inner@1) holding `b`.

@attrs.define
class BoxV1:
    a: int = u8()
    b: int = u16()


@attrs.define
class BoxV2:
    a: int = u8()


@attrs.define
class InnerState:
    b: int = u16()


class Box(Device):
    TYPE = "box"
    ABSTRACT = False
    STATE = BoxV2
    VERSION = 2
    MIN_VERSION = 2
    HISTORY = {1: BoxV1}


class Inner(Device):
    TYPE = "inner"
    ABSTRACT = False
    STATE = InnerState


def _split(node, ctx):
    node["inner"] = {"__type__": "inner", "__version__": 1, "b": node.pop("b")}
    node["__version__"] = 2
    return node


def _merge(node, ctx):
    node["b"] = node.pop("inner")["b"]
    node["__version__"] = 1
    return node


SPLIT = Filter(name="box-split", match="box@1", produces="box@2", func=_split,
               creates={"inner": "inner@1"})
MERGE = Filter(name="box-merge", match="box@2", produces="box@1", func=_merge,
               consumes={"inner": "inner@1"})


def test_round_trip_of_a_split_and_a_merge_both_ways():
    reg = make_registry(("box", plugin(SPLIT, MERGE, types_=(Box, Inner))))
    assert_round_trips(reg, "box-split", "box-merge", "box@1", max_examples=20)
    # from box@2 the kit generates the consumed child too
    assert_round_trips(reg, "box-merge", "box-split", "box@2", max_examples=20)


def test_round_trip_checks_a_split_creates_what_it_declares():
    bad = Filter(name="box-split", match="box@1", produces="box@2",
                 func=lambda n, c: _split(n, c) | {"inner": {"__type__": "inner",
                                                            "__version__": 7}},
                 creates={"inner": "inner@1"})
    reg = make_registry(("box", plugin(bad, MERGE, types_=(Box, Inner))))
    with pytest.raises(AssertionError, match="declares it creates 'inner' as inner@1"):
        assert_round_trips(reg, "box-split", "box-merge", "box@1", max_examples=5)


def test_tree_diff():
    assert tree_diff({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}) == []
    assert tree_diff({"a": 1, "s": {"x": 1}, "b": [1, 2]},
                     {"a": 2, "s": {}, "b": [1, 3], "c": 0}) == [
        "a: 1 -> 2", "b[1]: 2 -> 3", "c: only after (0)", "s.x: only before (1)"]
    assert tree_diff({"v": True}, {"v": 1}) == ["v: True -> 1"]


# -- assert_stream_loads and assert_explain ---------------------------------------------------

def source_stream() -> bytes:
    """A stream written by an older build: kit-dev@1 at /machine/peripheral/k0."""
    reg = make_registry(("old-kit", plugin(types_=(OldKitDev,))))
    root, machine = new_root()
    dev = machine.add_device(OldKitDev(), "k0")
    dev.state = KitV1(ctrl=7, counter=42)
    return save(root, registry=reg)


def destination(*filters):
    reg = make_registry(("kit", plugin(*filters)))
    root, machine = new_root()
    dev = machine.add_device(KitDev(), "k0")
    return reg, root, dev


def test_stream_loads_through_the_filters():
    reg, root, dev = destination(FilterPair("kit-pair", UP, DOWN))
    result = assert_stream_loads(source_stream(), root, reg)
    assert dev.state == KitV2(ctrl=7, count=42, irq_mask=0)
    assert "/machine/peripheral/k0" in result.load.loaded
    assert [a.filter for a in result.filters.applications] == ["kit-v1-to-v2"]


def test_stream_that_does_not_load_says_why():
    reg, root, dev = destination()
    with pytest.raises(AssertionError) as e:
        assert_stream_loads(source_stream(), root, reg)
    assert str(e.value).startswith("the stream does not load: ")
    assert "/machine/peripheral/k0" in str(e.value) and "kit-dev@1" in str(e.value)
    assert dev.state == KitV2(), "nothing changed"


def test_stream_loads_with_a_dynamic_filter_of_the_build():
    reg, root, dev = destination()
    root.child("machine").register_filter(UP)
    assert_stream_loads(source_stream(), root, reg)
    assert dev.state.count == 42


def test_explain_shows_exactly_the_expected_applications():
    reg, root, dev = destination(FilterPair("kit-pair", UP, DOWN))
    stream = source_stream()
    apps = assert_explain(stream, root, reg, [("kit-v1-to-v2", "/machine/peripheral/k0")])
    assert apps[0].defaulted == {"irq_mask": 0}
    assert_explain(stream, root, reg, ["kit-v1-to-v2"])
    assert_explain(stream, root, reg, [{"filter": "kit-v1-to-v2", "plugin": "kit",
                                        "kind": "static", "before": "kit-dev@1",
                                        "after": "kit-dev@2"}])
    assert dev.state == KitV2(), "a dry run changes nothing"
    with pytest.raises(AssertionError) as e:
        assert_explain(stream, root, reg, [])
    assert str(e.value) == ("explain differs:\n  expected:\n    (nothing)\n  applied:\n    "
                            "kit-v1-to-v2 at /machine/peripheral/k0: kit-dev@1 -> kit-dev@2")


def test_explain_of_a_tree_leaves_the_tree_alone():
    from migtree.stream import read_tree

    reg, root, dev = destination(FilterPair("kit-pair", UP, DOWN))
    _, tree = read_tree(source_stream())
    before = repr(tree)
    assert_explain(tree, root, reg, ["kit-v1-to-v2"])
    assert repr(tree) == before
