"""``virtio-blk`` (virtio 1.2 §5.2): a block device serving requests from
split virtqueues in guest memory against a raw disk image.

Requests go through two explicit steps, so a test (or a workload) can stop
the device between them, as an asynchronous block backend would be caught
by a migration:

* :meth:`VirtioBlk.take` pops one head from the available ring, reads and
  checks its descriptor chain and request header, and appends it to
  ``state.inflight``;
* :meth:`VirtioBlk.complete_one` re-reads that chain from guest memory (the
  destination of a migration has nothing else), checks it still matches
  what was taken, does the I/O, writes the status byte, pushes the used
  element and interrupts the driver — and only then drops the request from
  ``state.inflight``. A request is thus completed exactly once, wherever it
  was taken.
"""

from __future__ import annotations

import os
import struct
import weakref
from typing import Any

from migtree.memory import GuestMemory, GuestMemoryError

from .constants import (
    BLK_F_BLK_SIZE,
    BLK_F_FLUSH,
    BLK_F_MQ,
    BLK_F_RO,
    BLK_F_SEG_MAX,
    BLK_F_SIZE_MAX,
    BLK_ID_BYTES,
    BLK_REQ_HEADER,
    BLK_S_IOERR,
    BLK_S_OK,
    BLK_S_UNSUPP,
    BLK_T_FLUSH,
    BLK_T_GET_ID,
    BLK_T_IN,
    BLK_T_OUT,
    F_RING_INDIRECT_DESC,
    F_VERSION_1,
    PCI_CLASS_STORAGE_SCSI,
    SECTOR_SIZE,
    VIRTIO_ID_BLOCK,
)
from .device import VirtioConfigError, VirtioDevice
from .state import InflightRequest, SgEntry, VirtioBlkState
from .virtqueue import (
    Sg,
    VirtqueueError,
    avail_head,
    check_used_ring,
    is_power_of_2,
    pending,
    push_used,
    read_chain,
    sg_read,
    sg_slice,
    sg_total,
)

_HEADER = struct.Struct("<IIQ")
_CONFIG = struct.Struct("<QIIHBBIBBHIBBH")  # up to and including num_queues: 36 bytes

GUEST_ERRORS = (VirtqueueError, GuestMemoryError)


class Disk:
    """A raw disk image opened by path; closed when the device goes away."""

    def __init__(self, path: str, read_only: bool) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        self.fd = os.open(self.path, os.O_RDONLY if read_only else os.O_RDWR)
        self._finalizer = weakref.finalize(self, os.close, self.fd)

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        self._finalizer()


