"""The local APIC's migratable state, declared once, and its history.

Version 3 is QEMU's ``apic`` VMState (``hw/intc/apic_common.c``,
``vmstate_apic_common``) field for field and width for width, with QEMU's
``apic_sipi`` subsection as the optional part ``sipi``, written only while the
CPU waits for a start-up IPI (QEMU's ``apic_common_sipi_needed``).

The older versions are the layouts QEMU really wrote before its VMState
conversion, from the hand-written ``apic_save``/``apic_load`` in ``hw/apic.c``
(still readable by QEMU through ``apic_load_old``):

* **version 1**: the same registers, but ``isr``, ``tmr`` and ``irr`` written
  interleaved 32 bits at a time (``isr[i], tmr[i], irr[i]`` for ``i`` in
  0..7) and no timer at all after ``next_time``;
* **version 2**: version 1 plus the pending timer expiry at the end, written
  by ``qemu_put_timer(f, s->timer)`` (the expiry in ns of the virtual clock,
  or -1 when the timer is not pending).

Version 3 (the VMState conversion) groups the three registers into separate
arrays; its timer field was first declared ``VMSTATE_TIMER(timer, ...)`` and
later renamed to the open-coded ``timer_expiry`` without a version bump, since
the bytes are the same. A hand-written save has no field names, so migtree
names the interleaved words ``isr_tmr_irr`` (an array of eight
``{isr, tmr, irr}`` structs, which flattens to exactly QEMU's byte order) and
keeps QEMU's member name ``timer`` for the pre-rename field. The filters
between the versions are in :mod:`migtree_apic.filters`.
"""

from __future__ import annotations

import attrs

from migtree.fields import array as array_field
from migtree.fields import i32, i64, optional, u8, u32, u32_array

# -- architectural constants (Intel SDM vol. 3, ch. 11 "APIC") -----------------

#: IA32_APIC_BASE MSR
MSR_IA32_APICBASE = 0x1B
APICBASE_BSP = 1 << 8
APICBASE_EXTD = 1 << 10  # x2APIC mode; not supported by this model
APICBASE_ENABLE = 1 << 11
APICBASE_BASE_MASK = 0xFFFF_F000
APIC_DEFAULT_ADDRESS = 0xFEE0_0000

#: version register: an integrated APIC (0x1x) with six LVT entries
APIC_VERSION = 0x14
APIC_LVT_NB = 6

# LVT indices (the order of QEMU's lvt[] and of the registers at 0x320..0x370)
LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = range(APIC_LVT_NB)
LVT_NAMES = ("timer", "thermal", "perf", "lint0", "lint1", "error")

LVT_MASKED = 1 << 16
LVT_TIMER_PERIODIC = 1 << 17
LVT_LEVEL_TRIGGER = 1 << 15
LVT_REMOTE_IRR = 1 << 14
LVT_DELIVERY_STATUS = 1 << 12

# delivery modes (LVT bits 10:8, ICR bits 10:8)
DM_FIXED, DM_LOWPRI, DM_SMI, DM_NMI, DM_INIT, DM_SIPI, DM_EXTINT = 0, 1, 2, 4, 5, 6, 7

# spurious-interrupt vector register
SVR_ENABLE = 1 << 8
#: the bits of SVR a write keeps: vector and software enable (as QEMU; no
#: focus-processor checking, no EOI-broadcast suppression: version bit 24 is 0)
SVR_WRITABLE = 0x1FF

# error status register bits
ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECV_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_ADDRESS = 1 << 7

#: writable bits of each LVT entry (vector, delivery mode where the entry has
#: one, polarity and trigger for LINT0/1, mask, timer mode); the delivery-status
#: and remote-IRR bits are read-only and the rest reserved
LVT_WRITABLE = (
    0x000300FF,  # timer: vector, mask, periodic (bit 18, TSC-deadline, unsupported)
    0x000107FF,  # thermal: vector, delivery mode, mask
    0x000107FF,  # performance counter
    0x0001A7FF,  # LINT0: vector, delivery mode, polarity, trigger, mask
    0x0001A7FF,  # LINT1
    0x000100FF,  # error: vector, mask
)


# -- version 3: QEMU's ``apic`` VMState ---------------------------------------

@attrs.define
class SipiState:
    """QEMU's ``apic_sipi`` subsection (both ``VMSTATE_INT32``)."""

    sipi_vector: int = i32(doc="vector of the last start-up IPI (start address = vector << 12)")
    wait_for_sipi: int = i32(default=1, doc="non-zero: the CPU waits for a start-up IPI")


