"""QEMU's other virtio devices, decoded: virtio-net, virtio-balloon,
virtio-serial (section ``virtio-console``), virtio-rng, virtio-scsi and
virtio-gpu, each a ``qemu-virtio-pci`` node with a device node as its
``virtio-backend`` child (the frame is :mod:`migtree_virtio.qemu_frame`'s).

Each device's own part, between the queues and the ``virtio/*``
subsections, as QEMU 5.2, 7.2 and 10.0 write it (big-endian):

===============  ==============================================================
virtio-net       ``vdc->vmsd`` ``virtio-net-device`` (version 11, no header):
                 ``mac`` 6 bytes, ``vqs[0].tx_waiting`` u32,
                 ``mergeable_rx_bufs`` u32, ``status`` u16, ``promisc`` u8,
                 ``allmulti`` u8, ``mac_table.in_use`` u32 and as many 6-byte
                 ``mac_table.macs``, ``vlans`` (512 bytes), ``has_vnet_hdr``
                 u32, ``mac_table.multi_overflow``, ``uni_overflow``,
                 ``alluni``, ``nomulti``, ``nouni``, ``nobcast``, ``has_ufo``
                 (u8 each); when ``max_queue_pairs`` > 1: ``max_queue_pairs``
                 u16, ``curr_queue_pairs`` u16 and ``tx_waiting`` u32 of pairs
                 1 .. curr-1; ``curr_guest_offloads`` u64 when the driver
                 negotiated CTRL_GUEST_OFFLOADS; subsection
                 ``virtio-net-device/rss`` (v1: ``enabled``, ``redirect``,
                 ``populate_hash`` bools, ``hash_types`` u32,
                 ``indirections_len`` u16, ``default_queue`` u16, ``key`` 40
                 bytes, the u16 indirection table) when the driver enabled
                 RSS. QEMU 10.0 also has ``virtio-net-device/backend``
                 (vhost-user back-end state, opaque to QEMU itself): refused.
virtio-balloon   ``vdc->vmsd`` ``virtio-balloon-device`` (v1): ``num_pages``
                 u32, ``actual`` u32; subsections
                 ``virtio-balloon-device/free-page-report`` (v1:
                 ``free_page_hint_cmd_id``, ``free_page_hint_status`` u32) when
                 free page hinting was negotiated, and ``…/page-poison`` (v1:
                 ``poison_val`` u32) when page poisoning was — QEMU 5.2 spells
                 that one ``vitio-balloon-device/page-poison``.
virtio-serial    ``vdc->save`` ``virtio_serial_save_device``: ``cols`` u16,
                 ``rows`` u16, ``max_nr_ports`` u32 (as the driver reads them),
                 ``ports_map`` (``ceil(max_nr_ports / 32)`` u32 words), the
                 number of ports u32, per port: ``id`` u32,
                 ``guest_connected`` u8, ``host_connected`` u8, u32 1 if a
                 virtqueue element was popped and not yet written out (a
                 throttled port), then ``iov_idx`` u32, ``iov_offset`` u64,
                 (u32 ``ndescs`` with RING_PACKED) and the
                 ``VirtQueueElementOld``; else u32 0.
virtio-rng       nothing (no ``vdc->save``, no ``vdc->vmsd``).
virtio-scsi      nothing: requests in flight are saved with the SCSI device's
                 own section (``scsi-disk``'s ``requests``), not here.
virtio-gpu       nothing in the ``virtio`` field; the section has a second
                 field ``virtio-gpu`` (resources and scanouts) that QEMU's
                 stream description types ``virtio-gpu``, which the qemu
                 plugin does not hand to decoders: it stays bytes.
===============  ==============================================================

(``hw/net/virtio-net.c``, ``hw/virtio/virtio-balloon.c``,
``hw/char/virtio-serial-bus.c``, ``hw/virtio/virtio-rng.c``,
``hw/scsi/virtio-scsi.c``, ``hw/display/virtio-gpu.c``; the field names each
binary holds agree for 5.2, 7.2 and 10.0.)
"""

from __future__ import annotations

from typing import Any

import attrs

