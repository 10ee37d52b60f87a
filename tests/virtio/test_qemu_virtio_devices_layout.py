"""The codecs of QEMU's virtio-net, virtio-balloon, virtio-serial, virtio-rng,
virtio-scsi and virtio-gpu sections (``migtree_virtio.qemu_devices``)
without a QEMU: every state they can hold round-trips through the bytes,
damaged bytes are layout errors naming the section and part (never another
exception), parts QEMU would not have written are refused, and the plugin
registers them. Real streams of QEMU 5.2, 7.2 and 10.0 are in
tests/qemu/test_qemu_virtio_devices.py."""

from __future__ import annotations

import copy
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_qemu_virtio_layout import pci_config

from migtree import builtin
from migtree.errors import MigtreeError, StateError
from migtree.registry import Registry
from migtree_virtio import plugin as virtio_plugin
from migtree_virtio import qemu_devices as qd
from migtree_virtio.qemu_frame import (
    ELEMENT_SIZE,
    QemuModernQueue,
    QemuModernState,
    QemuPackedQueue,
    QemuPackedVirtqueues,
    QemuQueue,
    QemuRingAddrs,
    QemuSg,
    QemuVirtioLayoutError,
    QemuVirtioPciExtra,
    QemuVirtioPciState,
    QemuVirtqueues,
    decode_frame,
    encode_frame,
    sub_head,
)


def ctx(layout) -> dict:
    return {"idstr": f"0000:00:05.0/{layout.vmsd_name}", "instance_id": 0,
            "vmsd_name": layout.vmsd_name, "version": layout.section_version,
            "field": "virtio"}


def u(bits: int):
    return st.integers(0, (1 << bits) - 1)


