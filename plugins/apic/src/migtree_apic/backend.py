"""The ``userspace`` backend: vCPUs whose local APICs are emulated here."""

from __future__ import annotations

from typing import Any

from migtree.build import Backend

CPU_TYPE = "x86-cpu"
APIC_TYPE = "apic"


def create_userspace_cpus(machine: Any, count: int, registry: Any) -> None:
    """Add ``count`` x86-cpus at ``/machine/unattached/device[N]``, each with an
    ``apic`` child ``lapic`` whose APIC ID is the CPU index; CPU 0 is the
    bootstrap processor (IA32_APIC_BASE bit 8), as QEMU composes them."""
    for index in range(count):
        cpu = registry.types.create(CPU_TYPE)
        machine.add_unattached(cpu)
        cpu.add_child("lapic", registry.types.create(APIC_TYPE, id=index, bsp=index == 0))


def userspace_backend() -> Backend:
    return Backend(
        name="userspace",
        description="x86 CPUs with userspace local APICs (QEMU's apic model)",
        create_cpus=create_userspace_cpus,
    )
