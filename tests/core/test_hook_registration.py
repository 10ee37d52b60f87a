"""One ``test_hook_<name>`` per hook in ``migtree.hookspecs`` (the docs test
checks they exist). Each goes through a real plugin registration: a
distribution with a ``migtree`` entry point, found by importlib.metadata and
loaded by :func:`migtree.plugins.load_registry`. For hooks whose consumers
live elsewhere (stream formats, opaque decoders, workloads) they test what
the registry records and refuses; backends and ``migtree_object_realized``
are also driven through the build loader.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin_fixtures"))

from mt_fakedist import FakeDists

from migtree.build import load_build
from migtree.errors import PluginError
from migtree.filters import Filter
from migtree.plugins import load_registry, realized
from migtree.qom import new_root


@pytest.fixture
def dists(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("MIGTREE_TRACE_HOOKS", raising=False)
    fd = FakeDists(tmp_path)
    yield fd
    fd.forget_modules()


def load(dists: FakeDists):
    return load_registry(allow=None, deny=[], eps=dists.entry_points())


HEADER = """
    import attrs
    from migtree import hookimpl
    from migtree.build import Backend, Workload
    from migtree.fields import u8, u16, u32
    from migtree.filters import Filter, FilterPair
    from migtree.qom import Device
"""


# -- migtree_register_types -----------------------------------------------------------

def test_hook_migtree_register_types(dists):
    dists.add("acme-types", HEADER + """
    @attrs.define
    class V1:
        level: int = u8()

    @attrs.define
    class V2:
        level: int = u16()
        mode: int = u32(since=2)

    class Widget(Device):
        TYPE = "acme-widget"
        ABSTRACT = False
        STATE = V2
        VERSION = 2
        MIN_VERSION = 2
        HISTORY = {1: V1}

    class Base(Device):
        TYPE = "acme-base"
        ABSTRACT = True

    @hookimpl
    def migtree_register_types(register):
        register(Widget)
        register(Base)
    """, version="3.1")
    reg = load(dists)
    rec = reg.plugins["acme-types"]
    assert rec.error is None and rec.version == "3.1"
    assert rec.hooks == ["migtree_register_types"]
    assert rec.types == ["acme-widget@1,2", "acme-base@1"]
    info = reg.types.lookup("acme-widget")
    assert info.plugin == "acme-types"
    assert sorted(info.versions()) == [1, 2]
    assert reg.types.lookup("acme-base").abstract
    # the core's types came through the same hook, attributed to the core
    assert reg.types.lookup("machine").plugin == "migtree"


def test_hook_migtree_register_types_refuses_bad_declarations(dists):
    dists.add("acme-bad", HEADER + """
    class Fine(Device):
        TYPE = "acme-fine"
        ABSTRACT = False

    @attrs.define
    class NotWire:
        x: int = 0          # not declared with migtree.fields

    class Bad(Device):
        TYPE = "acme-bad"
        ABSTRACT = False
        STATE = NotWire

    @hookimpl
    def migtree_register_types(register):
        register(Fine)
        register(Bad)
    """)
    dists.add("acme-notaclass", HEADER + """
    @hookimpl
    def migtree_register_types(register):
        register("acme-widget")
    """)
    reg = load(dists)
    err = reg.plugins["acme-bad"].error
    assert err.startswith("acme-bad: migtree_register_types: ")
    assert "acme-bad" in err and "NotWire" in err
    assert "acme-fine" not in reg.types, "a distribution that failed keeps nothing"
    assert "needs an Object subclass" in reg.plugins["acme-notaclass"].error
    assert "machine" in reg.types


# -- migtree_register_filters -----------------------------------------------------------

FILTERS = HEADER + """
    def up(node, ctx):
        node["__version__"] = 2
        return node

    def down(node, ctx):
        node["__version__"] = 1
        return node

    PAIR = FilterPair("{prefix}-pair",
                      Filter(name="{prefix}-up", match="gadget@1", produces="gadget@2", func=up),
                      Filter(name="{prefix}-down", match="gadget@2", produces="gadget@1",
                             func=down))

    @hookimpl
    def migtree_register_filters(register):
        register(PAIR)
        register(Filter(name="{shared}", match="gadget@2", produces="gadget@3", func=up,
                        priority=5))
