"""migtree hook implementations of the ``migtree-apic`` distribution."""

from __future__ import annotations

from migtree import hookimpl

from .backend import userspace_backend
from .device import Apic, X86Cpu
from .filters import PAIRS
from .workload import apic_workload


@hookimpl
def migtree_register_types(register):
    register(X86Cpu)
    register(Apic)


@hookimpl
def migtree_register_filters(register):
    for pair in PAIRS:
        register(pair)


@hookimpl
def migtree_register_backends(register):
    register(userspace_backend())


@hookimpl
def migtree_register_workloads(register):
    register(apic_workload())
