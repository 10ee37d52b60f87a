"""Interrupt acceptance, priority, delivery to the CPU, EOI, local interrupt
sources and inter-processor interrupts. The test plays the CPU (interrupt
acknowledge, EOI) and the interrupt sources (I/O APIC messages, LINT pins)."""

from __future__ import annotations

import pytest
from apic_helpers import CpuPlayer, enabled_apic

from migtree_apic.device import (
    REG_DFR,
    REG_ICR_HI,
    REG_ICR_LO,
    REG_ID,
    REG_IRR,
    REG_ISR,
    REG_LDR,
    REG_LVT,
    REG_PPR,
    REG_TMR,
    REG_TPR,
    deliver_irq,
)
from migtree_apic.state import DM_FIXED, DM_LOWPRI, DM_NMI, DM_SMI

LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1 = (REG_LVT + 0x10 * i for i in (1, 2, 3, 4))


def bit_of(apic, base, vector):
    return bool(apic.read(base + 0x10 * (vector >> 5)) >> (vector & 31) & 1)


def icr(apic, low, dest=0):
    apic.write(REG_ICR_HI, dest << 24)
    apic.write(REG_ICR_LO, low)


# -- acceptance -----------------------------------------------------------------------

def test_edge_interrupt_sets_irr_and_clears_tmr_level_sets_both():
    _, (apic,) = enabled_apic()
    apic.set_irq(0x41, level_triggered=True)
    assert bit_of(apic, REG_IRR, 0x41) and bit_of(apic, REG_TMR, 0x41)
    assert apic.get_interrupt() == 0x41
    apic.write(0xB0, 0)
    apic.set_irq(0x41)  # same vector, now edge
    assert bit_of(apic, REG_IRR, 0x41) and not bit_of(apic, REG_TMR, 0x41)


def test_vectors_below_16_are_never_accepted():
    _, (apic,) = enabled_apic()
    for v in range(16):
        apic.set_irq(v)
    assert apic.read(REG_IRR) == 0
    assert not apic.interrupt_pending


def test_same_vector_twice_before_service_is_one_request():
    _, (apic,) = enabled_apic()
    cpu = CpuPlayer(apic)
    apic.set_irq(0x50)
    apic.set_irq(0x50)
    assert cpu.run() == [0x50]


# -- priority, PPR, delivery ------------------------------------------------------------

def test_highest_vector_first_whatever_the_arrival_order():
    _, (apic,) = enabled_apic()
    cpu = CpuPlayer(apic)
    for v in (0x31, 0x92, 0x45, 0xE0, 0x46):
        apic.set_irq(v)
    assert cpu.run() == [0xE0, 0x92, 0x46, 0x45, 0x31]


def test_ppr_is_tpr_or_the_in_service_class_whichever_is_higher():
    _, (apic,) = enabled_apic()
    apic.write(REG_TPR, 0x35)
    assert apic.read(REG_PPR) == 0x35
    apic.set_irq(0x72)
    assert apic.get_interrupt() == 0x72
    assert apic.read(REG_PPR) == 0x70  # ISR class above TPR: sub-class bits are 0
    apic.write(REG_TPR, 0x7A)
    assert apic.read(REG_PPR) == 0x7A  # equal class: TPR wins
    apic.write(0xB0, 0)
    assert apic.read(REG_PPR) == 0x7A


def test_tpr_blocks_interrupts_of_its_class_and_below():
    _, (apic,) = enabled_apic()
    levels = []
    apic.add_irq_listener(levels.append)
    apic.write(REG_TPR, 0x50)
    apic.set_irq(0x5F)  # class 5: blocked
    assert not apic.interrupt_pending and levels == []
    apic.set_irq(0x60)  # class 6: delivered
    assert apic.interrupt_pending and levels == [True]
    assert apic.get_interrupt() == 0x60
    assert levels == [True, False]
    apic.write(0xB0, 0)
    apic.write(REG_TPR, 0x40)
    assert levels == [True, False, True]
    assert apic.get_interrupt() == 0x5F