from migtree.fields import (
    U16,
    U32,
    U64,
    Bytes,
    array,
    boolean,
    bytes_,
    optional,
    u8,
    u16,
    u32,
    u64,
)

from .qemu_frame import (
    VIRTQUEUE_MAX_SIZE,
    DeviceLayout,
    Frame,
    QemuSg,
    QemuVirtioDeviceState,
    QemuVirtioLayoutError,
    Reader,
    VmsdSubsection,
    be,
    device_type,
    element_bytes,
    make_decoder,
    ndescs_bytes,
    read_element,
    read_vmsd_subsections,
    write_vmsd_subsections,
)

# ---------------------------------------------------------------------------
# virtio-net

#: QEMU's MAC_TABLE_ENTRIES
MAC_TABLE_ENTRIES = 64
#: bytes of VirtIONet.vlans (MAX_VLAN >> 3)
VLANS_SIZE = 512
#: QEMU's VIRTIO_NET_RSS_MAX_KEY_SIZE
RSS_KEY_SIZE = 40
#: VIRTIO_NET_F_CTRL_GUEST_OFFLOADS: curr_guest_offloads is saved with it
VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2


@attrs.define
class QemuVirtioNetRss:
    """``virtio-net-device/rss`` (sent while the driver has RSS enabled)."""

    enabled: bool = boolean(doc="rss_data.enabled")
    redirect: bool = boolean(doc="rss_data.redirect")
    populate_hash: bool = boolean(doc="rss_data.populate_hash")
    hash_types: int = u32(doc="rss_data.hash_types")
    default_queue: int = u16(doc="rss_data.default_queue")
    key: bytes = bytes_(RSS_KEY_SIZE, doc="rss_data.key")
    indirections_table: list[int] = array(U16, max_length=0xFFFF,
                                          doc="rss_data.indirections_table "
                                              "(indirections_len entries)")


@attrs.define
class QemuVirtioNetState(QemuVirtioDeviceState):
    """``qemu-virtio-net``: QEMU's ``VirtIODevice`` and ``VirtIONet``
    (``vmstate_virtio_net_device``) as ``virtio_save`` writes them."""

    mac: bytes = bytes_(6, doc="the MAC address the device reports")
    tx_waiting: int = u32(doc="vqs[0].tx_waiting: a transmission is scheduled")
    mergeable_rx_bufs: int = u32(doc="mergeable receive buffers negotiated")
    net_status: int = u16(doc="VirtIONet.status: LINK_UP (1), ANNOUNCE (2)")
    promisc: int = u8(doc="promiscuous receive")
    allmulti: int = u8()
    mac_table: list[bytes] = array(Bytes(6), max_length=MAC_TABLE_ENTRIES,
                                   doc="mac_table.macs: unicast then multicast filter "
                                       "entries (mac_table.in_use of them)")
    vlans: bytes = bytes_(VLANS_SIZE, doc="the 4096-bit VLAN filter, as QEMU's u32 words "
                                          "in the host's byte order")
    has_vnet_hdr: int = u32(doc="the peer takes virtio-net headers")
    multi_overflow: int = u8(doc="mac_table.multi_overflow")
    uni_overflow: int = u8(doc="mac_table.uni_overflow")
    alluni: int = u8()
    nomulti: int = u8()
    nouni: int = u8()
    nobcast: int = u8()
    has_ufo: int = u8(doc="the peer does UDP fragmentation offload")
    max_queue_pairs: int | None = optional(U16, doc="written only when above 1")
    curr_queue_pairs: int | None = optional(U16, doc="with max_queue_pairs")
    tx_waiting_1: list[int] = array(U32, max_length=0xFFFF,
                                    doc="vqs_1: tx_waiting of queue pairs 1 .. "
                                        "curr_queue_pairs-1")
    curr_guest_offloads: int | None = optional(U64, doc="written when the driver negotiated "
                                                        "CTRL_GUEST_OFFLOADS")
    rss: QemuVirtioNetRss | None = optional(QemuVirtioNetRss,
                                            doc="subsection virtio-net-device/rss")


