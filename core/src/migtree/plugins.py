"""Plugin loading: the ``migtree`` entry-point group, through pluggy.

Every type, filter, backend, format, decoder and workload comes from a
plugin found here, the core's own types included (the ``migtree``
distribution declares ``core = "migtree.builtin"``); there is no second path
for built-ins. Loading is lazy and happens once per process
(:func:`get_registry`); tests build their own registries with
:func:`load_registry` or :meth:`Registry.add_plugin`.

The unit of loading is the **distribution**: its entry points are imported,
registered with pluggy and asked to register things; if any step fails, none
of what that distribution registered is kept, the failure is recorded on its
:class:`~migtree.registry.PluginRecord` (``migtree plugins`` shows it) and
every other distribution keeps working. Distributions load in a fixed order:
``migtree`` first, then the others sorted by normalised name, so when two
claim one type or filter name the first in that order keeps it and the
second is rejected whole, with an error naming both.

Environment:

``MIGTREE_LOAD_PLUGINS``
    comma-separated distribution names to load (``migtree-apic,migtree-kvm``);
    names are compared normalised, so ``migtree_apic`` works too. Set but
    empty loads no plugin. The core distribution ``migtree`` is always
    loaded: every build and stream needs its ``object``, ``container``,
    ``device`` and ``machine`` types.
``MIGTREE_DISABLE_PLUGINS``
    comma-separated distribution names never to load (their entry-point
    names are also blocked in pluggy). Naming ``migtree`` there is a warning
    and has no effect, for the reason above.
``MIGTREE_TRACE_HOOKS``
    when set (to anything but ``""``, ``0``, ``false`` or ``no``), every hook
    call is logged to the ``migtree.hooks`` logger at INFO level: the hook,
    its arguments, which distributions' implementations run, what each
    registered, and the outcome. Registration hooks are called through
    pluggy one plugin at a time, so the trace sees them too.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import logging
import os
import re
import reprlib
import sys
import threading
import traceback
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import MigtreeError, PluginError
from .filters import Filter, FilterPair
from .registry import Registry

GROUP = "migtree"
#: the core distribution; always loaded, never disabled
CORE_DIST = "migtree"
log = logging.getLogger("migtree.plugins")
hook_log = logging.getLogger("migtree.hooks")

#: registration hooks, in the order each plugin's are called, and the
#: :class:`Registry` method that validates and records what they register
REGISTER_HOOKS: dict[str, str] = {
    "migtree_register_types": "register_type",
    "migtree_register_filters": "register_filter",
    "migtree_register_backends": "register_backend",
    "migtree_register_stream_formats": "register_format",
    "migtree_register_opaque_decoders": "register_decoder",
    "migtree_register_workloads": "register_workload",
}
_WHAT = {
    "register_type": "type", "register_filter": "filter", "register_backend": "backend",
    "register_format": "stream format", "register_decoder": "opaque decoder",
    "register_workload": "workload",
}

_registry: Registry | None = None
_lock = threading.Lock()


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: ``Migtree_APIC`` ->
    ``migtree-apic``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with migtree's hookspecs, remembering which
    distribution each registered plugin object came from."""

    def __init__(self, trace: bool | None = None) -> None:
        super().__init__(GROUP)
        self.add_hookspecs(hookspecs)
        #: pluggy plugin name (an entry-point name) -> distribution name
        self.owner: dict[str, str] = {}
        if trace if trace is not None else _env_flag("MIGTREE_TRACE_HOOKS"):
            _enable_trace(self)

    def distribution_of(self, plugin_name: str) -> str:
        return self.owner.get(plugin_name, plugin_name)

    def call_one(self, plugin: Any, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call ``hook_name`` on ``plugin``'s implementations only, through
        pluggy's hook calling (so ``add_hookcall_monitoring``, the trace,
        sees the call): this is how a registration is attributed to the
        plugin that made it. Other plugins' implementations, wrappers
        included, are not called."""
        hook = getattr(self.hook, hook_name)
        impls = hook.get_hookimpls()
        if all(_hashable(i.plugin) for i in impls):
            others = [i.plugin for i in impls if i.plugin is not plugin]
            return self.subset_hook_caller(hook_name, others)(**kwargs)
        # subset_hook_caller keeps plugins in a set; an unhashable plugin object
        # (an attrs instance, a SimpleNamespace) goes through the same executor
        # the hook caller uses, with this plugin's implementations only.
        mine = [i for i in impls if i.plugin is plugin]
        return self._hookexec(hook_name, mine, kwargs, False)


def _hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def _enable_trace(pm: PluginManager) -> None:
    if hook_log.level == logging.NOTSET:
        hook_log.setLevel(logging.INFO)
    if not hook_log.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("migtree: trace: %(message)s"))
        hook_log.addHandler(handler)
        hook_log.propagate = False
    short = reprlib.Repr()
    short.maxstring = short.maxother = 60

    def args(kwargs: dict[str, Any]) -> str:
        return ", ".join(f"{k}={_describe_arg(v, short)}" for k, v in kwargs.items())

    def before(hook_name: str, impls: list[pluggy.HookImpl], kwargs: dict[str, Any]) -> None:
        who = ", ".join(_who(pm, i.plugin_name) for i in impls) or "no implementation"
        hook_log.info("call %s(%s) -> %s", hook_name, args(kwargs), who)

    def after(outcome: Any, hook_name: str, impls: list[pluggy.HookImpl],
              kwargs: dict[str, Any]) -> None:
        exc = outcome.exception
        if exc is not None:
            hook_log.info("done %s: raised %s: %s", hook_name, exc.__class__.__name__, exc)
        else:
            hook_log.info("done %s", hook_name)

    pm.add_hookcall_monitoring(before, after)


def _who(pm: PluginManager, plugin_name: str) -> str:
    dist = pm.distribution_of(plugin_name)
    return dist if dist == plugin_name else f"{dist} (entry point {plugin_name})"


def _describe_arg(value: Any, short: reprlib.Repr) -> str:
    if callable(value) and getattr(value, "__name__", "") in _CALLBACK_NAMES:
        return f"<{value.__name__} callback>"
    return short.repr(value)


_CALLBACK_NAMES = {"register", "register_filter"}


def _new_pm() -> PluginManager:
    return PluginManager()


# -- registering one distribution -------------------------------------------------

def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame of ``exc``, for error messages."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {f.filename}:{f.lineno})"


def _strip(message: str, name: str) -> str:
    prefix = f"{name}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _unknown_hooks(pm: PluginManager, plugin: Any) -> list[str]:
    return sorted(h.name for h in pm.get_hookcallers(plugin) or []
                  if not h.has_spec()
                  and any(i.plugin is plugin and not i.optionalhook for i in h.get_hookimpls()))


def _unmarked_hooks(pm: PluginManager, plugin: Any) -> list[str]:
    """Functions named exactly like a hook but not decorated with
    ``@hookimpl``: pluggy ignores them, which would silently register nothing."""
    marked = {h.name for h in pm.get_hookcallers(plugin) or []}
    out = []
    for name in dir(pm.hook):
        if name.startswith("migtree_") and name not in marked:
            if callable(getattr(plugin, name, None)):
                out.append(name)
    return sorted(out)


def _hook_names() -> list[str]:
    return sorted(n for n in vars(hookspecs) if n.startswith("migtree_"))


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, _hook_names(), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _register_dist(registry: Registry, dist: str, version: str | None,
                   plugins: list[tuple[str, Any, str]]) -> None:
    """Register a distribution's plugin objects (``(pluggy name, object,
    module path)``) and run their registration hooks. All or nothing: on
    failure, everything the distribution registered is forgotten and a
    :class:`PluginError` naming it is raised."""
    pm = registry.pm
    for pname, _, _ in plugins:
        if pm.has_plugin(pname) or pm.is_blocked(pname):
            other = pm.distribution_of(pname)
            raise PluginError(f"{dist}: plugin name {pname!r} is already taken"
                              + (f" by {other}" if other != pname else ""))
    rec = registry.record(dist)
    rec.version = version
    rec.error = None
    rec.entry_points = {pname: module for pname, _, module in plugins}
    rec.module = ", ".join(module for _, _, module in plugins) or None
    try:
        for pname, obj, _ in plugins:
            try:
                pm.register(obj, name=pname)
            except ValueError as e:  # the same object registered twice
                raise PluginError(f"{dist}: {e}") from None
            pm.owner[pname] = dist
            unknown = _unknown_hooks(pm, obj)
            if unknown:
                raise PluginError(f"{dist}: unknown hook " + ", ".join(
                    f"{h!r}{_suggest(h)}" for h in unknown)
                    + " (a misspelt hook would otherwise be silently ignored)")
            pm.check_pending()  # belt and braces: nothing else may be pending
            unmarked = _unmarked_hooks(pm, obj)
            if unmarked:
                raise PluginError(f"{dist}: {', '.join(unmarked)} "
                                  f"{'is' if len(unmarked) == 1 else 'are'} not decorated with "
                                  "@migtree.hookimpl, so pluggy would never call it")
        rec.hooks = sorted({h.name for _, obj, _ in plugins
                            for h in pm.get_hookcallers(obj) or []})
        for _, obj, _ in plugins:
            for hook_name, method in REGISTER_HOOKS.items():
                _call_register_hook(registry, pm, obj, dist, hook_name, method)
    except pluggy.PluginValidationError as e:
        _forget(registry, dist)
        raise PluginError(f"{dist}: {_validation_message(e)}") from None
    except PluginError:
        _forget(registry, dist)
        raise
    except MigtreeError as e:
        _forget(registry, dist)
        raise PluginError(f"{dist}: {_strip(str(e), dist)}") from None
    except Exception as e:  # a bug inside the plugin: report it by name, with where
        _forget(registry, dist)
        raise PluginError(f"{dist}: failed while registering: "
                          f"{e.__class__.__name__}: {e}{_where(e)}") from e


def _validation_message(e: pluggy.PluginValidationError) -> str:
    # pluggy names the plugin by its repr (a module path); we name the
    # distribution instead, so keep only pluggy's reason.
    return re.sub(r" in plugin <[^>]*>| in plugin '[^']*'", "", str(e))


def _call_register_hook(registry: Registry, pm: PluginManager, obj: Any, dist: str,
                        hook_name: str, method: str) -> None:
    impl = getattr(pm.hook, hook_name)
    if not any(i.plugin is obj for i in impl.get_hookimpls()):
        return
    validate = getattr(registry, method)
    what = _WHAT[method]
    open_ = True

    def register(item: Any) -> None:
        if not open_:
            raise PluginError(f"{dist}: register() was called after {hook_name} returned; "
                              "register everything during the hook call")
        try:
            validate(item, plugin=dist)
        except MigtreeError as e:
            raise PluginError(f"{dist}: {hook_name}: {_strip(str(e), dist)}") from None
        hook_log.info("%s: %s registered %s %s", hook_name, dist, what, _label(item))

    try:
        results = pm.call_one(obj, hook_name, register=register)
    finally:
        open_ = False
    returned = [r for r in results if r is not None]
    if returned:
        raise PluginError(f"{dist}: {hook_name} returned {reprlib.repr(returned[0])}; "
                          "registration hooks return nothing: call register(item) instead")


def _label(item: Any) -> str:
    if isinstance(item, type) and isinstance(item.__dict__.get("TYPE"), str):
        return item.__dict__["TYPE"]
    if isinstance(getattr(item, "format", None), str) and isinstance(getattr(item, "key", None),
                                                                     str):
        return f"{item.format}:{item.key}"
    name = getattr(item, "name", None)
    return name if isinstance(name, str) else reprlib.repr(item)


def _forget(registry: Registry, name: str) -> None:
    """Drop everything distribution ``name`` registered, and its plugins."""
    registry.types.unregister_plugin(name)
    for store in (registry.filters, registry.backends, registry.formats, registry.workloads,
                  registry.decoders):
        for key in [k for k, v in store.items() if getattr(v, "plugin", None) == name]:
            del store[key]
    pm = registry.pm
    if pm is not None:
        for pname in [p for p, d in pm.owner.items() if d == name]:
            if pm.has_plugin(pname):
                pm.unregister(name=pname)
            del pm.owner[pname]
    rec = registry.plugins.get(name)
    if rec is not None:
        rec.types, rec.filters, rec.backends, rec.formats = [], [], [], []
        rec.decoders, rec.workloads, rec.hooks = [], [], []


def register_plugin(registry: Registry, plugin: Any, name: str, version: str | None = None) -> None:
    """Register one plugin object in-process (a module or an instance with
    ``@hookimpl`` methods) under distribution name ``name``, through the
    same checks and hook calls an installed plugin goes through. A failure
    is a :class:`PluginError` naming the plugin; nothing it registered is
    kept."""
    if registry.pm is None:
        registry.pm = _new_pm()
    existing = registry.plugins.get(name)
    if existing is not None and existing.error is None:
        raise PluginError(f"{name}: a plugin with this name is already registered")
    module = getattr(plugin, "__name__", None) or type(plugin).__qualname__
    try:
        _register_dist(registry, name, version, [(name, plugin, module)])
    except PluginError as e:
        registry.record(name).error = str(e)
        raise


# -- discovery ------------------------------------------------------------------

def _load_order(ep: md.EntryPoint) -> tuple[bool, str, str]:
    dist = normalize(ep.dist.name) if ep.dist else normalize(ep.name)
    return (dist != CORE_DIST, dist, ep.name)


def entry_points() -> list[md.EntryPoint]:
    """Every entry point in the ``migtree`` group, in load order: the core
    distribution first, then by normalised distribution name, then by
    entry-point name."""
    return sorted(md.entry_points(group=GROUP), key=_load_order)


@attrs.define
class _Dist:
    name: str
    version: str | None
    eps: list[md.EntryPoint] = attrs.Factory(list)


def _group(eps: Iterable[md.EntryPoint]) -> list[_Dist]:
    dists: dict[str, _Dist] = {}
    for ep in sorted(eps, key=_load_order):
        name = ep.dist.name if ep.dist else ep.name
        version = ep.dist.version if ep.dist else None
        dists.setdefault(normalize(name), _Dist(name, version)).eps.append(ep)
    return list(dists.values())


def load_registry(allow: Iterable[str] | None = None, deny: Iterable[str] | None = None, *,
                  eps: Iterable[md.EntryPoint] | None = None) -> Registry:
    """A new registry holding every allowed installed plugin.

    :param allow: distribution names to load (default: ``MIGTREE_LOAD_PLUGINS``;
        ``None`` there too means all). The core distribution is always loaded.
    :param deny: distribution names never to load (default:
        ``MIGTREE_DISABLE_PLUGINS``).
    :param eps: the entry points to consider (default: the installed ``migtree``
        group); tests pass their own.

    A distribution that fails to import or register is recorded with its
    error on ``registry.plugins[name].error`` and logged; the rest keep
    working. Distributions not loaded because of ``allow``/``deny`` are in
    ``registry.skipped`` with the reason; other problems (an allow-list name
    that is not installed) are in ``registry.warnings``.
    """
    if allow is None:
        allow = _env_list("MIGTREE_LOAD_PLUGINS")
    if deny is None:
        deny = _env_list("MIGTREE_DISABLE_PLUGINS") or []
    allowed = None if allow is None else {normalize(n) for n in allow}
    denied = {normalize(n) for n in deny}
    registry = Registry()
    pm = registry.pm = _new_pm()
    dists = _group(entry_points() if eps is None else eps)
    present = {normalize(d.name) for d in dists}

    if CORE_DIST in denied:
        _warn(registry, f"{CORE_DIST} cannot be disabled (MIGTREE_DISABLE_PLUGINS): every "
              "build needs the core types; it was loaded anyway")
    for name in sorted((allowed or set()) - present):
        _warn(registry, f"MIGTREE_LOAD_PLUGINS names {name}, which is not an installed "
              f"distribution with {GROUP!r} entry points")
    if CORE_DIST not in present:
        # A source tree run without installing core has no entry points at
        # all; register the built-in types directly so the core still works.
        from . import builtin

        _warn(registry, f"the {CORE_DIST} distribution is not installed; registered "
              "migtree.builtin directly")
        _register_dist(registry, CORE_DIST, None, [("core", builtin, builtin.__name__)])

    taken: dict[str, str] = {}  # entry-point name -> distribution that declared it
    for dist in dists:
        key = normalize(dist.name)
        if key != CORE_DIST:
            if key in denied:
                registry.skipped[dist.name] = "disabled by MIGTREE_DISABLE_PLUGINS"
                for ep in dist.eps:
                    pm.set_blocked(ep.name)
                continue
            if allowed is not None and key not in allowed:
                registry.skipped[dist.name] = "not named in MIGTREE_LOAD_PLUGINS"
                continue
        clash = [(ep.name, taken[ep.name]) for ep in dist.eps if ep.name in taken]
        for ep in dist.eps:
            taken.setdefault(ep.name, dist.name)
        if clash:
            ep_name, other = clash[0]
            _fail(registry, dist, f"{dist.name}: entry point name {ep_name!r} in group "
                  f"{GROUP!r} is also declared by {other}, which was loaded first; pluggy "
                  f"would silently skip one of them, so {dist.name} was not loaded (give "
                  "each distribution its own entry-point name, e.g. its distribution name)")
            continue
        plugins = []
        try:
            for ep in dist.eps:
                try:
                    plugins.append((ep.name, ep.load(), ep.value))
                except Exception as e:
                    raise PluginError(f"{dist.name}: failed to import {ep.value} (entry point "
                                      f"{ep.name!r}): {e.__class__.__name__}: {e}{_where(e)}"
                                      ) from e
            _register_dist(registry, dist.name, dist.version, plugins)
        except PluginError as e:
            _fail(registry, dist, str(e))
    pm.check_pending()  # every distribution that failed it was unregistered above
    return registry


def _fail(registry: Registry, dist: _Dist, message: str) -> None:
    rec = registry.record(dist.name)
    rec.version = dist.version
    rec.entry_points = {ep.name: ep.value for ep in dist.eps}
    rec.module = ", ".join(ep.value for ep in dist.eps) or None
    rec.error = message
    log.error("plugin %s", message)


def _warn(registry: Registry, message: str) -> None:
    registry.warnings.append(message)
    log.warning("%s", message)


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use (once, thread-safely)."""
    global _registry
    if _registry is None:
        with _lock:
            if _registry is None:
                _registry = load_registry()
    return _registry


