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