def _read_rss(r: Reader) -> QemuVirtioNetRss:
    rss = QemuVirtioNetRss(r.flag("rss enabled"), r.flag("rss redirect"),
                           r.flag("rss populate_hash"), r.be(4, "rss hash_types"))
    n = r.be(2, "rss indirections_len")
    rss.default_queue = r.be(2, "rss default_queue")
    rss.key = r.take(RSS_KEY_SIZE, "rss key")
    rss.indirections_table = [r.be(2, f"rss indirections_table[{i}]") for i in range(n)]
    return rss


def _write_rss(rss: QemuVirtioNetRss) -> bytes:
    return (bytes([rss.enabled, rss.redirect, rss.populate_hash]) + be(rss.hash_types, 4)
            + be(len(rss.indirections_table), 2) + be(rss.default_queue, 2) + rss.key
            + b"".join(be(x, 2) for x in rss.indirections_table))


_NET_SUBSECTIONS = [VmsdSubsection("virtio-net-device/rss", "rss", 1, _read_rss, _write_rss)]
_NET_REFUSED = {"virtio-net-device/backend": "it is a vhost-user back-end's own state "
                                             "(QEMU 10.0), opaque to QEMU too"}


def _net_pairs(r: Reader, dev: QemuVirtioNetState, frame: Frame, pairs: bool) -> None:
    """From ``max_queue_pairs`` on, with (*pairs*) or without it."""
    if pairs:
        at = r.pos
        dev.max_queue_pairs = r.be(2, "max_queue_pairs")
        if dev.max_queue_pairs < 2 or 2 * dev.max_queue_pairs + 1 < frame.nq:
            raise r.error(f"max_queue_pairs {dev.max_queue_pairs} with {frame.nq} queues; "
                          "QEMU writes it only when above 1", at)
        at = r.pos
        dev.curr_queue_pairs = r.be(2, "curr_queue_pairs")
        if dev.curr_queue_pairs > dev.max_queue_pairs:
            raise r.error(f"curr_queue_pairs {dev.curr_queue_pairs} above max_queue_pairs "
                          f"{dev.max_queue_pairs}", at)
        dev.tx_waiting_1 = [r.be(4, f"vqs[{i}].tx_waiting")
                            for i in range(1, dev.curr_queue_pairs)]
    if frame.features_lo >> VIRTIO_NET_F_CTRL_GUEST_OFFLOADS & 1:
        dev.curr_guest_offloads = r.be(8, "curr_guest_offloads")
    read_vmsd_subsections(r, "virtio-net-device", _NET_SUBSECTIONS, dev, _NET_REFUSED)
    if r.left() and r.peek_subsection() is None:
        raise r.error("virtio-net-device is not followed by a subsection")


def _read_net(r: Reader, dev: QemuVirtioNetState, frame: Frame) -> None:
    if frame.nq < 3 or frame.nq % 2 == 0:
        raise r.error(f"{frame.nq} queues: virtio-net has receive/transmit pairs and a "
                      "control queue")
    dev.mac = r.take(6, "mac")
    dev.tx_waiting = r.be(4, "vqs[0].tx_waiting")
    dev.mergeable_rx_bufs = r.be(4, "mergeable_rx_bufs")
    dev.net_status = r.be(2, "status")
    dev.promisc = r.be(1, "promisc")
    dev.allmulti = r.be(1, "allmulti")
    at = r.pos
    in_use = r.be(4, "mac_table.in_use")
    if in_use > MAC_TABLE_ENTRIES:
        raise r.error(f"mac_table.in_use {in_use}; QEMU's table has {MAC_TABLE_ENTRIES} "
                      "entries", at)
    macs = r.take(6 * in_use, "mac_table.macs")
    dev.mac_table = [macs[i:i + 6] for i in range(0, len(macs), 6)]
    dev.vlans = r.take(VLANS_SIZE, "vlans")
    dev.has_vnet_hdr = r.be(4, "has_vnet_hdr")
    for name in ("multi_overflow", "uni_overflow", "alluni", "nomulti", "nouni", "nobcast",
                 "has_ufo"):
        setattr(dev, name, r.be(1, name))
    # max_queue_pairs is written only when above 1, and nothing else says
    # which: more than one pair of queues means it is there; with one pair
    # (the driver did not negotiate MQ, or the device has one) the bytes
    # decide (one reading ends at a subsection or the end, the other cannot)
    if frame.nq > 3:
        _net_pairs(r, dev, frame, True)
        return
    start = r.pos
    try:
        _net_pairs(r, dev, frame, False)
    except QemuVirtioLayoutError as first:
        r.pos = start
        dev.curr_guest_offloads = dev.rss = None
        dev.tx_waiting_1 = []
        try:
            _net_pairs(r, dev, frame, True)
        except QemuVirtioLayoutError:
            raise first from None


