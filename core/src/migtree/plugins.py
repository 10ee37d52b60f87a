"""Plugin loading: the ``migtree`` entry-point group, through pluggy.

Our own devices are plugins found the same way as a vendor's. Loading is lazy
and happens once per process (:func:`get_registry`); tests build their own
registries with :func:`load_registry` or :meth:`Registry.add_plugin`.

Environment:

``MIGTREE_LOAD_PLUGINS``
    comma-separated distribution (or entry-point) names to load; set but
    empty loads none.
``MIGTREE_DISABLE_PLUGINS``
    comma-separated names never to load.
``MIGTREE_TRACE_HOOKS``
    when set, every hook call is logged to the ``migtree.hooks`` logger.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
from typing import Any

import pluggy

from . import hookspecs
from .errors import MigtreeError, PluginError
from .registry import Registry

GROUP = "migtree"
log = logging.getLogger("migtree.plugins")
hook_log = logging.getLogger("migtree.hooks")

_REGISTER_HOOKS = {
    "migtree_register_types": "register_type",
    "migtree_register_filters": "register_filter",
    "migtree_register_backends": "register_backend",
    "migtree_register_stream_formats": "register_format",
    "migtree_register_opaque_decoders": "register_decoder",
    "migtree_register_workloads": "register_workload",
}

_registry: Registry | None = None


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def _new_pm() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("migtree")
    pm.add_hookspecs(hookspecs)
    if os.environ.get("MIGTREE_TRACE_HOOKS"):
        def before(hook_name, impls, kwargs):
            hook_log.info("call %s -> %s", hook_name, [i.plugin_name for i in impls])

        def after(outcome, hook_name, impls, kwargs):
            hook_log.info("done %s", hook_name)

        pm.add_hookcall_monitoring(before, after)
    return pm


def register_plugin(registry: Registry, plugin: Any, name: str, version: str | None = None) -> None:
    """Register one plugin object and run its registration hooks, recording
    everything it registers under ``name``. A failure is a :class:`PluginError`
    naming the plugin; whatever the plugin registered before failing is kept
    out of the registry."""
    if registry.pm is None:
        registry.pm = _new_pm()
    pm = registry.pm
    if pm.has_plugin(name) or name in registry.plugins and registry.plugins[name].error is None:
        raise PluginError(f"plugin name {name!r} is registered twice")
    rec = registry.record(name)
    rec.version = version
    rec.module = getattr(plugin, "__name__", None)
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        _forget(registry, name)
        raise PluginError(f"plugin {name}: {e}") from None
    rec.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    try:
        for hook_name, method in _REGISTER_HOOKS.items():
            impl = getattr(plugin, hook_name, None)
            if impl is None:
                continue
            callback = getattr(registry, method)
            impl(register=lambda item, _cb=callback: _cb(item, plugin=name))
    except MigtreeError as e:
        _forget(registry, name)
        raise PluginError(f"plugin {name}: {e}") from None
    except Exception as e:  # a bug inside the plugin: report it by name
        _forget(registry, name)
        raise PluginError(f"plugin {name} failed while registering: "
                          f"{e.__class__.__name__}: {e}") from e


def _forget(registry: Registry, name: str) -> None:
    registry.types.unregister_plugin(name)
    for store in (registry.filters, registry.backends, registry.formats, registry.workloads):
        for key in [k for k, v in store.items() if getattr(v, "plugin", None) == name]:
            del store[key]
    for key in [k for k, v in registry.decoders.items() if getattr(v, "plugin", None) == name]:
        del registry.decoders[key]
    if registry.pm is not None and registry.pm.has_plugin(name):
        registry.pm.unregister(name=name)
    rec = registry.plugins.get(name)
    if rec is not None:
        rec.types, rec.filters, rec.backends, rec.formats = [], [], [], []
        rec.decoders, rec.workloads = [], []


def entry_points() -> list[md.EntryPoint]:
    return sorted(md.entry_points(group=GROUP), key=lambda ep: (ep.dist.name if ep.dist else "", ep.name))


def load_registry(allow: list[str] | None = None, deny: list[str] | None = None) -> Registry:
    """A new registry holding every allowed installed plugin. A plugin that
    fails to import or register is recorded with its error (``migtree
    plugins`` shows it) and the rest keep working."""
    allow = _env_list("MIGTREE_LOAD_PLUGINS") if allow is None else allow
    deny = (_env_list("MIGTREE_DISABLE_PLUGINS") or []) if deny is None else deny
    registry = Registry()
    registry.pm = _new_pm()
    seen: dict[str, str] = {}
    for ep in entry_points():
        dist = ep.dist.name if ep.dist else ep.name
        version = ep.dist.version if ep.dist else None
        wanted = {dist, ep.name}
        if allow is not None and not wanted & set(allow):
            continue
        if wanted & set(deny):
            registry.pm.set_blocked(ep.name)
            continue
        if ep.name in seen:
            rec = registry.record(f"{dist}:{ep.name}")
            rec.error = (f"entry point name {ep.name!r} is used by both {seen[ep.name]} and "
                         f"{dist}; the second was not loaded")
            log.error(rec.error)
            continue
        seen[ep.name] = dist
        try:
            module = ep.load()
        except Exception as e:  # noqa: BLE001 - report any import failure by name
            rec = registry.record(dist)
            rec.version = version
            rec.error = f"failed to import {ep.value}: {e.__class__.__name__}: {e}"
            log.error("plugin %s %s", dist, rec.error)
            continue
        try:
            register_plugin(registry, module, dist, version)
        except PluginError as e:
            rec = registry.record(dist)
            rec.version = version
            rec.error = str(e)
            log.error("%s", e)
    return registry


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        _registry = load_registry()
    return _registry


def reset_registry() -> None:
    global _registry
    _registry = None