class VirtioBlk(VirtioDevice):
    """QOM ``virtio-blk``: child ``virtio-backend`` of a ``virtio-pci``."""

    TYPE = "virtio-blk"
    PARENT = "virtio-device"
    ABSTRACT = False
    STATE = VirtioBlkState
    VERSION = 1
    MIN_VERSION = 1
    PATH_PROPS = ("drive",)
    DEVICE_ID = VIRTIO_ID_BLOCK
    PCI_CLASS = PCI_CLASS_STORAGE_SCSI
    DESCRIPTION = "virtio block device (virtio 1.2 §5.2) over a raw image"

    def __init__(self, drive: str, *, serial: str = "", read_only: bool = False,
                 num_queues: int = 1, queue_size: int = 256, seg_max: int | None = None,
                 size_max: int = 0, blk_size: int = 512, indirect: bool = True) -> None:
        if not (is_power_of_2(blk_size) and blk_size >= SECTOR_SIZE):
            raise VirtioConfigError(f"blk_size must be a power of 2 >= 512, got {blk_size}")
        if len(serial.encode()) > BLK_ID_BYTES:
            raise VirtioConfigError(f"serial is at most {BLK_ID_BYTES} bytes, got {serial!r}")
        self.disk = Disk(drive, read_only)
        self.serial = serial.encode()
        self.read_only = read_only
        self.offer_indirect = indirect
        self.cfg_blk_size = blk_size
        self.cfg_seg_max = seg_max if seg_max is not None else max(queue_size - 2, 1)
        self.cfg_size_max = size_max
        super().__init__(num_queues=num_queues, queue_size=queue_size)
        self._sync_config()

    def _sync_config(self) -> None:
        st = self.state
        st.capacity = self.disk.size // SECTOR_SIZE
        st.blk_size = self.cfg_blk_size
        st.seg_max = self.cfg_seg_max
        st.size_max = self.cfg_size_max

    def close(self) -> None:
        self.disk.close()

    # -- features and configuration ----------
    def host_features(self) -> int:
        f = 1 << F_VERSION_1 | 1 << BLK_F_SEG_MAX | 1 << BLK_F_BLK_SIZE | 1 << BLK_F_FLUSH
        if self.offer_indirect:
            f |= 1 << F_RING_INDIRECT_DESC
        if self.cfg_size_max:
            f |= 1 << BLK_F_SIZE_MAX
        if self.read_only:
            f |= 1 << BLK_F_RO
        if self.num_queues > 1:
            f |= 1 << BLK_F_MQ
        return f

    def config_bytes(self) -> bytes:
        st = self.state
        exp = (st.blk_size // SECTOR_SIZE).bit_length() - 1
        return _CONFIG.pack(st.capacity, st.size_max, st.seg_max,
                            0, 0, 0,               # geometry (not offered)
                            st.blk_size,
                            exp, 0, 0, 0,          # topology (not offered)
                            0, 0,                  # writeback, unused0
                            self.num_queues)

    def device_reset(self) -> None:
        self.state.inflight = []

    # -- processing ----------
    def handle_kick(self, queue: int) -> None:
        if self.on_kick == "process":
            self.process(queue=queue)
        elif self.on_kick == "take":
            while self.take(queue) is not None:
                pass

    def pending(self, queue: int | None = None) -> int:
        """Entries available and not yet taken (0 when not ready)."""
        if not self.ready:
            return 0
        total = 0
        for i in self._queues(queue):
            try:
                total += pending(self.memory, self.state.queues[i])
            except GUEST_ERRORS as e:
                self.virtio_error(str(e))
                return 0
        return total

    def _queues(self, queue: int | None) -> list[int]:
        qs = range(len(self.state.queues)) if queue is None else [queue]
        return [i for i in qs if 0 <= i < len(self.state.queues) and self.state.queues[i].enable]

    def take(self, queue: int | None = None) -> InflightRequest | None:
        """Take the next available request (from ``queue``, or the first queue
        with one) into ``state.inflight``; None when there is none, the device
        is not ready, or the guest's request was malformed (then the device
        is broken, see :meth:`virtio_error`)."""
        if not self.ready:
            return None
        mem = self.memory
        for i in self._queues(queue):
            vq = self.state.queues[i]
            try:
                if not pending(mem, vq):
                    continue
                head = avail_head(mem, vq, vq.last_avail_idx)
                out_sg, in_sg = read_chain(mem, vq, head, indirect=self.indirect)
                self._parse(mem, out_sg, in_sg)
            except GUEST_ERRORS as e:
                self.virtio_error(f"queue {i}: {e}")
                return None
            vq.last_avail_idx = (vq.last_avail_idx + 1) & 0xFFFF
            req = InflightRequest(queue=i, head=head,
                                  out_sg=[SgEntry(a, n) for a, n in out_sg],
                                  in_sg=[SgEntry(a, n) for a, n in in_sg])
            self.state.inflight.append(req)
            return req
        return None

    def complete_one(self, index: int = 0) -> bool:
        """Complete ``state.inflight[index]`` (the oldest by default). False
        when there is nothing to complete or the device is broken."""
        inflight = self.state.inflight
        if not inflight or self.state.broken:
            return False
        req = inflight[index]
        mem = self.memory
        vq = self.state.queues[req.queue]
        try:
            out_sg, in_sg = read_chain(mem, vq, req.head, indirect=self.indirect)
            if out_sg != [(e.addr, e.len) for e in req.out_sg] or \
                    in_sg != [(e.addr, e.len) for e in req.in_sg]:
                raise VirtqueueError(f"the descriptor chain of in-flight request {req.head} "
                                     "changed while the device owned it")
            check_used_ring(mem, vq)
            hdr = self._parse(mem, out_sg, in_sg)
        except GUEST_ERRORS as e:
            del inflight[index]
            self.virtio_error(f"queue {req.queue}: {e}")
            return False
        status = self._execute(mem, hdr, out_sg, in_sg)
        in_total = sg_total(in_sg)
        status_addr = sg_slice(in_sg, in_total - 1, 1)[0][0]
        mem.write_u8(status_addr, status)
        del inflight[index]
        push_used(mem, vq, req.head, in_total)
        self.notify_queue(req.queue)
        return True

    def complete_all(self) -> int:
        n = 0
        while self.complete_one():
            n += 1
        return n

    def process(self, max_requests: int | None = None, *, queue: int | None = None) -> int:
        """Take and complete up to ``max_requests`` new requests, one at a time
        (requests already in flight stay in flight). Returns how many."""
        n = 0
        while max_requests is None or n < max_requests:
            if self.take(queue) is None:
                break
            self.complete_one(len(self.state.inflight) - 1)
            n += 1
        return n

    def run(self) -> int:
        """Finish everything: complete what is in flight, then serve every
        available request. What a destination does when it resumes."""
        return self.complete_all() + self.process()

    # -- one request ----------
    @staticmethod
    def _parse(mem: GuestMemory, out_sg: Sg, in_sg: Sg) -> tuple[int, int]:
        """``(type, sector)`` from the header; a header shorter than the spec's
        16 bytes or no room for the status byte is a guest error."""
        if sg_total(out_sg) < BLK_REQ_HEADER:
            raise VirtqueueError(f"request header is {sg_total(out_sg)} bytes, shorter than "
                                 f"the {BLK_REQ_HEADER} the spec requires")
        if not in_sg:
            raise VirtqueueError("request has no device-writable buffer for its status byte")
        rtype, _reserved, sector = _HEADER.unpack(sg_read(mem, sg_slice(out_sg, 0,
                                                                         BLK_REQ_HEADER)))
        return rtype, sector

    def _execute(self, mem: GuestMemory, hdr: tuple[int, int], out_sg: Sg, in_sg: Sg) -> int:
        rtype, sector = hdr
        if rtype == BLK_T_IN:
            data = sg_slice(in_sg, 0, sg_total(in_sg) - 1)
            return self._rw(mem, sector, data, write=False)
        if rtype == BLK_T_OUT:
            data = sg_slice(out_sg, BLK_REQ_HEADER, sg_total(out_sg) - BLK_REQ_HEADER)
            return self._rw(mem, sector, data, write=True)
        if rtype == BLK_T_FLUSH:
            try:
                os.fsync(self.disk.fd)
            except OSError:
                return BLK_S_IOERR
            return BLK_S_OK
        if rtype == BLK_T_GET_ID:
            data = sg_slice(in_sg, 0, sg_total(in_sg) - 1)
            ident = self.serial.ljust(BLK_ID_BYTES, b"\0")
            pos = 0
            for addr, n in data:
                if pos >= BLK_ID_BYTES:
                    break
                k = min(n, BLK_ID_BYTES - pos)
                mem.write(addr, ident[pos:pos + k])
                pos += k
            return BLK_S_OK
        return BLK_S_UNSUPP

    def _rw(self, mem: GuestMemory, sector: int, data: Sg, *, write: bool) -> int:
        st = self.state
        nbytes = sg_total(data)
        if write and self.read_only:
            return BLK_S_IOERR
        if (sector * SECTOR_SIZE) % st.blk_size or nbytes % st.blk_size:
            return BLK_S_IOERR
        if sector > st.capacity or nbytes // SECTOR_SIZE > st.capacity - sector:
            return BLK_S_IOERR
        if not nbytes:
            return BLK_S_OK
        views = [mem.view(a, n) for a, n in data]
        try:
            offset = sector * SECTOR_SIZE
            done = 0
            while done < nbytes:
                rest = _views_from(views, done)
                k = (os.pwritev if write else os.preadv)(self.disk.fd, rest, offset + done)
                if k <= 0:
                    return BLK_S_IOERR
                done += k
        except OSError:
            return BLK_S_IOERR
        finally:
            for v in views:
                v.release()
            if not write:
                # DMA into guest RAM: mark it after the write, so a pre-copy
                # pass that copied these pages meanwhile sends them again
                for a, n in data:
                    mem.mark_dirty(a, n)
        return BLK_S_OK

    # -- migration ----------
    def pre_save(self) -> None:
        self._sync_config()

    def post_load(self) -> None:
        self.check_loaded_state()
        st = self.state
        mine = (self.disk.size // SECTOR_SIZE, self.cfg_blk_size, self.cfg_seg_max,
                self.cfg_size_max)
        theirs = (st.capacity, st.blk_size, st.seg_max, st.size_max)
        if mine != theirs:
            raise VirtioConfigError(
                f"{self.where}: the guest saw capacity/blk_size/seg_max/size_max {theirs}, "
                f"this build's virtio-blk has {mine}: use the same disk and properties")
        for req in st.inflight:
            if req.queue >= len(st.queues) or req.head >= st.queues[req.queue].size:
                raise VirtioConfigError(f"{self.where}: in-flight request head {req.head} "
                                        f"on queue {req.queue} does not fit the queues")


def _views_from(views: list[memoryview], skip: int) -> list[Any]:
    """``views`` without their first ``skip`` bytes (after a short transfer)."""
    if not skip:
        return views
    out = []
    for v in views:
        if skip >= len(v):
            skip -= len(v)
            continue
        out.append(v[skip:])
        skip = 0
    return out
