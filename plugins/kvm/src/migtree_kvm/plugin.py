"""The ``kvm`` plugin: the ``kvm-apic`` type, the ``kvm`` backend, and the
``kvm-apic@1 <-> apic@3`` filters, registered statically and -- when a build
instantiates one of the two APICs -- dynamically, for that object's path
(the proposal's userspace APIC registering kvm-apic -> apic).
"""

from __future__ import annotations

import re

from migtree import hookimpl

from .backend import backend
from .device import KvmApic
from .filters import BACKWARD, FORWARD, filter_pair, make_backward, make_forward

#: dynamic filters win over the static ones for the object they were made for
DYNAMIC_PRIORITY = 10


@hookimpl
def migtree_register_types(register):
    register(KvmApic)


@hookimpl
def migtree_register_filters(register):
    register(filter_pair())


@hookimpl
def migtree_register_backends(register):
    register(backend())


def dynamic_name(base: str, path: str) -> str:
    """``kvm-apic-to-apic`` + ``/machine/unattached/device[0]/lapic`` ->
    ``kvm-apic-to-apic:machine.unattached.device-0.lapic`` (a valid filter name)."""
    parts = [re.sub(r"\[(\d+)\]", r"-\1", p) for p in path.strip("/").split("/")]
    return f"{base}:{'.'.join(parts)}"


@hookimpl
def migtree_object_realized(obj, register_filter):
    """A userspace ``apic`` takes kvm-apic state into its own path; a
    ``kvm-apic`` takes userspace apic state into its own."""
    if obj.TYPE == "apic":
        make, base = make_forward, FORWARD
    elif obj.TYPE == KvmApic.TYPE:
        make, base = make_backward, BACKWARD
    else:
        return
    register_filter(
        make(
            name=dynamic_name(base, obj.path),
            path=obj.path,
            priority=DYNAMIC_PRIORITY,
            dynamic=True,
        )
    )
