"""The ``kvm-apic`` device: a local APIC that lives in the kernel.

Its native state is what the kernel holds, not a copy of the userspace
model: the 1 KiB register page of ``KVM_GET_LAPIC`` and the IA32_APIC_BASE
MSR. Realized by the ``kvm`` backend it is backed by a real vCPU:
``pre_save`` reads the kernel (``KVM_GET_MSRS``, ``KVM_GET_LAPIC``) and
``post_load`` writes it back (``KVM_SET_MSRS``, then ``KVM_SET_LAPIC``, the
order QEMU's ``kvm_apic_put`` uses: the page is interpreted in the mode the
MSR selects). The vCPU's MP state (``KVM_GET_MP_STATE``/``KVM_SET_MP_STATE``)
travels with it, as an optional part in the manner of a QEMU subsection:
present only when the vCPU is not runnable, which is where KVM keeps "this
application processor waits for a start-up IPI". (QEMU migrates it with the
CPU, ``env.mp_state``; here ``x86-cpu`` is stateless, so the LAPIC carries
it; a ``kvm-apic@1`` stream written before the part existed loads as
runnable.) Without a vCPU (a build on another backend, a test) it is plain
state.

The filters in :mod:`migtree_kvm.filters` turn this state into QEMU's
``apic`` VMState v3 and back.
"""

from __future__ import annotations

import attrs

from migtree.fields import U32, bytes_, optional, u64
from migtree.qom import Device

from .ioctls import KVM_APIC_REG_SIZE, KVM_MP_STATE_RUNNABLE, Vcpu
from .lapic_map import APIC_FIELDS, apic_state_to_page, covered_mask, page_to_apic_state

#: IA32_APIC_BASE after reset for the BSP: base 0xfee00000, enabled, BSP
RESET_APICBASE = 0xFEE0_0900


def _reset_page() -> bytes:
    state = {name: ([0] * n if n else 0) for name, _, n in APIC_FIELDS}
    state.update(
        apicbase=RESET_APICBASE,
        spurious_vec=0xFF,
        dest_mode=0xF,
        lvt=[1 << 16, 1 << 16, 1 << 16, 0x700, 1 << 16, 1 << 16],
        timer_expiry=-1,
    )
    return apic_state_to_page(state)[0]


#: QEMU's ``apic_reset_common`` for the BSP, as a page: ID 0, SVR 0xff
#: (software-disabled), DFR flat, every LVT masked but LINT0 (ExtINT)
RESET_PAGE = _reset_page()


@attrs.define
class KvmApicState:
    """What the kernel holds for one vCPU's local APIC."""

    regs: bytes = bytes_(
        KVM_APIC_REG_SIZE,
        default=RESET_PAGE,
        doc="struct kvm_lapic_state: the register page, register N at byte N << 4",
    )
    apicbase: int = u64(default=RESET_APICBASE, doc="the IA32_APIC_BASE MSR (0x1b)")
    mp_state: int | None = optional(
        U32,
        doc="struct kvm_mp_state (KVM_GET_MP_STATE), written only when the vCPU is not "
        "KVM_MP_STATE_RUNNABLE: an application processor waiting for INIT/SIPI "
        "(UNINITIALIZED, INIT_RECEIVED), a halted one...; absent means runnable",
    )


class KvmApic(Device):
    """The in-kernel local APIC (QEMU's ``kvm-apic``).

    :param vcpu: the vCPU whose LAPIC this is; the ``kvm`` backend passes
        it. ``None`` keeps the state in Python only.
    """

    TYPE = "kvm-apic"
    PARENT = "device"
    ABSTRACT = False
    STATE = KvmApicState
    VERSION = 1
    MIN_VERSION = 1
    DESCRIPTION = "local APIC emulated by KVM (state: KVM_GET_LAPIC page + APIC base MSR)"

    def __init__(self, vcpu: Vcpu | None = None):
        super().__init__()
        self.vcpu = vcpu

    def realize(self) -> None:
        """Start from what the kernel holds (its reset state for a new vCPU)."""
        self.pre_save()

    def pre_save(self) -> None:
        if self.vcpu is not None:
            self.state.apicbase = self.vcpu.get_apic_base()
            self.state.regs = self.vcpu.get_lapic()
            mp_state = self.vcpu.get_mp_state()
            self.state.mp_state = None if mp_state == KVM_MP_STATE_RUNNABLE else mp_state

    def post_load(self) -> None:
        if self.vcpu is not None:
            self.vcpu.set_apic_base(self.state.apicbase)
            self.vcpu.set_lapic(self.state.regs)
            mp_state = self.state.mp_state
            self.vcpu.set_mp_state(KVM_MP_STATE_RUNNABLE if mp_state is None else mp_state)

    # -- the APIC's architectural state as QEMU's apic fields (for workloads) --
    def get_apic_fields(self) -> dict:
        """What the kernel holds now, as ``apic`` v3 fields (the timer taken
        as loaded at virtual time 0: the page does not carry its phase)."""
        self.pre_save()
        return page_to_apic_state(self.state.regs, self.state.apicbase)

    def set_apic_fields(self, fields: dict) -> None:
        """Load ``apic`` v3 fields into the kernel's register page
        (``KVM_SET_LAPIC``); the page's bits the fields do not cover (version,
        PPR, ...) stay what the kernel had, and the base MSR is not written."""
        self.pre_save()
        page = apic_state_to_page({name: fields[name] for name, _, _ in APIC_FIELDS})[0]
        old = self.state.regs
        self.state.regs = bytes((p & m) | (o & ~m & 0xFF)
                                for p, o, m in zip(page, old, covered_mask(), strict=True))
        if self.vcpu is not None:
            self.vcpu.set_lapic(self.state.regs)
            self.pre_save()