def test_acknowledge_with_nothing_requested_is_none_and_below_ppr_is_spurious():
    _, (apic,) = enabled_apic()
    assert apic.get_interrupt() is None
    apic.write(REG_TPR, 0xF0)
    apic.set_irq(0x80)
    assert apic.get_interrupt() == 0xFF  # spurious vector from SVR, nothing moves
    assert bit_of(apic, REG_IRR, 0x80) and not bit_of(apic, REG_ISR, 0x80)


def test_nested_interrupts_and_eoi_clears_the_highest_in_service():
    _, (apic,) = enabled_apic()
    apic.set_irq(0x40)
    assert apic.get_interrupt() == 0x40
    apic.set_irq(0x30)  # lower class: waits
    apic.set_irq(0x90)  # higher class: nests
    assert apic.get_interrupt() == 0x90
    assert bit_of(apic, REG_ISR, 0x40) and bit_of(apic, REG_ISR, 0x90)
    assert not apic.interrupt_pending
    apic.write(0xB0, 0)  # ends 0x90
    assert not bit_of(apic, REG_ISR, 0x90) and bit_of(apic, REG_ISR, 0x40)
    assert not apic.interrupt_pending  # 0x30 still below 0x40's class
    apic.write(0xB0, 0)
    assert apic.get_interrupt() == 0x30


def test_eoi_broadcast_only_for_level_triggered_vectors():
    _, (apic,) = enabled_apic()
    cpu = CpuPlayer(apic)
    apic.set_irq(0x61, level_triggered=True)
    apic.set_irq(0x62)
    assert cpu.run() == [0x62, 0x61]
    broadcasts = [e[3] for e in cpu.log if e[2] == "eoi-broadcast"]
    assert broadcasts == [0x61]


def test_eoi_with_nothing_in_service_does_nothing():
    _, (apic,) = enabled_apic()
    cpu = CpuPlayer(apic)
    cpu.eoi()
    assert [e for e in cpu.log if e[2] != "eoi"] == []


# -- local interrupt sources ----------------------------------------------------------------

def test_lint0_fixed_edge_and_level_and_lowering_a_level_request():
    _, (apic,) = enabled_apic()
    apic.write(LVT_LINT0, 0x8000 | 0x55)  # fixed, level-triggered
    apic.raise_lint(0)
    assert bit_of(apic, REG_IRR, 0x55) and bit_of(apic, REG_TMR, 0x55)
    apic.lower_lint(0)  # withdrawn before the CPU took it
    assert not bit_of(apic, REG_IRR, 0x55) and not apic.interrupt_pending
    apic.write(LVT_LINT0, 0x56)  # fixed, edge
    apic.raise_lint(0)
    apic.lower_lint(0)  # an edge request stays
    assert apic.get_interrupt() == 0x56


def test_lint1_as_nmi_and_lint0_as_extint_signal_the_cpu():
    _, (apic,) = enabled_apic()
    cpu = CpuPlayer(apic)
    apic.write(LVT_LINT1, DM_NMI << 8)
    apic.write(LVT_LINT0, 7 << 8)
    apic.raise_lint(1)
    apic.raise_lint(0)
    assert [e[3] for e in cpu.log] == ["nmi", "extint"]
    assert apic.read(REG_IRR + 0x70) == 0 and not apic.interrupt_pending


def test_after_reset_the_bsps_lint0_is_extint_and_reaches_the_cpu_once_enabled():
    # QEMU's apic_reset_common (and KVM) set the BSP's LINT0 to ExtINT; an
    # application processor's stays masked
    _, (bsp, ap) = enabled_apic(2)
    cpus = [CpuPlayer(bsp, "bsp"), CpuPlayer(ap, "ap")]
    assert (bsp.read(LVT_LINT0), ap.read(LVT_LINT0)) == (0x700, 0x10000)
    bsp.raise_lint(0)
    ap.raise_lint(0)
    assert [e[3] for e in cpus[0].log] == ["extint"] and cpus[1].log == []
    # INIT (here: the base MSR's enable bit cleared) masks it again; RESET restores it
    bsp.set_base(bsp.get_base() & ~(1 << 11))
    bsp.set_base(bsp.get_base() | (1 << 11))
    assert bsp.read(LVT_LINT0) == 0x10000
    bsp.reset()
    assert bsp.read(LVT_LINT0) == 0x700


