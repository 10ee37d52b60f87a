"""The pure page <-> apic-fields mapping: properties, QEMU's rules, errors.

No kernel here; test_kvm_lapic_kernel.py checks the same mapping against
what KVM actually holds.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kvm_helpers import apic_states, carried, masked, reg, u32, unmasked

from migtree_kvm.lapic_map import (
    APIC_FIELDS,
    TIMER_PHASE_FIELDS,
    LapicMappingError,
    apic_state_to_page,
    count_shift,
    covered_mask,
    get_reg,
    kernel_computed,
    kernel_computed_mask,
    next_timer,
    page_to_apic_state,
    set_reg,
)

pages = st.binary(min_size=1024, max_size=1024)


@given(pages, u32, st.integers(-(1 << 40), 1 << 40))
def test_page_to_fields_to_page_is_identity_on_covered_bits(page, apicbase, now):
    state = page_to_apic_state(page, apicbase, now_ns=now)
    back, base = apic_state_to_page(state)
    assert base == apicbase
    assert masked(back, covered_mask()) == masked(page, covered_mask())


@given(pages, u32)
def test_bits_outside_the_mask_come_back_as_qemu_writes_them(page, apicbase):
    """Not carried: zero, except DFR's reserved low 28 bits, written as ones."""
    back, _ = apic_state_to_page(page_to_apic_state(page, apicbase))
    expected = bytearray(1024)
    set_reg(expected, 0x0E, 0x0FFF_FFFF)
    assert unmasked(back, covered_mask()) == bytes(expected)


@given(apic_states())
def test_fields_to_page_to_fields_is_identity_on_carried_fields(state):
    page, base = apic_state_to_page(state)
    back = page_to_apic_state(page, base)
    assert list(back) == [name for name, _, _ in APIC_FIELDS]
    assert carried(back) == carried(state)
    assert back["arb_id"] == 0  # APR is not written: QEMU's rule


@given(apic_states(), st.integers(-(1 << 40), 1 << 40))
def test_timer_phase_is_restarted_at_now_as_qemu_does(state, now):
    page, base = apic_state_to_page(state)
    back = page_to_apic_state(page, base, now_ns=now)
    ic, shift, lvt = state["initial_count"], back["count_shift"], state["lvt"][0]
    assert back["initial_count_load_time"] == now
    if lvt & (1 << 16) or ic == 0:
        # masked, or no count: nothing pending
        assert (back["next_time"], back["timer_expiry"]) == (0, -1)
    else:
        # one-shot and periodic alike: a full period from the (re)load
        assert back["next_time"] == back["timer_expiry"] == now + ((ic + 1) << shift)


def test_count_shift_follows_the_divide_configuration_encoding():
    # SDM 10.5.4: TDCR bits 3,1,0 -> divide by 2,4,8,16,32,64,128,1
    divisors = {
        0b0000: 2,
        0b0001: 4,
        0b0010: 8,
        0b0011: 16,
        0b1000: 32,
        0b1001: 64,
        0b1010: 128,
        0b1011: 1,
    }
    for tdcr, divisor in divisors.items():
        assert 1 << count_shift(tdcr) == divisor
        assert count_shift(tdcr | 0xFFFF_FFF4) == count_shift(tdcr)  # bit 2 and up ignored


def test_next_timer_periodic_counts_whole_periods_from_the_load():
    # QEMU's apic_next_timer: the next period boundary after now
    periodic = 1 << 17
    assert next_timer(periodic, 9, 1, 100, 100) == (120, 120)
    assert next_timer(periodic, 9, 1, 100, 125) == (140, 140)
    assert next_timer(0, 9, 1, 100, 125) == (None, -1)  # one-shot already fired
    assert next_timer(0, 9, 1, 100, 110) == (120, 120)
    assert next_timer(1 << 16 | periodic, 9, 1, 100, 100) == (None, -1)
    assert next_timer(periodic, 0, 1, 100, 100) == (None, -1)