def _write_net(dev: QemuVirtioNetState, frame: Frame) -> bytes:
    where = frame.where
    if len(dev.mac) != 6 or len(dev.vlans) != VLANS_SIZE or \
            any(len(m) != 6 for m in dev.mac_table):
        raise QemuVirtioLayoutError(f"{where}: mac, mac_table entries and vlans have 6, 6 "
                                    f"and {VLANS_SIZE} bytes")
    if (dev.max_queue_pairs is None) != (dev.curr_queue_pairs is None):
        raise QemuVirtioLayoutError(f"{where}: max_queue_pairs and curr_queue_pairs are "
                                    "written together")
    if dev.max_queue_pairs is None and frame.nq != 3:
        raise QemuVirtioLayoutError(f"{where}: {frame.nq} queues need max_queue_pairs "
                                    "(one pair and the control queue have 3)")
    if dev.max_queue_pairs is not None and (
            dev.max_queue_pairs < 2 or dev.curr_queue_pairs > dev.max_queue_pairs
            or 2 * dev.max_queue_pairs + 1 < frame.nq):
        raise QemuVirtioLayoutError(
            f"{where}: max_queue_pairs {dev.max_queue_pairs}, curr_queue_pairs "
            f"{dev.curr_queue_pairs} with {frame.nq} queues: QEMU writes them when max is "
            "above 1, curr at most max")
    more = max((dev.curr_queue_pairs or 1) - 1, 0)
    if len(dev.tx_waiting_1) != more:
        raise QemuVirtioLayoutError(f"{where}: tx_waiting_1 has {len(dev.tx_waiting_1)} "
                                    f"entries; curr_queue_pairs - 1 is {more}")
    offloads = bool(frame.features_lo >> VIRTIO_NET_F_CTRL_GUEST_OFFLOADS & 1)
    if (dev.curr_guest_offloads is not None) != offloads:
        raise QemuVirtioLayoutError(
            f"{where}: curr_guest_offloads must be {'present' if offloads else 'absent'}: "
            "it is written when the driver negotiated CTRL_GUEST_OFFLOADS")
    out = bytearray(dev.mac + be(dev.tx_waiting, 4) + be(dev.mergeable_rx_bufs, 4)
                    + be(dev.net_status, 2) + be(dev.promisc, 1) + be(dev.allmulti, 1)
                    + be(len(dev.mac_table), 4) + b"".join(dev.mac_table) + dev.vlans
                    + be(dev.has_vnet_hdr, 4))
    for name in ("multi_overflow", "uni_overflow", "alluni", "nomulti", "nouni", "nobcast",
                 "has_ufo"):
        out += be(getattr(dev, name), 1)
    if dev.max_queue_pairs is not None:
        out += be(dev.max_queue_pairs, 2) + be(dev.curr_queue_pairs, 2)
        out += b"".join(be(x, 4) for x in dev.tx_waiting_1)
    if offloads:
        out += be(dev.curr_guest_offloads, 8)
    return bytes(out + write_vmsd_subsections(_NET_SUBSECTIONS, dev))


NET = DeviceLayout(
    type_name="qemu-virtio-net", vmsd_name="virtio-net", section_version=11,
    state=QemuVirtioNetState, read=_read_net, write=_write_net,
    description="QEMU 5.2/7.2/10.0 virtio-net-pci 'virtio' field <-> qemu-virtio-pci node "
                "with a qemu-virtio-net virtio-backend child")


# ---------------------------------------------------------------------------
# virtio-balloon


