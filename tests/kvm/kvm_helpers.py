"""Shared by the KVM tests: the skip marker and hypothesis strategies.

Not a test module (no ``test_`` prefix); ``conftest.py`` puts this directory
on ``sys.path``.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import strategies as st

from migtree_kvm.ioctls import kvm_available
from migtree_kvm.lapic_map import APIC_FIELDS, TIMER_PHASE_FIELDS, count_shift

KVM_AVAILABLE, KVM_UNAVAILABLE_REASON = kvm_available()

#: skip only where /dev/kvm truly cannot be opened, with KvmUnavailable's message
skip_without_kvm = pytest.mark.skipif(not KVM_AVAILABLE, reason=KVM_UNAVAILABLE_REASON)

#: for ``pytestmark``: the repository's ``kvm`` marker plus the skip
KVM_MARKS = [pytest.mark.kvm, skip_without_kvm]


def requires_kvm(test):
    """Mark one test as talking to the real /dev/kvm (``kvm`` marker + skip)."""
    return pytest.mark.kvm(skip_without_kvm(test))


u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFF_FFFF)
i64 = st.integers(-(1 << 63), (1 << 63) - 1)


def words(n: int) -> st.SearchStrategy[list[int]]:
    return st.lists(u32, min_size=n, max_size=n)


#: IA32_APIC_BASE values the kernel accepts for a vCPU with no CPUID set:
#: xAPIC enabled (bit 11), BSP bit free, 4 KiB-aligned base below 4 GiB,
#: no x2APIC (bit 10 is reserved without the CPUID bit), no reserved bits.
xapic_bases = st.builds(
    lambda page, bsp: (page << 12) | (1 << 11) | (bsp << 8),
    st.integers(0, 0xFFFFF),
    st.integers(0, 1),
)


@st.composite
def apic_states(draw, apicbase=u32) -> dict[str, Any]:
    """Valid ``apic`` v3 field dicts: widths respected, ``dest_mode`` <= 0xf
    (it lives in DFR bits 31:28) and ``count_shift`` consistent with
    ``divide_conf`` (it is derived, not carried)."""
    divide_conf = draw(u32)
    return {
        "apicbase": draw(apicbase),
        "id": draw(u8),
        "arb_id": draw(u8),
        "tpr": draw(u8),
        "spurious_vec": draw(u32),
        "log_dest": draw(u8),
        "dest_mode": draw(st.integers(0, 0xF)),
        "isr": draw(words(8)),
        "tmr": draw(words(8)),
        "irr": draw(words(8)),
        "lvt": draw(words(6)),
        "esr": draw(u32),
        "icr": draw(words(2)),
        "divide_conf": divide_conf,
        "count_shift": count_shift(divide_conf),
        "initial_count": draw(u32),
        "initial_count_load_time": draw(i64),
        "next_time": draw(i64),
        "timer_expiry": draw(i64),
    }


#: fields a dict -> page -> dict round trip does not carry: the timer's phase
#: (restarted by the kernel, taken as loaded at now_ns on the way back) and
#: arb_id (QEMU does not write APR; the page reads it back as 0)
NOT_CARRIED_TO_KERNEL = (*TIMER_PHASE_FIELDS, "arb_id")


def carried(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the fields that the page does not carry."""
    assert [name for name, _, _ in APIC_FIELDS] == list(state), "field order"
    return {k: v for k, v in state.items() if k not in NOT_CARRIED_TO_KERNEL}


def reg(page: bytes, index: int) -> int:
    return struct.unpack_from("<I", page, index << 4)[0]


def masked(page: bytes, mask: bytes) -> bytes:
    return bytes(a & m for a, m in zip(page, mask, strict=True))


def unmasked(page: bytes, mask: bytes) -> bytes:
    return bytes(a & ~m & 0xFF for a, m in zip(page, mask, strict=True))


def set_bit(words_: list[int], vector: int) -> None:
    """Set ``vector`` in a 256-bit IRR/ISR/TMR held as 8 u32 words."""
    words_[vector >> 5] |= 1 << (vector & 31)


def vectors(words_: list[int]) -> list[int]:
    return [w * 32 + b for w in range(8) for b in range(32) if words_[w] >> b & 1]
