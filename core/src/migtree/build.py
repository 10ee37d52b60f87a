"""Builds: a composition of objects from installed plugins, described by a
small TOML file; the backends that create vCPUs; the workloads that
``migtree migrate`` runs on them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs


@attrs.define
class Backend:
    """A machine backend (``userspace``, ``kvm``).

    ``create_cpus(machine, count, registry)`` adds one ``x86-cpu`` per vCPU
    (``machine.add_unattached``) with its local APIC as child ``lapic``.
    ``available()`` returns ``(True, "")`` or ``(False, reason)``.
    """

    name: str
    description: str
    create_cpus: Callable[[Any, int, Any], None]
    available: Callable[[], tuple[bool, str]] = lambda: (True, "")
    plugin: str = ""


@attrs.define
class Workload:
    """Something ``migtree migrate`` does to a build's devices.

    ``applies(machine) -> bool``: whether the build has what it drives.
    ``start(machine, seed)``: on the source, leave work in flight.
    ``finish(machine)``: on the destination (or on a reference build that
    never migrated), complete the work.
    ``check(machine) -> dict``: a summary of the outcome (disk digest,
    interrupts delivered...) compared between the destination and the
    never-migrated reference.
    """

    name: str
    applies: Callable[[Any], bool]
    start: Callable[[Any, int], None]
    finish: Callable[[Any], None]
    check: Callable[[Any], dict]
    plugin: str = ""


# -- build configurations ------------------------------------------------------

_MACHINE_KEYS = {"backend", "fallback", "cpus", "memory"}
#: the plugins of this project that provide each backend, to name in the
#: error when the backend a build asks for is not installed
BACKEND_PLUGINS = {"userspace": "migtree-apic", "kvm": "migtree-kvm"}
#: the backend of a build without vCPUs (``cpus = 0``): a device-only build
#: needs none, so it needs no plugin that provides one
NO_CPUS = Backend("none", "no vCPUs: a build of devices only",
                  create_cpus=lambda machine, count, registry: None, plugin="migtree")
_DEVICE_RESERVED = {"type", "id", "children"}
_SIZE_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str | int) -> int:
    """``"16M"`` -> 16777216. Plain integers are bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a size such as '16M', got {text!r}")
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    if not t:  # "B", " iB": a unit without a number
        raise ValueError(f"expected a size such as '16M', got {text!r}")
    suffix = t[-1] if t[-1] in "KMG" else ""
    number = t[: -1] if suffix else t
    if not number.isdigit():
        raise ValueError(f"expected a size such as '16M', got {text!r}")
    return int(number) * _SIZE_SUFFIX[suffix]


@attrs.define
class Build:
    """A composed machine: its QOM root, the registry it came from, the
    filters its objects registered when they were instantiated, and notes
    for the user (e.g. a backend fallback)."""

    name: str
    root: Any
    machine: Any
    registry: Any
    backend: Backend
    config: dict
    source: str | None = None
    dynamic_filters: list = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)

    def filters(self) -> list:
        """Static filters of every installed plugin plus this build's dynamic ones."""
        return list(self.registry.filters.values()) + list(self.dynamic_filters)

    def objects(self) -> list:
        return list(self.root.walk())

    def close(self) -> None:
        """Release what the objects hold (kernel file descriptors, mappings,
        disk images), children first. Idempotent."""
        close_objects(self.root)

    def __enter__(self) -> Build:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def close_objects(root: Any) -> None:
    for obj in reversed(list(root.walk())):
        close = getattr(obj, "close", None)
        if callable(close):
            close()