def test_masked_lvt_entries_and_reserved_modes_deliver_nothing():
    _, (apic,) = enabled_apic()
    cpu = CpuPlayer(apic)
    apic.write(LVT_LINT1, 0x10000 | (DM_NMI << 8))
    apic.write(LVT_THERMAL, 0x10000 | 0x70)
    apic.write(LVT_PERF, (3 << 8) | 0x71)  # reserved delivery mode
    apic.raise_lint(1)
    apic.local_interrupt(1)
    apic.local_interrupt(2)
    assert cpu.log == [] and not apic.interrupt_pending


def test_thermal_and_performance_counter_entries():
    _, (apic,) = enabled_apic()
    cpu = CpuPlayer(apic)
    apic.write(LVT_THERMAL, 0x70)
    apic.write(LVT_PERF, DM_SMI << 8)
    apic.local_interrupt(1)
    apic.local_interrupt(2)
    assert cpu.run() == [0x70]
    assert [e[3] for e in cpu.log if e[2] == "signal"] == ["smi"]


def test_lvt_with_an_illegal_vector_records_a_receive_error():
    _, (apic,) = enabled_apic()
    apic.write(LVT_THERMAL, 0x0C)
    apic.local_interrupt(1)
    apic.write(0x280, 0)
    assert apic.read(0x280) == 1 << 6
    assert not apic.interrupt_pending


@pytest.mark.parametrize("bad", [-1, 6, "0"])
def test_bad_local_source_indices(bad):
    _, (apic,) = enabled_apic()
    with pytest.raises(ValueError):
        apic.local_interrupt(bad)
    with pytest.raises(ValueError):
        apic.raise_lint(bad)


# -- inter-processor interrupts ---------------------------------------------------------------

def test_fixed_ipi_by_physical_id_and_broadcast():
    _, apics = enabled_apic(3)
    icr(apics[0], 0x4000 | 0x51, dest=2)
    assert [bit_of(a, REG_IRR, 0x51) for a in apics] == [False, False, True]
    icr(apics[1], 0x52, dest=0xFF)
    assert all(bit_of(a, REG_IRR, 0x52) for a in apics)


def test_shorthands_self_all_and_all_but_self():
    _, apics = enabled_apic(3)
    icr(apics[1], (1 << 18) | 0x61, dest=0)  # self: destination field ignored
    assert [bit_of(a, REG_IRR, 0x61) for a in apics] == [False, True, False]
    icr(apics[1], (2 << 18) | 0x62)
    assert [bit_of(a, REG_IRR, 0x62) for a in apics] == [True, True, True]
    icr(apics[1], (3 << 18) | 0x63)
    assert [bit_of(a, REG_IRR, 0x63) for a in apics] == [True, False, True]


def test_logical_destination_flat_and_cluster_models():
    _, apics = enabled_apic(3)
    for a, ldr in zip(apics, (0x01, 0x02, 0x04), strict=True):
        a.write(REG_LDR, ldr << 24)
    icr(apics[0], (1 << 11) | 0x71, dest=0x06)  # flat: bit overlap
    assert [bit_of(a, REG_IRR, 0x71) for a in apics] == [False, True, True]
    for a, ldr in zip(apics, (0x11, 0x12, 0x21), strict=True):
        a.write(REG_DFR, 0x0FFFFFFF)
        a.write(REG_LDR, ldr << 24)
    icr(apics[0], (1 << 11) | 0x72, dest=0x13)  # cluster 1, members 1 and 2
    assert [bit_of(a, REG_IRR, 0x72) for a in apics] == [True, True, False]


