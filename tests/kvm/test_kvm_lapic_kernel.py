"""The mapping against the real kernel: program a vCPU's LAPIC, read it back.

What is compared, and what is masked (each masked bit says why):

- the page the mapping produced vs the page KVM_GET_LAPIC returns: equal
  outside ``kernel_computed_mask()`` -- version (set from CPUID), PPR
  (recomputed from TPR and ISR) and TMCCT (the running timer's count);
- the fields set vs the fields read back: equal outside the timer phase
  (the kernel restarts the timer on KVM_SET_LAPIC) and ``arb_id`` (QEMU does
  not write APR; KVM keeps none in the page).
No test here asserts anything about time.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from kvm_helpers import (
    KVM_MARKS,
    apic_states,
    carried,
    masked,
    reg,
    set_bit,
    vectors,
    xapic_bases,
)

from migtree_kvm.ioctls import Kvm
from migtree_kvm.lapic_map import (
    LapicMappingError,
    apic_state_to_page,
    covered_mask,
    kernel_computed_mask,
    page_to_apic_state,
)

pytestmark = KVM_MARKS

LVT_MASKED = 1 << 16
LVT_PERIODIC = 1 << 17


def program(vcpu, state):
    """Put fields into the kernel as QEMU's kvm_apic_put does: MSR, then page."""
    page, base = apic_state_to_page(state)
    vcpu.set_apic_base(base)
    vcpu.set_lapic(page)
    return page


def settled_ppr(vcpu, page):
    """PPR once the kernel has counted the page's ISR.

    kvm_apic_set_state() computes PPR before it recounts the in-service
    vectors, so right after KVM_SET_LAPIC from a state with none in service
    PPR ignores the new ISR (it is recomputed before the next delivery).
    Setting the same page again computes it with the count of this page.
    """
    vcpu.set_lapic(page)
    return reg(vcpu.get_lapic(), 0x0A)


def read_back(vcpu, now_ns=0):
    return page_to_apic_state(vcpu.get_lapic(), vcpu.get_apic_base(), now_ns=now_ns)


def expected_ppr(tpr: int, isr: list[int]) -> int:
    """SDM 10.8.3.1: PPR = TPR if TPR[7:4] >= ISRV[7:4], else ISRV[7:4] << 4."""
    in_service = vectors(isr)
    isrv = max(in_service) if in_service else 0
    return tpr & 0xFF if (tpr >> 4) >= (isrv >> 4) else isrv & 0xF0


@pytest.fixture
def state(vcpu):
    """The fields of vCPU 0's LAPIC as the kernel created it."""
    return read_back(vcpu)


def test_program_pending_in_service_tpr_lvt_and_timer(vcpu, state):
    state["spurious_vec"] = 0x1FF  # software-enabled, spurious vector 0xff
    state["tpr"] = 0x20
    for v in (0x31, 0x45, 0xEC):
        set_bit(state["irr"], v)  # pending
    for v in (0x51, 0x62):
        set_bit(state["isr"], v)  # in service, nested
    set_bit(state["tmr"], 0x45)  # 0x45 is level-triggered
    state["lvt"] = [
        0x0002_00EF,  # timer: periodic, vector 0xef, unmasked
        LVT_MASKED | 0xE1,  # thermal
        0x0000_04FE,  # perf: NMI
        0x0000_0700,  # LINT0: ExtINT
        0x0000_0400,  # LINT1: NMI
        0x0000_00FE,  # error: vector 0xfe
    ]
    state["initial_count"] = 0x0123_4567
    state["divide_conf"] = 0b1010  # divide by 128
    state["count_shift"] = 7
    state["log_dest"] = 0x01
    state["esr"] = 0x40  # received illegal vector
    state["icr"] = [0x0000_40FD, 0x0100_0000]
    page = program(vcpu, state)

    got_page = vcpu.get_lapic()
    keep = bytes(~m & 0xFF for m in kernel_computed_mask())
    assert masked(got_page, keep) == masked(page, keep)

    got = read_back(vcpu)
    assert carried(got) == carried(state)
    assert vectors(got["irr"]) == [0x31, 0x45, 0xEC]
    assert vectors(got["isr"]) == [0x51, 0x62]
    assert vectors(got["tmr"]) == [0x45]
    assert got["count_shift"] == 7

    # what the kernel computed itself
    assert reg(got_page, 0x0A) in (0x20, 0x60)  # PPR: see settled_ppr
    assert settled_ppr(vcpu, page) == expected_ppr(0x20, state["isr"]) == 0x60
    assert reg(got_page, 0x03) & 0xFF == 0x14  # version: integrated APIC
    assert 0 <= reg(got_page, 0x39) <= state["initial_count"]  # TMCCT: counting
    assert reg(got_page, 0x09) == got["arb_id"] == 0  # APR


def test_ppr_follows_tpr_when_tpr_is_higher(vcpu, state):
    state["spurious_vec"] = 0x1FF
    state["tpr"] = 0x7A
    set_bit(state["isr"], 0x51)
    page = program(vcpu, state)
    assert reg(vcpu.get_lapic(), 0x0A) == 0x7A
    assert settled_ppr(vcpu, page) == 0x7A


