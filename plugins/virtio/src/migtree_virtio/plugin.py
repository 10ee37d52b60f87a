"""Hook implementations of the ``virtio`` entry point (distribution ``migtree-virtio``)."""

from __future__ import annotations

from migtree import hookimpl

from . import VirtioBlk, VirtioBlkPci, VirtioDevice, VirtioPci
from .filters import PAIR


@hookimpl
def migtree_register_types(register):
    for cls in (VirtioDevice, VirtioPci, VirtioBlk, VirtioBlkPci):
        register(cls)


@hookimpl
def migtree_register_filters(register):
    register(PAIR)


@hookimpl
def migtree_register_workloads(register):
    from .workload import WORKLOAD

    register(WORKLOAD)