@st.composite
def frames(draw, layout, nq: int, packed: bool = False, features_lo=None):
    """A transport and a device of *layout* with *nq* queues: every common
    field drawn, the device's own left at its defaults."""
    nvec = draw(st.sampled_from([0, 1, nq + 1, 9]))
    pci = QemuVirtioPciState(
        pci_version_id=draw(st.sampled_from([2, 1])),
        pci_config=pci_config(nvec, draw(st.booleans()), draw(u(16))),
        irq_state=draw(st.lists(st.integers(-2**31, 2**31 - 1), min_size=4, max_size=4)),
        msix_table=draw(st.binary(min_size=16 * nvec, max_size=16 * nvec)),
        msix_pba=draw(st.binary(min_size=(nvec + 7) // 8, max_size=(nvec + 7) // 8)),
    )
    if draw(st.booleans()):
        pci.extra_state = QemuVirtioPciExtra(QemuModernState(
            draw(u(32)), draw(u(32)), [draw(u(32)), draw(u(32))],
            [QemuModernQueue(draw(u(16)), draw(st.booleans()), draw(u(64)), draw(u(64)),
                             draw(u(64))) for _ in range(nq)]))
    dev = layout.state(
        status=draw(u(8)), isr=draw(u(8)), queue_sel=draw(u(16)),
        guest_features_lo=draw(u(32)) if features_lo is None else features_lo,
        config=draw(st.binary(max_size=48)),
        config_vector=draw(u(16)) if nvec else None,
        queues=[QemuQueue(draw(st.integers(1, 1024)), draw(u(64)), draw(u(16)),
                          draw(u(16)) if nvec else None) for _ in range(nq)],
        device_endian=draw(st.none() | u(8)),
        guest_features=draw(st.none() | u(64)),
        virtqueues=draw(st.none() | st.just(QemuVirtqueues(
            [QemuRingAddrs(draw(u(64)), draw(u(64))) for _ in range(nq)]))),
        broken=draw(st.none() | st.booleans()),
        started=draw(st.none() | st.booleans()),
        packed_virtqueues=QemuPackedVirtqueues(
            [QemuPackedQueue(draw(u(16)), draw(st.booleans()), draw(u(16)),
                             draw(st.booleans()), draw(u(32))) for _ in range(nq)])
        if packed else None,
        disabled=draw(st.none() | st.booleans()),
    )
    return pci, dev


# ---------------------------------------------------------------------------
# per-device states


@st.composite
def net_states(draw):
    pairs = draw(st.integers(1, 4))
    nq = 2 * pairs + 1
    offloads = draw(st.booleans())
    lo = draw(u(32)) & ~(1 << qd.VIRTIO_NET_F_CTRL_GUEST_OFFLOADS)
    lo |= offloads << qd.VIRTIO_NET_F_CTRL_GUEST_OFFLOADS
    pci, dev = draw(frames(qd.NET, nq, features_lo=lo))
    dev.mac = draw(st.binary(min_size=6, max_size=6))
    dev.tx_waiting = draw(u(32))
    dev.mergeable_rx_bufs = draw(u(32))
    dev.net_status = draw(u(16))
    dev.promisc, dev.allmulti = draw(u(8)), draw(u(8))
    dev.mac_table = draw(st.lists(st.binary(min_size=6, max_size=6), max_size=qd.MAC_TABLE_ENTRIES))
    dev.vlans = draw(st.binary(min_size=512, max_size=512))
    dev.has_vnet_hdr = draw(u(32))
    for name in ("multi_overflow", "uni_overflow", "alluni", "nomulti", "nouni", "nobcast",
                 "has_ufo"):
        setattr(dev, name, draw(u(8)))
    # max_queue_pairs: always with more than one pair of queues, and also
    # with one (a driver that did not negotiate MQ on a multiqueue device)
    if pairs > 1 or draw(st.booleans()):
        dev.max_queue_pairs = draw(st.integers(max(pairs, 2), 511))
        dev.curr_queue_pairs = draw(st.integers(0, min(dev.max_queue_pairs, 6)))
        dev.tx_waiting_1 = [draw(u(32)) for _ in range(max(dev.curr_queue_pairs - 1, 0))]
    if offloads:
        dev.curr_guest_offloads = draw(u(64))
    if draw(st.booleans()):
        dev.rss = qd.QemuVirtioNetRss(
            draw(st.booleans()), draw(st.booleans()), draw(st.booleans()), draw(u(32)),
            draw(u(16)), draw(st.binary(min_size=40, max_size=40)),
            draw(st.lists(u(16), max_size=8)))
    return pci, dev


@st.composite
def balloon_states(draw):
    pci, dev = draw(frames(qd.BALLOON, draw(st.integers(2, 5))))
    dev.num_pages, dev.actual = draw(u(32)), draw(u(32))
    if draw(st.booleans()):
        dev.free_page_report = qd.QemuBalloonFreePageHint(draw(u(32)), draw(u(32)))
    poison = draw(st.sampled_from([None, "page_poison", "vitio_page_poison"]))
    if poison:
        setattr(dev, poison, qd.QemuBalloonPagePoison(draw(u(32))))
    return pci, dev


@st.composite
def serial_states(draw):
    max_ports = draw(st.integers(1, 40))
    packed = draw(st.booleans())
    pci, dev = draw(frames(qd.SERIAL, 2 * max_ports + 2, packed=packed))
    dev.cols, dev.rows, dev.max_nr_ports = draw(u(16)), draw(u(16)), max_ports
    dev.ports_map = [draw(u(32)) for _ in range((max_ports + 31) // 32)]
    sg = st.builds(QemuSg, u(64), u(64))
    for _ in range(draw(st.integers(0, min(max_ports, 3)))):
        port = qd.QemuSerialPort(draw(u(32)), draw(st.booleans()), draw(st.booleans()))
        if draw(st.booleans()):
            port.elem = qd.QemuSerialElement(
                draw(u(32)), draw(u(64)), draw(u(32)), draw(st.lists(sg, max_size=3)),
                draw(st.lists(sg, max_size=3)), draw(u(32)) if packed else None)
        dev.ports.append(port)
    return pci, dev


STRATEGIES = {
    "net": (qd.NET, net_states()),
    "balloon": (qd.BALLOON, balloon_states()),
    "serial": (qd.SERIAL, serial_states()),
    "rng": (qd.RNG, frames(qd.RNG, 1)),
    "scsi": (qd.SCSI, frames(qd.SCSI, 3)),
    "gpu": (qd.GPU, frames(qd.GPU, 2)),
}
DECODERS = {name: qd.DECODERS[layout.vmsd_name] for name, (layout, _) in STRATEGIES.items()}


def roundtrip(name: str, state) -> bytes:
    layout = STRATEGIES[name][0]
    pci, dev = state
    data = encode_frame(pci, dev, layout)
    assert decode_frame(data, ctx(layout), layout) == (pci, dev)
    node = DECODERS[name].decode(data, ctx(layout))
    assert node["__type__"] == "qemu-virtio-pci"
    assert node["virtio-backend"]["__type__"] == layout.type_name
    assert DECODERS[name].encode(node, ctx(layout)) == data
    return data


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_state_roundtrips_through_the_bytes(name, data):
    roundtrip(name, data.draw(STRATEGIES[name][1]))


# ---------------------------------------------------------------------------
# the layouts, byte by byte (from QEMU's sources, not from our encoder)


def small(layout, nq: int, features_lo: int = 0):
    """A frame without MSI-X, modern state or subsections: the device's part
    sits right before the end."""
    pci = QemuVirtioPciState(pci_config=pci_config(0))
    dev = layout.state(guest_features_lo=features_lo,
                       queues=[QemuQueue(256, 0, 0) for _ in range(nq)])
    return pci, dev


def part(layout, pci, dev) -> bytes:
    """The device's own part: what follows the queues."""
    data = encode_frame(pci, dev, layout)
    head = 4 + 256 + 16 + 1 + 1 + 2 + 4 + 4 + len(dev.config) + 4 + 14 * len(dev.queues)
    return data[head:]


def test_the_net_part_byte_by_byte():
    pci, dev = small(qd.NET, 3, features_lo=1 << qd.VIRTIO_NET_F_CTRL_GUEST_OFFLOADS)
    dev.mac = bytes.fromhex("525400123456")
    dev.tx_waiting, dev.mergeable_rx_bufs, dev.net_status = 1, 1, 1
    dev.promisc, dev.allmulti = 0, 1
    dev.mac_table = [bytes.fromhex("01005e000001")]
    dev.vlans = bytes(range(256)) * 2
    dev.has_vnet_hdr, dev.nobcast, dev.has_ufo = 1, 1, 1
    dev.curr_guest_offloads = 0x780
    got = part(qd.NET, pci, dev)
    want = (dev.mac + b"\0\0\0\1" + b"\0\0\0\1" + b"\0\1" + b"\0" + b"\1"
            + b"\0\0\0\1" + dev.mac_table[0] + dev.vlans + b"\0\0\0\1"
            + b"\0\0\0\0\0\1" + b"\1" + (0x780).to_bytes(8, "big"))
    assert got == want
    assert decode_frame(encode_frame(pci, dev, qd.NET), ctx(qd.NET), qd.NET)[1] == dev


def test_net_queue_pairs_and_rss_byte_by_byte():
    pci, dev = small(qd.NET, 5)
    dev.max_queue_pairs, dev.curr_queue_pairs, dev.tx_waiting_1 = 2, 2, [1]
    dev.rss = qd.QemuVirtioNetRss(True, True, False, 0x1FF, 1, bytes(range(40)), [0, 1, 0, 1])
    got = part(qd.NET, pci, dev)
    tail = got[6 + 4 + 4 + 2 + 2 + 4 + 512 + 4 + 7:]
    rss = (b"\1\1\0" + (0x1FF).to_bytes(4, "big") + b"\0\4" + b"\0\1" + bytes(range(40))
           + b"\0\0\0\1\0\0\0\1")
    assert tail == b"\0\2\0\2" + b"\0\0\0\1" + sub_head("virtio-net-device/rss") + rss


def test_a_single_pair_with_max_queue_pairs_decodes_either_way():
    """With three queues nothing says whether max_queue_pairs was written
    (a multiqueue device whose driver did not negotiate MQ): both shapes
    decode to what was encoded, with and without what may follow."""
    for offloads in (0, 1 << qd.VIRTIO_NET_F_CTRL_GUEST_OFFLOADS):
        for with_pairs in (False, True):
            for rss in (None, qd.QemuVirtioNetRss(indirections_table=[5])):
                for started in (None, True):
                    pci, dev = small(qd.NET, 3, features_lo=offloads)
                    if offloads:
                        dev.curr_guest_offloads = 0x0500000000000005  # bytes 0x05 in it
                    if with_pairs:
                        dev.max_queue_pairs, dev.curr_queue_pairs = 0x105, 3
                        dev.tx_waiting_1 = [0x05050505, 5]
                    dev.rss, dev.started = rss, started
                    data = encode_frame(pci, dev, qd.NET)
                    assert decode_frame(data, ctx(qd.NET), qd.NET)[1] == dev


def test_the_balloon_part_byte_by_byte():
    pci, dev = small(qd.BALLOON, 3)
    dev.num_pages, dev.actual = 8192, 8000
    dev.free_page_report = qd.QemuBalloonFreePageHint(0x80000002, 3)
    dev.vitio_page_poison = qd.QemuBalloonPagePoison(0xAA)
    assert part(qd.BALLOON, pci, dev) == (
        (8192).to_bytes(4, "big") + (8000).to_bytes(4, "big")
        + b"\x05\x26virtio-balloon-device/free-page-report\0\0\0\1"
        + (0x80000002).to_bytes(4, "big") + b"\0\0\0\3"
        + b"\x05\x20vitio-balloon-device/page-poison\0\0\0\1" + b"\0\0\0\xaa")


def test_the_serial_part_byte_by_byte():
    pci, dev = small(qd.SERIAL, 64)
    dev.max_nr_ports, dev.ports_map = 31, [3]
    elem = qd.QemuSerialElement(1, 100, 7, [QemuSg(0x1000, 4096), QemuSg(0x3000, 4096)], [])
    dev.ports = [qd.QemuSerialPort(0, True, True), qd.QemuSerialPort(1, False, True, elem)]
    got = part(qd.SERIAL, pci, dev)
    head = (b"\0\0\0\0" + b"\0\0\0\x1f" + b"\0\0\0\3" + b"\0\0\0\2"
            + b"\0\0\0\0\1\1\0\0\0\0" + b"\0\0\0\1\0\1\0\0\0\1" + b"\0\0\0\1"
            + (100).to_bytes(8, "big"))
    assert got[:len(head)] == head
    raw = got[len(head):]
    assert len(raw) == ELEMENT_SIZE
    assert raw[:12] == (7).to_bytes(4, "little") + (2).to_bytes(4, "little") + bytes(4)
    assert raw[16 + 8 * 1024:16 + 8 * 1026] == (0x1000).to_bytes(8, "little") + \
        (0x3000).to_bytes(8, "little")  # out_addr[0..1]


@pytest.mark.parametrize("name", ["rng", "scsi", "gpu"])
def test_devices_that_save_nothing_have_no_part(name):
    layout = STRATEGIES[name][0]
    pci, dev = small(layout, 2)
    assert part(layout, pci, dev) == b""
    dev.started = True
    assert part(layout, pci, dev) == sub_head("virtio/started") + b"\1"


# ---------------------------------------------------------------------------
# damaged bytes


def linux_like(name: str):
    """A state of each device shaped like the devices guest's (MSI-X,
    modern, started)."""
    layout = STRATEGIES[name][0]
    nq = {"net": 3, "balloon": 3, "serial": 64, "rng": 1, "scsi": 3, "gpu": 2}[name]
    pci = QemuVirtioPciState(pci_config=pci_config(2), msix_table=bytes(32), msix_pba=b"\0",
                             extra_state=QemuVirtioPciExtra(QemuModernState(
                                 1, 1, [0x30000000, 1],
                                 [QemuModernQueue(256, True, 0x10000 * (i + 1),
                                                  0x10000 * (i + 1) + 0x1000,
                                                  0x10000 * (i + 1) + 0x2000)
                                  for i in range(nq)])))
    dev = layout.state(status=15, isr=1, guest_features_lo=0x30000000 | 1 << 2,
                       config=bytes(8), config_vector=0,
                       queues=[QemuQueue(256, 0x10000 * (i + 1), i, 1) for i in range(nq)],
                       guest_features=0x130000004,
                       virtqueues=QemuVirtqueues([QemuRingAddrs(0x10000 * (i + 1) + 0x1000,
                                                                0x10000 * (i + 1) + 0x2000)
                                                  for i in range(nq)]),
                       started=True)
    if name == "net":
        dev.mac = bytes.fromhex("525400123456")
        dev.mac_table = [bytes.fromhex("333300000001")]
        dev.curr_guest_offloads = 0
    elif name == "balloon":
        dev.num_pages = dev.actual = 8192
        dev.free_page_report = qd.QemuBalloonFreePageHint(0x80000002, 3)
        dev.page_poison = qd.QemuBalloonPagePoison(0)
    elif name == "serial":
        dev.max_nr_ports, dev.ports_map = 31, [3]
        dev.ports = [qd.QemuSerialPort(0, True, True), qd.QemuSerialPort(
            1, False, True, qd.QemuSerialElement(12, 0, 0, [QemuSg(0x399A000, 4096)], []))]
    return pci, dev


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_truncation_is_a_layout_error_naming_the_section_or_exact(name):
    layout = STRATEGIES[name][0]
    data = encode_frame(*linux_like(name), layout)
    cuts = sorted({*range(0, 2000), *random.Random(2).sample(range(2000, len(data)), 200)})
    for n in cuts:
        try:
            node = DECODERS[name].decode(data[:n], ctx(layout))
        except QemuVirtioLayoutError as e:
            assert layout.vmsd_name in str(e) and "byte" in str(e)
            continue
        # cut right before an optional subsection: what QEMU writes without it
        assert data[n] == 0x05 and DECODERS[name].encode(node, ctx(layout)) == data[:n]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_random_damage_decodes_exactly_or_is_a_layout_error(name, data):
    layout = STRATEGIES[name][0]
    blob = bytearray(encode_frame(*linux_like(name), layout))
    # most of the damage where the device's own part is
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1) | st.integers(300, 1100))
        blob[i] = data.draw(st.integers(0, 255))
    try:
        node = DECODERS[name].decode(bytes(blob), ctx(layout))
    except QemuVirtioLayoutError:
        return
    assert DECODERS[name].encode(node, ctx(layout)) == bytes(blob)


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, old
    return data.replace(old, new)


def net_with(**changes) -> bytes:
    pci, dev = linux_like("net")
    for k, v in changes.items():
        setattr(dev, k, v)
    return encode_frame(pci, dev, qd.NET)


@pytest.mark.parametrize("name, damage, message", [
    ("net", lambda d: replace_once(d, b"\0\0\0\1" + bytes.fromhex("333300000001"),
                                   b"\0\0\0\x41" + bytes.fromhex("333300000001")),
     "mac_table.in_use 65; QEMU's table has 64 entries"),
    ("net", lambda d: net_with(rss=qd.QemuVirtioNetRss()).replace(
        b"virtio-net-device/rss\0\0\0\1", b"virtio-net-device/rss\0\0\0\2"),
     "'virtio-net-device/rss' version 2; this decoder knows version 1"),
    ("net", lambda d: net_with(rss=qd.QemuVirtioNetRss()).replace(
        b"virtio-net-device/rss", b"virtio-net-device/xyz"),
     "unknown subsection 'virtio-net-device/xyz' of virtio-net-device"),
    ("net", lambda d: net_with(rss=qd.QemuVirtioNetRss()).replace(
        b"\x15virtio-net-device/rss", b"\x19virtio-net-device/backend"),
     "'virtio-net-device/backend' is not decoded: it is a vhost-user back-end's own state"),
    ("balloon", lambda d: d.replace(b"virtio-balloon-device/page-poison",
                                    b"virtio-balloon-device/page-poisox"),
     "unknown subsection 'virtio-balloon-device/page-poisox' of virtio-balloon-device"),
    ("serial", lambda d: replace_once(d, b"\0\0\0\x1f\0\0\0\3", b"\0\0\0\x20\0\0\0\3"),
     "max_nr_ports 32 with 64 queues"),
    ("serial", lambda d: replace_once(d, b"\0\0\0\1\0\1\0\0\0\1\0\0\0\x0c",
                                      b"\0\0\0\1\0\1\0\0\0\2\0\0\0\x0c"),
     r"ports\[1\] element popped is 2; QEMU writes a bool as 0 or 1"),
    ("serial", lambda d: replace_once(d, b"\0\0\0\0\1\1\0\0\0\0", b"\0\0\0\0\2\1\0\0\0\0"),
     r"ports\[0\].guest_connected is 2"),
    ("rng", lambda d: replace_once(d, b"\x05\x15virtio/64bit_features",
                                   b"\0\x05\x15virtio/64bit_features"),
     "bytes where this device saves nothing"),
])
def test_damaged_device_parts(name, damage, message):
    layout = STRATEGIES[name][0]
    data = damage(encode_frame(*linux_like(name), layout))
    with pytest.raises(QemuVirtioLayoutError, match=message):
        DECODERS[name].decode(data, ctx(layout))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_other_section_versions_are_refused(name):
    layout = STRATEGIES[name][0]
    data = encode_frame(*linux_like(name), layout)
    other = layout.section_version + 1
    with pytest.raises(QemuVirtioLayoutError, match=f"section version {other}"):
        DECODERS[name].decode(data, dict(ctx(layout), version=other))


# ---------------------------------------------------------------------------
# nodes a user edited


def edited(name: str, edit) -> dict:
    layout = STRATEGIES[name][0]
    node = DECODERS[name].decode(encode_frame(*linux_like(name), layout), ctx(layout))
    bad = copy.deepcopy(node)
    edit(bad["virtio-backend"])
    return bad


@pytest.mark.parametrize("name, edit, error, message", [
    ("net", lambda b: b.update(mac=b"\1\2\3"), StateError, "mac"),
    ("net", lambda b: b.update(mac_table=[b"\1\2"]), StateError, r"mac_table\[0\]"),
    ("net", lambda b: b.pop("curr_guest_offloads"), QemuVirtioLayoutError,
     "curr_guest_offloads must be present"),
    ("net", lambda b: b.update(max_queue_pairs=4), QemuVirtioLayoutError,
     "max_queue_pairs and curr_queue_pairs are written together"),
    ("net", lambda b: b.update(max_queue_pairs=4, curr_queue_pairs=3), QemuVirtioLayoutError,
     "tx_waiting_1 has 0 entries; curr_queue_pairs - 1 is 2"),
    ("net", lambda b: b.update(max_queue_pairs=1, curr_queue_pairs=1), QemuVirtioLayoutError,
     "QEMU writes them when max is above 1"),
    ("balloon", lambda b: b.update(vitio_page_poison={"poison_val": 1}), QemuVirtioLayoutError,
     "one subsection under two names"),
    ("balloon", lambda b: b.update(num_pages=1 << 32), StateError, "num_pages"),
    ("serial", lambda b: b.update(ports_map=[3, 0]), QemuVirtioLayoutError,
     "max_nr_ports 31 needs 1 ports_map words"),
    ("serial", lambda b: b.update(max_nr_ports=1), QemuVirtioLayoutError,
     "max_nr_ports 1 with 2 ports"),
    ("serial", lambda b: b["ports"][1]["elem"].update(ndescs=3), QemuVirtioLayoutError,
     r"ports\[1\].elem.ndescs must be absent"),
    ("rng", lambda b: b.update(bogus=1), StateError, "bogus: unexpected field"),
])
def test_an_edit_qemu_cannot_hold_is_refused(name, edit, error, message):
    layout = STRATEGIES[name][0]
    with pytest.raises(error, match=message):
        DECODERS[name].encode(edited(name, edit), ctx(layout))


def test_an_edit_that_fits_is_written():
    layout = qd.NET
    node = edited("net", lambda b: b.update(promisc=1, mac_table=[*b["mac_table"],
                                                                   bytes(6)]))
    again = DECODERS["net"].decode(DECODERS["net"].encode(node, ctx(layout)), ctx(layout))
    assert again == node


def test_a_node_of_another_device_is_refused():
    node = DECODERS["rng"].decode(encode_frame(*linux_like("rng"), qd.RNG), ctx(qd.RNG))
    with pytest.raises(QemuVirtioLayoutError, match="expected a qemu-virtio-scsi@1 node"):
        DECODERS["scsi"].encode(node, ctx(qd.SCSI))


# ---------------------------------------------------------------------------
# registration


def test_the_plugin_registers_every_decoder_and_type():
    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    reg.add_plugin(virtio_plugin, "migtree-virtio")
    vmsds = {"virtio-blk", "virtio-net", "virtio-balloon", "virtio-console", "virtio-rng",
             "virtio-scsi", "virtio-gpu"}
    assert {key for fmt, key in reg.decoders if fmt == "qemu"} >= vmsds
    for vmsd in vmsds:
        assert reg.decoders[("qemu", vmsd)].plugin == "migtree-virtio"
    for name in ("qemu-virtio-net", "qemu-virtio-balloon", "qemu-virtio-serial",
                 "qemu-virtio-rng", "qemu-virtio-scsi", "qemu-virtio-gpu"):
        info = reg.types.lookup(name)
        assert info.abstract and info.version == 1
        with pytest.raises(MigtreeError):
            reg.types.create(name)
