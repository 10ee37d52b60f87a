"""Pure mapping between the in-kernel LAPIC and QEMU's ``apic`` VMState v3.

The kernel's side is two things: the 1 KiB register page that
``KVM_GET_LAPIC``/``KVM_SET_LAPIC`` move (``struct kvm_lapic_state``) and the
IA32_APIC_BASE MSR (0x1b). Register ``N`` sits at byte offset ``N << 4`` of
the page as a 32-bit little-endian word (the xAPIC MMIO layout).

The other side is a dict with exactly the fields of QEMU's ``apic`` VMState,
version 3 (``hw/intc/apic_common.c``), in this order::

    apicbase u32, id u8, arb_id u8, tpr u8, spurious_vec u32, log_dest u8,
    dest_mode u8, isr[8] u32, tmr[8] u32, irr[8] u32, lvt[6] u32, esr u32,
    icr[2] u32, divide_conf u32, count_shift i32, initial_count u32,
    initial_count_load_time i64, next_time i64, timer_expiry i64

Arrays are lists of ints. The field-by-field rules are those of QEMU's
``kvm_get_apic_state`` (page -> fields) and ``kvm_put_apic_state`` (fields ->
page) in ``hw/i386/kvm/apic.c``:

============== ===================== =============================================
field          register (index)      page -> field / field -> page
============== ===================== =============================================
apicbase       IA32_APIC_BASE MSR    low 32 bits / the MSR value
id             ID (0x02)             bits 31:24 / ``id << 24``
arb_id         APR (0x09)            low 8 bits / **not written** (stays 0)
tpr            TPR (0x08)            low 8 bits / as is
spurious_vec   SVR (0x0f)            32 bits / as is
log_dest       LDR (0x0d)            bits 31:24 / ``log_dest << 24``
dest_mode      DFR (0x0e)            bits 31:28 / ``dest_mode << 28 | 0x0fffffff``
isr[i]         ISR (0x10 + i)        32 bits each / as is
tmr[i]         TMR (0x18 + i)        32 bits each / as is
irr[i]         IRR (0x20 + i)        32 bits each / as is
esr            ESR (0x28)            32 bits / as is
icr[0], icr[1] ICR (0x30, 0x31)      32 bits each / as is
lvt[i]         LVT (0x32 + i)        timer, thermal, perf, LINT0, LINT1, error
initial_count  TMICT (0x38)          32 bits / as is
divide_conf    TDCR (0x3e)           32 bits / as is
count_shift    (none)                computed from divide_conf / ignored
============== ===================== =============================================

``count_shift`` is ``(((v & 3) | ((v >> 1) & 4)) + 1) & 7`` with ``v`` the
divide configuration: the timer counts down once every ``2 ** count_shift``
bus cycles. It is not carried by the page; on the way back it is recomputed
from ``divide_conf``, and a ``count_shift`` that disagrees with
``divide_conf`` is ignored, as QEMU ignores it (a reset userspace QEMU APIC
has ``divide_conf = 0`` with ``count_shift = 0``, though 0 means divide by 2).

The timer's phase is not in the page. The kernel keeps it in an hrtimer;
``KVM_GET_LAPIC`` only reports the current count it computes at the time of
the call (TMCCT, 0x39), and ``KVM_SET_LAPIC`` restarts the timer with a full
``initial_count`` period from the moment of the call. QEMU does not carry
the phase either, and we do what it does:

- page -> fields: ``initial_count_load_time`` is the caller's ``now_ns``
  (QEMU: ``qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL)`` at save time), as if the
  timer had been (re)loaded at that instant, and ``next_time``/
  ``timer_expiry`` follow from it the way QEMU's ``apic_next_timer`` computes
  them (:func:`next_timer`). The current count the kernel reported is not
  used, so up to one timer period of elapsed time is lost: the first expiry
  after migration comes a full period after ``now_ns``. When no expiry is
  pending (timer masked, count 0, or one-shot already fired)
  ``timer_expiry`` is -1 and ``next_time`` 0, its value after reset.
- fields -> page: ``initial_count_load_time``, ``next_time`` and
  ``timer_expiry`` are dropped; the kernel restarts the timer from
  ``initial_count`` when the page is set.

The other fields the mapping does not carry (bits outside
:func:`covered_mask`):

- ``arb_id`` on the way into the kernel: QEMU does not write APR, and KVM
  keeps no arbitration priority in the page, so the page reads APR 0.
- The reserved bits of ID (23:0), TPR (31:8), APR (31:8), LDR (23:0) and DFR
  (27:0; written as ones, their architectural value).
- Registers with no VMState field: version (0x03), PPR (0x0a), EOI (0x0b),
  RRD (0x0c), LVT CMCI (0x2f), TMCCT (0x39), SELF IPI (0x3f) and every
  reserved slot. :func:`kernel_computed` lists what the kernel computes
  itself on ``KVM_SET_LAPIC``/``KVM_GET_LAPIC``.
- The IA32_APIC_BASE MSR's bits 63:32: QEMU's ``apicbase`` is ``u32``. QEMU
  truncates silently; :func:`page_to_apic_state` raises
  :class:`LapicMappingError` instead, since a truncated base would move the
  APIC.

Only xAPIC mode is mapped faithfully. In x2APIC mode (apicbase bit 10) the
kernel recomputes LDR from the ID on ``KVM_SET_LAPIC``, and IDs above 255 do
not fit the page's legacy ``id << 24`` form that a VM without
``KVM_CAP_X2APIC_API`` uses (QEMU then carries its ``initial_apic_id``
instead, which is no VMState field).

All functions here are pure: no ioctl, no clock.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

from migtree.errors import MigtreeError

from .ioctls import KVM_APIC_REG_SIZE

__all__ = [
    "APIC_FIELDS",
    "LapicMappingError",
    "KernelComputed",
    "TIMER_PHASE_FIELDS",
    "apic_state_to_page",
    "count_shift",
    "covered_mask",
    "get_reg",
    "kernel_computed",
    "kernel_computed_mask",
    "next_timer",
    "page_to_apic_state",
    "set_reg",
]

PAGE_SIZE = KVM_APIC_REG_SIZE

# register indices (byte offset >> 4), as in the xAPIC MMIO layout
REG_ID = 0x02
REG_VERSION = 0x03
REG_TPR = 0x08
REG_APR = 0x09
REG_PPR = 0x0A
REG_EOI = 0x0B
REG_RRD = 0x0C
REG_LDR = 0x0D
REG_DFR = 0x0E
REG_SVR = 0x0F
REG_ISR = 0x10  # .. 0x17
REG_TMR = 0x18  # .. 0x1f
REG_IRR = 0x20  # .. 0x27
REG_ESR = 0x28
REG_LVT_CMCI = 0x2F
REG_ICR_LO = 0x30
REG_ICR_HI = 0x31
REG_LVT = 0x32  # .. 0x37: timer, thermal, perf, LINT0, LINT1, error
REG_TMICT = 0x38
REG_TMCCT = 0x39
REG_TDCR = 0x3E
REG_SELF_IPI = 0x3F

APIC_LVT_NB = 6
APIC_LVT_TIMER = 0
APIC_LVT_MASKED = 1 << 16
APIC_LVT_TIMER_PERIODIC = 1 << 17

#: QEMU ``apic`` VMState v3 fields in stream order: (name, kind, array length or None)
APIC_FIELDS: tuple[tuple[str, str, int | None], ...] = (
    ("apicbase", "u32", None),
    ("id", "u8", None),
    ("arb_id", "u8", None),
    ("tpr", "u8", None),
    ("spurious_vec", "u32", None),
    ("log_dest", "u8", None),
    ("dest_mode", "u8", None),
    ("isr", "u32", 8),
    ("tmr", "u32", 8),
    ("irr", "u32", 8),
    ("lvt", "u32", APIC_LVT_NB),
    ("esr", "u32", None),
    ("icr", "u32", 2),
    ("divide_conf", "u32", None),
    ("count_shift", "i32", None),
    ("initial_count", "u32", None),
    ("initial_count_load_time", "i64", None),
    ("next_time", "i64", None),
    ("timer_expiry", "i64", None),
)

#: fields the page does not carry: the timer's phase (see the module docstring)
TIMER_PHASE_FIELDS = ("initial_count_load_time", "next_time", "timer_expiry")

_RANGES = {
    "u8": (0, 0xFF),
    "u32": (0, 0xFFFF_FFFF),
    "i32": (-(1 << 31), (1 << 31) - 1),
    "i64": (-(1 << 63), (1 << 63) - 1),
}


class LapicMappingError(MigtreeError, ValueError):
    """A value cannot be carried between the register page and the fields.

    The message names the field and why: ``apicbase: MSR value 0x1fee00900
    has bits above 31, which apic's u32 apicbase cannot carry``.
    """


# --- registers ------------------------------------------------------------------


def get_reg(page: bytes, index: int) -> int:
    """The 32-bit register ``index`` (byte offset ``index << 4``)."""
    return struct.unpack_from("<I", page, index << 4)[0]


def set_reg(page: bytearray, index: int, value: int) -> None:
    """Store the 32-bit register ``index`` (byte offset ``index << 4``)."""
    struct.pack_into("<I", page, index << 4, value & 0xFFFF_FFFF)


def count_shift(divide_conf: int) -> int:
    """The timer's divide shift for a TDCR value, as QEMU computes it.

    TDCR bits 0, 1 and 3 encode divide by 2, 4, 8, 16, 32, 64, 128 or 1;
    the result is log2 of the divisor.
    """
    v = (divide_conf & 3) | ((divide_conf >> 1) & 4)
    return (v + 1) & 7


def next_timer(
    lvt_timer: int, initial_count: int, shift: int, load_time: int, now_ns: int
) -> tuple[int | None, int]:
    """QEMU's ``apic_next_timer``: the next expiry after ``now_ns``.

    Time is in bus cycles of 1 ns (QEMU's and KVM's APIC bus both run at
    1 GHz). TSC-deadline mode is treated as one-shot, as QEMU does.

    :return: ``(next_time, timer_expiry)``; ``(None, -1)`` when no expiry is
        pending, in which case QEMU leaves ``next_time`` unchanged.
    """
    if lvt_timer & APIC_LVT_MASKED:
        return None, -1
    d = (now_ns - load_time) >> shift
    if lvt_timer & APIC_LVT_TIMER_PERIODIC:
        if not initial_count:
            return None, -1
        d = (d // (initial_count + 1) + 1) * (initial_count + 1)
    else:
        if d >= initial_count:
            return None, -1
        d = initial_count + 1
    next_time = load_time + (d << shift)
    return next_time, next_time


# --- page -> fields -------------------------------------------------------------


def page_to_apic_state(page: bytes, apicbase: int, *, now_ns: int = 0) -> dict[str, Any]:
    """Map a ``KVM_GET_LAPIC`` page and the APIC base MSR to ``apic`` v3 fields.

    Follows QEMU's ``kvm_get_apic_state``. The timer is taken as loaded at
    ``now_ns`` (the virtual clock of the build at save time, in ns); see the
    module docstring for what that loses.

    :param page: the 1024-byte register page.
    :param apicbase: the IA32_APIC_BASE MSR value.
    :raises LapicMappingError: the MSR has bits above 31.
    """
    if len(page) != PAGE_SIZE:
        raise LapicMappingError(f"page: a LAPIC page is {PAGE_SIZE} bytes, not {len(page)}")
    if not 0 <= apicbase <= 0xFFFF_FFFF:
        raise LapicMappingError(
            f"apicbase: MSR value {apicbase:#x} has bits above 31, "
            "which apic's u32 apicbase cannot carry"
        )
    divide_conf = get_reg(page, REG_TDCR)
    state: dict[str, Any] = {
        "apicbase": apicbase,
        "id": get_reg(page, REG_ID) >> 24,
        "arb_id": get_reg(page, REG_APR) & 0xFF,
        "tpr": get_reg(page, REG_TPR) & 0xFF,
        "spurious_vec": get_reg(page, REG_SVR),
        "log_dest": get_reg(page, REG_LDR) >> 24,
        "dest_mode": get_reg(page, REG_DFR) >> 28,
        "isr": [get_reg(page, REG_ISR + i) for i in range(8)],
        "tmr": [get_reg(page, REG_TMR + i) for i in range(8)],
        "irr": [get_reg(page, REG_IRR + i) for i in range(8)],
        "lvt": [get_reg(page, REG_LVT + i) for i in range(APIC_LVT_NB)],
        "esr": get_reg(page, REG_ESR),
        "icr": [get_reg(page, REG_ICR_LO), get_reg(page, REG_ICR_HI)],
        "divide_conf": divide_conf,
        "count_shift": count_shift(divide_conf),
        "initial_count": get_reg(page, REG_TMICT),
        "initial_count_load_time": now_ns,
        "next_time": 0,
        "timer_expiry": -1,
    }
    next_time, expiry = next_timer(
        state["lvt"][APIC_LVT_TIMER], state["initial_count"], state["count_shift"], now_ns, now_ns
    )
    if next_time is not None:
        state["next_time"] = next_time
    state["timer_expiry"] = expiry
    return state


# --- fields -> page -------------------------------------------------------------


def _check_state(state: Mapping[str, Any]) -> None:
    names = [name for name, _, _ in APIC_FIELDS]
    missing = [n for n in names if n not in state]
    extra = sorted(k for k in state if k not in names)
    if missing:
        raise LapicMappingError(f"missing apic field(s): {', '.join(missing)}")
    if extra:
        raise LapicMappingError(f"unknown apic field(s): {', '.join(extra)}")
    for name, kind, length in APIC_FIELDS:
        lo, hi = _RANGES[kind]
        value = state[name]
        items = [(name, value)]
        if length is not None:
            if not isinstance(value, (list, tuple)) or len(value) != length:
                raise LapicMappingError(
                    f"{name}: expected a list of {length} {kind}, got {value!r}"
                )
            items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        for where, v in items:
            if isinstance(v, bool) or not isinstance(v, int):
                raise LapicMappingError(f"{where}: expected {kind}, got {v!r}")
            if not lo <= v <= hi:
                raise LapicMappingError(f"{where}: {v} does not fit {kind}")
    if state["dest_mode"] > 0xF:
        raise LapicMappingError(f"dest_mode: {state['dest_mode']:#x} does not fit DFR bits 31:28")


def apic_state_to_page(state: Mapping[str, Any]) -> tuple[bytes, int]:
    """Map ``apic`` v3 fields to a register page and an IA32_APIC_BASE value.

    Follows QEMU's ``kvm_put_apic_state``: everything not listed in the
    module docstring's table is zero, ``arb_id``, ``count_shift`` and the
    timer-phase fields are not written.

    :return: ``(page, apicbase)`` ready for ``KVM_SET_LAPIC`` and
        ``KVM_SET_MSRS``. Set the MSR first: the kernel interprets the page
        in the mode (xAPIC/x2APIC) the MSR selects.
    :raises LapicMappingError: a field is missing, unknown, or out of range.
    """
    _check_state(state)
    page = bytearray(PAGE_SIZE)
    set_reg(page, REG_ID, state["id"] << 24)
    set_reg(page, REG_TPR, state["tpr"])
    set_reg(page, REG_LDR, state["log_dest"] << 24)
    set_reg(page, REG_DFR, (state["dest_mode"] << 28) | 0x0FFF_FFFF)
    set_reg(page, REG_SVR, state["spurious_vec"])
    for i in range(8):
        set_reg(page, REG_ISR + i, state["isr"][i])
        set_reg(page, REG_TMR + i, state["tmr"][i])
        set_reg(page, REG_IRR + i, state["irr"][i])
    set_reg(page, REG_ESR, state["esr"])
    set_reg(page, REG_ICR_LO, state["icr"][0])
    set_reg(page, REG_ICR_HI, state["icr"][1])
    for i in range(APIC_LVT_NB):
        set_reg(page, REG_LVT + i, state["lvt"][i])
    set_reg(page, REG_TMICT, state["initial_count"])
    set_reg(page, REG_TDCR, state["divide_conf"])
    return bytes(page), state["apicbase"]


# --- what is carried, what the kernel owns --------------------------------------


def _mask(regions: list[tuple[int, int]]) -> bytes:
    out = bytearray(PAGE_SIZE)
    for index, bits in regions:
        for k in range(4):
            out[(index << 4) + k] |= (bits >> (8 * k)) & 0xFF
    return bytes(out)


def covered_mask() -> bytes:
    """A 1024-byte bit mask of the page bits the mapping carries both ways.

    For every page ``p`` and MSR ``b < 2**32``:
    ``apic_state_to_page(page_to_apic_state(p, b))[0] & mask == p & mask``.
    APR is absent (carried page -> fields only), as are the reserved bits of
    ID, TPR, LDR and DFR and every register without a VMState field.
    """
    regions = [
        (REG_ID, 0xFF00_0000),
        (REG_TPR, 0x0000_00FF),
        (REG_LDR, 0xFF00_0000),
        (REG_DFR, 0xF000_0000),
        (REG_SVR, 0xFFFF_FFFF),
        (REG_ESR, 0xFFFF_FFFF),
        (REG_ICR_LO, 0xFFFF_FFFF),
        (REG_ICR_HI, 0xFFFF_FFFF),
        (REG_TMICT, 0xFFFF_FFFF),
        (REG_TDCR, 0xFFFF_FFFF),
    ]
    regions += [(REG_ISR + i, 0xFFFF_FFFF) for i in range(8)]
    regions += [(REG_TMR + i, 0xFFFF_FFFF) for i in range(8)]
    regions += [(REG_IRR + i, 0xFFFF_FFFF) for i in range(8)]
    regions += [(REG_LVT + i, 0xFFFF_FFFF) for i in range(APIC_LVT_NB)]
    return _mask(regions)


class KernelComputed(NamedTuple):
    """A register (or some of its bits) that the kernel computes, not the page."""

    name: str
    index: int
    bits: int
    why: str


def kernel_computed() -> tuple[KernelComputed, ...]:
    """Page bits that ``KVM_GET_LAPIC`` reports from the kernel's own state.

    Whatever ``KVM_SET_LAPIC`` was given there, the kernel recomputes these
    (``kvm_apic_set_state`` / ``kvm_apic_get_state`` in
    ``arch/x86/kvm/lapic.c``), so a test comparing a page it set with the
    page it gets back masks them (:func:`kernel_computed_mask`).
    """
    return (
        KernelComputed(
            "version",
            REG_VERSION,
            0xFFFF_FFFF,
            "version, max LVT entry and EOI-broadcast bit: set from the vCPU's "
            "CPUID by kvm_apic_set_version()",
        ),
        KernelComputed(
            "PPR",
            REG_PPR,
            0xFFFF_FFFF,
            "processor priority: recomputed from TPR and the highest ISR vector "
            "by apic_update_ppr(); on KVM_SET_LAPIC that runs before the kernel "
            "recounts the ISR, so when the previous state had no vector in service "
            "the PPR read straight back reflects TPR only until the next delivery",
        ),
        KernelComputed(
            "TMCCT",
            REG_TMCCT,
            0xFFFF_FFFF,
            "current count: zeroed on set, computed from the running hrtimer on every get",
        ),
    )


def kernel_computed_mask() -> bytes:
    """A 1024-byte bit mask of :func:`kernel_computed`."""
    return _mask([(k.index, k.bits) for k in kernel_computed()])
