"""``virtio-blk-pci`` as an older build modelled it: one object, one flat
state (:class:`migtree_virtio.state.VirtioBlkPciState`), like QEMU's single
``virtio-blk`` section.

It behaves exactly like a ``virtio-pci`` with a ``virtio-blk`` child — it is
one: a transport and a block device kept inside it, outside the composition
tree. Its ``state`` is composed from theirs whenever it is read, and a loaded
state is handed to them in ``post_load``; so the combined build and the
split build run the same device code, and a migration between them differs
only in the layout of the state, which the filters in
:mod:`migtree_virtio.filters` translate.
"""

from __future__ import annotations

from typing import Any

from migtree.qom import Device

from .blk import VirtioBlk
from .device import VirtioConfigError
from .pci import VirtioPci
from .state import (
    InflightRequest,
    OldRequest,
    OldVirtqueue,
    SgEntry,
    VirtioBlkPciState,
    VirtioBlkState,
    VirtioPciState,
    VirtqueueState,
)


class VirtioBlkPci(Device):
    """QOM ``virtio-blk-pci`` (combined, flat state)."""

    TYPE = "virtio-blk-pci"
    PARENT = "device"
    ABSTRACT = False
    STATE = VirtioBlkPciState
    VERSION = 1
    MIN_VERSION = 1
    PATH_PROPS = ("drive",)
    DESCRIPTION = "virtio-blk over PCI as one object with one flat state (the older layout)"

    def __init__(self, drive: str, *, vectors: int | None = None, **blk_props: Any) -> None:
        self._pci = VirtioPci(backend=VirtioBlk(drive, **blk_props), vectors=vectors)
        self._pci._host = self
        self._pending: VirtioBlkPciState | None = None
        super().__init__()
        self._pending = None

    # the two halves it is made of
    @property
    def transport(self) -> VirtioPci:
        return self._pci

    @property
    def vdev(self) -> VirtioBlk:
        return self._pci.vdev

    def close(self) -> None:
        self.vdev.close()

    # -- state: composed on read, distributed on load -------------------------------------------
    @property
    def state(self) -> VirtioBlkPciState:
        return compose(self._pci.state, self.vdev.state)

    @state.setter
    def state(self, value: VirtioBlkPciState) -> None:
        self._pending = value

    def pre_save(self) -> None:
        self.vdev.pre_save()

    def post_load(self) -> None:
        new = self._pending
        if new is None:
            return
        pci_state, blk_state = decompose(new)
        pci, vdev = self._pci, self.vdev
        old = (pci.state, vdev.state)
        try:
            vdev.state = blk_state
            pci.state = pci_state
            vdev.post_load()
            pci.post_load()
        except Exception:
            pci.state, vdev.state = old
            for obj in (vdev, pci):
                try:
                    obj.post_load()
                except Exception:
                    pass
            raise
        finally:
            self._pending = None


def compose(p: VirtioPciState, b: VirtioBlkState) -> VirtioBlkPciState:
    """The flat older layout from the transport's and the device's states
    (fresh objects: nothing aliases the live state)."""
    return VirtioBlkPciState(
        pci_config=bytes(p.pci_config), msix_table=bytes(p.msix_table),
        msix_pba=bytes(p.msix_pba), dfselect=p.device_feature_select,
        gfselect=p.driver_feature_select, queue_sel=p.queue_select,
        status=b.device_status, isr=b.isr, guest_features=b.driver_features,
        config_vector=b.msix_config, generation=b.config_generation, broken=b.broken,
        capacity=b.capacity, blk_size=b.blk_size, seg_max=b.seg_max, size_max=b.size_max,
        vq=[OldVirtqueue(num=q.size, enabled=q.enable, vector=q.msix_vector, desc=q.desc,
                         avail=q.driver, used=q.device, last_avail_idx=q.last_avail_idx,
                         used_idx=q.used_idx) for q in b.queues],
        rq=[OldRequest(vq=r.queue, index=r.head,
                       in_addr=[e.addr for e in r.in_sg], in_len=[e.len for e in r.in_sg],
                       out_addr=[e.addr for e in r.out_sg], out_len=[e.len for e in r.out_sg])
            for r in b.inflight])


def decompose(s: VirtioBlkPciState) -> tuple[VirtioPciState, VirtioBlkState]:
    for r in s.rq:
        if len(r.in_addr) != len(r.in_len) or len(r.out_addr) != len(r.out_len):
            raise VirtioConfigError(f"in-flight request {r.index}: address and length "
                                    "arrays differ in length")
    pci = VirtioPciState(pci_config=bytes(s.pci_config), msix_table=bytes(s.msix_table),
                         msix_pba=bytes(s.msix_pba), device_feature_select=s.dfselect,
                         driver_feature_select=s.gfselect, queue_select=s.queue_sel)
    blk = VirtioBlkState(
        device_status=s.status, isr=s.isr, driver_features=s.guest_features,
        msix_config=s.config_vector, config_generation=s.generation, broken=s.broken,
        queues=[VirtqueueState(size=q.num, enable=q.enabled, msix_vector=q.vector, desc=q.desc,
                               driver=q.avail, device=q.used, last_avail_idx=q.last_avail_idx,
                               used_idx=q.used_idx) for q in s.vq],
        capacity=s.capacity, blk_size=s.blk_size, seg_max=s.seg_max, size_max=s.size_max,
        inflight=[InflightRequest(queue=r.vq, head=r.index,
                                  out_sg=_sg(r.out_addr, r.out_len), in_sg=_sg(r.in_addr, r.in_len))
                  for r in s.rq])
    return pci, blk


def _sg(addrs: list[int], lens: list[int]) -> list[SgEntry]:
    return [SgEntry(a, n) for a, n in zip(addrs, lens, strict=True)]