@attrs.define
class QemuBalloonFreePageHint:
    """``virtio-balloon-device/free-page-report`` (free page hinting)."""

    free_page_hint_cmd_id: int = u32(doc="the id of the last hinting command")
    free_page_hint_status: int = u32(doc="QEMU's FREE_PAGE_HINT_S_* state")


@attrs.define
class QemuBalloonPagePoison:
    """``virtio-balloon-device/page-poison``."""

    poison_val: int = u32(doc="the value the driver fills freed pages with")


@attrs.define
class QemuVirtioBalloonState(QemuVirtioDeviceState):
    """``qemu-virtio-balloon``: QEMU's ``VirtIODevice`` and ``VirtIOBalloon``
    (``vmstate_virtio_balloon_device``) as ``virtio_save`` writes them."""

    num_pages: int = u32(doc="the target: pages the host wants the balloon to hold")
    actual: int = u32(doc="pages the driver reports in the balloon")
    free_page_report: QemuBalloonFreePageHint | None = optional(
        QemuBalloonFreePageHint, doc="subsection virtio-balloon-device/free-page-report")
    page_poison: QemuBalloonPagePoison | None = optional(
        QemuBalloonPagePoison, doc="subsection virtio-balloon-device/page-poison")
    vitio_page_poison: QemuBalloonPagePoison | None = optional(
        QemuBalloonPagePoison, doc="the same, as QEMU 5.1/5.2 name it: "
                                   "vitio-balloon-device/page-poison")


def _read_poison(r: Reader) -> QemuBalloonPagePoison:
    return QemuBalloonPagePoison(r.be(4, "poison_val"))


def _write_poison(p: QemuBalloonPagePoison) -> bytes:
    return be(p.poison_val, 4)


_BALLOON_SUBSECTIONS = [
    VmsdSubsection("virtio-balloon-device/free-page-report", "free_page_report", 1,
                   lambda r: QemuBalloonFreePageHint(r.be(4, "free_page_hint_cmd_id"),
                                                     r.be(4, "free_page_hint_status")),
                   lambda h: be(h.free_page_hint_cmd_id, 4) + be(h.free_page_hint_status, 4)),
    VmsdSubsection("virtio-balloon-device/page-poison", "page_poison", 1, _read_poison,
                   _write_poison),
    VmsdSubsection("vitio-balloon-device/page-poison", "vitio_page_poison", 1, _read_poison,
                   _write_poison),
]


def _read_balloon(r: Reader, dev: QemuVirtioBalloonState, frame: Frame) -> None:
    dev.num_pages = r.be(4, "num_pages")
    dev.actual = r.be(4, "actual")
    read_vmsd_subsections(r, "virtio-balloon-device", _BALLOON_SUBSECTIONS, dev)
    if dev.page_poison is not None and dev.vitio_page_poison is not None:
        raise r.error("page-poison sent under both of its names")


def _write_balloon(dev: QemuVirtioBalloonState, frame: Frame) -> bytes:
    if dev.page_poison is not None and dev.vitio_page_poison is not None:
        raise QemuVirtioLayoutError(f"{frame.where}: page_poison and vitio_page_poison are "
                                    "one subsection under two names; QEMU writes one")
    return (be(dev.num_pages, 4) + be(dev.actual, 4)
            + write_vmsd_subsections(_BALLOON_SUBSECTIONS, dev))


BALLOON = DeviceLayout(
    type_name="qemu-virtio-balloon", vmsd_name="virtio-balloon", section_version=1,
    state=QemuVirtioBalloonState, read=_read_balloon, write=_write_balloon,
    description="QEMU 5.2/7.2/10.0 virtio-balloon-pci 'virtio' field <-> qemu-virtio-pci "
                "node with a qemu-virtio-balloon virtio-backend child")


# ---------------------------------------------------------------------------
# virtio-serial (its section and vmsd are called virtio-console)

#: virtio-serial's limit on ports (VIRTIO_QUEUE_MAX / 2 - 1)
MAX_SERIAL_PORTS = 511