"""


def test_hook_migtree_register_filters(dists):
    dists.add("acme-a", FILTERS.format(prefix="a", shared="a-solo"))
    reg = load(dists)
    assert reg.plugins["acme-a"].filters == ["a-up", "a-down", "a-solo"]
    up, down, solo = reg.filters["a-up"], reg.filters["a-down"], reg.filters["a-solo"]
    assert {up.plugin, down.plugin, solo.plugin} == {"acme-a"}
    assert up.pair == down.pair == "a-pair" and solo.pair is None
    assert str(up.match) == "gadget@1" and str(up.produces) == "gadget@2"
    assert solo.priority == 5 and not solo.dynamic


def test_hook_migtree_register_filters_names_are_unique_across_plugins(dists):
    dists.add("acme-a", FILTERS.format(prefix="a", shared="shared-name"))
    dists.add("acme-b", FILTERS.format(prefix="b", shared="shared-name"))
    dists.add("acme-c", HEADER + """
    @hookimpl
    def migtree_register_filters(register):
        register(lambda node, ctx: node)
    """)
    reg = load(dists)
    assert reg.plugins["acme-a"].error is None
    err = reg.plugins["acme-b"].error
    assert "filter 'shared-name' registered twice: by acme-a and by acme-b" in err
    assert "b-up" not in reg.filters, "the rejected distribution keeps nothing"
    assert reg.filters["shared-name"].plugin == "acme-a"
    assert "needs a Filter or FilterPair" in reg.plugins["acme-c"].error


# -- migtree_register_backends -----------------------------------------------------------

BACKEND = HEADER + """
    CALLS = []

    def create_cpus(machine, count, registry):
        CALLS.append(count)
        for _ in range(count):
            machine.add_unattached(registry.types.create("container"))

    @hookimpl
    def migtree_register_backends(register):
        register(Backend("acme-accel", "cpus as containers", create_cpus=create_cpus))
        register(Backend("acme-never", "never here", create_cpus=create_cpus,
                         available=lambda: (False, "no acme hardware")))
"""


def test_hook_migtree_register_backends(dists):
    dists.add("acme-backend", BACKEND)
    reg = load(dists)
    assert reg.plugins["acme-backend"].backends == ["acme-accel", "acme-never"]
    backend = reg.backends["acme-accel"]
    assert backend.plugin == "acme-backend"
    # the build loader uses it
    build = load_build({"machine": {"backend": "acme-accel", "cpus": 3}}, reg)
    assert build.backend is backend
    module = sys.modules[reg.plugins["acme-backend"].entry_points["acme-backend"]]
    assert module.CALLS == [3]
    assert [o.path for o in build.machine.child("unattached").children.values()] == [
        f"/machine/unattached/device[{i}]" for i in range(3)]


def test_hook_migtree_register_backends_refuses_incomplete_ones(dists):
    dists.add("acme-nameless", HEADER + """
    @hookimpl
    def migtree_register_backends(register):
        register(Backend("", "no name", create_cpus=lambda m, n, r: None))
    """)
    dists.add("acme-nocpus", HEADER + """
    class Half:
        name = "half"
        description = "forgot create_cpus"
        available = staticmethod(lambda: (True, ""))

    @hookimpl
    def migtree_register_backends(register):
        register(Half())
    """)
    reg = load(dists)
    assert "a backend needs a name" in reg.plugins["acme-nameless"].error
    assert "backend 'half' has no callable create_cpus" in reg.plugins["acme-nocpus"].error
    assert not reg.backends


# -- migtree_register_stream_formats ---------------------------------------------------

FORMAT = HEADER + """
    @attrs.define
    class Fmt:
        name: str = "{name}"
        plugin: str = ""

        def sniff(self, head):
            return head.startswith(b"ACME")

        def read(self, fp):
            return {{}}, {{}}

    @hookimpl
    def migtree_register_stream_formats(register):
        register(Fmt())