def load_build(source: Any, registry: Any = None, *, allow_fallback: bool = True) -> Build:
    """Compose a build from a TOML file path (or an already-parsed dict).

    Every mistake is a :class:`BuildError` naming the file and the key.
    """
    import tomllib
    from pathlib import Path

    from .errors import BuildError
    from .plugins import get_registry, realized
    from .qom import new_root

    registry = registry if registry is not None else get_registry()
    if isinstance(source, dict):
        config, where, base = source, "<build>", Path.cwd()
    else:
        path = Path(source)
        where, base = str(path), path.resolve().parent
        try:
            config = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise BuildError(f"{where}: no such build file") from None
        except UnicodeDecodeError as e:
            raise BuildError(f"{where}: not UTF-8 text (byte {e.start}): a build file is "
                             "TOML") from None
        except OSError as e:
            raise BuildError(f"{where}: cannot read it: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise BuildError(f"{where}: not valid TOML: {e}") from None
        except RecursionError:
            raise BuildError(f"{where}: nested too deeply to be a build file") from None

    def fail(key: str, message: str) -> BuildError:
        return BuildError(f"{where}: {key}: {message}")

    unknown = set(config) - {"name", "machine", "device", "pins"}
    if unknown:
        raise fail(sorted(unknown)[0], "unknown key (expected name, machine, device, pins)")
    mcfg = config.get("machine", {})
    if not isinstance(mcfg, dict):
        raise fail("machine", "must be a table")
    unknown = set(mcfg) - _MACHINE_KEYS
    if unknown:
        raise fail(f"machine.{sorted(unknown)[0]}",
                   f"unknown key (expected {sorted(_MACHINE_KEYS)})")
    name = config.get("name") or (Path(where).stem if where != "<build>" else "build")

    notes: list[str] = []
    cpus = mcfg.get("cpus", 1)
    if type(cpus) is not int or not 0 <= cpus <= 255:
        raise fail("machine.cpus", f"expected an integer from 0 to 255, got {cpus!r}")
    backend_name = mcfg.get("backend", "userspace" if cpus else "none")
    if type(backend_name) is not str:
        raise fail("machine.backend", f"must be a backend name (text), got {backend_name!r}")
    backend = NO_CPUS if cpus == 0 and "backend" not in mcfg else \
        registry.backends.get(backend_name)
    if backend is None:
        provider = BACKEND_PLUGINS.get(backend_name)
        hint = (f"; it is provided by the plugin {provider} (pip install {provider}"
                + (f", or it was disabled: {registry.skipped[provider]}"
                   if provider in registry.skipped else "") + ")") if provider else ""
        raise fail("machine.backend", f"no installed plugin provides backend {backend_name!r} "
                   f"(installed: {', '.join(sorted(registry.backends)) or 'none'}){hint}; a "
                   "build of devices only needs no backend: cpus = 0 and no backend key")
    ok, reason = backend.available()
    if not ok:
        fallback = mcfg.get("fallback")
        if fallback is not None and type(fallback) is not str:
            raise fail("machine.fallback", f"must be a backend name (text), got {fallback!r}")
        if fallback and allow_fallback and fallback in registry.backends:
            notes.append(f"backend {backend_name!r} is unavailable ({reason}); "
                         f"using {fallback!r} instead")
            backend = registry.backends[fallback]
        else:
            raise fail("machine.backend", reason)

    root, machine = new_root()
    try:
        _compose(config, mcfg, machine, registry, backend, cpus, base, where, fail)
        from .pins import apply_pins

        notes.extend(apply_pins(config, root, registry, fail))
        build = Build(name=name, root=root, machine=machine, registry=registry,
                      backend=backend, config=config,
                      source=None if where == "<build>" else where, notes=notes)
        for obj in root.walk():
            obj.realize()
            build.dynamic_filters.extend(realized(registry, obj))
        build.dynamic_filters.extend(machine.dynamic_filters)
    except BaseException:
        close_objects(root)  # e.g. vCPUs the backend already created
        raise
    return build


def _compose(config: dict, mcfg: dict, machine: Any, registry: Any, backend: Backend,
             cpus: int, base: Any, where: str, fail: Any) -> None:
    """Memory, vCPUs and devices, in that order (devices find the memory)."""
    from .errors import BuildError, MigtreeError

    try:
        if "memory" in mcfg:
            try:
                size = parse_size(mcfg["memory"])
                ram = registry.types.create("guest-memory", size=size)
            except (ValueError, OverflowError) as e:
                raise fail("machine.memory", str(e)) from None
            except OSError as e:  # the host cannot map that much (ENOMEM, a ulimit)
                raise fail("machine.memory", f"cannot map {mcfg['memory']!r} of guest RAM "
                                             f"on this host: {e.strerror or e}") from None
            machine.add_child("ram", ram)
            machine.memory = ram
        backend.create_cpus(machine, cpus, registry)
        devices = config.get("device", [])
        if not isinstance(devices, list):
            raise fail("device", "must be an array of tables ([[device]])")
        for i, dcfg in enumerate(devices):
            obj, dev_id = _make_device(dcfg, f"device[{i}]", registry, base, fail)
            try:
                machine.add_device(obj, dev_id)
            except ValueError as e:  # an id that is not a valid child name, or taken
                raise fail(f"device[{i}].id", str(e)) from None
    except MigtreeError as e:
        if isinstance(e, BuildError):
            raise
        raise BuildError(f"{where}: {e}") from e


def _make_device(dcfg: Any, key: str, registry: Any, base: Any, fail: Any) -> tuple[Any, Any]:
    from .errors import UnknownTypeError

    if not isinstance(dcfg, dict):
        raise fail(key, "must be a table")
    type_name = dcfg.get("type")
    if not isinstance(type_name, str):
        raise fail(f"{key}.type", "missing (every device names its registered type)")
    info = registry.types.get(type_name)
    if info is None:
        raise fail(f"{key}.type", f"type {type_name!r} is not registered by any installed plugin")
    props = {k: v for k, v in dcfg.items() if k not in _DEVICE_RESERVED}
    for prop in getattr(info.cls, "PATH_PROPS", ()):
        if isinstance(props.get(prop), str):
            if "\0" in props[prop]:  # no file system path holds one
                raise fail(f"{key}.{prop}", "a path with a NUL byte")
            props[prop] = str((base / props[prop]).resolve())
    try:
        obj = registry.types.create(type_name, **props)
    except UnknownTypeError as e:
        raise fail(f"{key}.type", str(e)) from None
    except (TypeError, ValueError, OverflowError, AttributeError, KeyError, IndexError) as e:
        # a property of the wrong type reaching the device's constructor: the
        # build file is what is wrong, so it is a BuildError naming the device
        raise fail(key, f"{type_name}: {type(e).__name__}: {e}") from None
    except OSError as e:  # a drive or device file the build names
        raise fail(key, f"{type_name}: {e.strerror or e}: {e.filename or ''}") from None
    children = dcfg.get("children", {})
    if not isinstance(children, dict):
        raise fail(f"{key}.children", "must be a table of child name -> device table")
    for child_name, ccfg in children.items():
        child, _ = _make_device(ccfg, f"{key}.children.{child_name}", registry, base, fail)
        try:
            obj.add_child(child_name, child)
        except ValueError as e:
            raise fail(f"{key}.children.{child_name}", str(e)) from None
    dev_id = dcfg.get("id")
    if dev_id is not None and not isinstance(dev_id, str):
        raise fail(f"{key}.id", "must be a string")
    return obj, dev_id