@attrs.define
class ApicState:
    """QEMU's ``apic`` VMState version 3, field for field.

    ``ApicState()`` is a valid state (the core requires one) close to the
    bootstrap processor's after power-up; the device's ``reset()`` sets the
    architectural power-up values (SDM "Local APIC State After Power-Up or
    Reset"), among them the masked LVT entries, which the field helpers
    cannot give as an array default.
    """

    apicbase: int = u32(default=APIC_DEFAULT_ADDRESS | APICBASE_ENABLE | APICBASE_BSP,
                        doc="IA32_APIC_BASE MSR, low 32 bits")
    id: int = u8(doc="APIC ID (register 0x20 bits 31:24)")
    arb_id: int = u8(doc="arbitration ID (P6), set to id by an INIT level de-assert IPI")
    tpr: int = u8(doc="task priority register (0x80)")
    spurious_vec: int = u32(default=0xFF, doc="spurious-interrupt vector register (0xF0)")
    log_dest: int = u8(doc="logical destination (LDR 0xD0 bits 31:24)")
    dest_mode: int = u8(default=0xF, doc="destination model (DFR 0xE0 bits 31:28)")
    isr: list[int] = u32_array(8, doc="in-service register, vectors 0..255")
    tmr: list[int] = u32_array(8, doc="trigger mode register (1 = level)")
    irr: list[int] = u32_array(8, doc="interrupt request register")
    lvt: list[int] = u32_array(APIC_LVT_NB, doc="timer, thermal, perf, LINT0, LINT1, error")
    esr: int = u32(doc="error status: errors detected since the last write to ESR")
    icr: list[int] = u32_array(2, doc="interrupt command register, low and high")
    divide_conf: int = u32(doc="timer divide configuration (0x3E0)")
    count_shift: int = i32(default=1, doc="log2 of the timer divisor, from divide_conf")
    initial_count: int = u32(doc="timer initial count (0x380)")
    initial_count_load_time: int = i64(doc="virtual time (ns) initial_count was written")
    next_time: int = i64(doc="virtual time (ns) of the last computed expiry")
    timer_expiry: int = i64(default=-1, doc="pending expiry (ns), -1 when none")
    sipi: SipiState | None = optional(SipiState, doc="QEMU's apic_sipi subsection")


# -- the older layouts (HISTORY) ----------------------------------------------

@attrs.define
class IsrTmrIrrWord:
    """One step of the hand-written save's loop: ``isr[i], tmr[i], irr[i]``."""

    isr: int = u32()
    tmr: int = u32()
    irr: int = u32()


def _interleaved():
    return array_field(IsrTmrIrrWord, 8, doc="isr[i], tmr[i], irr[i] for i in 0..7")


@attrs.define
class ApicStateV2:
    """QEMU's hand-written ``apic_save`` layouts: version 1 has no timer,
    version 2 adds ``qemu_put_timer(f, s->timer)`` (``since=2``). One class
    serves both, as QEMU's own ``_V`` fields do; :data:`ApicStateV1` names it
    for version 1."""

    apicbase: int = u32(default=APIC_DEFAULT_ADDRESS | APICBASE_ENABLE | APICBASE_BSP)
    id: int = u8()
    arb_id: int = u8()
    tpr: int = u8()
    spurious_vec: int = u32(default=0xFF)
    log_dest: int = u8()
    dest_mode: int = u8(default=0xF)
    isr_tmr_irr: list[IsrTmrIrrWord] = _interleaved()
    lvt: list[int] = u32_array(APIC_LVT_NB)
    esr: int = u32()
    icr: list[int] = u32_array(2)
    divide_conf: int = u32()
    count_shift: int = i32(default=1)
    initial_count: int = u32()
    initial_count_load_time: int = i64()
    next_time: int = i64()
    timer: int = i64(default=-1, since=2,
                     doc="pending expiry (ns), -1 when none (qemu_put_timer)")


#: version 1 is version 2 without ``timer`` (the visitors skip ``since=2``)
ApicStateV1 = ApicStateV2


#: schema version -> field names in the order QEMU writes them
FIELD_ORDER = {
    v: tuple(f.name for f in attrs.fields(cls))
    for v, cls in ((1, ApicStateV1), (2, ApicStateV2), (3, ApicState))
}
