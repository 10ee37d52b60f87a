"""The ``kvm`` backend: a build's vCPUs are real KVM vCPUs.

``create_cpus`` opens ``/dev/kvm``, creates one VM with the in-kernel
irqchip, and for each vCPU adds an ``x86-cpu`` (from ``migtree-apic``) at
``/machine/unattached/device[N]`` with a :class:`~migtree_kvm.device.KvmApic`
child ``lapic`` backed by KVM vCPU ``N``, as QEMU composes them.

The fds belong to a :class:`KvmAccel`, one per machine, found with
:func:`accel_of`. It is a context manager: ``with accel_of(build.machine):``
closes every fd of the build when the block ends. An accel that is never
closed is closed when collected (with a ``ResourceWarning``).
"""

from __future__ import annotations

import weakref
from typing import Any

from migtree.build import Backend
from migtree.errors import BuildError

from .device import KvmApic
from .ioctls import Kvm, Vcpu, Vm, kvm_available

CPU_TYPE = "x86-cpu"

_ACCELS: weakref.WeakKeyDictionary[Any, KvmAccel] = weakref.WeakKeyDictionary()


class KvmAccel:
    """One machine's KVM resources: the system fd, a VM with an in-kernel
    irqchip, and its vCPUs (closed together by :meth:`close`)."""

    def __init__(self) -> None:
        self.kvm = Kvm()
        try:
            self.vm: Vm = self.kvm.create_vm()
            self.vm.create_irqchip()
        except BaseException:
            self.kvm.close()
            raise
        self.vcpus: list[Vcpu] = []

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        vcpu = self.vm.create_vcpu(vcpu_id)
        self.vcpus.append(vcpu)
        return vcpu

    def signal_msi(self, address: int, data: int) -> int:
        """Deliver an MSI through the in-kernel irqchip (``KVM_SIGNAL_MSI``)."""
        return self.vm.signal_msi(address, data)

    @property
    def closed(self) -> bool:
        return self.kvm.closed

    def close(self) -> None:
        """Close the vCPUs, the VM and ``/dev/kvm``. Idempotent."""
        self.kvm.close()

    def __enter__(self) -> KvmAccel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def accel_of(machine: Any) -> KvmAccel | None:
    """The :class:`KvmAccel` behind a machine built with the ``kvm`` backend."""
    return _ACCELS.get(machine)


def create_cpus(machine: Any, count: int, registry: Any) -> None:
    """Add ``count`` x86 CPUs whose local APICs are in-kernel ``kvm-apic``\\ s.

    :raises KvmUnavailable: ``/dev/kvm`` cannot be opened.
    :raises BuildError: no installed plugin provides ``x86-cpu``.
    """
    if CPU_TYPE not in registry.types:
        raise BuildError(
            f"the kvm backend needs the {CPU_TYPE!r} type, which no installed plugin "
            "registers (it comes with migtree-apic)"
        )
    if machine in _ACCELS:
        raise BuildError("the kvm backend already created this machine's vCPUs")
    accel = KvmAccel()
    try:
        for index in range(count):
            cpu = registry.types.create(CPU_TYPE)
            machine.add_unattached(cpu)
            cpu.add_child("lapic", KvmApic(vcpu=accel.create_vcpu(index)))
    except BaseException:
        accel.close()
        raise
    _ACCELS[machine] = accel


def backend() -> Backend:
    return Backend(
        name="kvm",
        description="vCPUs and local APICs in the kernel, through /dev/kvm",
        create_cpus=create_cpus,
        available=kvm_available,
    )
