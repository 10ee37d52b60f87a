"""The ``apic-interrupts`` workload for ``migtree migrate``: interrupts left
pending and in service, TPR raised and the timer armed on the source; the
destination (or a reference build that never migrated) delivers them.

``start`` programs every userspace APIC of the build from the seed: software
enable, a periodic timer, a mix of edge- and level-triggered fixed
interrupts, one or two of them taken into service (nested), TPR raised above
some of the rest. ``finish`` plays the CPUs: the virtual clock moves in fixed
steps and each CPU takes and completes what its APIC presents; after a few
steps the handlers of the interrupts that were in service end and TPR drops
to 0. ``check`` reports, per APIC, every vector taken with its virtual time,
every timer expiry, every EOI broadcast and the final registers; a migrated
build must report exactly what the reference reports.
"""

from __future__ import annotations

import random
import weakref
from typing import Any

from migtree.build import Workload

from .device import REG_EOI, REG_LVT, REG_SVR, REG_TDCR, REG_TMICT, REG_TPR, Apic

NAME = "apic-interrupts"
#: virtual time between two steps of ``finish`` (ns), and how many steps
STEP_NS = 7_919
STEPS = 8
#: the step after which in-service handlers end and TPR drops to 0
RELEASE_AFTER = 2

_logs: weakref.WeakKeyDictionary[Any, dict[str, dict[str, list]]] = weakref.WeakKeyDictionary()


def apics(machine: Any) -> list[Apic]:
    """The build's userspace APICs, in path order."""
    return sorted((o for o in machine.walk() if isinstance(o, Apic)), key=lambda a: a.path)


def applies(machine: Any) -> bool:
    return bool(apics(machine))


def start(machine: Any, seed: int) -> None:
    for k, apic in enumerate(apics(machine)):
        rng = random.Random(f"{seed}:{k}")
        apic.write(REG_SVR, 0x1FF)
        apic.write(REG_TDCR, rng.choice([0b1011, 0b0000, 0b0001, 0b0011]))
        apic.write(REG_LVT, (1 << 17) | rng.randrange(0xE0, 0xF0))  # periodic
        apic.write(REG_TMICT, rng.randrange(1_000, 3_000))
        vectors = rng.sample(range(0x20, 0xE0), rng.randint(4, 10))
        for v in vectors:
            apic.set_irq(v, level_triggered=rng.random() < 0.3)
        for _ in range(rng.randint(1, 2)):  # nested handlers in progress
            apic.get_interrupt()
        apic.write(REG_TPR, rng.randrange(0x20, 0x90))
    machine.clock.advance(STEP_NS // 2)


def finish(machine: Any) -> None:
    logs = _logs.setdefault(machine, {})
    for apic in apics(machine):
        log = logs.setdefault(apic.path, {"taken": [], "timer": [], "eoi_broadcast": []})
        apic.add_timer_listener(lambda due, log=log: log["timer"].append(due))
        apic.add_eoi_listener(
            lambda v, log=log, m=machine: log["eoi_broadcast"].append([m.clock.ns, v]))
    in_service = {a.path: sum(bin(w).count("1") for w in a.state.isr) for a in apics(machine)}
    for step in range(STEPS):
        machine.clock.advance(STEP_NS)
        for apic in apics(machine):
            taken = logs[apic.path]["taken"]
            for _ in range(256):
                if not apic.interrupt_pending:
                    break
                taken.append([machine.clock.ns, apic.get_interrupt()])
                apic.write(REG_EOI, 0)
            if step == RELEASE_AFTER:
                for _ in range(in_service[apic.path]):
                    apic.write(REG_EOI, 0)
                apic.write(REG_TPR, 0)


def check(machine: Any) -> dict:
    logs = _logs.get(machine, {})
    out: dict[str, Any] = {}
    for apic in apics(machine):
        st = apic.state
        out[apic.path] = {
            **logs.get(apic.path, {"taken": [], "timer": [], "eoi_broadcast": []}),
            "irr": list(st.irr), "isr": list(st.isr), "tpr": st.tpr,
            "timer_expiry": st.timer_expiry, "clock_ns": machine.clock.ns,
        }
    return out


def apic_workload() -> Workload:
    return Workload(name=NAME, applies=applies, start=start, finish=finish, check=check)