"""


def test_hook_migtree_register_stream_formats(dists):
    dists.add("acme-fmt", FORMAT.format(name="acme-stream"))
    dists.add("acme-fmt-again", FORMAT.format(name="acme-stream"))
    dists.add("acme-nosniff", HEADER + """
    class NoSniff:
        name = "nosniff"
        def read(self, fp):
            return None

    @hookimpl
    def migtree_register_stream_formats(register):
        register(NoSniff())
    """)
    reg = load(dists)
    fmt = reg.formats["acme-stream"]
    assert fmt.plugin == "acme-fmt" and fmt.sniff(b"ACME....")
    assert reg.plugins["acme-fmt"].formats == ["acme-stream"]
    assert ("stream format 'acme-stream' registered twice: by acme-fmt and by acme-fmt-again"
            in reg.plugins["acme-fmt-again"].error)
    assert "has no callable sniff" in reg.plugins["acme-nosniff"].error
    assert sorted(reg.formats) == ["acme-stream"]


# -- migtree_register_opaque_decoders ----------------------------------------------------

def test_hook_migtree_register_opaque_decoders(dists):
    dists.add("acme-dec", HEADER + """
    @attrs.define
    class Dec:
        format: str = "qemu"
        key: str = "acme-blk"
        plugin: str = ""

        def decode(self, data, context):
            return {"len": len(data), "data": data}

        def encode(self, node, context):
            return node["data"]

    @hookimpl
    def migtree_register_opaque_decoders(register):
        register(Dec())
        register(Dec(key="acme-net"))
    """)
    dists.add("acme-dec-dup", HEADER + """
    @attrs.define
    class Dec:
        format: str = "qemu"
        key: str = "acme-blk"
        plugin: str = ""
        def decode(self, data, context):
            return {}
        def encode(self, node, context):
            return b""

    @hookimpl
    def migtree_register_opaque_decoders(register):
        register(Dec())
    """)
    dists.add("acme-dec-nokey", HEADER + """
    class Dec:
        format = "qemu"
        def decode(self, data, context):
            return {}
        def encode(self, node, context):
            return b""

    @hookimpl
    def migtree_register_opaque_decoders(register):
        register(Dec())
    """)
    reg = load(dists)
    assert reg.plugins["acme-dec"].decoders == ["qemu:acme-blk", "qemu:acme-net"]
    dec = reg.decoders[("qemu", "acme-blk")]
    assert dec.plugin == "acme-dec"
    assert dec.encode(dec.decode(b"\x01\x02", None), None) == b"\x01\x02"
    assert ("opaque decoder qemu:acme-blk registered twice: by acme-dec and by acme-dec-dup"
            in reg.plugins["acme-dec-dup"].error)
    assert "needs a format and a key" in reg.plugins["acme-dec-nokey"].error


# -- migtree_register_workloads -----------------------------------------------------------

def test_hook_migtree_register_workloads(dists):
    dists.add("acme-work", HEADER + """
    @hookimpl
    def migtree_register_workloads(register):
        register(Workload("acme-io", applies=lambda m: True, start=lambda m, seed: None,
                          finish=lambda m: None, check=lambda m: {"ok": True}))
    """)
    dists.add("acme-work-bad", HEADER + """
    class Half:
        name = "half"
        applies = staticmethod(lambda m: True)

    @hookimpl
    def migtree_register_workloads(register):
        register(Half())
    """)
    reg = load(dists)
    wl = reg.workloads["acme-io"]
    assert wl.plugin == "acme-work" and wl.check(None) == {"ok": True}
    assert reg.plugins["acme-work"].workloads == ["acme-io"]
    assert "workload 'half' has no callable start, finish" in reg.plugins["acme-work-bad"].error
    assert "half" not in reg.workloads


# -- migtree_object_realized -----------------------------------------------------------------

REALIZED = HEADER + """
    SEEN = []

    class Widget(Device):
        TYPE = "acme-widget"
        ABSTRACT = False

    def to_widget(node, ctx):
        node["__type__"] = "acme-widget"
        return node

    @hookimpl
    def migtree_register_types(register):
        register(Widget)

    @hookimpl
    def migtree_register_backends(register):
        register(Backend("acme-none", "no cpus", create_cpus=lambda m, n, r: None))

    @hookimpl
    def migtree_object_realized(obj, register_filter):
        SEEN.append(obj.path)
        if obj.TYPE == "acme-widget":
            register_filter(Filter(name="old-widget-to-acme-widget", match="old-widget@1",
                                   produces="acme-widget@1", func=to_widget, path=obj.path))
