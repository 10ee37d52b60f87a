"""The APIC timer against the machine's virtual clock: one-shot and periodic
modes, the divide configuration, the current count, masking, and the LVT
timer interrupt. The test moves the clock; nothing reads wall-clock time."""

from __future__ import annotations

import pytest
from apic_helpers import CpuPlayer, enabled_apic

from migtree_apic.device import REG_LVT, REG_SVR, REG_TDCR, REG_TMCCT, REG_TMICT, divide_shift

LVT_TIMER = REG_LVT
PERIODIC = 1 << 17
MASKED = 1 << 16


def timer_events(cpu):
    return [e[3] for e in cpu.log if e[2] == "timer-due"]


# the SDM's divide configuration table: bits 3, 1, 0
@pytest.mark.parametrize(("tdcr", "divisor"), [
    (0b0000, 2), (0b0001, 4), (0b0010, 8), (0b0011, 16),
    (0b1000, 32), (0b1001, 64), (0b1010, 128), (0b1011, 1),
])
def test_divide_configuration(tdcr, divisor):
    machine, (apic,) = enabled_apic()
    apic.write(REG_TDCR, tdcr | 0xFFFFFFF4)  # reserved bits dropped
    assert apic.read(REG_TDCR) == tdcr
    assert 1 << apic.state.count_shift == divisor == 1 << divide_shift(tdcr)
    apic.write(LVT_TIMER, 0x30)
    machine.clock.advance(1000)
    apic.write(REG_TMICT, 100)
    machine.clock.advance(10 * divisor)
    assert apic.read(REG_TMCCT) == 90


def test_one_shot_counts_down_fires_once_at_its_time_and_stays_at_zero():
    machine, (apic,) = enabled_apic()
    cpu = CpuPlayer(apic)
    apic.write(REG_TDCR, 0b0001)  # divide by 4
    apic.write(LVT_TIMER, 0x30)
    machine.clock.set(5_000)
    apic.write(REG_TMICT, 250)
    due = 5_000 + (250 + 1) * 4  # QEMU's expiry: one tick past the count
    assert apic.timer_deadline == due
    machine.clock.set(5_000 + 100 * 4 + 3)
    assert apic.read(REG_TMCCT) == 150
    machine.clock.set(due - 1)
    assert not apic.interrupt_pending and timer_events(cpu) == []
    machine.clock.set(due)
    assert timer_events(cpu) == [due]
    assert cpu.run() == [0x30]
    machine.clock.advance(10**9)
    assert timer_events(cpu) == [due] and apic.read(REG_TMCCT) == 0
    assert apic.timer_deadline is None and apic.state.timer_expiry == -1


def test_periodic_fires_every_period_at_exact_virtual_times():
    machine, (apic,) = enabled_apic()
    cpu = CpuPlayer(apic)
    apic.write(REG_TDCR, 0b1011)  # divide by 1
    apic.write(LVT_TIMER, PERIODIC | 0x31)
    machine.clock.set(1_000)
    apic.write(REG_TMICT, 99)  # period: 100 ticks
    seen = []
    for _ in range(5):
        machine.clock.advance(100)
        seen += cpu.run()
    assert timer_events(cpu) == [1_100, 1_200, 1_300, 1_400, 1_500]
    assert seen == [0x31] * 5
    machine.clock.advance(50)
    assert apic.read(REG_TMCCT) == 99 - 50


def test_periods_that_pass_while_the_cpu_does_not_run_coalesce():
    machine, (apic,) = enabled_apic()
    cpu = CpuPlayer(apic)
    apic.write(REG_TDCR, 0b1011)
    apic.write(LVT_TIMER, PERIODIC | 0x31)
    apic.write(REG_TMICT, 9)  # period 10 ns
    machine.clock.set(1_000_000)  # 100000 periods in one step
    assert timer_events(cpu) == [10]
    assert cpu.run() == [0x31]
    assert apic.timer_deadline == 1_000_010  # the phase is kept
    machine.clock.set(1_000_010)
    assert timer_events(cpu) == [10, 1_000_010]


