"""QEMU's ``virtio`` section, decoded: the bytes ``virtio_save`` writes for a
virtio-blk-pci device, turned into a ``qemu-virtio-pci`` node (the PCI
proxy) with a ``qemu-virtio-blk`` child ``virtio-backend`` (the virtio
device), and written back byte for byte.

QEMU 7.2 describes a virtio device's section to its own stream description
(vmdesc) as one opaque field ``virtio`` of type ``virtio``; the layout is in
device code. In stream order (big-endian unless said otherwise):

======================  ========================================================
transport config        ``virtio_pci_save_config``: ``pci_device_save`` (the
                        ``PCIDevice`` VMState: int32 ``version_id``, the config
                        space — 256 bytes, 4096 for PCI Express —, four int32
                        INTx levels), ``msix_save`` (the MSI-X table, 16 bytes a
                        vector, and ``ceil(n/8)`` bytes of pending bits), and
                        the configuration vector (u16) when MSI-X is present
device                  status u8, ISR u8, ``queue_sel`` u16, the low 32 bits
                        of the guest features, ``config_len`` u32 and the
                        device configuration
queues                  u32 count; each: ``vring.num`` u32, ``vring.desc`` u64,
                        ``last_avail_idx`` u16, its MSI-X vector u16 (when MSI-X
                        is present: ``virtio_pci_save_queue``)
virtio-blk              ``virtio_blk_save_device``: per request in flight, s8 1,
                        the queue index u32 (only with more than one queue),
                        (u32 ``ndescs`` when RING_PACKED is offered) and
                        QEMU's ``VirtQueueElementOld`` — a 49,168-byte C
                        struct in the host's byte order (little-endian x86-64
                        here): index, out_num, in_num, 1024 in and out
                        addresses, 1024 in and out iovecs; then s8 0
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

(``hw/virtio/virtio.c`` ``virtio_save``, ``qemu_put_virtqueue_element``;
``hw/virtio/virtio-pci.c``; ``hw/pci/pci.c`` ``pci_device_save``;
``hw/pci/msix.c`` ``msix_save``; ``hw/block/virtio-blk.c``.)

The node types are QEMU's layout, not ours: ``qemu-virtio-pci@1`` and
``qemu-virtio-blk@1`` (abstract types, registered so streams carry their
schemas and the strict input visitor checks a node before it is encoded).
The filter pair :data:`QEMU_PAIR` turns them into this plugin's own
``virtio-pci@1`` + ``virtio-blk@1`` and back; what QEMU keeps and we do not
rides in the stash, so the way back is byte-identical.

Arrays QEMU writes for all ``VIRTIO_QUEUE_MAX`` (1024) queues are listed up
to the last entry that is not at its reset value (and at least one per
queue); the rest are written back as reset values.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs

from migtree.errors import FilterError, StreamError
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
from migtree.filters import Filter, FilterPair
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
TYPE_BLK = "qemu-virtio-blk"
BACKEND = "virtio-backend"
#: the QEMU section version of virtio-blk (``vmstate_virtio_blk``) this layout is
VMSD_VERSION = 2

_RESERVED = ("__type__", "__version__", "__stash__", "__qemu__")


class QemuVirtioLayoutError(StreamError):
    """The ``virtio`` bytes do not follow QEMU 7.2's ``virtio_save`` layout
    (or a node cannot be written in it). The message names the section, the
    part and the byte offset within the field."""


# ---------------------------------------------------------------------------
# state declarations (QEMU's names; migtree.fields so the core can describe
# and check them)


@attrs.define
class QemuSg:
    """One buffer of a request: ``in_addr[i]``/``out_addr[i]`` and the
    length of the matching iovec (QEMU saves ``iov_base`` as 0)."""

    addr: int = u64(doc="guest-physical address")
    len: int = u64(doc="iov_len (a size_t)")


@attrs.define
class QemuRequest:
    """A virtio-blk request in flight (QEMU's ``VirtIOBlockReq.elem``)."""

    queue: int = u32(doc="virtqueue index; QEMU writes it only when the device has more "
                         "than one queue (0 otherwise)")
    index: int = u32(doc="head descriptor index (the id the used ring will report)")
    out_sg: list[QemuSg] = array(QemuSg, max_length=VIRTQUEUE_MAX_SIZE,
                                 doc="device-readable buffers (out_num of them)")
    in_sg: list[QemuSg] = array(QemuSg, max_length=VIRTQUEUE_MAX_SIZE,
                                doc="device-writable buffers (in_num of them)")
    ndescs: int | None = optional(U32, doc="descriptors used (only when the device "
                                           "offers RING_PACKED)")


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
class QemuVirtioBlkState:
    """``qemu-virtio-blk``: QEMU's ``VirtIODevice`` and ``VirtIOBlock`` as
    ``virtio_save`` writes them."""

    status: int = u8(doc="device status")
    isr: int = u8(doc="ISR status")
    queue_sel: int = u16(doc="queue selected by the driver")
    guest_features_lo: int = u32(doc="low 32 bits of the negotiated features")
    config: bytes = bytes_(max_length=4096, doc="device configuration (virtio_blk_config, "
                                                "config_len bytes)")
    config_vector: int | None = optional(U16, doc="MSI-X configuration vector (absent "
                                                  "without MSI-X)")
    queues: list[QemuQueue] = array(QemuQueue, max_length=VIRTIO_QUEUE_MAX,
                                    doc="queues with a non-zero size, in order")
    inflight: list[QemuRequest] = array(QemuRequest, max_length=1 << 16,
                                        doc="virtio_blk_save_device: requests in flight, "
                                            "in QEMU's list order")
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
    """QEMU 7.2's virtio PCI proxy state as its stream holds it. Not
    instantiable: it describes (and validates) nodes decoded from QEMU
    streams; :data:`QEMU_PAIR` turns it into ``virtio-pci``."""

    TYPE = TYPE_PCI
    PARENT = "device"
    ABSTRACT = True
    STATE = QemuVirtioPciState
    VERSION = 1
    MIN_VERSION = 1


class QemuVirtioBlk(Device):
    """QEMU 7.2's virtio-blk device state (the proxy's ``virtio-backend``)
    as its stream holds it. Not instantiable."""

    TYPE = TYPE_BLK
    PARENT = "device"
    ABSTRACT = True
    STATE = QemuVirtioBlkState
    VERSION = 1
    MIN_VERSION = 1


# ---------------------------------------------------------------------------
# bytes -> state


class _Reader:
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

    def flag(self, what: str) -> bool:
        at = self.pos
        v = self.be(1, what)
        if v > 1:
            raise self.error(f"{what} is {v}; QEMU writes a bool as 0 or 1", at)
        return bool(v)

    def zeros(self, n: int, what: str) -> None:
        at = self.pos
        if any(self.take(n, what)):
            raise self.error(f"{what} is not zero (QEMU always writes zeros there)", at)


def _capabilities(cfg: bytes) -> dict[int, int]:
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
    at = _capabilities(pci_config).get(PCI_CAP_ID_MSIX)
    if at is None:
        return 0
    return (int.from_bytes(pci_config[at + 2:at + 4], "little") & 0x7FF) + 1


def _sub_name(r: _Reader) -> tuple[str, int, int] | None:
    """At a subsection marker: ``(name, version, start)``; None otherwise."""
    if r.left() == 0 or r.data[r.pos] != QEMU_VM_SUBSECTION:
        return None
    start = r.pos
    r.pos += 1
    n = r.be(1, "subsection name length")
    name = r.take(n, "subsection name").decode("latin-1")
    version = r.be(4, f"subsection {name!r} version")
    return name, version, start


def _trim(items: list, blank: Any, keep: int) -> list:
    n = len(items)
    while n > keep and items[n - 1] == blank:
        n -= 1
    return items[:n]


def _read_element(r: _Reader, what: str) -> tuple[int, list[QemuSg], list[QemuSg]]:
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


def _parse(data: bytes, where: str, packed: bool) -> tuple[QemuVirtioPciState,
                                                            QemuVirtioBlkState]:
    r = _Reader(data, where)
    pci = QemuVirtioPciState()
    dev = QemuVirtioBlkState()
    # -- virtio_pci_save_config ------------------------------------------------
    pci.pci_version_id = r.be(4, "PCIDevice version_id", signed=True)
    head = r.data[r.pos:r.pos + PCI_CONFIG_SPACE_SIZE]
    express = PCI_CAP_ID_EXP in _capabilities(head)
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
        q.num = r.be(4, f"queue {i} num")
        q.desc = r.be(8, f"queue {i} desc")
        q.last_avail_idx = r.be(2, f"queue {i} last_avail_idx")
        if nvec:
            q.vector = r.be(2, f"queue {i} vector")
        dev.queues.append(q)
    # -- virtio_blk_save_device ----------------------------------------------------
    while True:
        at = r.pos
        more = r.be(1, "in-flight list marker")
        if more == 0:
            break
        if more != 1:
            raise r.error(f"in-flight list marker is {more}; QEMU writes 1 before each "
                          "request and 0 at the end", at)
        what = f"in-flight request {len(dev.inflight)}"
        req = QemuRequest()
        if nq > 1:
            at = r.pos
            req.queue = r.be(4, f"{what} queue")
            if req.queue >= nq:
                raise r.error(f"{what} names queue {req.queue} of {nq}", at)
        if packed:
            req.ndescs = r.be(4, f"{what} ndescs")
        req.index, req.out_sg, req.in_sg = _read_element(r, what)
        dev.inflight.append(req)
    # -- vmstate_virtio's subsections ----------------------------------------------
    order = list(_SUBSECTIONS)
    while r.left():
        at = r.pos
        sub = _sub_name(r)
        if sub is None:
            raise r.error(f"{r.left()} bytes after the last part, not a subsection", at)
        name, version, at = sub
        if name not in _SUBSECTIONS:
            raise r.error(f"unknown subsection {name!r}; QEMU 7.2's virtio has "
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
    dev.virtqueues = QemuVirtqueues(_trim(vq, QemuRingAddrs(), nq))


def _sub_ringsize(r, pci, dev, nq):
    nums = [r.be(4, f"vq[{i}].num_default") for i in range(VIRTIO_QUEUE_MAX)]
    dev.ringsize = QemuRingsize(_trim(nums, 0, nq))


def _sub_broken(r, pci, dev, nq):
    dev.broken = r.flag("broken")


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
        vqs = []
        for i in range(VIRTIO_QUEUE_MAX):
            num = r.be(2, f"vqs[{i}].num")
            r.zeros(1, f"vqs[{i}] unused byte")
            enabled = r.flag(f"vqs[{i}].enabled")
            halves = [r.be(4, f"vqs[{i}] ring address") for _ in range(6)]
            vqs.append(QemuModernQueue(num, enabled, halves[0] | halves[1] << 32,
                                       halves[2] | halves[3] << 32,
                                       halves[4] | halves[5] << 32))
        ms.vqs = _trim(vqs, QemuModernQueue(), nq)
        extra.modern_state = ms
    pci.extra_state = extra


def _sub_started(r, pci, dev, nq):
    dev.started = r.flag("started")


_PACKED_RESET = QemuPackedQueue(0, True, 0, True, 0)


def _sub_packed_virtqueues(r, pci, dev, nq):
    vq = []
    for i in range(VIRTIO_QUEUE_MAX):
        vq.append(QemuPackedQueue(r.be(2, f"vq[{i}].last_avail_idx"),
                                  r.flag(f"vq[{i}].last_avail_wrap_counter"),
                                  r.be(2, f"vq[{i}].used_idx"),
                                  r.flag(f"vq[{i}].used_wrap_counter"),
                                  r.be(4, f"vq[{i}].inuse")))
    dev.packed_virtqueues = QemuPackedVirtqueues(_trim(vq, _PACKED_RESET, nq))


def _sub_disabled(r, pci, dev, nq):
    dev.disabled = r.flag("disabled")


#: vmstate_virtio's subsections in the order QEMU 7.2 writes them
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


def _where(ctx: Any) -> str:
    ctx = ctx or {}
    return f"QEMU section {ctx.get('idstr', '?')!r} ({ctx.get('vmsd_name', 'virtio-blk')})"


def decode_states(data: bytes, ctx: Any = None) -> tuple[QemuVirtioPciState,
                                                          QemuVirtioBlkState]:
    """Parse the ``virtio`` field of a QEMU 7.2 virtio-blk-pci section."""
    where = _where(ctx)
    version = (ctx or {}).get("version", VMSD_VERSION)
    if version != VMSD_VERSION:
        raise QemuVirtioLayoutError(f"{where}: section version {version}; this decoder "
                                    f"knows virtio-blk version {VMSD_VERSION}")
    try:
        pci, dev = _parse(bytes(data), where, packed=False)
    except QemuVirtioLayoutError as first:
        # RING_PACKED offered: each request in flight carries ndescs first
        try:
            pci, dev = _parse(bytes(data), where, packed=True)
        except QemuVirtioLayoutError:
            raise first from None
    if dev.inflight and dev.packed_virtqueues is None and dev.inflight[0].ndescs is not None:
        raise QemuVirtioLayoutError(f"{where}: requests carry ndescs but the device does "
                                    "not offer RING_PACKED")
    if dev.inflight and dev.packed_virtqueues is not None and dev.inflight[0].ndescs is None:
        pci, dev = _parse(bytes(data), where, packed=True)
    return pci, dev


def decode(data: bytes, ctx: Any = None) -> dict[str, Any]:
    """The ``virtio`` field's bytes as a ``qemu-virtio-pci`` node with its
    ``qemu-virtio-blk`` child ``virtio-backend``."""
    pci, dev = decode_states(data, ctx)
    node: dict[str, Any] = {"__type__": TYPE_PCI, "__version__": 1}
    node.update(state_to_node(QemuVirtioPciState, pci, 1))
    child: dict[str, Any] = {"__type__": TYPE_BLK, "__version__": 1}
    child.update(state_to_node(QemuVirtioBlkState, dev, 1))
    node[BACKEND] = child
    return node


# ---------------------------------------------------------------------------
# state -> bytes


def _fields(node: Any, want: str, where: str) -> dict[str, Any]:
    if not (type(node) is dict and node.get("__type__") == want):
        got = node.get("__type__") if isinstance(node, dict) else type(node).__name__
        raise QemuVirtioLayoutError(
            f"{where}: expected a {want}@1 node, got {got}; a filtered node must be taken "
            f"back to {want}@1 (the backward filter of {QEMU_PAIR_NAME}) before it is "
            "written to QEMU")
    if node.get("__version__") != 1:
        raise QemuVirtioLayoutError(f"{where}: {want} version {node.get('__version__')!r}; "
                                    "this encoder writes version 1")
    return {k: v for k, v in node.items()
            if k not in _RESERVED and not (type(v) is dict and "__type__" in v)}


def _pad(items: list, blank: Any, what: str, where: str) -> list:
    if len(items) > VIRTIO_QUEUE_MAX:
        raise QemuVirtioLayoutError(f"{where}: {what} has {len(items)} entries; QEMU has "
                                    f"{VIRTIO_QUEUE_MAX}")
    return list(items) + [blank] * (VIRTIO_QUEUE_MAX - len(items))


def encode_states(pci: QemuVirtioPciState, dev: QemuVirtioBlkState, where: str = "") -> bytes:
    out = bytearray()
    p = out.extend
    be = _be
    cfg = pci.pci_config
    express = PCI_CAP_ID_EXP in _capabilities(cfg[:PCI_CONFIG_SPACE_SIZE])
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
    packed = dev.packed_virtqueues is not None
    for i, req in enumerate(dev.inflight):
        p(b"\x01")
        if nq > 1:
            if req.queue >= nq:
                raise QemuVirtioLayoutError(f"{where}: inflight[{i}].queue {req.queue} of "
                                            f"{nq} queues")
            p(be(req.queue, 4))
        elif req.queue != 0:
            raise QemuVirtioLayoutError(f"{where}: inflight[{i}].queue is {req.queue} but the "
                                        "device has one queue")
        if (req.ndescs is not None) != packed:
            raise QemuVirtioLayoutError(
                f"{where}: inflight[{i}].ndescs must be {'present' if packed else 'absent'} "
                f"(it is written when the device offers RING_PACKED)")
        if packed:
            p(be(req.ndescs, 4))
        p(_element(req))
    p(b"\x00")
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
        p(_sub_head(name))
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
                p(_sub_head("virtio_pci/modern_state"))
                p(be(ms.dfselect, 4) + be(ms.gfselect, 4))
                for w in ms.guest_features:
                    p(be(w, 4))
                for e in _pad(ms.vqs, QemuModernQueue(), "modern_state.vqs", where):
                    p(be(e.num, 2) + b"\x00" + be(int(e.enabled), 1))
                    for a in (e.desc, e.avail, e.used):
                        p(be(a & 0xFFFFFFFF, 4) + be(a >> 32, 4))
        elif name == "virtio/packed_virtqueues":
            for e in _pad(value.vq, _PACKED_RESET, "packed_virtqueues.vq", where):
                p(be(e.last_avail_idx, 2) + be(int(e.last_avail_wrap_counter), 1)
                  + be(e.used_idx, 2) + be(int(e.used_wrap_counter), 1) + be(e.inuse, 4))
        else:  # broken, started, disabled: one bool
            p(be(int(value), 1))
    return bytes(out)


def _be(v: int, size: int, signed: bool = False) -> bytes:
    return int(v).to_bytes(size, "big", signed=signed)


def _sub_head(name: str) -> bytes:
    b = name.encode("latin-1")
    return bytes([QEMU_VM_SUBSECTION, len(b)]) + b + _be(1, 4)


def _element(req: QemuRequest) -> bytes:
    m = VIRTQUEUE_MAX_SIZE
    buf = bytearray(ELEMENT_SIZE)
    struct.pack_into("<III", buf, 0, req.index, len(req.out_sg), len(req.in_sg))
    for i, sg in enumerate(req.in_sg):
        struct.pack_into("<Q", buf, 16 + 8 * i, sg.addr)
        struct.pack_into("<Q", buf, 16 + 16 * m + 16 * i + 8, sg.len)
    for i, sg in enumerate(req.out_sg):
        struct.pack_into("<Q", buf, 16 + 8 * m + 8 * i, sg.addr)
        struct.pack_into("<Q", buf, 16 + 32 * m + 16 * i + 8, sg.len)
    return bytes(buf)


def encode(node: dict[str, Any], ctx: Any = None) -> bytes:
    """The ``virtio`` field's bytes of a ``qemu-virtio-pci`` node (with its
    ``qemu-virtio-blk`` child); every value is checked by the core's strict
    input visitor first, so a bad edit is an error naming its field."""
    where = _where(ctx)
    pci_fields = _fields(node, TYPE_PCI, where)
    child = node.get(BACKEND) if isinstance(node, dict) else None
    dev_fields = _fields(child, TYPE_BLK, f"{where} {BACKEND}")
    pci = node_to_state(QemuVirtioPciState, pci_fields, 1, f"{where}")
    dev = node_to_state(QemuVirtioBlkState, dev_fields, 1, f"{where}/{BACKEND}")
    return encode_states(pci, dev, where)


#: registered through ``migtree_register_opaque_decoders``
DECODER = OpaqueDecoder(
    format="qemu", key="virtio-blk", decode=decode, encode=encode,
    description="QEMU 7.2 virtio-blk-pci 'virtio' field (virtio_save) <-> qemu-virtio-pci "
                "node with a qemu-virtio-blk virtio-backend child")


# ---------------------------------------------------------------------------
# qemu-virtio-pci@1 (+ qemu-virtio-blk@1) <-> virtio-pci@1 (+ virtio-blk@1)

QEMU_PAIR_NAME = "qemu-virtio-blk-pci"
_STASH = "__stash__"
VIRTIO_F_VERSION_1 = 1 << 32
NO_VECTOR = 0xFFFF


def _le(b: bytes, off: int, size: int) -> int:
    return int.from_bytes(b[off:off + size], "little")


_BLK_CONFIG_FIELDS = {"capacity": (0, 8), "size_max": (8, 4), "seg_max": (12, 4),
                      "blk_size": (20, 4)}


def _legacy_rings(num: int, desc: int) -> QemuRingAddrs:
    """Where QEMU puts a legacy queue's rings (``virtio_queue_update_rings``:
    the available ring after the table, the used ring 4096-aligned after it)."""
    if not num or not desc:
        return QemuRingAddrs()
    mask = (1 << 64) - 1  # hwaddr arithmetic
    avail = (desc + 16 * num) & mask
    used = ((avail + 4 + 2 * num + 4095) & ~4095) & mask
    return QemuRingAddrs(avail, used)


def _blk_config(config: bytes) -> dict[str, int]:
    """capacity, size_max, seg_max and blk_size from a virtio_blk_config
    (little-endian: VERSION_1 devices, and legacy ones on x86)."""
    def at(off: int, size: int) -> int:
        return _le(config, off, size) if len(config) >= off + size else 0
    return {"capacity": at(0, 8), "size_max": at(8, 4), "seg_max": at(12, 4),
            "blk_size": at(20, 4) or 512}


def _ours(pci: QemuVirtioPciState, dev: QemuVirtioBlkState, path: str,
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields of our ``virtio-pci@1`` and ``virtio-blk@1`` for QEMU's
    state: the forward mapping (the backward filter compares against it to
    find what was edited)."""
    ms = pci.extra_state.modern_state if pci.extra_state is not None else None
    features = dev.guest_features if dev.guest_features is not None else dev.guest_features_lo
    rings = dev.virtqueues.vq if dev.virtqueues is not None else []
    taken = _taken(dev.inflight)
    queues = []
    for i, q in enumerate(dev.queues):
        if dev.virtqueues is None:  # legacy: the rings follow the table
            ring = _legacy_rings(q.num, q.desc)
        else:
            ring = rings[i] if i < len(rings) else QemuRingAddrs()
        mq = ms.vqs[i] if ms is not None and i < len(ms.vqs) else None
        queues.append({
            "size": q.num,
            # modern drivers enable a queue explicitly; a legacy one by giving its address
            "enable": mq.enabled if ms is not None else bool(q.desc),
            "msix_vector": q.vector if q.vector is not None else NO_VECTOR,
            "desc": q.desc, "driver": ring.avail, "device": ring.used,
            "last_avail_idx": q.last_avail_idx,
            # QEMU does not save a split ring's used index: its virtio_load reads it
            # from the used ring in guest RAM; what was taken and not returned is the
            # in-flight list, so used_idx = last_avail_idx - in flight on that queue
            "used_idx": (q.last_avail_idx - taken.get(i, 0)) & 0xFFFF,
        })
    if len(pci.pci_config) != PCI_CONFIG_SPACE_SIZE:
        raise FilterError(f"{path}: a {len(pci.pci_config)}-byte (PCI Express) config space; "
                          "virtio-pci@1 holds 256 bytes")
    pba_size = (msix_vectors(pci.pci_config) + 63) // 64 * 8
    pci_fields = {
        "pci_config": pci.pci_config,
        "msix_table": pci.msix_table,
        "msix_pba": pci.msix_pba.ljust(pba_size, b"\x00"),
        "device_feature_select": ms.dfselect if ms is not None else 0,
        "driver_feature_select": ms.gfselect if ms is not None else 0,
        "queue_select": dev.queue_sel,
    }
    blk_fields = {
        "device_status": dev.status, "isr": dev.isr, "driver_features": features,
        "msix_config": dev.config_vector if dev.config_vector is not None else NO_VECTOR,
        "config_generation": 0,  # QEMU 7.2 does not migrate it
        "broken": bool(dev.broken),
        "queues": queues,
        **_blk_config(dev.config),
        "inflight": [{"queue": r.queue, "head": r.index,
                      "out_sg": [{"addr": x.addr, "len": x.len} for x in r.out_sg],
                      "in_sg": [{"addr": x.addr, "len": x.len} for x in r.in_sg]}
                     for r in dev.inflight],
    }
    return pci_fields, blk_fields


def _taken(inflight: list[Any]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in inflight:
        q = r["queue"] if isinstance(r, dict) else r.queue
        out[q] = out.get(q, 0) + 1
    return out


def _objects(node: dict[str, Any]) -> dict[str, Any]:
    """Child objects other than the backend, and the QEMU section identity
    (``__qemu__``: the writer finds the section's node by it): they stay with
    the function whichever layout it is in."""
    return {k: v for k, v in node.items()
            if k == "__qemu__" or (k != BACKEND and type(v) is dict and "__type__" in v)}


def qemu_to_migtree(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """``qemu-virtio-pci@1`` with a ``qemu-virtio-blk@1`` backend ->
    ``virtio-pci@1`` with a ``virtio-blk@1`` backend. Our names, our
    layout; QEMU's nodes as they were go into the stash, so the backward
    filter writes the same bytes and applies only what was edited."""
    path = getattr(ctx, "path", "?")
    key = getattr(ctx, "stash_key", QEMU_PAIR_NAME)
    child = node.get(BACKEND)
    if not (type(child) is dict and child.get("__type__") == TYPE_BLK):
        raise FilterError(f"{path}: {TYPE_PCI} has no {TYPE_BLK} {BACKEND}")
    try:
        pci = node_to_state(QemuVirtioPciState, _fields(node, TYPE_PCI, path), 1, path)
        dev = node_to_state(QemuVirtioBlkState, _fields(child, TYPE_BLK, path), 1,
                            f"{path}/{BACKEND}")
    except QemuVirtioLayoutError as e:
        raise FilterError(str(e)) from None
    pci_fields, blk_fields = _ours(pci, dev, path)
    _fits(pci_fields, blk_fields, path)
    out: dict[str, Any] = {"__type__": "virtio-pci", "__version__": 1, **pci_fields}
    stash = dict(node.get(_STASH) or {})
    stash[key] = {"pci": state_to_node(QemuVirtioPciState, pci, 1),
                  "blk": state_to_node(QemuVirtioBlkState, dev, 1)}
    out[_STASH] = stash
    blk: dict[str, Any] = {"__type__": "virtio-blk", "__version__": 1, **blk_fields}
    if child.get(_STASH):
        blk[_STASH] = child[_STASH]
    out.update(_objects(node))
    out[BACKEND] = blk
    return out


def _fits(pci_fields: dict[str, Any], blk_fields: dict[str, Any], path: str) -> None:
    """The forward filter's output must be what our types load (a QEMU
    value wider than our field is an error here, not at the load)."""
    from migtree.errors import StateError

    from .state import VirtioBlkState, VirtioPciState

    try:
        node_to_state(VirtioPciState, dict(pci_fields), 1, path)
        node_to_state(VirtioBlkState, dict(blk_fields), 1, f"{path}/{BACKEND}")
    except StateError as e:
        raise FilterError(f"QEMU's state does not fit virtio-pci@1/virtio-blk@1: {e}") from None


def migtree_to_qemu(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """``virtio-pci@1`` + ``virtio-blk@1`` -> the QEMU nodes they came from.
    Needs the stash the forward filter left (QEMU's function has state ours
    has no place for). Every field of ours that differs from what the
    forward filter made of the stash is an edit, and is written into QEMU's
    fields; an edit QEMU's layout cannot hold is a :class:`FilterError`."""
    path = getattr(ctx, "path", "?")
    key = getattr(ctx, "stash_key", QEMU_PAIR_NAME)
    stash = dict(node.get(_STASH) or {})
    kept = stash.pop(key, None)
    if kept is None:
        raise FilterError(f"{path}: virtio-pci@1 -> {TYPE_PCI}@1 needs the state QEMU keeps "
                          f"and virtio-pci does not (the stash {key!r} the forward filter "
                          "left); a virtio-pci made by a migtree build has none")
    child = node.get(BACKEND)
    if not (type(child) is dict and child.get("__type__") == "virtio-blk"):
        raise FilterError(f"{path}: virtio-pci has no virtio-blk {BACKEND}")
    pci = node_to_state(QemuVirtioPciState, dict(kept["pci"]), 1, path)
    dev = node_to_state(QemuVirtioBlkState, dict(kept["blk"]), 1, f"{path}/{BACKEND}")
    was_pci, was_blk = _ours(pci, dev, path)
    _apply_pci_edits(pci, dev, node, was_pci, path)
    _apply_blk_edits(pci, dev, child, was_blk, f"{path}/{BACKEND}")
    out: dict[str, Any] = {"__type__": TYPE_PCI, "__version__": 1}
    out.update(state_to_node(QemuVirtioPciState, pci, 1))
    if stash:
        out[_STASH] = stash
    blk: dict[str, Any] = {"__type__": TYPE_BLK, "__version__": 1}
    blk.update(state_to_node(QemuVirtioBlkState, dev, 1))
    if child.get(_STASH):
        blk[_STASH] = child[_STASH]
    out.update(_objects(node))
    out[BACKEND] = blk
    return out


def _modern(pci: QemuVirtioPciState, what: str, path: str) -> QemuModernState:
    ms = pci.extra_state.modern_state if pci.extra_state is not None else None
    if ms is None:
        raise FilterError(f"{path}: {what}: QEMU sent no virtio_pci/modern_state (a legacy "
                          "function) to hold it")
    return ms


def _apply_pci_edits(pci: QemuVirtioPciState, dev: QemuVirtioBlkState, node: dict[str, Any],
                     was: dict[str, Any], path: str) -> None:
    changed = {k for k in was if node.get(k) != was[k]}
    if "pci_config" in changed:
        pci.pci_config = node["pci_config"]
    if "msix_table" in changed:
        pci.msix_table = node["msix_table"]
    if "msix_pba" in changed or "pci_config" in changed:
        nvec = msix_vectors(pci.pci_config)
        pba = node["msix_pba"]
        if any(pba[(nvec + 7) // 8:]):
            raise FilterError(f"{path}: msix_pba has pending bits past vector {nvec}")
        pci.msix_pba = pba[:(nvec + 7) // 8]
    if "device_feature_select" in changed:
        _modern(pci, "device_feature_select", path).dfselect = node["device_feature_select"]
    if "driver_feature_select" in changed:
        _modern(pci, "driver_feature_select", path).gfselect = node["driver_feature_select"]
    if "queue_select" in changed:
        dev.queue_sel = node["queue_select"]


def _apply_blk_edits(pci: QemuVirtioPciState, dev: QemuVirtioBlkState, child: dict[str, Any],
                     was: dict[str, Any], path: str) -> None:
    def edited(name: str) -> bool:
        return child.get(name) != was[name]

    if edited("device_status"):
        dev.status = child["device_status"]
    if edited("isr"):
        dev.isr = child["isr"]
    if edited("driver_features"):
        feats = child["driver_features"]
        if dev.guest_features is None and feats >> 32:
            raise FilterError(f"{path}: driver_features has bits above 31 and QEMU did not "
                              "send virtio/64bit_features")
        dev.guest_features_lo = feats & 0xFFFFFFFF
        if dev.guest_features is not None:
            dev.guest_features = feats
    if edited("msix_config"):
        if dev.config_vector is None:
            raise FilterError(f"{path}: msix_config: QEMU's function has no MSI-X")
        dev.config_vector = child["msix_config"]
    if edited("config_generation"):
        raise FilterError(f"{path}: config_generation {child['config_generation']}: QEMU 7.2 "
                          "does not migrate it")
    if edited("broken"):  # QEMU sends virtio/broken only when it is set
        dev.broken = True if child["broken"] else None
    config = bytearray(dev.config)
    for name, (off, size) in _BLK_CONFIG_FIELDS.items():
        if not edited(name):
            continue
        if len(config) < off + size:
            raise FilterError(f"{path}: {name} {child[name]}: QEMU's {len(config)}-byte "
                              "configuration has no place for it")
        config[off:off + size] = child[name].to_bytes(size, "little")
    dev.config = bytes(config)
    theirs, before = child["queues"], was["queues"]
    if len(theirs) != len(before):
        raise FilterError(f"{path}: {len(theirs)} queues; QEMU's device has {len(before)}")
    ms = pci.extra_state.modern_state if pci.extra_state is not None else None
    for i, (q, t, b) in enumerate(zip(dev.queues, theirs, before, strict=True)):
        what = f"queues[{i}]"
        if t["size"] != b["size"]:
            q.num = t["size"]
        if t["desc"] != b["desc"]:
            q.desc = t["desc"]
        if t["last_avail_idx"] != b["last_avail_idx"]:
            q.last_avail_idx = t["last_avail_idx"]
        if t["msix_vector"] != b["msix_vector"]:
            if q.vector is None:
                raise FilterError(f"{path}: {what}.msix_vector: QEMU's function has no MSI-X")
            q.vector = t["msix_vector"]
        if (t["driver"], t["device"]) != (b["driver"], b["device"]):
            if dev.virtqueues is None:
                raise FilterError(f"{path}: {what}: a legacy QEMU device derives the ring "
                                  "addresses from desc (no virtio/virtqueues)")
            vqs = dev.virtqueues.vq
            vqs.extend([QemuRingAddrs()] * (i + 1 - len(vqs)))
            vqs[i] = QemuRingAddrs(t["driver"], t["device"])
        if t["enable"] != b["enable"]:
            if ms is None:
                raise FilterError(f"{path}: {what}.enable: QEMU's legacy interface has no "
                                  "queue enable")
            ms.vqs.extend([QemuModernQueue()] * (i + 1 - len(ms.vqs)))
            ms.vqs[i].enabled = t["enable"]
    if child["inflight"] != was["inflight"]:
        old = {i: r for i, r in enumerate(dev.inflight)}
        dev.inflight = [
            old[i] if i < len(was["inflight"]) and r == was["inflight"][i] else
            QemuRequest(queue=r["queue"], index=r["head"],
                        out_sg=[QemuSg(x["addr"], x["len"]) for x in r["out_sg"]],
                        in_sg=[QemuSg(x["addr"], x["len"]) for x in r["in_sg"]],
                        ndescs=(len(r["out_sg"]) + len(r["in_sg"])
                                if dev.packed_virtqueues is not None else None))
            for i, r in enumerate(child["inflight"])]
    taken = _taken(dev.inflight)
    for i, (q, t) in enumerate(zip(dev.queues, theirs, strict=True)):
        want = (q.last_avail_idx - taken.get(i, 0)) & 0xFFFF
        if t["used_idx"] != want:
            raise FilterError(
                f"{path}: queues[{i}].used_idx {t['used_idx']}: QEMU keeps a split ring's "
                f"used index in guest RAM only; with {taken.get(i, 0)} requests in flight it "
                f"must be last_avail_idx - {taken.get(i, 0)} = {want}")


QEMU_TO_MIGTREE = Filter(
    name="qemu-virtio-blk-pci-to-virtio-pci",
    match=f"{TYPE_PCI}@1", produces="virtio-pci@1",
    consumes={BACKEND: f"{TYPE_BLK}@1..1"}, creates={BACKEND: "virtio-blk@1"},
    func=qemu_to_migtree,
    description="QEMU 7.2's virtio-blk-pci state (as decoded from its stream) -> this "
                "plugin's virtio-pci with a virtio-blk backend")
MIGTREE_TO_QEMU = Filter(
    name="virtio-pci-to-qemu-virtio-blk-pci",
    match="virtio-pci@1", produces=f"{TYPE_PCI}@1",
    consumes={BACKEND: "virtio-blk@1..1"}, creates={BACKEND: f"{TYPE_BLK}@1"},
    func=migtree_to_qemu,
    description="back to QEMU's layout, for a node the forward filter made (needs its stash)")
QEMU_PAIR = FilterPair(name=QEMU_PAIR_NAME, forward=QEMU_TO_MIGTREE, backward=MIGTREE_TO_QEMU)