"""


def test_hook_migtree_object_realized(dists):
    dists.add("acme-realize", REALIZED)
    dists.add("acme-quiet", HEADER + """
    @hookimpl
    def migtree_object_realized(obj):     # a plugin may take only the arguments it needs
        pass
    """)
    reg = load(dists)
    assert reg.plugins["acme-quiet"].error is None
    root, machine = new_root()
    widget = machine.add_device(reg.types.create("acme-widget"), "w0")
    filters = realized(reg, widget)
    assert [(f.name, f.plugin, f.dynamic, f.path) for f in filters] == [
        ("old-widget-to-acme-widget", "acme-realize", True, "/machine/peripheral/w0")]
    assert realized(reg, machine) == []
    module = sys.modules[reg.plugins["acme-realize"].entry_points["acme-realize"]]
    assert module.SEEN == ["/machine/peripheral/w0", "/machine"]
    assert "old-widget-to-acme-widget" not in reg.filters, "dynamic filters stay per build"

    # the build loader calls it for every object, parents first
    module.SEEN.clear()
    build = load_build({"machine": {"backend": "acme-none"},
                        "device": [{"type": "acme-widget", "id": "w1"}]}, reg)
    assert [f.path for f in build.dynamic_filters] == ["/machine/peripheral/w1"]
    assert module.SEEN[0] == "/" and "/machine/peripheral/w1" in module.SEEN


def test_hook_migtree_object_realized_errors_name_the_plugin_and_path(dists):
    dists.add("acme-raise", HEADER + """
    @hookimpl
    def migtree_object_realized(obj, register_filter):
        if obj.TYPE == "machine":
            raise RuntimeError("boom")
    """)
    reg = load(dists)
    root, machine = new_root()
    with pytest.raises(PluginError, match=r"^acme-raise: migtree_object_realized\(/machine\) "
                       r"failed: RuntimeError: boom \(at .*mtfake_acme_raise_\d+\.py:\d+\)"):
        realized(reg, machine)


@pytest.mark.parametrize("body, message", [
    ("register_filter('not a filter')", "register_filter() needs a Filter or FilterPair"),
    ("register_filter(Filter(name='static-one', match='a@1', produces='a@2', "
     "func=lambda n, c: n))", "has the name of a static filter registered by acme-static"),
    ("LATER.append(register_filter)", None),
])
def test_hook_migtree_object_realized_refuses_bad_registrations(dists, body, message):
    dists.add("acme-static", HEADER + """
    @hookimpl
    def migtree_register_filters(register):
        register(Filter(name="static-one", match="a@1", produces="a@2",
                        func=lambda n, c: n))
    """)
    dists.add("acme-dyn", HEADER + f"""
    LATER = []

    @hookimpl
    def migtree_object_realized(obj, register_filter):
        {body}
    """)
    reg = load(dists)
    root, machine = new_root()
    if message is None:   # calling the callback after the hook returned
        realized(reg, machine)
        module = sys.modules[reg.plugins["acme-dyn"].entry_points["acme-dyn"]]
        with pytest.raises(PluginError, match="called for /machine after"):
            module.LATER[0](Filter(name="late", match="a@1", produces="a@2",
                                   func=lambda n, c: n))
        return
    with pytest.raises(PluginError) as e:
        realized(reg, machine)
    assert str(e.value).startswith("acme-dyn: migtree_object_realized(/machine): ")
    assert message in str(e.value)


def test_hook_calls_are_traced_with_attribution(dists, monkeypatch, caplog):
    dists.add("acme-realize", REALIZED)
    monkeypatch.setenv("MIGTREE_TRACE_HOOKS", "1")
    with caplog.at_level(logging.INFO, logger="migtree.hooks"):
        reg = load(dists)
        root, machine = new_root()
        realized(reg, machine.add_device(reg.types.create("acme-widget"), "w0"))
    lines = [r.getMessage() for r in caplog.records if r.name == "migtree.hooks"]
    assert "call migtree_register_types(register=<register callback>) -> migtree " \
           "(entry point core)" in lines
    assert "migtree_register_types: acme-realize registered type acme-widget" in lines
    assert "call migtree_register_types(register=<register callback>) -> acme-realize" in lines
    realize = [line for line in lines if line.startswith("call migtree_object_realized")]
    assert realize == ["call migtree_object_realized(obj=<acme-widget /machine/peripheral/w0>, "
                       "register_filter=<register_filter callback>) -> acme-realize"]
    assert lines.count("done migtree_object_realized") == 1


def test_realized_without_plugins_is_empty():
    from migtree.registry import Registry

    root, machine = new_root()
    assert realized(Registry(), machine) == []


def test_filter_pair_may_be_registered_dynamically(dists):
    dists.add("acme-pair", HEADER + """
    @hookimpl
    def migtree_object_realized(obj, register_filter):
        if obj.TYPE == "machine":
            f = lambda n, c: n
            register_filter(FilterPair("p", Filter(name="p-up", match="a@1", produces="a@2",
                                                   func=f),
                                       Filter(name="p-down", match="a@2", produces="a@1",
                                              func=f)))
    """)
    reg = load(dists)
    root, machine = new_root()
    got = realized(reg, machine)
    assert [(f.name, f.pair, f.dynamic, f.plugin) for f in got] == [
        ("p-up", "p", True, "acme-pair"), ("p-down", "p", True, "acme-pair")]
    assert all(isinstance(f, Filter) for f in got)