def test_mapping_follows_qemus_register_layout():
    page = bytearray(1024)
    for index, value in {
        0x02: 0x0A12_3456,
        0x08: 0x1234_56E0,
        0x09: 0x0000_0177,
        0x0D: 0x8000_0001,
        0x0E: 0x0FFF_FFFF,
        0x0F: 0x0000_01FF,
        0x28: 0x40,
        0x30: 0x000C_4500,
        0x31: 0x0300_0000,
        0x38: 1000,
        0x3E: 0b1011,
    }.items():
        set_reg(page, index, value)
    for i in range(8):
        set_reg(page, 0x10 + i, 0x100 + i)
        set_reg(page, 0x18 + i, 0x200 + i)
        set_reg(page, 0x20 + i, 0x300 + i)
    for i in range(6):
        set_reg(page, 0x32 + i, 0x10000 + i)
    state = page_to_apic_state(bytes(page), 0xFEE0_0900, now_ns=5)
    assert state == {
        "apicbase": 0xFEE0_0900,
        "id": 0x0A,
        "arb_id": 0x77,
        "tpr": 0xE0,
        "spurious_vec": 0x1FF,
        "log_dest": 0x80,
        "dest_mode": 0x0,
        "isr": [0x100 + i for i in range(8)],
        "tmr": [0x200 + i for i in range(8)],
        "irr": [0x300 + i for i in range(8)],
        "lvt": [0x10000 + i for i in range(6)],
        "esr": 0x40,
        "icr": [0x000C_4500, 0x0300_0000],
        "divide_conf": 0b1011,
        "count_shift": 0,
        "initial_count": 1000,
        "initial_count_load_time": 5,
        "next_time": 0,
        "timer_expiry": -1,  # timer LVT masked
    }
    back, base = apic_state_to_page(state)
    assert base == 0xFEE0_0900
    assert reg(back, 0x02) == 0x0A00_0000
    assert reg(back, 0x08) == 0xE0
    assert reg(back, 0x09) == 0  # APR not written
    assert reg(back, 0x0D) == 0x8000_0000
    assert reg(back, 0x0E) == 0x0FFF_FFFF
    assert get_reg(back, 0x3E) == 0b1011


def test_count_shift_given_is_ignored_and_recomputed():
    """A reset QEMU userspace APIC has divide_conf 0 with count_shift 0."""
    state = page_to_apic_state(bytes(1024), 0xFEE0_0900)
    state["count_shift"] = 0
    page, _ = apic_state_to_page(state)
    assert page_to_apic_state(page, 0xFEE0_0900)["count_shift"] == 1


def test_covered_and_kernel_computed_bits_are_disjoint():
    both = [a & b for a, b in zip(covered_mask(), kernel_computed_mask(), strict=True)]
    assert not any(both)
    names = [k.name for k in kernel_computed()]
    assert names == ["version", "PPR", "TMCCT"]
    assert all(k.why for k in kernel_computed())


def test_covered_mask_counts():
    ones = sum(bin(b).count("1") for b in covered_mask())
    # ID 8 + TPR 8 + LDR 8 + DFR 4 + SVR, ESR, ICR x2, TMICT, TDCR 32 each
    # + ISR/TMR/IRR 3*8*32 + LVT 6*32
    assert ones == 8 + 8 + 8 + 4 + 6 * 32 + 24 * 32 + 6 * 32


def test_apicbase_above_32_bits_is_refused_not_truncated():
    with pytest.raises(LapicMappingError) as info:
        page_to_apic_state(bytes(1024), 0x1_FEE0_0900)
    assert str(info.value) == (
        "apicbase: MSR value 0x1fee00900 has bits above 31, which apic's u32 apicbase cannot carry"
    )


def test_page_must_be_one_kib():
    with pytest.raises(LapicMappingError, match="1024 bytes, not 16"):
        page_to_apic_state(bytes(16), 0)


def _valid_state():
    return page_to_apic_state(bytes(1024), 0xFEE0_0900)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("esr"), "missing apic field(s): esr"),
        (lambda s: s.update(wait_for_sipi=0), "unknown apic field(s): wait_for_sipi"),
        (lambda s: s.update(id=256), "id: 256 does not fit u8"),
        (lambda s: s.update(tpr=-1), "tpr: -1 does not fit u8"),
        (lambda s: s["lvt"].__setitem__(3, 1 << 32), "lvt[3]: 4294967296 does not fit u32"),
        (lambda s: s.update(isr=[0] * 7), "isr: expected a list of 8 u32"),
        (lambda s: s.update(esr=True), "esr: expected u32, got True"),
        (lambda s: s.update(count_shift=1 << 31), "count_shift: 2147483648 does not fit i32"),
        (lambda s: s.update(dest_mode=0x10), "dest_mode: 0x10 does not fit DFR bits 31:28"),
    ],
)
def test_invalid_fields_are_refused_with_their_name(change, message):
    state = _valid_state()
    change(state)
    with pytest.raises(LapicMappingError) as info:
        apic_state_to_page(state)
    assert str(info.value).startswith(message)


def test_timer_phase_fields_are_the_three_i64_fields():
    kinds = {name: kind for name, kind, _ in APIC_FIELDS}
    assert TIMER_PHASE_FIELDS == ("initial_count_load_time", "next_time", "timer_expiry")
    assert all(kinds[n] == "i64" for n in TIMER_PHASE_FIELDS)


def test_registers_are_little_endian_at_index_shift_4():
    page = bytearray(1024)
    set_reg(page, 0x38, 0x11223344)
    assert page[0x380:0x384] == bytes([0x44, 0x33, 0x22, 0x11])
    assert struct.unpack_from("<I", page, 0x380)[0] == get_reg(bytes(page), 0x38)
