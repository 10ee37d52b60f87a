"""Fixtures for the KVM tests: a real /dev/kvm, a VM with an in-kernel irqchip, vCPUs.

Tests that talk to the kernel are marked with ``kvm_helpers.requires_kvm``:
skipped, with the exact ``KvmUnavailable`` message as the reason, only when
``/dev/kvm`` cannot be opened. On our machines and on CI it can, and they run.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# kvm_helpers.py sits beside this file; make it importable whatever pytest's
# import mode is.
sys.path.insert(0, str(Path(__file__).parent))

from migtree_kvm.ioctls import Kvm, Vcpu, Vm


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    with Kvm() as k:
        yield k


@pytest.fixture
def vm(kvm: Kvm) -> Iterator[Vm]:
    """A VM with an in-kernel irqchip (PIC, IOAPIC, a LAPIC per vCPU)."""
    with kvm.create_vm() as v:
        v.create_irqchip()
        yield v


@pytest.fixture
def vcpu(vm: Vm) -> Iterator[Vcpu]:
    """vCPU 0, the BSP: APIC ID 0, IA32_APIC_BASE 0xfee00900 after creation."""
    with vm.create_vcpu(0) as c:
        yield c
