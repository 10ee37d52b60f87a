"""Register-level behaviour: the page at its MMIO offsets, reset values,
read-only and reserved registers, SVR software disable, the APIC base MSR and
the error status register (Intel SDM vol. 3, "APIC")."""

from __future__ import annotations

import pytest
from apic_helpers import SVR_ON, enabled_apic, make_machine

from migtree_apic.device import (
    REG_APR,
    REG_DFR,
    REG_EOI,
    REG_ESR,
    REG_ICR_HI,
    REG_ICR_LO,
    REG_ID,
    REG_IRR,
    REG_ISR,
    REG_LDR,
    REG_LVT,
    REG_PPR,
    REG_RRD,
    REG_SVR,
    REG_TDCR,
    REG_TMCCT,
    REG_TMICT,
    REG_TMR,
    REG_TPR,
    REG_VERSION,
    UNCLAIMED_READ,
    Apic,
    GeneralProtectionFault,
)

ESR_ILLEGAL_ADDRESS = 1 << 7
RESERVED_OFFSETS = [0x000, 0x010, 0x040, 0x050, 0x060, 0x070, 0x2F0, 0x3A0, 0x3B0, 0x3C0,
                    0x3D0, 0x3F0, 0x400, 0xFF0]
LVT_OFFSETS = [REG_LVT + 0x10 * i for i in range(6)]


def latched_esr(apic: Apic) -> int:
    """The SDM's way to read ESR: write it (latching), then read it."""
    apic.write(REG_ESR, 0)
    return apic.read(REG_ESR)


# -- reset -------------------------------------------------------------------------

def test_power_up_values_of_the_bsp_and_an_ap():
    _, machine, (bsp, ap) = make_machine(2)
    assert bsp.get_base() == 0xFEE00900  # base, enable, BSP
    assert ap.get_base() == 0xFEE00800
    for apic, apic_id in ((bsp, 0), (ap, 1)):
        assert apic.read(REG_ID) == apic_id << 24
        assert apic.read(REG_TPR) == 0
        assert apic.read(REG_PPR) == 0
        assert apic.read(REG_LDR) == 0
        assert apic.read(REG_DFR) == 0xFFFFFFFF
        assert apic.read(REG_SVR) == 0xFF  # software-disabled
        for i, off in enumerate(LVT_OFFSETS):
            if apic is bsp and i == 3:
                # the BSP's LINT0 is ExtINT, as QEMU's apic_reset_common and
                # KVM set it on behalf of the BIOS
                assert apic.read(off) == 0x700
            else:
                assert apic.read(off) == 0x10000  # masked
        for base in (REG_ISR, REG_TMR, REG_IRR):
            assert [apic.read(base + 0x10 * i) for i in range(8)] == [0] * 8
        assert apic.read(REG_ICR_LO) == apic.read(REG_ICR_HI) == 0
        assert apic.read(REG_TMICT) == apic.read(REG_TMCCT) == apic.read(REG_TDCR) == 0
        assert apic.read(REG_ESR) == 0
    # only the application processor waits for a start-up IPI
    assert bsp.state.sipi is None
    assert ap.state.sipi is not None and ap.state.sipi.wait_for_sipi == 1


def test_version_register_says_integrated_apic_with_six_lvt_entries():
    _, _, (apic,) = make_machine()
    v = apic.read(REG_VERSION)
    assert v & 0xFF == 0x14
    assert (v >> 16) & 0xFF == 5  # max LVT entry: 6 entries
    assert not v & (1 << 24)  # no EOI-broadcast suppression


# -- read-only, reserved, masks ----------------------------------------------------

@pytest.mark.parametrize("offset", [REG_VERSION, REG_APR, REG_PPR, REG_RRD, REG_TMCCT]
                         + [REG_ISR + 0x10 * i for i in range(8)]
                         + [REG_TMR + 0x10 * i for i in range(8)]
                         + [REG_IRR + 0x10 * i for i in range(8)])
def test_read_only_registers_ignore_writes_without_error(offset):
    _, (apic,) = enabled_apic()
    apic.set_irq(0x40)
    before = apic.read(offset)
    apic.write(offset, 0xFFFFFFFF)
    assert apic.read(offset) == before
    assert latched_esr(apic) == 0


@pytest.mark.parametrize("offset", RESERVED_OFFSETS)
def test_reserved_offsets_read_zero_and_set_illegal_register_address(offset):
    _, (apic,) = enabled_apic()
    assert apic.read(offset) == 0
    assert latched_esr(apic) == ESR_ILLEGAL_ADDRESS
    assert latched_esr(apic) == 0  # back-to-back writes clear
    apic.write(offset, 0x12345678)
    assert latched_esr(apic) == ESR_ILLEGAL_ADDRESS


