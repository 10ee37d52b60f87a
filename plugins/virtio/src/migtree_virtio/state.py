"""State declarations of the virtio types, each declared once with
:mod:`migtree.fields`.

Two layouts of the same device live here:

* the split build's (``virtio-pci`` transport + ``virtio-blk`` backend),
  named after the virtio 1.2 spec: :class:`VirtioPciState` holds the PCI
  function (config space, MSI-X, the common configuration's select
  registers); :class:`VirtioBlkState` holds the virtio device (status,
  features, ISR, virtqueues) and the block device (guest-visible
  configuration, requests in flight) — the same division as QEMU's
  ``VirtIOPCIProxy`` / ``VirtIODevice``;
* the older combined build's ``virtio-blk-pci`` (:class:`VirtioBlkPciState`):
  one flat object with QEMU-style names (``status``, ``guest_features``,
  ``vq[].num``, ``rq[]`` with parallel address and length arrays like QEMU's
  ``VirtQueueElement``). :mod:`migtree_virtio.filters` maps one onto the other.
"""

from __future__ import annotations

import attrs

from migtree.fields import U32, U64, array, boolean, bytes_, u8, u16, u32, u64

from .constants import NO_VECTOR, QUEUE_MAX

#: most virtqueues a device may have
MAX_QUEUES = 64
#: most MSI-X vectors (one per queue plus the configuration vector)
MAX_VECTORS = MAX_QUEUES + 1
#: most requests in flight: every descriptor of every queue
MAX_INFLIGHT = MAX_QUEUES * QUEUE_MAX


# -- split layout ------------------------------------------------------------------

@attrs.define
class SgEntry:
    """One guest buffer of a request, as the descriptor chain gave it."""

    addr: int = u64(doc="guest-physical address")
    len: int = u32(doc="length in bytes")


@attrs.define
class InflightRequest:
    """A request taken from the available ring and not yet completed.

    ``head`` is what the destination needs: it re-reads the descriptor chain
    from guest memory (which migrates too) and completes the request. The
    buffers as the source read them are kept as well — what QEMU saves for
    each element of virtio-blk's in-flight list — and the destination checks
    the chain still says the same before it touches the disk.
    """

    queue: int = u16(doc="virtqueue index")
    head: int = u16(doc="head descriptor index: the id the used ring reports")
    out_sg: list[SgEntry] = array(SgEntry, max_length=QUEUE_MAX,
                                  doc="device-readable buffers (header, data of a write)")
    in_sg: list[SgEntry] = array(SgEntry, max_length=QUEUE_MAX,
                                 doc="device-writable buffers (data of a read, status)")


@attrs.define
class VirtqueueState:
    """One split virtqueue: the common-configuration registers the driver
    wrote, and the device's position in the rings."""

    size: int = u16(doc="queue_size: entries in each ring (a power of 2)")
    enable: bool = boolean(doc="queue_enable")
    msix_vector: int = u16(NO_VECTOR, doc="queue_msix_vector")
    desc: int = u64(doc="queue_desc: descriptor table address")
    driver: int = u64(doc="queue_driver: available ring address")
    device: int = u64(doc="queue_device: used ring address")
    last_avail_idx: int = u16(doc="next available-ring entry the device will take")
    used_idx: int = u16(doc="the used ring's idx as the device last wrote it")


@attrs.define
class VirtioCommonState:
    """What every virtio device has, whatever its transport (QEMU's
    ``VirtIODevice``)."""

    device_status: int = u8(doc="device_status (ACKNOWLEDGE, DRIVER, FEATURES_OK...)")
    isr: int = u8(doc="ISR status: bit 0 queue interrupt, bit 1 configuration change")
    driver_features: int = u64(doc="features the driver accepted")
    msix_config: int = u16(NO_VECTOR, doc="config_msix_vector")
    config_generation: int = u8(doc="config_generation")
    broken: bool = boolean(doc="the guest misused the device (QEMU's vdev->broken): "
                                "it processes nothing until reset")
    queues: list[VirtqueueState] = array(VirtqueueState, max_length=MAX_QUEUES)


@attrs.define
class VirtioBlkState(VirtioCommonState):
    """``virtio-blk``: the virtio device and the block device's own state."""

    capacity: int = u64(doc="capacity in 512-byte sectors (guest-visible; must match)")
    blk_size: int = u32(512, doc="logical block size (guest-visible; must match)")
    seg_max: int = u32(doc="seg_max (guest-visible; must match)")
    size_max: int = u32(doc="size_max, 0 when not offered (guest-visible; must match)")
    inflight: list[InflightRequest] = array(InflightRequest, max_length=MAX_INFLIGHT,
                                            doc="requests taken and not completed, oldest first")


@attrs.define
class VirtioPciState:
    """``virtio-pci``: the PCI function (QEMU's ``VirtIOPCIProxy``)."""

    pci_config: bytes = bytes_(256, doc="PCI configuration space (header and capabilities)")
    msix_table: bytes = bytes_(max_length=MAX_VECTORS * 16, doc="MSI-X table, 16 bytes a vector")
    msix_pba: bytes = bytes_(max_length=(MAX_VECTORS + 63) // 64 * 8,
                             doc="MSI-X pending bit array")
    device_feature_select: int = u32()
    driver_feature_select: int = u32()
    queue_select: int = u16()


# -- the older combined layout -------------------------------------------------------

@attrs.define
class OldVirtqueue:
    """A queue as the combined build wrote it (QEMU's names)."""

    num: int = u16()
    enabled: bool = boolean()
    vector: int = u16(NO_VECTOR)
    desc: int = u64()
    avail: int = u64()
    used: int = u64()
    last_avail_idx: int = u16()
    used_idx: int = u16()


@attrs.define
class OldRequest:
    """A request in flight as the combined build wrote it: QEMU's
    ``VirtQueueElement`` with parallel address and length arrays."""

    vq: int = u16()
    index: int = u16()
    in_addr: list[int] = array(U64, max_length=QUEUE_MAX)
    in_len: list[int] = array(U32, max_length=QUEUE_MAX)
    out_addr: list[int] = array(U64, max_length=QUEUE_MAX)
    out_len: list[int] = array(U32, max_length=QUEUE_MAX)

    @staticmethod
    def migtree_strategy():
        """Valid values only: each address has its length."""
        from hypothesis import strategies as st

        sg = st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)),
                      max_size=6)
        return st.builds(
            lambda vq, index, ins, outs: OldRequest(
                vq, index, [a for a, _ in ins], [n for _, n in ins],
                [a for a, _ in outs], [n for _, n in outs]),
            st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), sg, sg)


@attrs.define
class VirtioBlkPciState:
    """``virtio-blk-pci``: the transport's and the block device's fields in
    one flat object, as an older build that had a single type wrote them."""

    pci_config: bytes = bytes_(256)
    msix_table: bytes = bytes_(max_length=MAX_VECTORS * 16)
    msix_pba: bytes = bytes_(max_length=(MAX_VECTORS + 63) // 64 * 8)
    dfselect: int = u32()
    gfselect: int = u32()
    queue_sel: int = u16()
    status: int = u8()
    isr: int = u8()
    guest_features: int = u64()
    config_vector: int = u16(NO_VECTOR)
    generation: int = u8()
    broken: bool = boolean()
    capacity: int = u64()
    blk_size: int = u32(512)
    seg_max: int = u32()
    size_max: int = u32()
    vq: list[OldVirtqueue] = array(OldVirtqueue, max_length=MAX_QUEUES)
    rq: list[OldRequest] = array(OldRequest, max_length=MAX_INFLIGHT)