def test_ppr_right_after_set_may_not_count_the_new_isr(vcpu, state):
    """Pins the kernel behaviour settled_ppr() works around (seen on 6.18)."""
    state["spurious_vec"] = 0x1FF
    state["tpr"] = 0x20
    set_bit(state["isr"], 0x62)
    page = program(vcpu, state)  # from reset: nothing was in service
    assert reg(vcpu.get_lapic(), 0x0A) in (0x20, 0x60)
    assert settled_ppr(vcpu, page) == 0x60


def test_masked_timer_count_is_kept_but_nothing_counts(vcpu, state):
    state["lvt"][0] = LVT_MASKED | LVT_PERIODIC | 0xEF
    state["initial_count"] = 5000
    state["divide_conf"] = 0b0011
    state["count_shift"] = 4
    program(vcpu, state)
    got = read_back(vcpu, now_ns=123)
    assert carried(got) == carried(state)
    assert (got["initial_count_load_time"], got["next_time"], got["timer_expiry"]) == (123, 0, -1)


def test_timer_phase_read_back_is_restarted_at_now(vcpu, state):
    state["lvt"][0] = LVT_PERIODIC | 0xEF
    state["initial_count"] = 1000
    state["divide_conf"] = 0b1011  # divide by 1
    state["count_shift"] = 0
    state["initial_count_load_time"] = -77  # not carried: the kernel restarts the timer
    state["next_time"] = 923
    state["timer_expiry"] = 923
    program(vcpu, state)
    got = read_back(vcpu, now_ns=10_000)
    assert got["initial_count_load_time"] == 10_000
    assert got["next_time"] == got["timer_expiry"] == 10_000 + 1001


def test_apicbase_round_trips_through_the_msr(vcpu, state):
    for base in (0xFEE0_0800, 0xFEC0_0900, 0xFEE0_0900):
        state["apicbase"] = base
        program(vcpu, state)
        assert read_back(vcpu)["apicbase"] == base


def test_apicbase_above_4g_in_the_kernel_is_refused_by_the_mapping(vcpu):
    """KVM accepts a base above 4 GiB; apic@3's u32 apicbase cannot hold it."""
    vcpu.set_apic_base(0x1_FEE0_0900)
    with pytest.raises(LapicMappingError, match="apicbase: MSR value 0x1fee00900"):
        read_back(vcpu)


def test_interrupts_the_kernel_delivered_map_to_irr_and_tmr(vm, vcpu, state):
    state["spurious_vec"] = 0x1FF
    program(vcpu, state)
    for data in (0x33, 0x8000 | 0x4000 | 0x91, 0xC2):  # edge, level, edge
        assert vm.signal_msi(0xFEE0_0000, data) == 1
    got = read_back(vcpu)
    assert vectors(got["irr"]) == [0x33, 0x91, 0xC2]
    assert vectors(got["tmr"]) == [0x91]


def test_second_vcpu_keeps_its_own_id(vm, vcpu):
    ap = vm.create_vcpu(7)
    assert read_back(ap)["id"] == 7
    st0 = read_back(vcpu)
    st0["id"] = 9
    program(ap, st0)  # xAPIC IDs are writable
    assert read_back(ap)["id"] == 9
    assert read_back(vcpu)["id"] == 0


@pytest.fixture(scope="module")
def shared_vcpu():
    """One VM for the property test: hypothesis wants no function-scoped fixtures."""
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_irqchip()
        with vm.create_vcpu(0) as cpu:
            yield cpu


@given(apic_states(apicbase=xapic_bases))
def test_kernel_holds_any_valid_xapic_state(shared_vcpu, state):
    """fields -> page -> KVM_SET_LAPIC -> KVM_GET_LAPIC -> page -> fields.

    The kernel gives back every carried field, and the page bit for bit
    outside what it computes itself; what the mapping does not carry is
    back as QEMU's kvm_put_apic_state writes it.
    """
    page = program(shared_vcpu, state)
    got_page = shared_vcpu.get_lapic()
    keep = bytes(~m & 0xFF for m in kernel_computed_mask())
    assert masked(got_page, keep) == masked(page, keep)
    assert masked(got_page, covered_mask()) == masked(page, covered_mask())
    got = page_to_apic_state(got_page, shared_vcpu.get_apic_base())
    assert carried(got) == carried(state)
    assert settled_ppr(shared_vcpu, page) == expected_ppr(state["tpr"], state["isr"])


@given(apic_states(apicbase=xapic_bases))
def test_kernel_page_to_fields_to_kernel_is_identity_on_covered_bits(shared_vcpu, state):
    """kvm-apic -> apic -> kvm-apic: the kernel's page comes back the same
    wherever the mapping is exact (covered_mask), once through the mapping
    both ways and the kernel twice."""
    program(shared_vcpu, state)
    first = shared_vcpu.get_lapic()
    fields = page_to_apic_state(first, shared_vcpu.get_apic_base())
    program(shared_vcpu, fields)
    second = shared_vcpu.get_lapic()
    assert masked(second, covered_mask()) == masked(first, covered_mask())
    # outside it: APR 0 and DFR's low bits ones either way, the rest the kernel's
    not_computed = bytes(
        ~(c | k) & 0xFF for c, k in zip(covered_mask(), kernel_computed_mask(), strict=True)
    )
    assert masked(second, not_computed) == masked(first, not_computed)
