"""Stand-ins for what ``migtree-apic`` provides, until it is installed here:
an ``x86-cpu`` type, an ``apic@3`` type with QEMU's VMState v3 fields, and a
``userspace`` backend composing them. They hold state only; the kvm tests
use them to check the filters' output against the ``apic@3`` schema and to
build a userspace destination. ``apic_plugin()`` prefers the real plugin.
"""

from __future__ import annotations

import attrs

from migtree import hookimpl
from migtree.build import Backend
from migtree.fields import i32, i64, u8, u32, u32_array
from migtree.qom import Device


@attrs.define
class ApicV3State:
    apicbase: int = u32(default=0xFEE00900)
    id: int = u8()
    arb_id: int = u8()
    tpr: int = u8()
    spurious_vec: int = u32(default=0xFF)
    log_dest: int = u8()
    dest_mode: int = u8(default=0xF)
    isr: list[int] = u32_array(8)
    tmr: list[int] = u32_array(8)
    irr: list[int] = u32_array(8)
    lvt: list[int] = u32_array(6)
    esr: int = u32()
    icr: list[int] = u32_array(2)
    divide_conf: int = u32()
    count_shift: int = i32()
    initial_count: int = u32()
    initial_count_load_time: int = i64()
    next_time: int = i64()
    timer_expiry: int = i64(default=-1)


class StandInApic(Device):
    TYPE = "apic"
    ABSTRACT = False
    STATE = ApicV3State
    VERSION = 3
    MIN_VERSION = 3


class StandInCpu(Device):
    TYPE = "x86-cpu"
    ABSTRACT = False


def _userspace_cpus(machine, count, registry):
    for _ in range(count):
        cpu = registry.types.create("x86-cpu")
        machine.add_unattached(cpu)
        cpu.add_child("lapic", registry.types.create("apic"))


class StandInApicPlugin:
    """Registered in-process as ``migtree-apic-standin``."""

    @staticmethod
    @hookimpl
    def migtree_register_types(register):
        register(StandInCpu)
        register(StandInApic)

    @staticmethod
    @hookimpl
    def migtree_register_backends(register):
        register(Backend("userspace", "stand-in userspace APICs", _userspace_cpus))
