"""Hook implementations of the ``virtio`` entry point (distribution ``migtree-virtio``)."""

from __future__ import annotations

from migtree import hookimpl

from . import VirtioBlk, VirtioBlkPci, VirtioDevice, VirtioPci
from .filters import PAIR


def _core_registers_guest_memory() -> bool:
    """Guest memory is machine infrastructure and belongs in core's builtin
    plugin; until core registers ``guest-memory`` itself, this plugin does."""
    from migtree import builtin

    return hasattr(builtin, "GuestMemoryObject")


@hookimpl
def migtree_register_types(register):
    for cls in (VirtioDevice, VirtioPci, VirtioBlk, VirtioBlkPci):
        register(cls)
    if not _core_registers_guest_memory():
        from migtree.memory import GuestMemoryObject

        register(GuestMemoryObject)


@hookimpl
def migtree_register_filters(register):
    register(PAIR)


@hookimpl
def migtree_register_workloads(register):
    from .workload import WORKLOAD

    register(WORKLOAD)
