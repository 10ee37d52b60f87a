"""migtree-apic: a userspace local APIC whose state is QEMU's ``apic`` VMState,
the ``x86-cpu`` type that holds it, and the ``userspace`` backend."""

from __future__ import annotations

from .device import Apic, GeneralProtectionFault, X86Cpu, deliver_irq
from .state import ApicState, ApicStateV1, ApicStateV2, SipiState

__all__ = [
    "Apic",
    "ApicState",
    "ApicStateV1",
    "ApicStateV2",
    "GeneralProtectionFault",
    "SipiState",
    "X86Cpu",
    "deliver_irq",
]
