"""What the apic tests share: a registry with the apic plugin registered
in-process, machines composed by the ``userspace`` backend, and a stand-in CPU
that records everything the APIC sends it.

The tests are written the way QEMU's qtests drive a device: the test plays
the CPU (register accesses, interrupt acknowledge, EOI) and the interrupt
sources (I/O APIC messages, LINT pins, the virtual clock).
"""

from __future__ import annotations

from typing import Any

import migtree_apic.plugin as apic_plugin
from migtree import builtin
from migtree.qom import new_root
from migtree.registry import Registry
from migtree_apic.device import REG_EOI, REG_SVR, Apic

SVR_ON = 0x1FF  # software-enabled, spurious vector 0xFF


def make_registry() -> Registry:
    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    reg.add_plugin(apic_plugin, "migtree-apic")
    return reg


def make_machine(cpus: int = 1, registry: Registry | None = None):
    """``(root, machine, apics)``: a machine composed by the userspace backend
    and realized, as a build does it."""
    registry = registry or make_registry()
    root, machine = new_root()
    registry.backends["userspace"].create_cpus(machine, cpus, registry)
    for obj in root.walk():
        obj.realize()
    apics = [machine.child("unattached").child(f"device[{i}]").child("lapic")
             for i in range(cpus)]
    assert all(isinstance(a, Apic) for a in apics)
    return root, machine, apics


def enabled_apic(cpus: int = 1):
    """A machine whose APICs are software-enabled; returns ``(machine, apics)``."""
    _, machine, apics = make_machine(cpus)
    for a in apics:
        a.write(REG_SVR, SVR_ON)
    return machine, apics


class CpuPlayer:
    """Plays one CPU: acknowledges interrupts, writes EOI, and logs what the
    APIC signals, stamped with the virtual time."""

    def __init__(self, apic: Apic, name: str = "cpu",
                 log: list[tuple[Any, ...]] | None = None) -> None:
        self.apic = apic
        self.name = name
        #: ``(virtual time, cpu name, event, detail)``; CPUs may share one log
        self.log: list[tuple[Any, ...]] = [] if log is None else log
        apic.add_signal_listener(lambda kind: self._note("signal", kind))
        apic.add_eoi_listener(lambda vector: self._note("eoi-broadcast", vector))
        apic.add_timer_listener(lambda due: self._note("timer-due", due))

    def _now(self) -> int:
        return self.apic.machine.clock.ns if self.apic.machine is not None else 0

    def _note(self, *event: Any) -> None:
        self.log.append((self._now(), self.name, *event))

    def take(self) -> int | None:
        """One interrupt acknowledge cycle."""
        vector = self.apic.get_interrupt()
        self._note("int", vector)
        return vector

    def eoi(self) -> None:
        self.apic.write(REG_EOI, 0)
        self._note("eoi")

    def run(self, limit: int = 64) -> list[int]:
        """Take and complete every interrupt the APIC presents, each handler
        ending with EOI (no nesting); returns the vectors in order."""
        taken = []
        while self.apic.interrupt_pending:
            assert len(taken) < limit, "interrupt storm"
            taken.append(self.take())
            self.eoi()
        return taken
