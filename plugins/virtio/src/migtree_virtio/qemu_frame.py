"""QEMU's ``virtio_save`` frame, shared by every virtio device decoder.

QEMU describes a virtio device's section to its stream description (vmdesc)
as one opaque field ``virtio`` of type ``virtio``; ``virtio_save`` writes it
in a layout known only to device code. Every device has the same frame
around its own part (big-endian unless said otherwise):

======================  ========================================================
transport config        ``virtio_pci_save_config``: ``pci_device_save`` (the
                        ``PCIDevice`` VMState: int32 ``version_id``, the config
                        space — 256 bytes, 4096 for PCI Express —, four int32
                        INTx levels), ``msix_save`` (the MSI-X table, 16 bytes a
                        vector, and ``ceil(n/8)`` bytes of pending bits), and
                        the configuration vector (u16) when MSI-X is present
device header           status u8, ISR u8, ``queue_sel`` u16, the low 32 bits
                        of the guest features, ``config_len`` u32 and the
                        device configuration
queues                  u32 count; each: ``vring.num`` u32, ``vring.desc`` u64,
                        ``last_avail_idx`` u16, its MSI-X vector u16 (when MSI-X
                        is present: ``virtio_pci_save_queue``)
the device's part       ``vdc->save`` (a device's own legacy writer), then
                        ``vdc->vmsd`` (a VMState without a header: fields,
                        then its subsections); :class:`DeviceLayout` reads it
subsections             ``vmstate_virtio``'s, each 0x05, name, u32 version:
                        ``virtio/device_endian``, ``virtio/64bit_features``,
                        ``virtio/virtqueues`` (avail and used addresses of all
                        1024 queues), ``virtio/ringsize``, ``virtio/broken``,
                        ``virtio/extra_state`` (the proxy's ``virtio_pci``
                        VMState: subsection ``virtio_pci/modern_state`` with the
                        feature selectors, guest feature words and, per queue,
                        what the driver wrote into the common configuration),
                        ``virtio/started``, ``virtio/packed_virtqueues``,
                        ``virtio/disabled``
======================  ========================================================

The frame is the same in QEMU 5.2, 7.2 and 10.0 (their binaries name the
same ``virtio/*`` and ``virtio_pci/*`` subsections; real streams of all
three decode). ``hw/virtio/virtio.c`` ``virtio_save``,
``qemu_put_virtqueue_element``; ``hw/virtio/virtio-pci.c``;
``hw/pci/pci.c`` ``pci_device_save``; ``hw/pci/msix.c`` ``msix_save``.

A decoded section is a ``qemu-virtio-pci`` node (the PCI proxy) with the
device as its ``virtio-backend`` child; the child's type names the device's
layout (``qemu-virtio-blk``, ``qemu-virtio-net``, ...). Arrays QEMU writes
for all ``VIRTIO_QUEUE_MAX`` (1024) queues are listed up to the last entry
that is not at its reset value (and at least one per queue); the rest are
written back as reset values.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import attrs

from migtree.errors import StreamError
from migtree.fields import (
    BOOL,
    I32,
    U8,
    U16,
    U32,
    U64,
    array,
    boolean,
    bytes_,
    i32,
    optional,
    u8,
    u16,
    u32,
    u64,
)
from migtree.formats import OpaqueDecoder
from migtree.qom import Device
from migtree.visitor import node_to_state, state_to_node

#: QEMU's VIRTIO_QUEUE_MAX: entries of the per-queue subsection arrays
VIRTIO_QUEUE_MAX = 1024
#: QEMU's VIRTQUEUE_MAX_SIZE: slots of VirtQueueElementOld's arrays
VIRTQUEUE_MAX_SIZE = 1024
#: sizeof(VirtQueueElementOld) on x86-64: 3 x u32, 4 bytes padding,
#: 2 x 1024 hwaddr, 2 x 1024 struct iovec (pointer + size_t)
ELEMENT_SIZE = 16 + 2 * 8 * VIRTQUEUE_MAX_SIZE + 2 * 16 * VIRTQUEUE_MAX_SIZE
PCI_CONFIG_SPACE_SIZE = 256
PCIE_CONFIG_SPACE_SIZE = 4096
PCI_MSIX_ENTRY_SIZE = 16
PCI_CAPABILITY_LIST = 0x34
PCI_STATUS = 0x06
PCI_STATUS_CAP_LIST = 0x10
PCI_CAP_ID_MSIX = 0x11
PCI_CAP_ID_EXP = 0x10
QEMU_VM_SUBSECTION = 0x05

TYPE_PCI = "qemu-virtio-pci"
BACKEND = "virtio-backend"

RESERVED = ("__type__", "__version__", "__stash__", "__qemu__")


class QemuVirtioLayoutError(StreamError):
    """The ``virtio`` bytes do not follow QEMU's ``virtio_save`` layout of
    the device (or a node cannot be written in it). The message names the
    section, the part and the byte offset within the field."""


# ---------------------------------------------------------------------------
# state declarations (QEMU's names; migtree.fields so the core can describe
# and check them)


@attrs.define
class QemuSg:
    """One buffer of a virtqueue element: ``in_addr[i]``/``out_addr[i]`` and
    the length of the matching iovec (QEMU saves ``iov_base`` as 0)."""

    addr: int = u64(doc="guest-physical address")
    len: int = u64(doc="iov_len (a size_t)")


@attrs.define
class QemuQueue:
    """One virtqueue as ``virtio_save`` writes it in the main part."""

    num: int = u32(doc="vring.num: the queue size")
    desc: int = u64(doc="vring.desc: descriptor table address")
    last_avail_idx: int = u16(doc="next available-ring entry the device will take")
    vector: int | None = optional(U16, doc="MSI-X vector (absent without MSI-X)")


@attrs.define
class QemuRingAddrs:
    """``virtio/virtqueues``: the avail and used ring addresses of a queue."""

    avail: int = u64(doc="vring.avail: available ring address")
    used: int = u64(doc="vring.used: used ring address")


@attrs.define
class QemuVirtqueues:
    """``virtio/virtqueues`` (sent when the device offers VERSION_1)."""

    vq: list[QemuRingAddrs] = array(QemuRingAddrs, max_length=VIRTIO_QUEUE_MAX,
                                    doc="per queue; the rest of the 1024 are zero")


@attrs.define
class QemuRingsize:
    """``virtio/ringsize`` (sent when a queue's size is not its default)."""

    num_default: list[int] = array(U32, max_length=VIRTIO_QUEUE_MAX,
                                   doc="per queue; the rest of the 1024 are zero")


@attrs.define
class QemuPackedQueue:
    """One entry of ``virtio/packed_virtqueues``."""

    last_avail_idx: int = u16()
    last_avail_wrap_counter: bool = boolean()
    used_idx: int = u16()
    used_wrap_counter: bool = boolean()
    inuse: int = u32()


@attrs.define
class QemuPackedVirtqueues:
    """``virtio/packed_virtqueues`` (sent when the device offers RING_PACKED)."""

    vq: list[QemuPackedQueue] = array(QemuPackedQueue, max_length=VIRTIO_QUEUE_MAX,
                                      doc="per queue; the rest of the 1024 are at their "
                                          "reset values (wrap counters set)")


@attrs.define
class QemuVirtioDeviceState:
    """QEMU's ``VirtIODevice`` as ``virtio_save`` writes it: the fields every
    device node has. A device's own part follows in a subclass."""

    status: int = u8(doc="device status")
    isr: int = u8(doc="ISR status")
    queue_sel: int = u16(doc="queue selected by the driver")
    guest_features_lo: int = u32(doc="low 32 bits of the negotiated features")
    config: bytes = bytes_(max_length=4096, doc="device configuration as QEMU last read it "
                                                "for the driver (config_len bytes)")
    config_vector: int | None = optional(U16, doc="MSI-X configuration vector (absent "
                                                  "without MSI-X)")
    queues: list[QemuQueue] = array(QemuQueue, max_length=VIRTIO_QUEUE_MAX,
                                    doc="queues with a non-zero size, in order")
    device_endian: int | None = optional(U8, doc="virtio/device_endian")
    guest_features: int | None = optional(U64, doc="virtio/64bit_features: all 64 "
                                                   "negotiated feature bits")
    virtqueues: QemuVirtqueues | None = optional(QemuVirtqueues, doc="virtio/virtqueues")
    ringsize: QemuRingsize | None = optional(QemuRingsize, doc="virtio/ringsize")
    broken: bool | None = optional(BOOL, doc="virtio/broken")
    started: bool | None = optional(BOOL, doc="virtio/started")
    packed_virtqueues: QemuPackedVirtqueues | None = optional(
        QemuPackedVirtqueues, doc="virtio/packed_virtqueues")
    disabled: bool | None = optional(BOOL, doc="virtio/disabled")


@attrs.define
class QemuModernQueue:
    """``virtio_pci/modern_queue_state``: what the driver wrote for a queue
    through the common configuration (the 32-bit halves joined)."""

    num: int = u16()
    enabled: bool = boolean()
    desc: int = u64(doc="desc[0] | desc[1] << 32")
    avail: int = u64(doc="avail[0] | avail[1] << 32")
    used: int = u64(doc="used[0] | used[1] << 32")


@attrs.define
class QemuModernState:
    """``virtio_pci/modern_state`` (sent for a modern-capable proxy)."""

    dfselect: int = u32(doc="device_feature_select")
    gfselect: int = u32(doc="driver_feature_select")
    guest_features: list[int] = array(U32, 2, doc="the driver's feature words")
    vqs: list[QemuModernQueue] = array(QemuModernQueue, max_length=VIRTIO_QUEUE_MAX,
                                       doc="per queue; the rest of the 1024 are zero")


@attrs.define
class QemuVirtioPciExtra:
    """``virtio/extra_state``: the proxy's ``virtio_pci`` VMState."""

    modern_state: QemuModernState | None = optional(QemuModernState)


@attrs.define
class QemuVirtioPciState:
    """``qemu-virtio-pci``: QEMU's ``VirtIOPCIProxy`` as ``virtio_save``
    writes it."""

    pci_version_id: int = i32(2, doc="PCIDevice VMState's version_id field")
    pci_config: bytes = bytes_(max_length=PCIE_CONFIG_SPACE_SIZE,
                               doc="PCI configuration space (256 bytes, 4096 for PCIe), "
                                   "interrupt status bit clear as QEMU saves it")
    irq_state: list[int] = array(I32, 4, doc="INTx pin levels A-D")
    msix_table: bytes = bytes_(max_length=2048 * PCI_MSIX_ENTRY_SIZE,
                               doc="MSI-X table, 16 bytes a vector (empty without MSI-X)")
    msix_pba: bytes = bytes_(max_length=2048 // 8, doc="MSI-X pending bits, ceil(n/8) bytes")
    extra_state: QemuVirtioPciExtra | None = optional(QemuVirtioPciExtra,
                                                      doc="virtio/extra_state")


class QemuVirtioPci(Device):
    """QEMU's virtio PCI proxy state as its stream holds it (5.2, 7.2,
    10.0). Not instantiable: it describes (and validates) nodes decoded from
    QEMU streams; ``migtree_virtio.qemu.QEMU_PAIR`` turns it into
    ``virtio-pci`` when the backend is a virtio-blk."""

    TYPE = TYPE_PCI
    PARENT = "device"
    ABSTRACT = True
    STATE = QemuVirtioPciState
    VERSION = 1
    MIN_VERSION = 1


def device_type(type_name: str, state: type, doc: str, module: str = __name__) -> type:
    """The abstract migtree type of a device layout (registered so streams
    carry its schema and the strict input visitor checks its nodes)."""
    name = "".join(p.capitalize() for p in type_name.split("-"))
    return type(name, (Device,), {"TYPE": type_name, "PARENT": "device", "ABSTRACT": True,
                                  "STATE": state, "VERSION": 1, "MIN_VERSION": 1,
                                  "__doc__": doc, "__module__": module})


# ---------------------------------------------------------------------------
# bytes -> state


class Reader:
    """Big-endian reads from a ``virtio`` field; errors name the section,
    the part and the byte offset."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data = data
        self.pos = 0
        self.where = where

    def error(self, message: str, at: int | None = None) -> QemuVirtioLayoutError:
        at = self.pos if at is None else at
        return QemuVirtioLayoutError(
            f"{self.where}: {message} (byte {at} of the {len(self.data)}-byte virtio field)")

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left():
            raise self.error(f"{what} needs {n} bytes, {self.left()} left")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def be(self, size: int, what: str, signed: bool = False) -> int:
        return int.from_bytes(self.take(size, what), "big", signed=signed)

    def flag(self, what: str, size: int = 1) -> bool:
        at = self.pos
        v = self.be(size, what)
        if v > 1:
            raise self.error(f"{what} is {v}; QEMU writes a bool as 0 or 1", at)
        return bool(v)

    def zeros(self, n: int, what: str) -> None:
        at = self.pos
        if any(self.take(n, what)):
            raise self.error(f"{what} is not zero (QEMU always writes zeros there)", at)

    def peek_subsection(self) -> tuple[str, int, int] | None:
        """At a subsection marker with a whole header: ``(name, version,
        header length)``, without moving; None otherwise."""
        d, at = self.data, self.pos
        if at + 2 > len(d) or d[at] != QEMU_VM_SUBSECTION:
            return None
        n = d[at + 1]
        if at + 2 + n + 4 > len(d):
            return None
        name = d[at + 2:at + 2 + n].decode("latin-1")
        return name, int.from_bytes(d[at + 2 + n:at + 6 + n], "big"), 6 + n


def capabilities(cfg: bytes) -> dict[int, int]:
    """Capability ID -> offset in a config space (first occurrence)."""
    out: dict[int, int] = {}
    if len(cfg) < 0x40 or not int.from_bytes(cfg[PCI_STATUS:PCI_STATUS + 2],
                                             "little") & PCI_STATUS_CAP_LIST:
        return out
    ptr = cfg[PCI_CAPABILITY_LIST] & 0xFC
    seen: set[int] = set()
    while ptr and ptr not in seen and ptr + 2 <= min(len(cfg), PCI_CONFIG_SPACE_SIZE):
        seen.add(ptr)
        out.setdefault(cfg[ptr], ptr)
        ptr = cfg[ptr + 1] & 0xFC
    return out


def msix_vectors(pci_config: bytes) -> int:
    """MSI-X table size of a config space (0 without an MSI-X capability)."""
    at = capabilities(pci_config).get(PCI_CAP_ID_MSIX)
    if at is None:
        return 0
    return (int.from_bytes(pci_config[at + 2:at + 4], "little") & 0x7FF) + 1


def _sub_name(r: Reader) -> tuple[str, int, int] | None:
    """At a subsection marker: ``(name, version, start)``, consumed; None
    otherwise."""
    if r.left() == 0 or r.data[r.pos] != QEMU_VM_SUBSECTION:
        return None
    start = r.pos
    r.pos += 1
    n = r.be(1, "subsection name length")
    name = r.take(n, "subsection name").decode("latin-1")
    version = r.be(4, f"subsection {name!r} version")
    return name, version, start


def trim(items: list, blank: Any, keep: int) -> list:
    n = len(items)
    while n > keep and items[n - 1] == blank:
        n -= 1
    return items[:n]


def read_element(r: Reader, what: str) -> tuple[int, list[QemuSg], list[QemuSg]]:
    """``VirtQueueElementOld``, a C struct in the host's byte order
    (little-endian x86-64): ``(index, out_sg, in_sg)``; every byte it does
    not represent must be what QEMU writes there."""
    start = r.pos
    raw = r.take(ELEMENT_SIZE, what)
    index, out_num, in_num, pad = struct.unpack_from("<IIII", raw, 0)
    if pad:
        raise r.error(f"{what}: padding after in_num is not zero", start + 12)
    if in_num > VIRTQUEUE_MAX_SIZE or out_num > VIRTQUEUE_MAX_SIZE:
        raise r.error(f"{what}: {in_num} in and {out_num} out buffers; at most "
                      f"{VIRTQUEUE_MAX_SIZE}", start)
    m = VIRTQUEUE_MAX_SIZE
    in_addr = struct.unpack_from(f"<{m}Q", raw, 16)
    out_addr = struct.unpack_from(f"<{m}Q", raw, 16 + 8 * m)
    in_iov = struct.unpack_from(f"<{2 * m}Q", raw, 16 + 16 * m)
    out_iov = struct.unpack_from(f"<{2 * m}Q", raw, 16 + 32 * m)
    for name, arr, used, step in (("in_addr", in_addr, in_num, 1), ("out_addr", out_addr,
                                                                     out_num, 1),
                                  ("in_sg", in_iov, in_num, 2), ("out_sg", out_iov, out_num, 2)):
        if any(arr[used * step:]):
            raise r.error(f"{what}: {name} has values past its {used} buffers "
                          "(QEMU zeroes the rest)", start)
        if step == 2 and any(arr[0:2 * used:2]):
            raise r.error(f"{what}: {name} has a non-zero iov_base (QEMU saves 0)", start)
    out_sg = [QemuSg(out_addr[i], out_iov[2 * i + 1]) for i in range(out_num)]
    in_sg = [QemuSg(in_addr[i], in_iov[2 * i + 1]) for i in range(in_num)]
    return index, out_sg, in_sg


@attrs.frozen
class Frame:
    """What a device's part may depend on, read from the frame before it."""

    where: str
    nq: int  # queues with a size
    nvec: int  # MSI-X vectors of the function
    packed: bool  # elements carry ndescs (the device offers RING_PACKED)
    features_lo: int  # low 32 bits of the negotiated features


@attrs.frozen
class DeviceLayout:
    """One device's part of the frame: what ``vdc->save`` and ``vdc->vmsd``
    write, between the queues and the ``virtio/*`` subsections.

    ``read(r, dev, frame)`` fills the device's fields of *dev* (an instance
    of ``state``, a :class:`QemuVirtioDeviceState` subclass);
    ``write(dev, frame)`` returns the part's bytes; ``elements(dev)`` lists
    the saved virtqueue elements (each with ``ndescs``), None for a device
    that saves none (then RING_PACKED does not change its part)."""

    type_name: str
    vmsd_name: str
    section_version: int
    state: type
    read: Callable[[Reader, Any, Frame], None]
    write: Callable[[Any, Frame], bytes]
    elements: Callable[[Any], list[Any]] | None = None
    description: str = ""


def _parse(data: bytes, where: str, packed: bool,
           layout: DeviceLayout) -> tuple[QemuVirtioPciState, Any]:
    r = Reader(data, where)
    pci = QemuVirtioPciState()
    dev = layout.state()
    # -- virtio_pci_save_config ------------------------------------------------
    pci.pci_version_id = r.be(4, "PCIDevice version_id", signed=True)
    head = r.data[r.pos:r.pos + PCI_CONFIG_SPACE_SIZE]
    express = PCI_CAP_ID_EXP in capabilities(head)
    pci.pci_config = r.take(PCIE_CONFIG_SPACE_SIZE if express else PCI_CONFIG_SPACE_SIZE,
                            "PCI configuration space")
    pci.irq_state = [r.be(4, "PCIDevice irq_state", signed=True) for _ in range(4)]
    nvec = msix_vectors(pci.pci_config)
    pci.msix_table = r.take(nvec * PCI_MSIX_ENTRY_SIZE, "MSI-X table")
    pci.msix_pba = r.take((nvec + 7) // 8, "MSI-X pending bits")
    if nvec:
        dev.config_vector = r.be(2, "config_vector")
    # -- virtio_save: the device -------------------------------------------------
    dev.status = r.be(1, "status")
    dev.isr = r.be(1, "isr")
    dev.queue_sel = r.be(2, "queue_sel")
    dev.guest_features_lo = r.be(4, "guest_features")
    at = r.pos
    config_len = r.be(4, "config_len")
    if config_len > 4096:
        raise r.error(f"config_len {config_len} is larger than any virtio configuration", at)
    dev.config = r.take(config_len, "device configuration")
    at = r.pos
    nq = r.be(4, "number of queues")
    if nq > VIRTIO_QUEUE_MAX:
        raise r.error(f"{nq} queues; QEMU has at most {VIRTIO_QUEUE_MAX}", at)
    for i in range(nq):
        q = QemuQueue()
        at = r.pos
        q.num = r.be(4, f"queue {i} num")
        if q.num == 0:
            raise r.error(f"queue {i} num is 0; QEMU lists only queues with a size", at)
        q.desc = r.be(8, f"queue {i} desc")
        q.last_avail_idx = r.be(2, f"queue {i} last_avail_idx")
        if nvec:
            q.vector = r.be(2, f"queue {i} vector")
        dev.queues.append(q)
    # -- vdc->save, vdc->vmsd ------------------------------------------------------
    layout.read(r, dev, Frame(where, nq, nvec, packed, dev.guest_features_lo))
    # -- vmstate_virtio's subsections ----------------------------------------------
    order = list(_SUBSECTIONS)
    while r.left():
        at = r.pos
        sub = _sub_name(r)
        if sub is None:
            raise r.error(f"{r.left()} bytes after the last part, not a subsection", at)
        name, version, at = sub
        if name not in _SUBSECTIONS:
            raise r.error(f"unknown subsection {name!r}; QEMU's virtio has "
                          f"{', '.join(_SUBSECTIONS)}", at)
        if name not in order:
            raise r.error(f"subsection {name!r} out of QEMU's order or repeated", at)
        del order[:order.index(name) + 1]
        if version != 1:
            raise r.error(f"subsection {name!r} version {version}; this decoder knows "
                          "version 1", at)
        _SUBSECTIONS[name](r, pci, dev, nq)
    return pci, dev


def _sub_device_endian(r, pci, dev, nq):
    dev.device_endian = r.be(1, "device_endian")


def _sub_64bit_features(r, pci, dev, nq):
    dev.guest_features = r.be(8, "guest_features")


def _sub_virtqueues(r, pci, dev, nq):
    vq = [QemuRingAddrs(r.be(8, f"vq[{i}].avail"), r.be(8, f"vq[{i}].used"))
          for i in range(VIRTIO_QUEUE_MAX)]
    dev.virtqueues = QemuVirtqueues(trim(vq, QemuRingAddrs(), nq))


def _sub_ringsize(r, pci, dev, nq):
    nums = [r.be(4, f"vq[{i}].num_default") for i in range(VIRTIO_QUEUE_MAX)]
    dev.ringsize = QemuRingsize(trim(nums, 0, nq))


def _sub_broken(r, pci, dev, nq):
    dev.broken = r.flag("broken")


#: one queue of virtio_pci/modern_state: num (u16), an unused byte, enabled
#: (bool), then desc, avail and used as two u32 halves each (low first)
_MODERN_QUEUE = struct.Struct(">HBB6I")


def _sub_extra_state(r, pci, dev, nq):
    extra = QemuVirtioPciExtra()
    at = r.pos
    sub = _sub_name(r)
    if sub is not None and not sub[0].startswith("virtio_pci"):
        r.pos = at  # the next virtio/ subsection: virtio_pci sent nothing
    elif sub is not None:
        name, version, at = sub
        if name != "virtio_pci/modern_state":
            raise r.error(f"unknown subsection {name!r} of virtio_pci", at)
        if version != 1:
            raise r.error(f"subsection {name!r} version {version}; this decoder knows 1", at)
        ms = QemuModernState(dfselect=r.be(4, "dfselect"), gfselect=r.be(4, "gfselect"),
                             guest_features=[r.be(4, "guest_features[0]"),
                                             r.be(4, "guest_features[1]")])
        # 1024 records of 28 bytes, unpacked in one go: this runs while a
        # live migration's guest is paused (migtree relay)
        start = r.pos
        table = r.take(_MODERN_QUEUE.size * VIRTIO_QUEUE_MAX, "vqs")
        vqs = []
        for i, (num, unused, enabled, d_lo, d_hi, a_lo, a_hi, u_lo, u_hi) in enumerate(
                _MODERN_QUEUE.iter_unpack(table)):
            at = start + i * _MODERN_QUEUE.size
            if unused:
                raise r.error(f"vqs[{i}] unused byte is not zero (QEMU always writes zeros "
                              "there)", at + 2)
            if enabled > 1:
                raise r.error(f"vqs[{i}].enabled is {enabled}; QEMU writes a bool as 0 or 1",
                              at + 3)
            vqs.append(QemuModernQueue(num, bool(enabled), d_lo | d_hi << 32,
                                       a_lo | a_hi << 32, u_lo | u_hi << 32))
        ms.vqs = trim(vqs, QemuModernQueue(), nq)
        extra.modern_state = ms
    pci.extra_state = extra


def _sub_started(r, pci, dev, nq):
    dev.started = r.flag("started")


PACKED_RESET = QemuPackedQueue(0, True, 0, True, 0)


def _sub_packed_virtqueues(r, pci, dev, nq):
    vq = []
    for i in range(VIRTIO_QUEUE_MAX):
        vq.append(QemuPackedQueue(r.be(2, f"vq[{i}].last_avail_idx"),
                                  r.flag(f"vq[{i}].last_avail_wrap_counter"),
                                  r.be(2, f"vq[{i}].used_idx"),
                                  r.flag(f"vq[{i}].used_wrap_counter"),
                                  r.be(4, f"vq[{i}].inuse")))
    dev.packed_virtqueues = QemuPackedVirtqueues(trim(vq, PACKED_RESET, nq))


def _sub_disabled(r, pci, dev, nq):
    dev.disabled = r.flag("disabled")


#: vmstate_virtio's subsections in the order QEMU writes them
_SUBSECTIONS = {
    "virtio/device_endian": _sub_device_endian,
    "virtio/64bit_features": _sub_64bit_features,
    "virtio/virtqueues": _sub_virtqueues,
    "virtio/ringsize": _sub_ringsize,
    "virtio/broken": _sub_broken,
    "virtio/extra_state": _sub_extra_state,
    "virtio/started": _sub_started,
    "virtio/packed_virtqueues": _sub_packed_virtqueues,
    "virtio/disabled": _sub_disabled,
}


@attrs.frozen
class VmsdSubsection:
    """One subsection of a device's ``vdc->vmsd``: its QEMU name and
    version, the device field it fills, and how it is read and written."""

    name: str
    field: str
    version: int
    read: Callable[[Reader], Any]
    write: Callable[[Any], bytes]


def read_vmsd_subsections(r: Reader, vmsd: str, known: list[VmsdSubsection], dev: Any,
                          refused: dict[str, str] | None = None) -> None:
    """The subsections of a device's ``vdc->vmsd`` into *dev*, in QEMU's
    order, up to the first ``virtio/`` one (the frame's) or the end. A name
    in *refused* is a part this decoder does not read (the message says
    why); an unknown name or version is an error, so the core keeps the
    bytes."""
    order = [s.name for s in known]
    by_name = {s.name: s for s in known}
    while True:
        sub = r.peek_subsection()
        if sub is None or sub[0].startswith("virtio/"):
            return
        name, version, head = sub
        at = r.pos
        if refused and name in refused:
            raise r.error(f"subsection {name!r} is not decoded: {refused[name]}", at)
        if name not in by_name:
            raise r.error(f"unknown subsection {name!r} of {vmsd}; QEMU 5.2/7.2/10.0 write "
                          f"{', '.join(order) or 'none'}", at)
        if name not in order:
            raise r.error(f"subsection {name!r} out of QEMU's order or repeated", at)
        del order[:order.index(name) + 1]
        s = by_name[name]
        if version != s.version:
            raise r.error(f"subsection {name!r} version {version}; this decoder knows "
                          f"version {s.version}", at)
        r.pos += head
        setattr(dev, s.field, s.read(r))


def write_vmsd_subsections(known: list[VmsdSubsection], dev: Any) -> bytes:
    """The subsections of *known* whose field is set, in QEMU's order."""
    out = bytearray()
    for s in known:
        value = getattr(dev, s.field)
        if value is not None:
            out += sub_head(s.name, s.version) + s.write(value)
    return bytes(out)


def where_of(ctx: Any, vmsd_name: str) -> str:
    ctx = ctx or {}
    return f"QEMU section {ctx.get('idstr', '?')!r} ({ctx.get('vmsd_name', vmsd_name)})"


def decode_frame(data: bytes, ctx: Any, layout: DeviceLayout) -> tuple[QemuVirtioPciState,
                                                                       Any]:
    """Parse the ``virtio`` field of a *layout* device's section."""
    where = where_of(ctx, layout.vmsd_name)
    version = (ctx or {}).get("version", layout.section_version)
    if version != layout.section_version:
        raise QemuVirtioLayoutError(f"{where}: section version {version}; this decoder "
                                    f"knows {layout.vmsd_name} version "
                                    f"{layout.section_version}")
    data = bytes(data)
    if layout.elements is None:
        return _parse(data, where, False, layout)
    try:
        pci, dev = _parse(data, where, False, layout)
    except QemuVirtioLayoutError as first:
        # RING_PACKED offered: each saved element carries ndescs first
        try:
            pci, dev = _parse(data, where, True, layout)
        except QemuVirtioLayoutError:
            raise first from None
    elements = layout.elements(dev)
    if elements and dev.packed_virtqueues is None and elements[0].ndescs is not None:
        raise QemuVirtioLayoutError(f"{where}: elements carry ndescs but the device does "
                                    "not offer RING_PACKED")
    if elements and dev.packed_virtqueues is not None and elements[0].ndescs is None:
        pci, dev = _parse(data, where, True, layout)
    return pci, dev


def frame_node(pci: QemuVirtioPciState, dev: Any, layout: DeviceLayout) -> dict[str, Any]:
    """The ``qemu-virtio-pci`` node with the device as ``virtio-backend``."""
    node: dict[str, Any] = {"__type__": TYPE_PCI, "__version__": 1}
    node.update(state_to_node(QemuVirtioPciState, pci, 1))
    child: dict[str, Any] = {"__type__": layout.type_name, "__version__": 1}
    child.update(state_to_node(layout.state, dev, 1))
    node[BACKEND] = child
    return node


# ---------------------------------------------------------------------------
# state -> bytes


def fields_of(node: Any, want: str, where: str) -> dict[str, Any]:
    """A node's own fields, after checking its type and version."""
    if not (type(node) is dict and node.get("__type__") == want):
        got = node.get("__type__") if isinstance(node, dict) else type(node).__name__
        raise QemuVirtioLayoutError(
            f"{where}: expected a {want}@1 node, got {got}; a filtered node must be taken "
            f"back to {want}@1 (the backward filter of the pair that made it) before it is "
            "written to QEMU")
    if node.get("__version__") != 1:
        raise QemuVirtioLayoutError(f"{where}: {want} version {node.get('__version__')!r}; "
                                    "this encoder writes version 1")
    return {k: v for k, v in node.items()
            if k not in RESERVED and not (type(v) is dict and "__type__" in v)}


def _pad(items: list, blank: Any, what: str, where: str) -> list:
    if len(items) > VIRTIO_QUEUE_MAX:
        raise QemuVirtioLayoutError(f"{where}: {what} has {len(items)} entries; QEMU has "
                                    f"{VIRTIO_QUEUE_MAX}")
    return list(items) + [blank] * (VIRTIO_QUEUE_MAX - len(items))


def be(v: int, size: int, signed: bool = False) -> bytes:
    return int(v).to_bytes(size, "big", signed=signed)


def sub_head(name: str, version: int = 1) -> bytes:
    b = name.encode("latin-1")
    return bytes([QEMU_VM_SUBSECTION, len(b)]) + b + be(version, 4)


def element_bytes(index: int, out_sg: list[QemuSg], in_sg: list[QemuSg]) -> bytes:
    """``VirtQueueElementOld`` as QEMU writes it (x86-64 byte order)."""
    m = VIRTQUEUE_MAX_SIZE
    buf = bytearray(ELEMENT_SIZE)
    struct.pack_into("<III", buf, 0, index, len(out_sg), len(in_sg))
    for i, sg in enumerate(in_sg):
        struct.pack_into("<Q", buf, 16 + 8 * i, sg.addr)
        struct.pack_into("<Q", buf, 16 + 16 * m + 16 * i + 8, sg.len)
    for i, sg in enumerate(out_sg):
        struct.pack_into("<Q", buf, 16 + 8 * m + 8 * i, sg.addr)
        struct.pack_into("<Q", buf, 16 + 32 * m + 16 * i + 8, sg.len)
    return bytes(buf)


def ndescs_bytes(ndescs: int | None, packed: bool, what: str, where: str) -> bytes:
    """The u32 QEMU writes before an element when the device offers
    RING_PACKED (and nothing otherwise)."""
    if (ndescs is not None) != packed:
        raise QemuVirtioLayoutError(
            f"{where}: {what}.ndescs must be {'present' if packed else 'absent'} "
            f"(it is written when the device offers RING_PACKED)")
    return be(ndescs, 4) if packed else b""


def encode_frame(pci: QemuVirtioPciState, dev: Any, layout: DeviceLayout,
                 where: str = "") -> bytes:
    out = bytearray()
    p = out.extend
    cfg = pci.pci_config
    express = PCI_CAP_ID_EXP in capabilities(cfg[:PCI_CONFIG_SPACE_SIZE])
    want = PCIE_CONFIG_SPACE_SIZE if express else PCI_CONFIG_SPACE_SIZE
    if len(cfg) != want:
        raise QemuVirtioLayoutError(f"{where}: pci_config has {len(cfg)} bytes; this "
                                    f"{'PCI Express' if express else 'PCI'} function has "
                                    f"{want}")
    nvec = msix_vectors(cfg)
    if len(pci.msix_table) != nvec * PCI_MSIX_ENTRY_SIZE or \
            len(pci.msix_pba) != (nvec + 7) // 8:
        raise QemuVirtioLayoutError(
            f"{where}: the config space has {nvec} MSI-X vectors: msix_table needs "
            f"{nvec * PCI_MSIX_ENTRY_SIZE} bytes (has {len(pci.msix_table)}) and msix_pba "
            f"{(nvec + 7) // 8} (has {len(pci.msix_pba)})")
    p(be(pci.pci_version_id, 4, True))
    p(cfg)
    for v in pci.irq_state:
        p(be(v, 4, True))
    p(pci.msix_table)
    p(pci.msix_pba)
    if (dev.config_vector is not None) != bool(nvec):
        raise QemuVirtioLayoutError(
            f"{where}: config_vector must be {'present' if nvec else 'absent'}: the "
            f"function has {nvec} MSI-X vectors")
    if nvec:
        p(be(dev.config_vector, 2))
    p(be(dev.status, 1) + be(dev.isr, 1) + be(dev.queue_sel, 2) + be(dev.guest_features_lo, 4))
    p(be(len(dev.config), 4))
    p(dev.config)
    nq = len(dev.queues)
    p(be(nq, 4))
    for i, q in enumerate(dev.queues):
        if q.num == 0:
            raise QemuVirtioLayoutError(f"{where}: queues[{i}].num is 0; QEMU lists only "
                                        "queues with a size")
        p(be(q.num, 4) + be(q.desc, 8) + be(q.last_avail_idx, 2))
        if (q.vector is not None) != bool(nvec):
            raise QemuVirtioLayoutError(f"{where}: queues[{i}].vector must be "
                                        f"{'present' if nvec else 'absent'}")
        if nvec:
            p(be(q.vector, 2))
    p(layout.write(dev, Frame(where, nq, nvec, dev.packed_virtqueues is not None,
                              dev.guest_features_lo)))
    for name, value in (("virtio/device_endian", dev.device_endian),
                        ("virtio/64bit_features", dev.guest_features),
                        ("virtio/virtqueues", dev.virtqueues),
                        ("virtio/ringsize", dev.ringsize),
                        ("virtio/broken", dev.broken),
                        ("virtio/extra_state", pci.extra_state),
                        ("virtio/started", dev.started),
                        ("virtio/packed_virtqueues", dev.packed_virtqueues),
                        ("virtio/disabled", dev.disabled)):
        if value is None:
            continue
        p(sub_head(name))
        if name == "virtio/device_endian":
            p(be(value, 1))
        elif name == "virtio/64bit_features":
            p(be(value, 8))
        elif name == "virtio/virtqueues":
            for e in _pad(value.vq, QemuRingAddrs(), "virtqueues.vq", where):
                p(be(e.avail, 8) + be(e.used, 8))
        elif name == "virtio/ringsize":
            for n in _pad(value.num_default, 0, "ringsize.num_default", where):
                p(be(n, 4))
        elif name == "virtio/extra_state":
            ms = value.modern_state
            if ms is not None:
                p(sub_head("virtio_pci/modern_state"))
                p(be(ms.dfselect, 4) + be(ms.gfselect, 4))
                for w in ms.guest_features:
                    p(be(w, 4))
                for e in _pad(ms.vqs, QemuModernQueue(), "modern_state.vqs", where):
                    p(be(e.num, 2) + b"\x00" + be(int(e.enabled), 1))
                    for a in (e.desc, e.avail, e.used):
                        p(be(a & 0xFFFFFFFF, 4) + be(a >> 32, 4))
        elif name == "virtio/packed_virtqueues":
            for e in _pad(value.vq, PACKED_RESET, "packed_virtqueues.vq", where):
                p(be(e.last_avail_idx, 2) + be(int(e.last_avail_wrap_counter), 1)
                  + be(e.used_idx, 2) + be(int(e.used_wrap_counter), 1) + be(e.inuse, 4))
        else:  # broken, started, disabled: one bool
            p(be(int(value), 1))
    return bytes(out)


def node_states(node: dict[str, Any], layout: DeviceLayout, where: str,
                ) -> tuple[QemuVirtioPciState, Any]:
    """The states of a ``qemu-virtio-pci`` node and its *layout* backend,
    every value checked by the core's strict input visitor."""
    pci_fields = fields_of(node, TYPE_PCI, where)
    child = node.get(BACKEND) if isinstance(node, dict) else None
    dev_fields = fields_of(child, layout.type_name, f"{where} {BACKEND}")
    pci = node_to_state(QemuVirtioPciState, pci_fields, 1, f"{where}")
    dev = node_to_state(layout.state, dev_fields, 1, f"{where}/{BACKEND}")
    return pci, dev


def make_decoder(layout: DeviceLayout) -> OpaqueDecoder:
    """The opaque decoder of a device layout, keyed by its vmsd name."""

    def decode(data: bytes, ctx: Any = None) -> dict[str, Any]:
        return frame_node(*decode_frame(data, ctx, layout), layout)

    def encode(node: dict[str, Any], ctx: Any = None) -> bytes:
        where = where_of(ctx, layout.vmsd_name)
        return encode_frame(*node_states(node, layout, where), layout, where)

    decode.__doc__ = (f"The ``virtio`` field's bytes as a ``{TYPE_PCI}`` node with its "
                      f"``{layout.type_name}`` child ``{BACKEND}``.")
    encode.__doc__ = f"The ``virtio`` field's bytes of a ``{TYPE_PCI}`` node."
    return OpaqueDecoder(format="qemu", key=layout.vmsd_name, decode=decode, encode=encode,
                         description=layout.description)
