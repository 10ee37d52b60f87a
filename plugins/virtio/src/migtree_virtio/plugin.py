"""Hook implementations of the ``virtio`` entry point (distribution ``migtree-virtio``)."""

from __future__ import annotations

from migtree import hookimpl

from . import VirtioBlk, VirtioBlkPci, VirtioDevice, VirtioPci
from .filters import PAIR


@hookimpl
def migtree_register_types(register):
    from .qemu import QemuVirtioBlk, QemuVirtioPci
    from .qemu_devices import TYPES as QEMU_DEVICE_TYPES

    for cls in (VirtioDevice, VirtioPci, VirtioBlk, VirtioBlkPci, QemuVirtioPci, QemuVirtioBlk,
                *QEMU_DEVICE_TYPES):
        register(cls)


@hookimpl
def migtree_register_filters(register):
    # migtree_virtio.qemu.QEMU_PAIR (QEMU's decoded virtio-blk-pci <-> ours) is
    # passed to the engine explicitly where wanted; see README "QEMU streams"
    register(PAIR)


@hookimpl
def migtree_register_opaque_decoders(register):
    """QEMU's ``virtio`` field of virtio-blk (``migtree_virtio.qemu``), virtio-net,
    virtio-balloon, virtio-serial (``virtio-console``), virtio-rng, virtio-scsi and
    virtio-gpu sections (``migtree_virtio.qemu_devices``)."""
    from .qemu import DECODER
    from .qemu_devices import DECODERS

    register(DECODER)
    for decoder in DECODERS.values():
        register(decoder)


@hookimpl
def migtree_register_workloads(register):
    from .workload import WORKLOAD

    register(WORKLOAD)