def reset_registry() -> None:
    """Forget the process-wide registry; the next :func:`get_registry` reloads
    (and re-reads the environment)."""
    global _registry
    with _lock:
        _registry = None


# -- dynamic registration ---------------------------------------------------------

def realized(registry: Registry, obj: Any) -> list[Filter]:
    """Call ``migtree_object_realized(obj, register_filter)`` on every plugin
    implementing it, one plugin at a time through pluggy, and return the
    filters they registered for this build, stamped ``dynamic=True`` with the
    registering distribution's name as ``plugin``. Plugins are asked in
    distribution-name order; the engine orders filters by their own priority
    and name anyway.

    A plugin that raises, or registers something that is not a filter, or a
    filter named like a static one, is a :class:`PluginError` naming the
    distribution and the object's path.
    """
    pm = registry.pm
    if pm is None:
        return []
    hook = pm.hook.migtree_object_realized
    impls = sorted(hook.get_hookimpls(),
                   key=lambda i: (normalize(pm.distribution_of(i.plugin_name)), i.plugin_name))
    out: list[Filter] = []
    path = getattr(obj, "path", repr(obj))
    for impl in impls:
        dist = pm.distribution_of(impl.plugin_name)
        register_filter, got, close = _filter_collector(registry, dist, path)
        try:
            pm.call_one(impl.plugin, "migtree_object_realized", obj=obj,
                        register_filter=register_filter)
        except PluginError:
            raise
        except MigtreeError as e:
            raise PluginError(f"{dist}: migtree_object_realized({path}): "
                              f"{_strip(str(e), dist)}") from None
        except Exception as e:
            raise PluginError(f"{dist}: migtree_object_realized({path}) failed: "
                              f"{e.__class__.__name__}: {e}{_where(e)}") from e
        finally:
            close()
        out.extend(got)
    return out