@pytest.mark.parametrize("offset", [0x21, 0x24, 0x28, -16, 0x1000, "0x20"])
def test_unaligned_or_outside_accesses_are_refused(offset):
    _, (apic,) = enabled_apic()
    with pytest.raises(ValueError, match="16-byte aligned"):
        apic.read(offset)
    with pytest.raises(ValueError, match="16-byte aligned"):
        apic.write(offset, 0)


def test_write_value_must_be_32_bit():
    _, (apic,) = enabled_apic()
    with pytest.raises(ValueError, match="32-bit"):
        apic.write(REG_TPR, 1 << 32)


def test_id_ldr_dfr_keep_only_their_architectural_bits():
    _, (apic,) = enabled_apic()
    apic.write(REG_ID, 0x07FFFFFF)
    assert apic.read(REG_ID) == 0x07000000 and apic.state.id == 7
    apic.write(REG_LDR, 0xA5FFFFFF)
    assert apic.read(REG_LDR) == 0xA5000000 and apic.state.log_dest == 0xA5
    apic.write(REG_DFR, 0x0FFFFFFF)  # cluster model
    assert apic.read(REG_DFR) == 0x0FFFFFFF and apic.state.dest_mode == 0
    apic.write(REG_DFR, 0xFFFFFFFF)
    assert apic.read(REG_DFR) == 0xFFFFFFFF and apic.state.dest_mode == 0xF


def test_tpr_keeps_bits_7_0_and_cr8_is_its_class():
    _, (apic,) = enabled_apic()
    apic.write(REG_TPR, 0xFFFFFF5A)
    assert apic.read(REG_TPR) == 0x5A
    assert apic.get_cr8() == 5
    apic.set_cr8(0x3)
    assert apic.read(REG_TPR) == 0x30


def test_svr_keeps_vector_and_enable_only():
    _, _, (apic,) = make_machine()
    apic.write(REG_SVR, 0xFFFFFFFF)
    assert apic.read(REG_SVR) == 0x1FF


@pytest.mark.parametrize(("index", "writable"), [
    (0, 0x000300FF),  # timer: vector, mask, periodic
    (1, 0x000107FF),  # thermal: vector, delivery mode, mask
    (2, 0x000107FF),  # performance counter
    (3, 0x0001A7FF),  # LINT0: + polarity, trigger
    (4, 0x0001A7FF),  # LINT1
    (5, 0x000100FF),  # error: vector, mask
])
def test_lvt_entries_drop_reserved_and_read_only_bits(index, writable):
    _, (apic,) = enabled_apic()
    apic.write(REG_LVT + 0x10 * index, 0xFFFFFFFF)
    assert apic.read(REG_LVT + 0x10 * index) == writable
    apic.write(REG_LVT + 0x10 * index, 0x42)
    assert apic.read(REG_LVT + 0x10 * index) == 0x42


def test_icr_reads_back_idle_after_a_send():
    _, (apic,) = enabled_apic()
    apic.write(REG_ICR_HI, 0xFF000000)
    apic.write(REG_ICR_LO, 0x00001000 | 0x40 | (1 << 18))  # self IPI with status bit
    assert apic.read(REG_ICR_LO) == 0x40 | (1 << 18)
    assert apic.read(REG_ICR_HI) == 0xFF000000


def test_eoi_and_rrd_read_zero():
    _, (apic,) = enabled_apic()
    assert apic.read(REG_EOI) == 0
    assert apic.read(REG_RRD) == 0
    assert latched_esr(apic) == 0


# -- software disable ----------------------------------------------------------------

def test_software_disable_masks_every_lvt_and_keeps_them_masked():
    _, (apic,) = enabled_apic()
    for off in LVT_OFFSETS:
        apic.write(off, 0x30)
    assert all(apic.read(off) == 0x30 for off in LVT_OFFSETS)
    apic.write(REG_SVR, 0x0FF)  # software disable
    assert all(apic.read(off) == 0x10030 for off in LVT_OFFSETS)
    apic.write(LVT_OFFSETS[3], 0x31)  # cannot unmask while disabled
    assert apic.read(LVT_OFFSETS[3]) == 0x10031
    apic.write(REG_SVR, SVR_ON)  # re-enabling leaves the masks set
    assert apic.read(LVT_OFFSETS[3]) == 0x10031
    apic.write(LVT_OFFSETS[3], 0x31)
    assert apic.read(LVT_OFFSETS[3]) == 0x31


