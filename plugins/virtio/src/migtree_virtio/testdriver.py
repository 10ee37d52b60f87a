"""A guest virtio-blk driver for tests, benchmarks and workloads — the test
plays the guest, as QEMU's qtest/libqos does.

It drives a device only the way a guest can: PCI configuration reads and
writes (walking the capability list, sizing and assigning BARs, enabling
MSI-X), MMIO through the BARs it assigned, and descriptors, rings and buffers
it writes into guest RAM. Like a real guest, **it keeps all of its own state
in guest RAM** (a header, the rings, a record per request), so after a
migration :meth:`VirtioBlkDriver.attach` picks it up on the destination from
the migrated memory alone.

MSI-X messages are aimed at words in the driver's own area (libqos does the
same), so interrupts are observable by the guest, counted in its header, and
migrate with its memory.

Layout from ``base`` (page aligned)::

    +0x000  header            +0x080 queue MSI word   +0x084 config MSI word
    +0x1000 descriptor table, available ring, used ring (page aligned)
    then    one 32-byte record per request slot
    then    one area per slot: request header @0, status @0x10, indirect
            table @0x40, data @0x100
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from typing import Any

import attrs

from .constants import (
    BLK_F_BLK_SIZE,
    BLK_F_FLUSH,
    BLK_F_MQ,
    BLK_F_RO,
    BLK_F_SEG_MAX,
    BLK_F_SIZE_MAX,
    BLK_ID_BYTES,
    BLK_T_FLUSH,
    BLK_T_GET_ID,
    BLK_T_IN,
    BLK_T_OUT,
    COMMON_CFGGENERATION,
    COMMON_DF,
    COMMON_DFSELECT,
    COMMON_GF,
    COMMON_GFSELECT,
    COMMON_MSIX,
    COMMON_Q_AVAILHI,
    COMMON_Q_AVAILLO,
    COMMON_Q_DESCHI,
    COMMON_Q_DESCLO,
    COMMON_Q_ENABLE,
    COMMON_Q_MSIX,
    COMMON_Q_NOFF,
    COMMON_Q_SELECT,
    COMMON_Q_SIZE,
    COMMON_Q_USEDHI,
    COMMON_Q_USEDLO,
    COMMON_STATUS,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    F_RING_INDIRECT_DESC,
    F_VERSION_1,
    NO_VECTOR,
    PCI_BASE_ADDRESS_0,
    PCI_CAP_ID_MSIX,
    PCI_CAP_ID_VNDR,
    PCI_CAPABILITY_LIST,
    PCI_COMMAND,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_DEVICE_ID,
    PCI_DEVICE_ID_MODERN_BASE,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_VENDOR_ID,
    PCI_VENDOR_ID_REDHAT_QUMRANET,
    SECTOR_SIZE,
    STATUS_ACKNOWLEDGE,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET,
    VIRTIO_ID_BLOCK,
    VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
)

MAGIC = b"MTVBLKD1"
_HDR = struct.Struct("<8sHHHHIQQQIIIIIHHIIII")
_RECORD = struct.Struct("<BBBxIQII")  # state, type, status, length, sector, used_len, seq
RECORD_SIZE = 32
SLOT_HEADER, SLOT_STATUS, SLOT_INDIRECT, SLOT_DATA = 0x00, 0x10, 0x40, 0x100
MSI_QUEUE_WORD, MSI_CONFIG_WORD = 0x80, 0x84
MSI_QUEUE_DATA, MSI_CONFIG_DATA = 0x4001, 0x4000

FREE, SUBMITTED, COMPLETED = 0, 1, 2
FLAG_INDIRECT, FLAG_MSIX = 1, 2

#: features this driver understands and accepts when offered
DRIVER_FEATURES = (1 << F_VERSION_1 | 1 << BLK_F_SEG_MAX | 1 << BLK_F_BLK_SIZE
                   | 1 << BLK_F_FLUSH | 1 << BLK_F_SIZE_MAX | 1 << BLK_F_RO | 1 << BLK_F_MQ)


class DriverError(Exception):
    """The device did not behave as the driver needs (not a migtree error:
    it is the guest's view)."""


def _align(n: int, a: int = 4096) -> int:
    return (n + a - 1) // a * a


@attrs.define
class Request:
    """One request as the guest sees it after completion."""

    slot: int
    type: int
    sector: int
    length: int
    state: int
    status: int
    used_len: int
    seq: int
    data: bytes


@attrs.frozen
class Layout:
    """Where everything of one driver lives in guest RAM (computed once)."""

    base: int
    queue_size: int
    nslots: int
    segs: int
    slot_data: int
    flags: int

    @classmethod
    def make(cls, base: int, queue_size: int, nslots: int | None, segs: int, slot_data: int,
             flags: int) -> Layout:
        per = 1 if flags & FLAG_INDIRECT else 2 + segs
        return cls(base, queue_size, nslots if nslots is not None else queue_size // per,
                   segs, slot_data, flags)

    @functools.cached_property
    def per_slot_desc(self) -> int:
        return 1 if self.flags & FLAG_INDIRECT else 2 + self.segs

    @functools.cached_property
    def desc(self) -> int:
        return self.base + 0x1000

    @functools.cached_property
    def avail(self) -> int:
        return self.desc + 16 * self.queue_size

    @functools.cached_property
    def used(self) -> int:
        return _align(self.avail + 6 + 2 * self.queue_size)

    @functools.cached_property
    def records(self) -> int:
        return _align(self.used + 6 + 8 * self.queue_size)

    @functools.cached_property
    def slot_size(self) -> int:
        return _align(SLOT_DATA + self.slot_data)

    @functools.cached_property
    def slots(self) -> int:
        return _align(self.records + RECORD_SIZE * self.nslots)

    def slot(self, i: int) -> int:
        return self.slots + i * self.slot_size

    @functools.cached_property
    def end(self) -> int:
        return self.slot(self.nslots)


def region_size(queue_size: int = 64, nslots: int | None = None, slot_data: int = 0x10000,
                segs: int = 2, indirect: bool = False) -> int:
    """Bytes of guest RAM a driver with these parameters occupies."""
    lay = Layout.make(0, queue_size, nslots, segs, slot_data, FLAG_INDIRECT if indirect else 0)
    return lay.end


class VirtioBlkDriver:
    """Drive one virtio-blk PCI function (``dev.transport``) from guest RAM."""

    def __init__(self, dev: Any, memory: Any, layout: Layout) -> None:
        self.dev = dev
        self.t = dev.transport
        self.mem = memory
        self.lay = layout
        self.caps: dict[int, tuple[int, int, int]] = {}
        self.notify_mult = 0
        self.bar4 = self.bar1 = 0
        self.features = 0
        self._hint = 0  # where to look for a free slot first (a guess, not state)

    # -- bring-up ----------------------------------------------------------------------------
    @classmethod
    def init(cls, dev: Any, memory: Any, *, base: int = 0x100000, queue_size: int = 64,
             nslots: int | None = None, slot_data: int = 0x10000, segs: int = 2,
             indirect: bool = False, msix: bool = True, mmio_base: int = 0xE000_0000,
             features: int | None = None) -> VirtioBlkDriver:
        """Enumerate, reset, negotiate, set up queue 0, DRIVER_OK."""
        flags = (FLAG_INDIRECT if indirect else 0) | (FLAG_MSIX if msix else 0)
        lay = Layout.make(base, queue_size, nslots, segs, slot_data, flags)
        if lay.nslots * lay.per_slot_desc > queue_size or lay.nslots < 1:
            raise DriverError(f"{lay.nslots} slots do not fit a queue of {queue_size}")
        if (2 + segs) * 16 > SLOT_DATA - SLOT_INDIRECT:
            raise DriverError("too many segments for the slot's indirect table")
        if not memory.contains(base, lay.end - base):
            raise DriverError(f"the driver needs guest RAM {base:#x}..{lay.end:#x}")
        drv = cls(dev, memory, lay)
        drv._enumerate(mmio_base)
        drv._negotiate(features)
        drv._setup_queue()
        memory.fill(base, lay.slots - base)  # header, MSI words, rings, records
        drv._write_header()
        drv._write_status(drv.status | STATUS_DRIVER_OK)
        return drv

    def _enumerate(self, mmio_base: int) -> None:
        t = self.t
        if t.config_read(PCI_VENDOR_ID, 2) != PCI_VENDOR_ID_REDHAT_QUMRANET:
            raise DriverError("not a virtio PCI function")
        if t.config_read(PCI_DEVICE_ID, 2) != PCI_DEVICE_ID_MODERN_BASE + VIRTIO_ID_BLOCK:
            raise DriverError("not a modern virtio-blk PCI function")
        msix_cap = 0
        ptr = t.config_read(PCI_CAPABILITY_LIST, 1)
        seen = set()
        while ptr and ptr not in seen:
            seen.add(ptr)
            cap_id = t.config_read(ptr, 1)
            if cap_id == PCI_CAP_ID_VNDR:
                cfg_type = t.config_read(ptr + 3, 1)
                if cfg_type not in self.caps:
                    self.caps[cfg_type] = (t.config_read(ptr + 4, 1), t.config_read(ptr + 8, 4),
                                           t.config_read(ptr + 12, 4))
                    if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG:
                        self.notify_mult = t.config_read(ptr + 16, 4)
            elif cap_id == PCI_CAP_ID_MSIX:
                msix_cap = ptr
            ptr = t.config_read(ptr + 1, 1)
        for need in (VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG,
                     VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_DEVICE_CFG):
            if need not in self.caps:
                raise DriverError(f"virtio capability {need} missing")
        # size and assign the BARs the capabilities use (and the MSI-X table's)
        bars = {self.caps[t_][0] for t_ in (VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG,
                                            VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_DEVICE_CFG)}
        table_bar = None
        if msix_cap:
            table_bar = t.config_read(msix_cap + 4, 4) & 7
            bars.add(table_bar)
        addr = mmio_base
        assigned = {}
        for bar in sorted(bars):
            reg = PCI_BASE_ADDRESS_0 + 4 * bar
            orig = t.config_read(reg, 4)
            t.config_write(reg, 4, 0xFFFFFFFF)
            mask = t.config_read(reg, 4) & ~0xF
            if not mask:
                raise DriverError(f"BAR{bar} is not implemented")
            size = (~mask & 0xFFFFFFFF) + 1
            is64 = orig & 0x6 == 0x4
            addr = _align(addr, size)
            t.config_write(reg, 4, addr & 0xFFFFFFFF)
            if is64:
                t.config_write(reg + 4, 4, addr >> 32)
            assigned[bar] = addr
            addr += size
        cmd = t.config_read(PCI_COMMAND, 2)
        t.config_write(PCI_COMMAND, 2, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        self.bars = assigned
        self.msix_cap = msix_cap
        self.table_bar = table_bar

    def _region(self, cfg_type: int) -> int:
        bar, off, _len = self.caps[cfg_type]
        return self.bars[bar] + off

    def rd(self, cfg_type: int, off: int, size: int) -> int:
        value = self.t.mmio_read(self._region(cfg_type) + off, size)
        if value is None:
            raise DriverError(f"MMIO read at {self._region(cfg_type) + off:#x} unclaimed")
        return value

    def wr(self, cfg_type: int, off: int, size: int, value: int) -> None:
        if not self.t.mmio_write(self._region(cfg_type) + off, size, value):
            raise DriverError(f"MMIO write at {self._region(cfg_type) + off:#x} unclaimed")

    def common_read(self, off: int, size: int) -> int:
        return self.rd(VIRTIO_PCI_CAP_COMMON_CFG, off, size)

    def common_write(self, off: int, size: int, value: int) -> None:
        self.wr(VIRTIO_PCI_CAP_COMMON_CFG, off, size, value)

    @property
    def status(self) -> int:
        return self.common_read(COMMON_STATUS, 1)

    def _write_status(self, value: int) -> None:
        self.common_write(COMMON_STATUS, 1, value)

    def _negotiate(self, features: int | None) -> None:
        lay = self.lay
        self._write_status(0)
        if self.status != 0:
            raise DriverError("device did not reset")
        self._write_status(STATUS_ACKNOWLEDGE)
        self._write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        offered = 0
        for sel in (0, 1):
            self.common_write(COMMON_DFSELECT, 4, sel)
            offered |= self.common_read(COMMON_DF, 4) << (32 * sel)
        wanted = DRIVER_FEATURES | (1 << F_RING_INDIRECT_DESC if lay.flags & FLAG_INDIRECT else 0)
        if features is not None:
            wanted = features
        chosen = offered & wanted if features is None else wanted
        if lay.flags & FLAG_INDIRECT and not chosen >> F_RING_INDIRECT_DESC & 1:
            raise DriverError("the device does not offer indirect descriptors")
        for sel in (0, 1):
            self.common_write(COMMON_GFSELECT, 4, sel)
            self.common_write(COMMON_GF, 4, (chosen >> (32 * sel)) & 0xFFFFFFFF)
        self._write_status(self.status | STATUS_FEATURES_OK)
        if not self.status & STATUS_FEATURES_OK:
            raise DriverError(f"the device refused features {chosen:#x}")
        self.features = chosen

    def _setup_queue(self) -> None:
        lay, t = self.lay, self.t
        if lay.flags & FLAG_MSIX:
            if not self.msix_cap:
                raise DriverError("no MSI-X capability")
            ctl = t.config_read(self.msix_cap + 2, 2)
            t.config_write(self.msix_cap + 2, 2, ctl | PCI_MSIX_FLAGS_ENABLE)
            table = self.bars[self.table_bar] + (t.config_read(self.msix_cap + 4, 4) & ~7)
            for vec, (word, data) in enumerate(((MSI_CONFIG_WORD, MSI_CONFIG_DATA),
                                                (MSI_QUEUE_WORD, MSI_QUEUE_DATA))):
                entry = table + 16 * vec
                t.mmio_write(entry, 4, (lay.base + word) & 0xFFFFFFFF)
                t.mmio_write(entry + 4, 4, (lay.base + word) >> 32)
                t.mmio_write(entry + 8, 4, data)
                t.mmio_write(entry + 12, 4, 0)  # unmask
            self.common_write(COMMON_MSIX, 2, 0)
            if self.common_read(COMMON_MSIX, 2) != 0:
                raise DriverError("config vector not accepted")
        self.common_write(COMMON_Q_SELECT, 2, 0)
        qmax = self.common_read(COMMON_Q_SIZE, 2)
        if qmax < lay.queue_size:
            raise DriverError(f"queue 0 holds {qmax} entries, the driver wants {lay.queue_size}")
        self.common_write(COMMON_Q_SIZE, 2, lay.queue_size)
        if lay.flags & FLAG_MSIX:
            self.common_write(COMMON_Q_MSIX, 2, 1)
            if self.common_read(COMMON_Q_MSIX, 2) != 1:
                raise DriverError("queue vector not accepted")
        for lo, hi, addr in ((COMMON_Q_DESCLO, COMMON_Q_DESCHI, lay.desc),
                             (COMMON_Q_AVAILLO, COMMON_Q_AVAILHI, lay.avail),
                             (COMMON_Q_USEDLO, COMMON_Q_USEDHI, lay.used)):
            self.common_write(lo, 4, addr & 0xFFFFFFFF)
            self.common_write(hi, 4, addr >> 32)
        self.notify_off = self.common_read(COMMON_Q_NOFF, 2)
        self.common_write(COMMON_Q_ENABLE, 2, 1)

    # -- the driver's own state, kept in guest RAM ---------------------------------------------
    def _write_header(self) -> None:
        lay = self.lay
        com = self.caps[VIRTIO_PCI_CAP_COMMON_CFG]
        self.mem.pack(_HDR, lay.base, MAGIC, lay.queue_size, lay.nslots, lay.segs, lay.flags,
                      lay.slot_data, self.features, self.bars.get(com[0], 0),
                      self._region(VIRTIO_PCI_CAP_NOTIFY_CFG), com[1],
                      self.caps[VIRTIO_PCI_CAP_ISR_CFG][1],
                      self.caps[VIRTIO_PCI_CAP_DEVICE_CFG][1],
                      self.caps[VIRTIO_PCI_CAP_NOTIFY_CFG][1], self.notify_mult,
                      self.notify_off, 0, 0, 0, 0, 0)

    def _hdr(self) -> tuple:
        return self.mem.unpack(_HDR, self.lay.base)

    def _set_hdr(self, index: int, value: int) -> None:
        fields = list(self._hdr())
        fields[index] = value
        self.mem.pack(_HDR, self.lay.base, *fields)

    # header fields by index
    _LAST_USED, _SEQ, _MSI_Q, _MSI_C, _INTX = 15, 16, 17, 18, 19

    @classmethod
    def attach(cls, dev: Any, memory: Any, *, base: int = 0x100000) -> VirtioBlkDriver:
        """Pick up a driver from guest RAM (after a migration): no register
        is written, the device keeps running."""
        (magic, qsize, nslots, segs, flags, slot_data, features, _bar, _notify_addr, *_rest) = \
            memory.unpack(_HDR, base)
        if magic != MAGIC:
            raise DriverError(f"no virtio-blk driver state at {base:#x}")
        drv = cls(dev, memory, Layout.make(base, qsize, nslots, segs, slot_data, flags))
        drv.features = features
        # the guest's PCI view: re-read from config space, as it was programmed
        t = dev.transport
        ptr = t.config_read(PCI_CAPABILITY_LIST, 1)
        seen = set()
        while ptr and ptr not in seen:
            seen.add(ptr)
            if t.config_read(ptr, 1) == PCI_CAP_ID_VNDR:
                cfg_type = t.config_read(ptr + 3, 1)
                if cfg_type not in drv.caps:
                    drv.caps[cfg_type] = (t.config_read(ptr + 4, 1), t.config_read(ptr + 8, 4),
                                          t.config_read(ptr + 12, 4))
                    if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG:
                        drv.notify_mult = t.config_read(ptr + 16, 4)
            ptr = t.config_read(ptr + 1, 1)
        drv.bars = {}
        for bar in {drv.caps[t_][0] for t_ in (VIRTIO_PCI_CAP_COMMON_CFG,
                                               VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_ISR_CFG,
                                               VIRTIO_PCI_CAP_DEVICE_CFG)}:
            reg = PCI_BASE_ADDRESS_0 + 4 * bar
            lo = t.config_read(reg, 4)
            addr = lo & ~0xF
            if lo & 0x6 == 0x4:
                addr |= t.config_read(reg + 4, 4) << 32
            drv.bars[bar] = addr
        drv.notify_off = drv._hdr()[14]
        return drv

    # -- configuration ----------
    def config(self, off: int, size: int) -> int:
        """A device configuration field, read consistently (§2.5.1: retry
        while config_generation changes)."""
        while True:
            gen = self.common_read(COMMON_CFGGENERATION, 1)
            if size == 8:
                value = self.rd(VIRTIO_PCI_CAP_DEVICE_CFG, off, 4) | \
                    self.rd(VIRTIO_PCI_CAP_DEVICE_CFG, off + 4, 4) << 32
            else:
                value = self.rd(VIRTIO_PCI_CAP_DEVICE_CFG, off, size)
            if self.common_read(COMMON_CFGGENERATION, 1) == gen:
                return value

    @property
    def capacity(self) -> int:
        return self.config(0, 8)

    @property
    def needs_reset(self) -> bool:
        return bool(self.status & STATUS_NEEDS_RESET)

    # -- requests ----------
    def record(self, slot: int) -> tuple:
        return self.mem.unpack(_RECORD, self.lay.records + RECORD_SIZE * slot)

    def _set_record(self, slot: int, *fields: Any) -> None:
        self.mem.pack(_RECORD, self.lay.records + RECORD_SIZE * slot, *fields)

    def _first_free(self) -> int:
        n = self.lay.nslots
        for k in range(n):
            s = (self._hint + k) % n
            if self.mem.read_u8(self.lay.records + RECORD_SIZE * s) == FREE:
                self._hint = (s + 1) % n
                return s
        raise DriverError("no free request slot: poll() and release() first")

    def free_slots(self) -> list[int]:
        return [s for s in range(self.lay.nslots) if self.record(s)[0] == FREE]

    def submit(self, rtype: int, sector: int = 0, data: bytes | int = b"", *,
               kick: bool = True, slot: int | None = None) -> int:
        """Queue one request; ``data`` is the bytes to write (OUT) or the
        number of bytes to read (IN). Returns its slot."""
        lay, mem = self.lay, self.mem
        if slot is None:
            slot = self._first_free()
        elif self.record(slot)[0] != FREE:
            raise DriverError(f"slot {slot} is busy")
        if rtype == BLK_T_OUT:
            payload = bytes(data)  # type: ignore[arg-type]
            length = len(payload)
        elif rtype == BLK_T_IN:
            length = int(data)  # type: ignore[arg-type]
        elif rtype == BLK_T_GET_ID:
            length = BLK_ID_BYTES
        else:
            length = 0
        if length > lay.slot_data:
            raise DriverError(f"{length} bytes exceed the slot's {lay.slot_data}")
        area = lay.slot(slot)
        mem.pack(struct.Struct("<IIQ"), area + SLOT_HEADER, rtype, 0, sector)
        mem.write_u8(area + SLOT_STATUS, 0xFF)
        if rtype == BLK_T_OUT:
            mem.write(area + SLOT_DATA, payload)
        elif length:
            mem.fill(area + SLOT_DATA, length, 0)
        writable = rtype in (BLK_T_IN, BLK_T_GET_ID)
        chain = [(area + SLOT_HEADER, 16, 0)]
        for a, n in _segments(area + SLOT_DATA, length, lay.segs):
            chain.append((a, n, DESC_F_WRITE if writable else 0))
        chain.append((area + SLOT_STATUS, 1, DESC_F_WRITE))
        if lay.flags & FLAG_INDIRECT:
            head = slot
            table = area + SLOT_INDIRECT
            self._write_chain(table, 0, chain)
            self._write_desc(lay.desc + 16 * head, table, 16 * len(chain), DESC_F_INDIRECT, 0)
        else:
            head = slot * lay.per_slot_desc
            self._write_chain(lay.desc, head, chain)
        seq = self._hdr()[self._SEQ]
        self._set_hdr(self._SEQ, seq + 1)
        self._set_record(slot, SUBMITTED, rtype, 0xFF, length, sector, 0, seq)
        idx = mem.read_u16(lay.avail + 2)
        mem.write_u16(lay.avail + 4 + 2 * (idx % lay.queue_size), head)
        mem.write_u16(lay.avail + 2, (idx + 1) & 0xFFFF)
        if kick:
            self.kick()
        return slot

    def _write_desc(self, at: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.mem.pack(struct.Struct("<QIHH"), at, addr, length, flags, nxt)

    def _write_chain(self, table: int, first: int, chain: list[tuple[int, int, int]]) -> None:
        for k, (addr, n, flags) in enumerate(chain):
            last = k == len(chain) - 1
            self._write_desc(table + 16 * (first + k), addr, n,
                             flags | (0 if last else DESC_F_NEXT), 0 if last else first + k + 1)

    def read(self, sector: int, nbytes: int, **kw: Any) -> int:
        return self.submit(BLK_T_IN, sector, nbytes, **kw)

    def write(self, sector: int, data: bytes, **kw: Any) -> int:
        return self.submit(BLK_T_OUT, sector, data, **kw)

    def flush(self, **kw: Any) -> int:
        return self.submit(BLK_T_FLUSH, 0, **kw)

    def get_id(self, **kw: Any) -> int:
        return self.submit(BLK_T_GET_ID, 0, **kw)

    def kick(self) -> None:
        self.wr(VIRTIO_PCI_CAP_NOTIFY_CFG, self.notify_off * self.notify_mult, 2, 0)

    def poll(self) -> list[int]:
        """Reap the used ring and the interrupt words; the slots completed."""
        lay, mem = self.lay, self.mem
        self._reap_interrupts()
        done = []
        last = self._hdr()[self._LAST_USED]
        used_idx = mem.read_u16(lay.used + 2)
        while last != used_idx:
            ident, length = mem.unpack(struct.Struct("<II"),
                                       lay.used + 4 + 8 * (last % lay.queue_size))
            slot = ident // lay.per_slot_desc
            if ident % lay.per_slot_desc or slot >= lay.nslots:
                raise DriverError(f"the device returned unknown id {ident}")
            state, rtype, _st, rlen, sector, _ul, seq = self.record(slot)
            if state != SUBMITTED:
                raise DriverError(f"the device completed slot {slot} twice (id {ident})")
            status = mem.read_u8(lay.slot(slot) + SLOT_STATUS)
            self._set_record(slot, COMPLETED, rtype, status, rlen, sector, length, seq)
            done.append(slot)
            last = (last + 1) & 0xFFFF
        self._set_hdr(self._LAST_USED, last)
        return done

    def _reap_interrupts(self) -> None:
        lay, mem = self.lay, self.mem
        if lay.flags & FLAG_MSIX:
            for word, data, index in ((MSI_QUEUE_WORD, MSI_QUEUE_DATA, self._MSI_Q),
                                      (MSI_CONFIG_WORD, MSI_CONFIG_DATA, self._MSI_C)):
                if mem.read_u32(lay.base + word) == data:
                    mem.write_u32(lay.base + word, 0)
                    self._set_hdr(index, self._hdr()[index] + 1)
        elif self.t.intx_level:
            if self.rd(VIRTIO_PCI_CAP_ISR_CFG, 0, 1):
                self._set_hdr(self._INTX, self._hdr()[self._INTX] + 1)

    @property
    def interrupts(self) -> dict[str, int]:
        h = self._hdr()
        return {"msi_queue": h[self._MSI_Q], "msi_config": h[self._MSI_C], "intx": h[self._INTX]}

    def result(self, slot: int) -> Request:
        state, rtype, status, length, sector, used_len, seq = self.record(slot)
        area = self.lay.slot(slot)
        data = self.mem.read(area + SLOT_DATA, length) if length else b""
        return Request(slot, rtype, sector, length, state, status, used_len, seq, data)

    def results(self) -> Iterator[Request]:
        for s in range(self.lay.nslots):
            if self.record(s)[0] != FREE:
                yield self.result(s)

    def release(self, slot: int) -> None:
        self._set_record(slot, FREE, 0, 0, 0, 0, 0, 0)

    def used_entries(self) -> list[tuple[int, int]]:
        """Every used element the device wrote so far, in order (the ring
        must not have wrapped)."""
        lay = self.lay
        n = self.mem.read_u16(lay.used + 2)
        if n > lay.queue_size:
            raise DriverError("the used ring wrapped; entries were overwritten")
        return [self.mem.unpack(struct.Struct("<II"), lay.used + 4 + 8 * i) for i in range(n)]

    def reset_device(self) -> None:
        self._write_status(0)


def _segments(addr: int, length: int, segs: int) -> list[tuple[int, int]]:
    """Split ``length`` bytes at ``addr`` into at most ``segs`` buffers of
    whole sectors (all of it in one when it is not sector-sized)."""
    if length == 0:
        return []
    if segs <= 1 or length % SECTOR_SIZE or length // SECTOR_SIZE < 2:
        return [(addr, length)]
    sectors = length // SECTOR_SIZE
    k = min(segs, sectors)
    out = []
    pos = 0
    for i in range(k):
        n = (sectors * (i + 1) // k - sectors * i // k) * SECTOR_SIZE
        out.append((addr + pos, n))
        pos += n
    return out


__all__ = ["BLK_T_FLUSH", "BLK_T_GET_ID", "BLK_T_IN", "BLK_T_OUT", "NO_VECTOR", "DriverError",
           "Request", "VirtioBlkDriver", "region_size"]
