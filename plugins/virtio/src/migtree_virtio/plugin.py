"""Hook implementations of the ``virtio`` entry point (distribution ``migtree-virtio``)."""

from __future__ import annotations

from migtree import hookimpl

from . import VirtioBlk, VirtioBlkPci, VirtioDevice, VirtioPci
from .filters import PAIR


@hookimpl
def migtree_register_types(register):
    from .qemu import QemuVirtioBlk, QemuVirtioPci

    for cls in (VirtioDevice, VirtioPci, VirtioBlk, VirtioBlkPci, QemuVirtioPci, QemuVirtioBlk):
        register(cls)


@hookimpl
def migtree_register_filters(register):
    # migtree_virtio.qemu.QEMU_PAIR (QEMU's decoded virtio-blk-pci <-> ours) is
    # passed to the engine explicitly where wanted; see README "QEMU streams"
    register(PAIR)


@hookimpl
def migtree_register_opaque_decoders(register):
    """QEMU's ``virtio`` blob of a virtio-blk-pci section (``migtree_virtio.qemu``)."""
    from .qemu import DECODER

    register(DECODER)


@hookimpl
def migtree_register_workloads(register):
    from .workload import WORKLOAD

    register(WORKLOAD)