def test_software_disabled_apic_holds_pending_but_delivers_nothing():
    _, (apic,) = enabled_apic()
    apic.set_irq(0x50)
    apic.write(REG_SVR, 0x0FF)
    assert not apic.interrupt_pending
    assert apic.get_interrupt() is None
    apic.set_irq(0x60)  # not accepted while disabled (as KVM)
    assert apic.read(REG_IRR + 0x20) == 1 << 0x10  # 0x50 held, 0x60 not there
    assert apic.read(REG_IRR + 0x30) == 0
    apic.write(REG_SVR, SVR_ON)
    assert apic.get_interrupt() == 0x50


# -- IA32_APIC_BASE -----------------------------------------------------------------

def test_base_msr_relocates_the_page_and_keeps_bsp_read_only():
    _, machine, (bsp, ap) = make_machine(2)
    bsp.set_base(0xFED00800)  # try to clear BSP, move the page
    assert bsp.get_base() == 0xFED00900
    assert bsp.mmio_base == 0xFED00000
    ap.set_base(0xFEE00900)  # try to become BSP
    assert ap.get_base() == 0xFEE00800
    assert not ap.is_bsp and bsp.is_bsp


@pytest.mark.parametrize("value", [
    0xFEE00801,  # bit 0
    0xFEE00A00,  # bit 9
    0xFEE00C00,  # bit 10: x2APIC, not offered
    0x1FEE00800,  # above the 32-bit base
    -1,
])
def test_base_msr_reserved_bits_raise_gp_and_change_nothing(value):
    _, _, (apic,) = make_machine()
    with pytest.raises(GeneralProtectionFault, match="reserved bits"):
        apic.set_base(value)
    assert apic.get_base() == 0xFEE00900


def test_hardware_disable_resets_and_stops_decoding_then_reenables_in_reset_state():
    _, (apic,) = enabled_apic()
    apic.write(REG_TPR, 0x20)
    apic.write(REG_LVT, 0x20030)
    apic.set_irq(0x40)
    apic.set_base(0xFEE00100)  # clear bit 11 (BSP bit is ignored on write)
    assert not apic.hw_enabled and apic.get_base() == 0xFEE00100
    assert apic.read(REG_TPR) == UNCLAIMED_READ  # the page is not decoded
    apic.write(REG_TPR, 0x10)  # goes nowhere
    apic.set_irq(0x41)
    assert not apic.interrupt_pending and apic.get_interrupt() is None
    apic.set_base(0xFEE00900)
    assert apic.read(REG_ID) == 0  # ID survives
    assert apic.read(REG_TPR) == 0
    assert apic.read(REG_SVR) == 0xFF
    assert apic.read(REG_LVT) == 0x10000
    assert apic.read(REG_IRR + 0x20) == 0


# -- the error status register --------------------------------------------------------

def test_esr_latches_on_write_and_back_to_back_writes_clear():
    _, (apic,) = enabled_apic()
    apic.read(0x040)
    assert apic.read(REG_ESR) == 0  # not latched yet
    apic.write(REG_ESR, 0)
    assert apic.read(REG_ESR) == ESR_ILLEGAL_ADDRESS
    apic.set_irq(3)  # receive illegal vector, after the latch
    assert apic.read(REG_ESR) == ESR_ILLEGAL_ADDRESS
    apic.write(REG_ESR, 0)
    assert apic.read(REG_ESR) == 1 << 6
    apic.write(REG_ESR, 0)
    assert apic.read(REG_ESR) == 0


def test_error_interrupt_through_lvt_error():
    _, (apic,) = enabled_apic()
    apic.write(REG_LVT + 0x50, 0xFE)  # error LVT, unmasked
    apic.read(0x3F0)
    assert apic.get_interrupt() == 0xFE
    assert latched_esr(apic) == ESR_ILLEGAL_ADDRESS


def test_errors_are_recorded_even_with_lvt_error_masked():
    _, (apic,) = enabled_apic()
    apic.read(0x3F0)
    assert not apic.interrupt_pending
    assert latched_esr(apic) == ESR_ILLEGAL_ADDRESS


def test_error_lvt_with_an_illegal_vector_does_not_loop():
    _, (apic,) = enabled_apic()
    apic.write(REG_LVT + 0x50, 0x05)
    apic.read(0x3F0)
    assert latched_esr(apic) == ESR_ILLEGAL_ADDRESS | (1 << 6)
    assert not apic.interrupt_pending


# -- construction ------------------------------------------------------------------------

@pytest.mark.parametrize("props", [{"id": 255}, {"id": -1}, {"id": "0"}, {"bsp": 1}])
def test_bad_construction_properties(props):
    with pytest.raises(ValueError, match="apic:"):
        Apic(**props)
