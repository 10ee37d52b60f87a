"""Plugin loading (migtree.plugins), in-process but through real
``*.dist-info`` entry points: allow and deny lists, the core always loaded,
load order, and each failure reported by distribution name while the rest
keep working. The same cases against wheels installed in a real virtual
environment are in test_plugins_installed.py.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin_fixtures"))

from mt_fakedist import ONE_TYPE, FakeDists

from migtree import builtin, hookimpl, plugins
from migtree.errors import PluginError
from migtree.plugins import (
    get_registry,
    load_registry,
    normalize,
    register_plugin,
    reset_registry,
)
from migtree.qom import Device
from migtree.registry import Registry


@pytest.fixture
def dists(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    for var in ("MIGTREE_LOAD_PLUGINS", "MIGTREE_DISABLE_PLUGINS", "MIGTREE_TRACE_HOOKS"):
        monkeypatch.delenv(var, raising=False)
    fd = FakeDists(tmp_path)
    yield fd
    fd.forget_modules()


def one_type(type_name: str) -> str:
    return ONE_TYPE.format(type=type_name)


def loaded(reg: Registry) -> list[str]:
    return [name for name, rec in reg.plugins.items() if rec.error is None]


# -- allow / deny, the core --------------------------------------------------------------

def test_everything_loads_by_default_core_first_then_by_name(dists):
    dists.add("zeta-plugin", one_type("zeta"))
    dists.add("Alpha_Plugin", one_type("alpha"))
    reg = load_registry(eps=dists.entry_points())
    assert loaded(reg) == ["migtree", "Alpha_Plugin", "zeta-plugin"]
    assert reg.skipped == {} and reg.warnings == []
    assert reg.types.lookup("alpha").plugin == "Alpha_Plugin"


def test_allow_list_from_the_environment_compares_normalised_names(dists, monkeypatch):
    dists.add("acme-one", one_type("one"))
    dists.add("acme-two", one_type("two"))
    monkeypatch.setenv("MIGTREE_LOAD_PLUGINS", " ACME_one , nowhere-installed,")
    reg = load_registry(eps=dists.entry_points())
    assert loaded(reg) == ["migtree", "acme-one"]
    assert reg.skipped == {"acme-two": "not named in MIGTREE_LOAD_PLUGINS"}
    assert reg.warnings == ["MIGTREE_LOAD_PLUGINS names nowhere-installed, which is not an "
                            "installed distribution with 'migtree' entry points"]
    assert "two" not in reg.types


def test_empty_allow_list_loads_only_the_core(dists, monkeypatch):
    dists.add("acme-one", one_type("one"))
    monkeypatch.setenv("MIGTREE_LOAD_PLUGINS", "")
    reg = load_registry(eps=dists.entry_points())
    assert loaded(reg) == ["migtree"]
    assert sorted(t.name for t in reg.types) == [
        "container", "device", "guest-memory", "machine", "object"]


def test_deny_list_skips_and_blocks(dists, monkeypatch):
    dists.add("acme-one", one_type("one"), ep_name="one")
    dists.add("acme-two", one_type("two"))
    monkeypatch.setenv("MIGTREE_DISABLE_PLUGINS", "acme_one")
    reg = load_registry(eps=dists.entry_points())
    assert loaded(reg) == ["migtree", "acme-two"]
    assert reg.skipped == {"acme-one": "disabled by MIGTREE_DISABLE_PLUGINS"}
    assert reg.pm.is_blocked("one")
    with pytest.raises(PluginError, match="plugin name 'one' is already taken"):
        register_plugin(reg, object(), "one")


def test_deny_wins_over_allow(dists):
    dists.add("acme-one", one_type("one"))
    reg = load_registry(allow=["acme-one"], deny=["acme-one"], eps=dists.entry_points())
    assert loaded(reg) == ["migtree"]
    assert reg.skipped == {"acme-one": "disabled by MIGTREE_DISABLE_PLUGINS"}


def test_the_core_cannot_be_disabled_or_left_out(dists, monkeypatch):
    monkeypatch.setenv("MIGTREE_DISABLE_PLUGINS", "migtree")
    monkeypatch.setenv("MIGTREE_LOAD_PLUGINS", "")
    reg = load_registry(eps=dists.entry_points())
    assert loaded(reg) == ["migtree"]
    assert reg.warnings == ["migtree cannot be disabled (MIGTREE_DISABLE_PLUGINS): every build "
                            "needs the core types; it was loaded anyway"]
    assert reg.plugins["migtree"].entry_points == {"core": "migtree.builtin"}


def test_without_an_installed_core_the_builtin_types_are_registered_directly(dists):
    dists.add("acme-one", one_type("one"))
    reg = load_registry(allow=None, deny=[], eps=dists.entry_points(core=False))
    assert loaded(reg) == ["migtree", "acme-one"]
    assert "machine" in reg.types
    assert reg.warnings == ["the migtree distribution is not installed; registered "
                            "migtree.builtin directly"]


def test_normalize():
    assert normalize("Migtree_APIC") == normalize("migtree.apic") == "migtree-apic"


# -- failures, each by distribution name ------------------------------------------------

def test_import_failure_names_the_distribution_module_cause_and_line(dists):
    dists.add("acme-broken", "import mtfake_no_such_module\n")
    dists.add("acme-fine", one_type("fine"))
    reg = load_registry(eps=dists.entry_points())
    err = reg.plugins["acme-broken"].error
    module = reg.plugins["acme-broken"].entry_points["acme-broken"]
    assert err.startswith(f"acme-broken: failed to import {module} (entry point "
                          "'acme-broken'): ModuleNotFoundError: No module named "
                          "'mtfake_no_such_module' (at ")
    assert err.endswith(f"{module}.py:1)")
    assert loaded(reg) == ["migtree", "acme-fine"]


def test_misspelt_hook_is_an_error_with_a_suggestion(dists):
    dists.add("acme-typo", """
        from migtree import hookimpl

        @hookimpl
        def migtree_register_type(register):
            pass
    """)
    dists.add("acme-fine", one_type("fine"))
    reg = load_registry(eps=dists.entry_points())
    assert reg.plugins["acme-typo"].error == (
        "acme-typo: unknown hook 'migtree_register_type' (did you mean "
        "'migtree_register_types'?) (a misspelt hook would otherwise be silently ignored)")
    assert loaded(reg) == ["migtree", "acme-fine"]
    assert not reg.pm.has_plugin("acme-typo")
    reg.pm.check_pending()  # nothing left pending


def test_optional_hooks_of_other_projects_are_allowed(dists):
    dists.add("acme-opt", """
        import pluggy
        from migtree import hookimpl

        @hookimpl(optionalhook=True)
        def migtree_future_hook():
            pass
    """)
    reg = load_registry(eps=dists.entry_points())
    assert reg.plugins["acme-opt"].error is None


def test_hook_function_without_hookimpl_is_an_error(dists):
    dists.add("acme-unmarked", """
        def migtree_register_types(register):
            raise AssertionError("pluggy never calls this")
    """)
    reg = load_registry(eps=dists.entry_points())
    assert reg.plugins["acme-unmarked"].error == (
        "acme-unmarked: migtree_register_types is not decorated with @migtree.hookimpl, so "
        "pluggy would never call it")


def test_hookimpl_with_an_unknown_argument_is_an_error(dists):
    dists.add("acme-args", """
        from migtree import hookimpl

        @hookimpl
        def migtree_register_types(register, extra):
            pass
    """)
    reg = load_registry(eps=dists.entry_points())
    err = reg.plugins["acme-args"].error
    assert err.startswith("acme-args: ") and "extra" in err and "<module" not in err


def test_duplicate_entry_point_names_are_detected(dists):
    dists.add("acme-first", one_type("first"), ep_name="widget")
    dists.add("acme-second", one_type("second"), ep_name="widget")
    dists.add("acme-third", one_type("third"))
    reg = load_registry(eps=dists.entry_points())
    assert loaded(reg) == ["migtree", "acme-first", "acme-third"]
    assert reg.plugins["acme-second"].error == (
        "acme-second: entry point name 'widget' in group 'migtree' is also declared by "
        "acme-first, which was loaded first; pluggy would silently skip one of them, so "
        "acme-second was not loaded (give each distribution its own entry-point name, e.g. "
        "its distribution name)")
    assert "second" not in reg.types


def test_two_plugins_claiming_one_type_the_second_is_rejected_whole(dists):
    both = """
        from migtree import hookimpl
        from migtree.qom import Device

        class Mine(Device):
            TYPE = "mine-{who}"
            ABSTRACT = False

        class Shared(Device):
            TYPE = "shared"
            ABSTRACT = False

        @hookimpl
        def migtree_register_types(register):
            register(Mine)
            register(Shared)
    """
    dists.add("acme-a", both.format(who="a"))
    dists.add("acme-b", both.format(who="b"))
    reg = load_registry(eps=dists.entry_points())
    err = reg.plugins["acme-b"].error
    assert err.startswith("acme-b: migtree_register_types: type 'shared' registered twice: "
                          "by acme-a (")
    assert "and by acme-b (" in err
    assert "mine-b" not in reg.types and "mine-a" in reg.types
    assert reg.types.lookup("shared").plugin == "acme-a"
    assert reg.plugins["acme-b"].types == [] and reg.plugins["acme-b"].hooks == []


def test_a_plugin_raising_while_registering_is_reported_with_the_line(dists):
    dists.add("acme-raise", """
        from migtree import hookimpl

        @hookimpl
        def migtree_register_types(register):
            raise KeyError("oops")
    """)
    reg = load_registry(eps=dists.entry_points())
    err = reg.plugins["acme-raise"].error
    assert err.startswith("acme-raise: failed while registering: KeyError: 'oops' (at ")
    assert err.endswith(".py:6)")


def test_returning_items_instead_of_registering_them_is_an_error(dists):
    dists.add("acme-return", """
        from migtree import hookimpl
        from migtree.qom import Device

        class Thing(Device):
            TYPE = "thing"

        @hookimpl
        def migtree_register_types(register):
            return [Thing]
    """)
    reg = load_registry(eps=dists.entry_points())
    assert "migtree_register_types returned [<class" in reg.plugins["acme-return"].error
    assert "call register(item) instead" in reg.plugins["acme-return"].error


def test_register_after_the_hook_returned_is_an_error(dists):
    dists.add("acme-late", """
        from migtree import hookimpl
        SAVED = []

        @hookimpl
        def migtree_register_types(register):
            SAVED.append(register)
    """)
    reg = load_registry(eps=dists.entry_points())
    module = sys.modules[reg.plugins["acme-late"].entry_points["acme-late"]]
    with pytest.raises(PluginError, match="register\\(\\) was called after "
                       "migtree_register_types returned"):
        module.SAVED[0](Device)


def test_a_distribution_with_two_entry_points_loads_or_fails_as_one(dists, tmp_path):
    (tmp_path / "mtfake_second_half.py").write_text("raise ImportError('half broken')\n")
    dists.add("acme-two-eps", one_type("two-eps"), extra_eps={"acme-extra": "mtfake_second_half"})
    reg = load_registry(eps=dists.entry_points())
    rec = reg.plugins["acme-two-eps"]
    assert "failed to import mtfake_second_half (entry point 'acme-extra')" in rec.error
    assert "two-eps" not in reg.types
    assert set(rec.entry_points) == {"acme-two-eps", "acme-extra"}


# -- in-process registration --------------------------------------------------------------

class InstancePlugin:
    class Gizmo(Device):
        TYPE = "gizmo"
        ABSTRACT = False

    @hookimpl
    def migtree_register_types(self, register):
        register(self.Gizmo)


def test_register_plugin_in_process_goes_through_the_same_checks():
    reg = Registry()
    register_plugin(reg, builtin, "migtree")
    reg.add_plugin(InstancePlugin(), "acme-instance")
    assert reg.types.lookup("gizmo").plugin == "acme-instance"
    assert reg.plugins["acme-instance"].version is None
    assert reg.plugins["acme-instance"].module == "InstancePlugin"
    with pytest.raises(PluginError, match="acme-instance: a plugin with this name is already"):
        reg.add_plugin(InstancePlugin(), "acme-instance")

    class Typo:
        @hookimpl
        def migtree_register_typs(self, register):
            pass

    with pytest.raises(PluginError, match="unknown hook 'migtree_register_typs'"):
        reg.add_plugin(Typo(), "acme-typo")
    assert reg.plugins["acme-typo"].error.startswith("acme-typo: unknown hook")

    class Fixed:
        @hookimpl
        def migtree_register_types(self, register):
            pass

    reg.add_plugin(Fixed(), "acme-typo")  # a failed name may be registered again once fixed
    assert reg.plugins["acme-typo"].error is None


def test_a_failed_in_process_plugin_leaves_nothing_behind():
    class Half:
        class A(Device):
            TYPE = "half-a"
            ABSTRACT = False

        @hookimpl
        def migtree_register_types(self, register):
            register(self.A)
            register(42)

    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    with pytest.raises(PluginError, match="needs an Object subclass"):
        reg.add_plugin(Half(), "acme-half")
    assert "half-a" not in reg.types
    assert not reg.pm.has_plugin("acme-half")
    assert reg.plugins["acme-half"].types == []


# -- once, lazily --------------------------------------------------------------------------

def test_get_registry_loads_once_lazily_and_reset_reloads(monkeypatch):
    calls = []
    real = plugins.load_registry

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(plugins, "load_registry", counting)
    monkeypatch.setattr(plugins, "_registry", None)
    assert calls == []
    threads = [threading.Thread(target=get_registry) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = get_registry()
    assert get_registry() is first and calls == [1]
    reset_registry()
    assert get_registry() is not first and calls == [1, 1]
    reset_registry()


def test_an_unhashable_plugin_object_is_called_like_any_other(monkeypatch, caplog):
    import attrs

    @attrs.define  # eq=True makes instances unhashable
    class Unhashable:
        label: str = "x"

        @hookimpl
        def migtree_register_types(self, register):
            register(InstancePlugin.Gizmo)

    monkeypatch.setenv("MIGTREE_TRACE_HOOKS", "1")
    reg = Registry()
    register_plugin(reg, builtin, "migtree")
    with caplog.at_level("INFO", logger="migtree.hooks"):
        reg.add_plugin(Unhashable(), "acme-unhashable")
    assert reg.types.lookup("gizmo").plugin == "acme-unhashable"
    assert ("call migtree_register_types(register=<register callback>) -> acme-unhashable"
            in [r.getMessage() for r in caplog.records])


@pytest.mark.parametrize("value, traced", [("1", True), ("yes", True), ("0", False),
                                           ("", False), ("false", False)])
def test_trace_goes_to_stderr_when_logging_is_not_configured(value, traced):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGTREE_")}
    env.update(MIGTREE_TRACE_HOOKS=value, MIGTREE_LOAD_PLUGINS="")
    proc = subprocess.run([sys.executable, "-c", "from migtree.plugins import get_registry\n"
                           "get_registry()"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    if traced:
        assert lines[0] == ("migtree: trace: call migtree_register_types(register=<register "
                            "callback>) -> migtree (entry point core)")
        assert lines[-1] == "migtree: trace: done migtree_register_types"
    else:
        assert lines == []