@attrs.define
class QemuSerialElement:
    """A virtqueue element a throttled port popped and has not finished
    writing to its back-end (``port->elem``)."""

    iov_idx: int = u32(doc="the buffer being written")
    iov_offset: int = u64(doc="bytes of it already written")
    index: int = u32(doc="head descriptor index")
    out_sg: list[QemuSg] = array(QemuSg, max_length=VIRTQUEUE_MAX_SIZE,
                                 doc="device-readable buffers (the guest's data)")
    in_sg: list[QemuSg] = array(QemuSg, max_length=VIRTQUEUE_MAX_SIZE)
    ndescs: int | None = optional(U32, doc="only when the device offers RING_PACKED")


@attrs.define
class QemuSerialPort:
    """One port on the virtio-serial bus (``VirtIOSerialPort``)."""

    id: int = u32(doc="port number (0: the first console)")
    guest_connected: bool = boolean(doc="the guest has the port open")
    host_connected: bool = boolean(doc="the host side (chardev) is open")
    elem: QemuSerialElement | None = optional(QemuSerialElement,
                                              doc="the element in progress, if any")


@attrs.define
class QemuVirtioSerialState(QemuVirtioDeviceState):
    """``qemu-virtio-serial``: QEMU's ``VirtIODevice`` and ``VirtIOSerial``
    as ``virtio_serial_save_device`` writes them."""

    cols: int = u16(doc="console columns (as the driver reads them; ignored on load)")
    rows: int = u16(doc="console rows (ignored on load)")
    max_nr_ports: int = u32(doc="ports the device has room for")
    ports_map: list[int] = array(U32, max_length=(MAX_SERIAL_PORTS + 31) // 32,
                                 doc="bitmap of port numbers in use, ceil(max_nr_ports/32) "
                                     "words")
    ports: list[QemuSerialPort] = array(QemuSerialPort, max_length=MAX_SERIAL_PORTS,
                                        doc="the ports, in the bus's order")


