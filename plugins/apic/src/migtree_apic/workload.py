"""The ``apic-interrupts`` workload for ``migtree migrate``: interrupts left
pending and in service, TPR raised and the timer programmed on the source;
the destination (or a reference build that never migrated) delivers them.

``start`` programs every local APIC of the build from the seed: software
enable, a periodic timer's divide configuration and LVT entry, a mix of
edge- and level-triggered fixed interrupts, one or two of them taken into
service (nested), TPR raised above some of the rest. ``finish`` starts the
timers (an initial count derived from the LVT vector) and plays the CPUs:
the virtual clock moves in fixed steps and each CPU takes and completes
what its APIC presents; after a few steps the handlers of the interrupts
that were in service end and TPR drops to 0. ``check`` reports, per APIC,
every vector taken with its virtual time, every timer expiry, every EOI
broadcast and the final registers; a migrated build must report exactly
what the reference reports.

**APICs that live elsewhere.** Besides the userspace :class:`Apic`, ``start``
drives any device that offers the APIC's architectural state as QEMU's
``apic`` v3 fields -- ``get_apic_fields() -> dict`` and
``set_apic_fields(dict)`` (the ``kvm`` plugin's ``kvm-apic``, whose state is
the kernel's): the same program runs on a scratch :class:`Apic` holding
those fields, and what it leaves (IRR, ISR, TMR, TPR, SVR, LVT, TDCR) is
handed back. So a KVM source and a userspace reference start from the same
architectural state. The timer's count is only written in ``finish``: a
running kernel timer's phase is not migrated (the kernel restarts it on
load) and its current count changes under a paused source. ``finish`` plays
only userspace APICs (nothing runs a kernel APIC's vCPU here); ``check``
reports the registers of the others.
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


def _is_foreign(obj: Any) -> bool:
    return not isinstance(obj, Apic) and callable(getattr(obj, "get_apic_fields", None)) \
        and callable(getattr(obj, "set_apic_fields", None))


def foreign_apics(machine: Any) -> list[Any]:
    """The build's other local APICs (``get_apic_fields``/``set_apic_fields``), in path order."""
    return sorted((o for o in machine.walk() if _is_foreign(o)), key=lambda a: a.path)


def lapics(machine: Any) -> list[Any]:
    """Every local APIC the workload drives, in path order."""
    return sorted(apics(machine) + foreign_apics(machine), key=lambda a: a.path)


def applies(machine: Any) -> bool:
    return bool(lapics(machine))


def _program(apic: Apic, rng: random.Random) -> None:
    apic.write(REG_SVR, 0x1FF)
    apic.write(REG_TDCR, rng.choice([0b1011, 0b0000, 0b0001, 0b0011]))
    apic.write(REG_LVT, (1 << 17) | rng.randrange(0xE0, 0xF0))  # periodic, not started
    vectors = rng.sample(range(0x20, 0xE0), rng.randint(4, 10))
    for v in vectors:
        apic.set_irq(v, level_triggered=rng.random() < 0.3)
    for _ in range(rng.randint(1, 2)):  # nested handlers in progress
        apic.get_interrupt()
    apic.write(REG_TPR, rng.randrange(0x20, 0x90))


def _program_foreign(lapic: Any, rng: random.Random) -> None:
    """Run the program on a scratch userspace APIC holding ``lapic``'s fields."""
    fields = dict(lapic.get_apic_fields())
    scratch = Apic(id=fields["id"])
    for name in _CARRIED:
        value = fields[name]
        setattr(scratch.state, name, list(value) if isinstance(value, list) else value)
    scratch.post_load()
    _program(scratch, rng)
    for name in _CARRIED:
        value = getattr(scratch.state, name)
        fields[name] = list(value) if isinstance(value, list) else value
    lapic.set_apic_fields(fields)


#: the apic v3 fields a scratch APIC takes and hands back (not the timer's phase)
_CARRIED = ("apicbase", "id", "arb_id", "tpr", "spurious_vec", "log_dest", "dest_mode",
            "isr", "tmr", "irr", "lvt", "esr", "icr", "divide_conf", "count_shift",
            "initial_count")


def initial_count(apic: Apic) -> int:
    """The timer's initial count ``finish`` writes: 1000..2875, from the LVT vector."""
    return 1_000 + (apic.state.lvt[0] & 0xF) * 125


def start(machine: Any, seed: int) -> None:
    for k, lapic in enumerate(lapics(machine)):
        rng = random.Random(f"{seed}:{k}")
        if isinstance(lapic, Apic):
            _program(lapic, rng)
        else:
            _program_foreign(lapic, rng)
    machine.clock.advance(STEP_NS // 2)


def finish(machine: Any) -> None:
    logs = _logs.setdefault(machine, {})
    for apic in apics(machine):
        log = logs.setdefault(apic.path, {"taken": [], "timer": [], "eoi_broadcast": []})
        apic.add_timer_listener(lambda due, log=log: log["timer"].append(due))
        apic.add_eoi_listener(
            lambda v, log=log, m=machine: log["eoi_broadcast"].append([m.clock.ns, v]))
    for apic in apics(machine):
        apic.write(REG_TMICT, initial_count(apic))
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
    for lapic in foreign_apics(machine):
        f = lapic.get_apic_fields()
        out[lapic.path] = {k: f[k] for k in ("irr", "isr", "tmr", "tpr", "lvt", "divide_conf")}
        out[lapic.path]["clock_ns"] = machine.clock.ns
    return out


def apic_workload() -> Workload:
    return Workload(name=NAME, applies=applies, start=start, finish=finish, check=check)
