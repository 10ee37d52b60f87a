"""``migtree plugins [--json]`` in-process: the listing's shape, a backend
whose probe fails, skipped distributions, exit status. (Against real
installed distributions: test_plugins_installed.py.)"""

from __future__ import annotations

import json
import types

import pytest

from migtree import builtin, hookimpl, plugins
from migtree.build import Backend
from migtree.cli import main
from migtree.errors import PluginError
from migtree.filters import Filter
from migtree.plugins import register_plugin
from migtree.qom import Device
from migtree.registry import Registry


class Probe(Device):
    TYPE = "probe"
    ABSTRACT = False


def _boom():
    raise OSError("no such device")


class ProbePlugin:
    @hookimpl
    def migtree_register_types(self, register):
        register(Probe)

    @hookimpl
    def migtree_register_filters(self, register):
        register(Filter(name="probe-up", match="probe@1", produces="probe@2",
                        func=lambda n, c: n, creates={"x": "probe@1"}, priority=3))

    @hookimpl
    def migtree_register_backends(self, register):
        register(Backend("probe-hw", "needs hardware", create_cpus=lambda m, n, r: None,
                         available=_boom))
        register(Backend("probe-off", "switched off", create_cpus=lambda m, n, r: None,
                         available=lambda: (False, "switched off by the admin")))


class Broken:
    @hookimpl
    def migtree_register_types(self, register):
        register(None)


@pytest.fixture
def registry(monkeypatch):
    reg = Registry()
    register_plugin(reg, builtin, "migtree", "0.1.0")
    register_plugin(reg, ProbePlugin(), "acme-probe", "0.3")
    reg.skipped["acme-off"] = "disabled by MIGTREE_DISABLE_PLUGINS"
    monkeypatch.setattr(plugins, "_registry", reg)
    yield reg
    plugins.reset_registry()


def test_json_listing(registry, capsys):
    assert main(["plugins", "--json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert [p["name"] for p in data] == ["migtree", "acme-probe"]
    probe = data[1]
    assert probe["version"] == "0.3"
    assert probe["entry_points"] == {"acme-probe": "ProbePlugin"}
    assert probe["types"] == [{"name": "probe", "version": 1, "min_version": 1,
                               "versions": [1], "parent": "device", "abstract": False}]
    assert probe["filters"] == [{"name": "probe-up", "match": "probe@1", "produces": "probe@2",
                                 "creates": {"x": "probe@1"}, "consumes": {}, "path": None,
                                 "priority": 3, "pair": None, "description": ""}]
    assert probe["backends"] == [
        {"name": "probe-hw", "description": "needs hardware", "available": False,
         "reason": "available() raised OSError: no such device"},
        {"name": "probe-off", "description": "switched off", "available": False,
         "reason": "switched off by the admin"}]
    assert err == "migtree: skipped acme-off: disabled by MIGTREE_DISABLE_PLUGINS\n"


def test_text_listing_and_exit_status_with_a_failed_plugin(registry, capsys):
    with pytest.raises(PluginError):
        registry.add_plugin(Broken(), "acme-broken")
    assert main(["plugins"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "migtree 0.1.0",
        "  entry points: migtree = migtree.builtin",
        "  hooks: migtree_register_types",
        "  types: container@1, device@1 (abstract), guest-memory@1, machine@1, object@1 (abstract)",
        "acme-probe 0.3",
        "  entry points: acme-probe = ProbePlugin",
        "  hooks: migtree_register_backends, migtree_register_filters, migtree_register_types",
        "  types: probe@1",
        "  filter probe-up: probe@1 -> probe@2",
        "  backend probe-hw: needs hardware (unavailable: available() raised OSError: no such "
        "device)",
        "  backend probe-off: switched off (unavailable: switched off by the admin)",
        "acme-broken (in-process)  [FAILED]",
        "  entry points: acme-broken = Broken",
        "  error: acme-broken: migtree_register_types: register() needs an Object subclass, "
        "got None",
        "skipped acme-off: disabled by MIGTREE_DISABLE_PLUGINS",
    ]


def test_describe_is_the_json_document(registry):
    from migtree.commands.plugins import describe

    doc = describe(registry)
    assert json.loads(json.dumps(doc)) == doc
    assert all(set(p) == {"name", "version", "entry_points", "hooks", "types", "filters",
                          "backends", "formats", "decoders", "workloads", "error"}
               for p in doc)


def test_plugins_command_is_registered():
    from migtree.cli import build_parser

    args = build_parser().parse_args(["plugins", "--json"])
    assert args.json and isinstance(args.func, types.FunctionType)