def test_ipi_follows_a_changed_apic_id():
    _, apics = enabled_apic(2)
    apics[1].write(REG_ID, 0x09000000)
    icr(apics[0], 0x44, dest=9)
    assert bit_of(apics[1], REG_IRR, 0x44)


def test_lowest_priority_goes_to_the_lowest_processor_priority():
    _, apics = enabled_apic(3)
    apics[0].write(REG_TPR, 0x40)
    apics[1].write(REG_TPR, 0x20)
    apics[2].write(REG_TPR, 0x30)
    icr(apics[0], (DM_LOWPRI << 8) | 0x81, dest=0xFF)
    assert [bit_of(a, REG_IRR, 0x81) for a in apics] == [False, True, False]


def test_sending_an_illegal_vector_is_a_send_error_and_nothing_is_sent():
    _, apics = enabled_apic(2)
    icr(apics[0], 0x0E, dest=1)
    assert apics[1].read(REG_IRR) == 0
    apics[0].write(0x280, 0)
    assert apics[0].read(0x280) == 1 << 5
    apics[1].write(0x280, 0)
    assert apics[1].read(0x280) == 0


def test_nmi_ipi():
    _, apics = enabled_apic(2)
    cpu1 = CpuPlayer(apics[1])
    icr(apics[0], DM_NMI << 8, dest=1)
    assert [e[3] for e in cpu1.log] == ["nmi"]


def test_init_sipi_sipi_starts_an_application_processor():
    machine, (bsp, ap) = enabled_apic(2)
    cpu1 = CpuPlayer(ap, "cpu1")
    ap.take_sipi()  # pretend firmware started it, then the OS parks it with INIT
    assert ap.state.sipi is None
    ap.write(REG_TPR, 0x20)
    icr(bsp, (5 << 8) | 0x4000, dest=1)  # INIT, assert
    assert ap.read(REG_TPR) == 0 and ap.read(0xF0) == 0xFF  # INIT reset the APIC
    assert ap.read(REG_ID) == 1 << 24 and ap.get_base() == 0xFEE00800
    assert ap.state.sipi is not None and ap.state.sipi.wait_for_sipi == 1
    icr(bsp, (5 << 8) | 0x8000, dest=1)  # INIT de-assert: arbitration IDs only
    assert ap.state.arb_id == 1
    icr(bsp, (6 << 8) | 0x9A, dest=1)  # SIPI, vector 0x9A
    assert ap.state.sipi.sipi_vector == 0x9A
    assert ap.take_sipi() == 0x9A  # the CPU starts at 0x9A000
    assert ap.state.sipi is None and ap.take_sipi() is None
    icr(bsp, (6 << 8) | 0x9B, dest=1)  # a running CPU ignores further SIPIs
    assert ap.state.sipi is None
    assert [e[3] for e in cpu1.log] == ["init", "sipi"]


def test_init_to_the_bsp_does_not_make_it_wait_for_sipi():
    _, (bsp, ap) = enabled_apic(2)
    icr(ap, (5 << 8) | 0x4000, dest=0)
    assert bsp.state.sipi is None


def test_message_from_an_io_apic_or_msi():
    machine, apics = enabled_apic(2)
    assert deliver_irq(machine, 1, False, DM_FIXED, 0x66, level_triggered=True) == [apics[1]]
    assert bit_of(apics[1], REG_TMR, 0x66)
    assert deliver_irq(machine, 0x7, False, DM_FIXED, 0x67) == []  # no such ID
    assert deliver_irq(machine, 0xFF, False, DM_FIXED, 0x68) == apics


def test_hardware_disabled_apic_ignores_messages():
    machine, (a0, a1) = enabled_apic(2)
    a1.set_base(0xFEE00000)
    deliver_irq(machine, 0xFF, False, DM_FIXED, 0x68)
    assert bit_of(a0, REG_IRR, 0x68) and a1.state.irr == [0] * 8