def test_periods_are_not_lost_when_the_cpu_took_the_previous_one():
    machine, (apic,) = enabled_apic()
    cpu = CpuPlayer(apic)
    taken = []
    # the CPU runs between the expiries: each one is delivered (coalescing
    # happens only while the previous expiry's IRR bit is still set)
    apic.write(REG_TDCR, 0b1011)
    apic.write(LVT_TIMER, PERIODIC | 0x31)
    apic.write(REG_TMICT, 9)
    machine.clock.set(10)
    taken += cpu.run()
    machine.clock.set(20)
    taken += cpu.run()
    assert taken == [0x31, 0x31] and timer_events(cpu) == [10, 20]


def test_masked_timer_counts_but_does_not_interrupt_and_unmasking_keeps_the_phase():
    machine, (apic,) = enabled_apic()
    cpu = CpuPlayer(apic)
    apic.write(REG_TDCR, 0b1011)
    apic.write(LVT_TIMER, MASKED | PERIODIC | 0x32)
    apic.write(REG_TMICT, 99)
    machine.clock.set(250)
    assert apic.read(REG_TMCCT) == 99 - 50
    assert apic.timer_deadline is None and timer_events(cpu) == []
    apic.write(LVT_TIMER, PERIODIC | 0x32)
    assert apic.timer_deadline == 300
    machine.clock.set(300)
    assert cpu.run() == [0x32]


def test_writing_zero_stops_the_timer_and_a_new_count_restarts_it():
    machine, (apic,) = enabled_apic()
    cpu = CpuPlayer(apic)
    apic.write(LVT_TIMER, PERIODIC | 0x33)
    apic.write(REG_TMICT, 1000)
    machine.clock.set(500)
    apic.write(REG_TMICT, 0)
    assert apic.timer_deadline is None and apic.read(REG_TMCCT) == 0
    machine.clock.set(10**6)
    assert timer_events(cpu) == []
    apic.write(REG_TMICT, 4)  # reload at 10**6: divide by 2, period (4 + 1) * 2
    assert apic.timer_deadline == 10**6 + 10


def test_software_disable_stops_timer_interrupts():
    machine, (apic,) = enabled_apic()
    cpu = CpuPlayer(apic)
    apic.write(LVT_TIMER, PERIODIC | 0x34)
    apic.write(REG_TMICT, 100)
    apic.write(REG_SVR, 0xFF)
    machine.clock.set(10**5)
    assert timer_events(cpu) == [] and apic.read(LVT_TIMER) == MASKED | PERIODIC | 0x34


def test_tsc_deadline_mode_is_not_offered():
    machine, (apic,) = enabled_apic()
    apic.write(LVT_TIMER, (2 << 17) | 0x35)  # TSC-deadline: bit 18 is reserved here
    assert apic.read(LVT_TIMER) == 0x35  # one-shot


def test_divide_change_applies_from_the_next_timer_event_as_in_qemu():
    machine, (apic,) = enabled_apic()
    apic.write(REG_TDCR, 0b1011)  # by 1
    apic.write(LVT_TIMER, PERIODIC | 0x36)
    apic.write(REG_TMICT, 9)
    assert apic.timer_deadline == 10
    apic.write(REG_TDCR, 0b0000)  # by 2: the armed expiry stays
    assert apic.timer_deadline == 10
    machine.clock.set(10)
    assert apic.timer_deadline == 20  # recomputed with the new shift from load time 0


def test_timer_without_a_machine_uses_time_zero():
    from migtree_apic.device import Apic

    apic = Apic()
    apic.write(REG_SVR, 0x1FF)
    apic.write(LVT_TIMER, 0x37)
    apic.write(REG_TMICT, 10)
    assert apic.read(REG_TMCCT) == 10 and apic.timer_deadline == 22
