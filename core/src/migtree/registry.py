"""Everything the installed plugins registered, and who registered it.

:mod:`migtree.plugins` fills a :class:`Registry` from entry points; tests and
vendors fill one in-process with :meth:`Registry.add_plugin`.
"""

from __future__ import annotations

from typing import Any

import attrs

from .errors import RegistryError
from .filters import Filter, FilterPair
from .qom import TypeRegistry


@attrs.define
class PluginRecord:
    """One plugin as ``migtree plugins`` lists it."""

    name: str
    version: str | None = None
    module: str | None = None
    #: entry-point name -> module path, for each of the distribution's entry points
    entry_points: dict[str, str] = attrs.Factory(dict)
    hooks: list[str] = attrs.Factory(list)
    types: list[str] = attrs.Factory(list)
    filters: list[str] = attrs.Factory(list)
    backends: list[str] = attrs.Factory(list)
    formats: list[str] = attrs.Factory(list)
    decoders: list[str] = attrs.Factory(list)
    workloads: list[str] = attrs.Factory(list)
    error: str | None = None


class Registry:
    def __init__(self) -> None:
        self.types = TypeRegistry()
        self.filters: dict[str, Filter] = {}
        self.backends: dict[str, Any] = {}
        self.formats: dict[str, Any] = {}
        self.decoders: dict[tuple[str, str], Any] = {}
        self.workloads: dict[str, Any] = {}
        self.plugins: dict[str, PluginRecord] = {}
        #: installed distributions not loaded on purpose -> why (allow/deny lists)
        self.skipped: dict[str, str] = {}
        #: problems with the plugin configuration that are not one plugin's error
        self.warnings: list[str] = []
        self.pm: Any = None  # the pluggy PluginManager, once plugins are loaded

    def record(self, plugin: str) -> PluginRecord:
        if plugin not in self.plugins:
            self.plugins[plugin] = PluginRecord(plugin)
        return self.plugins[plugin]

    # -- registration callbacks handed to hooks -----------------------------
    def register_type(self, cls: type, *, plugin: str = "<in-process>") -> None:
        info = self.types.register(cls, plugin=plugin)
        versions = ",".join(str(v) for v in info.versions()) or str(info.version)
        self.record(plugin).types.append(f"{info.name}@{versions}")

    def register_filter(self, flt: Filter | FilterPair, *, plugin: str = "<in-process>") -> None:
        if isinstance(flt, FilterPair):
            for f in flt.filters():
                self.register_filter(f, plugin=plugin)
            return
        if not isinstance(flt, Filter):
            raise RegistryError(f"{plugin}: register() needs a Filter or FilterPair, got {flt!r}")
        if flt.name in self.filters:
            other = self.filters[flt.name]
            raise RegistryError(f"filter {flt.name!r} registered twice: by {other.plugin} "
                                f"and by {plugin}")
        flt = attrs.evolve(flt, plugin=plugin)
        self.filters[flt.name] = flt
        self.record(plugin).filters.append(flt.name)

    def register_backend(self, backend: Any, *, plugin: str = "<in-process>") -> None:
        name = getattr(backend, "name", None)
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{plugin}: a backend needs a name, got {backend!r}")
        _need_callables(backend, f"backend {name!r}", plugin, "create_cpus", "available")
        if name in self.backends:
            raise RegistryError(f"backend {name!r} registered twice: by "
                                f"{self.backends[name].plugin} and by {plugin}")
        backend.plugin = plugin
        self.backends[name] = backend
        self.record(plugin).backends.append(name)

    def register_format(self, fmt: Any, *, plugin: str = "<in-process>") -> None:
        name = getattr(fmt, "name", None)
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{plugin}: a stream format needs a name, got {fmt!r}")
        _need_callables(fmt, f"stream format {name!r}", plugin, "sniff", "read")
        if name in self.formats:
            raise RegistryError(f"stream format {name!r} registered twice: by "
                                f"{self.formats[name].plugin} and by {plugin}")
        fmt.plugin = plugin
        self.formats[name] = fmt
        self.record(plugin).formats.append(name)

    def register_decoder(self, dec: Any, *, plugin: str = "<in-process>") -> None:
        fmt, k = getattr(dec, "format", None), getattr(dec, "key", None)
        if not (isinstance(fmt, str) and fmt and isinstance(k, str) and k):
            raise RegistryError(f"{plugin}: an opaque decoder needs a format and a key, "
                                f"got {dec!r}")
        _need_callables(dec, f"opaque decoder {fmt}:{k}", plugin, "decode", "encode")
        key = (fmt, k)
        if key in self.decoders:
            raise RegistryError(f"opaque decoder {dec.format}:{dec.key} registered twice: by "
                                f"{self.decoders[key].plugin} and by {plugin}")
        dec.plugin = plugin
        self.decoders[key] = dec
        self.record(plugin).decoders.append(f"{dec.format}:{dec.key}")

    def register_workload(self, wl: Any, *, plugin: str = "<in-process>") -> None:
        name = getattr(wl, "name", None)
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{plugin}: a workload needs a name, got {wl!r}")
        _need_callables(wl, f"workload {name!r}", plugin, "applies", "start", "finish")
        if wl.name in self.workloads:
            raise RegistryError(f"workload {wl.name!r} registered twice: by "
                                f"{self.workloads[wl.name].plugin} and by {plugin}")
        wl.plugin = plugin
        self.workloads[wl.name] = wl
        self.record(plugin).workloads.append(wl.name)

    # -- in-process plugins (tests, vendors' test kits) ----------------------
    def add_plugin(self, module: Any, name: str | None = None) -> None:
        """Register a plugin object/module in-process, through the same hooks
        an installed one goes through."""
        from .plugins import register_plugin

        register_plugin(self, module, name or getattr(module, "__name__", repr(module)))


def _need_callables(item: Any, what: str, plugin: str, *names: str) -> None:
    missing = [n for n in names if not callable(getattr(item, n, None))]
    if missing:
        raise RegistryError(f"{plugin}: {what} has no callable {', '.join(missing)}")