def _filter_collector(registry: Registry, dist: str, path: str):
    """A ``register_filter`` callback for one plugin and one object, the list it
    fills, and a function that closes it once the hook returned."""
    got: list[Filter] = []
    state = {"open": True}

    def register_filter(flt: Any) -> None:
        if not state["open"]:
            raise PluginError(f"{dist}: register_filter() called for {path} after "
                              "migtree_object_realized returned")
        got.extend(_dynamic(registry, flt, dist, path))

    def close() -> None:
        state["open"] = False

    return register_filter, got, close


def _dynamic(registry: Registry, flt: Any, dist: str, path: str) -> list[Filter]:
    if isinstance(flt, FilterPair):
        return [f for one in flt.filters() for f in _dynamic(registry, one, dist, path)]
    if not isinstance(flt, Filter):
        raise PluginError(f"{dist}: migtree_object_realized({path}): register_filter() needs "
                          f"a Filter or FilterPair, got {flt!r}")
    static = registry.filters.get(flt.name)
    if static is not None:
        raise PluginError(f"{dist}: migtree_object_realized({path}): dynamic filter "
                          f"{flt.name!r} has the name of a static filter registered by "
                          f"{static.plugin}")
    return [attrs.evolve(flt, plugin=dist, dynamic=True)]


def registered_by(registry: Registry, dist: str) -> dict[str, list[Any]]:
    """What distribution ``dist`` registered, as registry objects (for
    ``migtree plugins`` and tests)."""
    return {
        "types": [t for t in registry.types if t.plugin == dist],
        "filters": sorted((f for f in registry.filters.values() if f.plugin == dist),
                          key=lambda f: f.name),
        "backends": sorted((b for b in registry.backends.values() if b.plugin == dist),
                           key=lambda b: b.name),
        "formats": sorted((f for f in registry.formats.values() if f.plugin == dist),
                          key=lambda f: f.name),
        "decoders": [d for k, d in sorted(registry.decoders.items()) if d.plugin == dist],
        "workloads": sorted((w for w in registry.workloads.values() if w.plugin == dist),
                            key=lambda w: w.name),
    }


__all__ = [
    "CORE_DIST", "GROUP", "REGISTER_HOOKS", "PluginManager", "entry_points", "get_registry",
    "load_registry", "normalize", "realized", "register_plugin", "registered_by",
    "reset_registry",
]