def _read_serial(r: Reader, dev: QemuVirtioSerialState, frame: Frame) -> None:
    dev.cols = r.be(2, "cols")
    dev.rows = r.be(2, "rows")
    at = r.pos
    dev.max_nr_ports = r.be(4, "max_nr_ports")
    if not 0 < dev.max_nr_ports <= MAX_SERIAL_PORTS or \
            frame.nq != 2 * dev.max_nr_ports + 2:
        raise r.error(f"max_nr_ports {dev.max_nr_ports} with {frame.nq} queues; QEMU has two "
                      f"queues a port and two control queues, at most {MAX_SERIAL_PORTS} "
                      "ports", at)
    dev.ports_map = [r.be(4, f"ports_map[{i}]") for i in range((dev.max_nr_ports + 31) // 32)]
    at = r.pos
    n = r.be(4, "number of ports")
    if n > dev.max_nr_ports:
        raise r.error(f"{n} ports; the device has room for {dev.max_nr_ports}", at)
    for i in range(n):
        what = f"ports[{i}]"
        port = QemuSerialPort(r.be(4, f"{what}.id"), r.flag(f"{what}.guest_connected"),
                              r.flag(f"{what}.host_connected"))
        if r.flag(f"{what} element popped", 4):
            elem = QemuSerialElement(r.be(4, f"{what}.iov_idx"), r.be(8, f"{what}.iov_offset"))
            if frame.packed:
                elem.ndescs = r.be(4, f"{what} ndescs")
            elem.index, elem.out_sg, elem.in_sg = read_element(r, f"{what} element")
            port.elem = elem
        dev.ports.append(port)


def _write_serial(dev: QemuVirtioSerialState, frame: Frame) -> bytes:
    words = (dev.max_nr_ports + 31) // 32
    if not 0 < dev.max_nr_ports <= MAX_SERIAL_PORTS or len(dev.ports) > dev.max_nr_ports:
        raise QemuVirtioLayoutError(
            f"{frame.where}: max_nr_ports {dev.max_nr_ports} with {len(dev.ports)} ports; "
            f"QEMU has 1 to {MAX_SERIAL_PORTS} and at most that many ports")
    if len(dev.ports_map) != words or frame.nq != 2 * dev.max_nr_ports + 2:
        raise QemuVirtioLayoutError(
            f"{frame.where}: max_nr_ports {dev.max_nr_ports} needs {words} ports_map words "
            f"(has {len(dev.ports_map)}) and {2 * dev.max_nr_ports + 2} queues (has "
            f"{frame.nq})")
    out = bytearray(be(dev.cols, 2) + be(dev.rows, 2) + be(dev.max_nr_ports, 4))
    out += b"".join(be(w, 4) for w in dev.ports_map)
    out += be(len(dev.ports), 4)
    for i, port in enumerate(dev.ports):
        out += be(port.id, 4) + bytes([port.guest_connected, port.host_connected])
        elem = port.elem
        out += be(elem is not None, 4)
        if elem is not None:
            out += be(elem.iov_idx, 4) + be(elem.iov_offset, 8)
            out += ndescs_bytes(elem.ndescs, frame.packed, f"ports[{i}].elem", frame.where)
            out += element_bytes(elem.index, elem.out_sg, elem.in_sg)
    return bytes(out)


SERIAL = DeviceLayout(
    type_name="qemu-virtio-serial", vmsd_name="virtio-console", section_version=3,
    state=QemuVirtioSerialState, read=_read_serial, write=_write_serial,
    elements=lambda dev: [p.elem for p in dev.ports if p.elem is not None],
    description="QEMU 5.2/7.2/10.0 virtio-serial-pci 'virtio' field (section "
                "virtio-console) <-> qemu-virtio-pci node with a qemu-virtio-serial "
                "virtio-backend child")


# ---------------------------------------------------------------------------
# devices whose part is empty


def _read_nothing(r: Reader, dev: Any, frame: Frame) -> None:
    sub = r.peek_subsection()
    if r.left() and (sub is None or not sub[0].startswith("virtio/")):
        raise r.error("bytes where this device saves nothing (the virtio/ subsections "
                      "follow the queues)")


def _write_nothing(dev: Any, frame: Frame) -> bytes:
    return b""


@attrs.define
class QemuVirtioRngState(QemuVirtioDeviceState):
    """``qemu-virtio-rng``: QEMU's ``VirtIODevice`` of a virtio-rng (the
    device itself saves nothing)."""


@attrs.define
class QemuVirtioScsiState(QemuVirtioDeviceState):
    """``qemu-virtio-scsi``: QEMU's ``VirtIODevice`` of a virtio-scsi (its
    requests in flight are saved by the SCSI devices' sections)."""


@attrs.define
class QemuVirtioGpuState(QemuVirtioDeviceState):
    """``qemu-virtio-gpu``: QEMU's ``VirtIODevice`` of a virtio-gpu (its
    resources and scanouts are the section's second field, ``virtio-gpu``)."""


def _empty(type_name: str, vmsd_name: str, state: type, pci_name: str) -> DeviceLayout:
    return DeviceLayout(
        type_name=type_name, vmsd_name=vmsd_name, section_version=1, state=state,
        read=_read_nothing, write=_write_nothing,
        description=f"QEMU 5.2/7.2/10.0 {pci_name} 'virtio' field <-> qemu-virtio-pci node "
                    f"with a {type_name} virtio-backend child")


RNG = _empty("qemu-virtio-rng", "virtio-rng", QemuVirtioRngState, "virtio-rng-pci")
SCSI = _empty("qemu-virtio-scsi", "virtio-scsi", QemuVirtioScsiState, "virtio-scsi-pci")
GPU = _empty("qemu-virtio-gpu", "virtio-gpu", QemuVirtioGpuState, "virtio-gpu-pci")

#: every layout of this module
LAYOUTS = (NET, BALLOON, SERIAL, RNG, SCSI, GPU)
#: their opaque decoders (``migtree_register_opaque_decoders``), by vmsd name
DECODERS = {layout.vmsd_name: make_decoder(layout) for layout in LAYOUTS}
#: their abstract migtree types (``migtree_register_types``)
TYPES = tuple(device_type(layout.type_name, layout.state,
                          f"QEMU's {layout.vmsd_name} device state (the proxy's "
                          "virtio-backend) as its stream holds it. Not instantiable.",
                          __name__)
              for layout in LAYOUTS)
