"""The QEMU virtio_save layout codec (``migtree_virtio.qemu``) without a
QEMU: every state it can hold round-trips through the bytes, damaged bytes
are errors naming the part and offset (never another exception), a node a
user broke is refused naming its field, and the filter pair to our own
virtio-pci/virtio-blk is the identity there and back. The real streams are
in tests/qemu/test_qemu_virtio.py."""

from __future__ import annotations

import copy
import random
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migtree import builtin
from migtree.errors import FilterError, MigtreeError, StateError
from migtree.registry import Registry
from migtree.visitor import node_to_state
from migtree_virtio import plugin as virtio_plugin
from migtree_virtio import qemu as vq
from migtree_virtio.qemu import (
    ELEMENT_SIZE,
    QemuModernQueue,
    QemuModernState,
    QemuPackedQueue,
    QemuPackedVirtqueues,
    QemuQueue,
    QemuRequest,
    QemuRingAddrs,
    QemuRingsize,
    QemuSg,
    QemuVirtioBlkState,
    QemuVirtioLayoutError,
    QemuVirtioPciExtra,
    QemuVirtioPciState,
    QemuVirtqueues,
)
from migtree_virtio.state import VirtioBlkState, VirtioPciState

CTX = {"idstr": "0000:00:02.0/virtio-blk", "instance_id": 0, "vmsd_name": "virtio-blk",
       "version": 2, "field": "virtio"}


def pci_config(nvec: int, express: bool = False, seed: int = 0) -> bytes:
    """A config space of a transitional virtio-blk function with an MSI-X
    capability of ``nvec`` vectors (none when 0) and a PCI Express one."""
    rnd = random.Random(seed)
    cfg = bytearray(rnd.randbytes(4096 if express else 256))
    cfg[0:4] = bytes.fromhex("f41a0110")
    cfg[6] = 0x10  # capability list
    chain = ([0x98] if nvec else []) + ([0x40] if express else [])
    cfg[0x34] = chain[0] if chain else 0
    for i, at in enumerate(chain):
        cfg[at] = vq.PCI_CAP_ID_MSIX if at == 0x98 else vq.PCI_CAP_ID_EXP
        cfg[at + 1] = chain[i + 1] if i + 1 < len(chain) else 0
        if at == 0x98:
            cfg[at + 2:at + 4] = (nvec - 1).to_bytes(2, "little")
    return bytes(cfg)


def u(bits: int):
    return st.integers(0, (1 << bits) - 1)


@st.composite
def qemu_states(draw, *, ours: bool = False):
    """A consistent (pci, dev) pair: what QEMU could have written. With
    ``ours``: also within our virtio-pci/virtio-blk ranges (256-byte config,
    at most 64 queues and 65 vectors, 16-bit queue sizes and heads, 32-bit
    buffer lengths)."""
    nq = draw(st.integers(1, 4))
    nvec = draw(st.sampled_from([0, 1, nq + 1, 9] + ([] if ours else [65, 100])))
    express = False if ours else draw(st.booleans())
    packed = draw(st.booleans())
    sg = st.builds(QemuSg, u(64), u(32) if ours else u(64))
    pci = QemuVirtioPciState(
        pci_version_id=draw(st.sampled_from([2, 1, -3])),
        pci_config=pci_config(nvec, express, draw(u(16))),
        irq_state=draw(st.lists(st.integers(-2**31, 2**31 - 1), min_size=4, max_size=4)),
        msix_table=draw(st.binary(min_size=16 * nvec, max_size=16 * nvec)),
        msix_pba=draw(st.binary(min_size=(nvec + 7) // 8, max_size=(nvec + 7) // 8)),
    )
    if draw(st.booleans()):
        ms = None
        if draw(st.booleans()):
            ms = QemuModernState(draw(u(32)), draw(u(32)), [draw(u(32)), draw(u(32))],
                                 [QemuModernQueue(draw(u(16)), draw(st.booleans()),
                                                  draw(u(64)), draw(u(64)), draw(u(64)))
                                  for _ in range(nq)])
        pci.extra_state = QemuVirtioPciExtra(ms)
    dev = QemuVirtioBlkState(
        status=draw(u(8)), isr=draw(u(8)), queue_sel=draw(u(16)),
        guest_features_lo=draw(u(32)),
        config=draw(st.binary(max_size=64)),
        config_vector=draw(u(16)) if nvec else None,
        queues=[QemuQueue(draw(st.integers(1, 1024) if ours else st.integers(1, 2**32 - 1)),
                          draw(u(64)), draw(u(16)), draw(u(16)) if nvec else None)
                for _ in range(nq)],
        inflight=[QemuRequest(queue=draw(st.integers(0, nq - 1)),
                              index=draw(u(16) if ours else u(32)),
                              out_sg=draw(st.lists(sg, max_size=3)),
                              in_sg=draw(st.lists(sg, max_size=3)),
                              ndescs=draw(u(32)) if packed else None)
                  for _ in range(draw(st.integers(0, 2)))],
        device_endian=draw(st.none() | u(8)),
        guest_features=draw(st.none() | u(64)),
        virtqueues=draw(st.none() | st.just(QemuVirtqueues(
            [QemuRingAddrs(draw(u(64)), draw(u(64))) for _ in range(nq)]))),
        ringsize=draw(st.none() | st.just(QemuRingsize([draw(u(32)) for _ in range(nq)]))),
        broken=draw(st.none() | st.booleans()),
        started=draw(st.none() | st.booleans()),
        packed_virtqueues=QemuPackedVirtqueues(
            [QemuPackedQueue(draw(u(16)), draw(st.booleans()), draw(u(16)), draw(st.booleans()),
                             draw(u(32))) for _ in range(nq)]) if packed else None,
        disabled=draw(st.none() | st.booleans()),
    )
    if nq == 1:
        for r in dev.inflight:
            r.queue = 0
    return pci, dev


def node_of(pci: QemuVirtioPciState, dev: QemuVirtioBlkState) -> dict:
    return vq.decode(vq.encode_states(pci, dev), CTX)


def linux_like() -> tuple[QemuVirtioPciState, QemuVirtioBlkState]:
    """Shaped like the Linux guest's section (tests/qemu): one queue, two
    vectors, modern, started, one request in flight."""
    q = QemuQueue(256, 0x633C000, 49491, 1)
    pci = QemuVirtioPciState(
        pci_config=pci_config(2), msix_table=bytes(range(32)), msix_pba=b"\x00",
        extra_state=QemuVirtioPciExtra(QemuModernState(
            1, 1, [0x30006054, 0x101],
            [QemuModernQueue(256, True, 0x633C000, 0x633D000, 0x633D240)])))
    dev = QemuVirtioBlkState(
        status=15, isr=1, guest_features_lo=0x30006054, config=(32768).to_bytes(8, "little")
        + bytes(49), config_vector=0, queues=[q],
        inflight=[QemuRequest(0, 7, [QemuSg(0x62E8010, 16), QemuSg(0x29C1000, 4096)],
                              [QemuSg(0x62E8020, 1)])],
        guest_features=0x10130006054, virtqueues=QemuVirtqueues([QemuRingAddrs(0x633D000,
                                                                               0x633D240)]),
        started=True)
    return pci, dev


# ---------------------------------------------------------------------------
# bytes <-> state


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qemu_states())
def test_every_state_roundtrips_through_the_bytes(state):
    pci, dev = state
    data = vq.encode_states(pci, dev)
    assert vq.decode_states(data, CTX) == (pci, dev)
    node = vq.decode(data, CTX)
    assert node["__type__"] == "qemu-virtio-pci"
    assert node["virtio-backend"]["__type__"] == "qemu-virtio-blk"
    assert vq.encode(node, CTX) == data


def test_the_layout_byte_by_byte():
    """The parts in QEMU's order, at the sizes QEMU writes them."""
    pci, dev = linux_like()
    data = vq.encode_states(pci, dev)
    assert data[:4] == b"\x00\x00\x00\x02"  # PCIDevice version_id, be32
    assert data[4:260] == pci.pci_config
    at = 260 + 16  # irq_state
    assert data[at:at + 32] == pci.msix_table and data[at + 32] == 0  # ceil(2/8) PBA bytes
    at += 33
    assert data[at:at + 2] == b"\x00\x00"  # config_vector
    assert data[at + 2:at + 6] == bytes([15, 1, 0, 0])  # status, isr, queue_sel
    at += 6 + 4
    assert int.from_bytes(data[at:at + 4], "big") == 57  # config_len
    at += 4 + 57
    assert data[at:at + 4] == b"\x00\x00\x00\x01"  # one queue
    assert data[at + 4:at + 20] == (256).to_bytes(4, "big") + (0x633C000).to_bytes(8, "big") + \
        (49491).to_bytes(2, "big") + (1).to_bytes(2, "big")
    at += 20
    assert data[at] == 1  # a request follows; one queue: no queue index
    elem = data[at + 1:at + 1 + ELEMENT_SIZE]
    assert elem[:12] == (7).to_bytes(4, "little") + (2).to_bytes(4, "little") + \
        (1).to_bytes(4, "little")  # index, out_num, in_num: host byte order
    assert elem[16:24] == (0x62E8020).to_bytes(8, "little")  # in_addr[0]
    assert elem[16 + 8 * 1024:24 + 8 * 1024] == (0x62E8010).to_bytes(8, "little")  # out_addr
    at += 1 + ELEMENT_SIZE
    assert data[at] == 0  # end of the list
    assert data[at + 1:at + 3] == b"\x05\x15" and data[at + 3:at + 24] == \
        b"virtio/64bit_features"
    assert b"virtio/virtqueues" in data and b"virtio_pci/modern_state" in data
    assert data.index(b"virtio/extra_state") < data.index(b"virtio_pci/modern_state") < \
        data.index(b"virtio/started")
    assert data.endswith(b"virtio/started" + b"\x00\x00\x00\x01\x01")
    assert vq.decode_states(data, CTX) == (pci, dev)


def test_queue_index_written_with_more_than_one_queue():
    pci, dev = linux_like()
    dev.queues.append(QemuQueue(256, 0, 0, 2))
    pci.pci_config = pci_config(3)
    pci.msix_table = bytes(48)
    dev.virtqueues.vq.append(QemuRingAddrs())
    pci.extra_state.modern_state.vqs.append(QemuModernQueue())
    dev.inflight[0].queue = 1
    data = vq.encode_states(pci, dev)
    marker = data.index(b"\x01\x00\x00\x00\x01\x07\x00\x00\x00")  # 1, queue 1, index 7
    assert marker > 0
    assert vq.decode_states(data, CTX) == (pci, dev)


def test_arrays_of_all_1024_queues_keep_entries_past_the_device_queues():
    """QEMU writes 1024 entries; a guest can leave values in a slot past the
    device's queues (modern_state): they are kept, trailing zeros are not."""
    pci, dev = linux_like()
    pci.extra_state.modern_state.vqs += [QemuModernQueue(), QemuModernQueue(num=8)]
    data = vq.encode_states(pci, dev)
    node = vq.decode(data, CTX)
    assert len(node["extra_state"]["modern_state"]["vqs"]) == 3
    pci.extra_state.modern_state.vqs.append(QemuModernQueue())  # a trailing blank
    assert vq.encode_states(pci, dev) == data
    assert len(vq.decode(data, CTX)["virtio-backend"]["virtqueues"]["vq"]) == 1


def test_pci_express_function_has_4096_bytes_of_config():
    pci, dev = linux_like()
    pci.pci_config = pci_config(2, express=True)
    data = vq.encode_states(pci, dev)
    assert vq.decode_states(data, CTX)[0].pci_config == pci.pci_config
    assert len(data) == len(vq.encode_states(*linux_like())) + 4096 - 256


def test_without_msix_there_are_no_vectors():
    pci, dev = linux_like()
    pci.pci_config, pci.msix_table, pci.msix_pba = pci_config(0), b"", b""
    dev.config_vector = None
    dev.queues[0].vector = None
    node = vq.decode(vq.encode_states(pci, dev), CTX)
    assert "config_vector" not in node["virtio-backend"]
    assert "vector" not in node["virtio-backend"]["queues"][0]


def test_packed_ring_requests_carry_ndescs():
    pci, dev = linux_like()
    dev.packed_virtqueues = QemuPackedVirtqueues([QemuPackedQueue(5, True, 4, False, 1)])
    dev.inflight[0].ndescs = 3
    data = vq.encode_states(pci, dev)
    assert vq.decode_states(data, CTX) == (pci, dev)
    dev.inflight[0].ndescs = None
    with pytest.raises(QemuVirtioLayoutError, match=r"inflight\[0\].ndescs must be present"):
        vq.encode_states(pci, dev)


# ---------------------------------------------------------------------------
# damaged bytes


def test_every_truncation_is_a_layout_error_naming_the_part():
    data = vq.encode_states(*linux_like())
    cuts = sorted({*range(0, 400), *random.Random(1).sample(range(400, len(data)), 300)})
    for n in cuts:
        with pytest.raises(QemuVirtioLayoutError) as e:
            vq.decode(data[:n], CTX)
        assert "0000:00:02.0/virtio-blk" in str(e.value) and "byte" in str(e.value)
    with pytest.raises(QemuVirtioLayoutError, match="status needs 1 bytes, 0 left"):
        vq.decode(data[:4 + 256 + 16 + 33 + 2], CTX)


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.replace(b"virtio/started", b"virtio/startex"),
     "unknown subsection 'virtio/startex'"),
    (lambda d: d.replace(b"virtio/started\x00\x00\x00\x01", b"virtio/started\x00\x00\x00\x02"),
     "'virtio/started' version 2"),
    (lambda d: d.replace(b"virtio/started\x00\x00\x00\x01\x01",
                         b"virtio/started\x00\x00\x00\x01\x02"),
     "started is 2; QEMU writes a bool as 0 or 1"),
    (lambda d: d + b"\x00", "bytes after the last part, not a subsection"),
])
def test_damaged_subsections(damage, message):
    data = damage(vq.encode_states(*linux_like()))
    with pytest.raises(QemuVirtioLayoutError, match=message):
        vq.decode(data, CTX)


def test_subsections_out_of_qemus_order():
    pci, dev = linux_like()
    data = vq.encode_states(pci, QemuVirtioBlkState(**{
        f: getattr(dev, f) for f in ("status", "isr", "queue_sel", "guest_features_lo",
                                     "config", "config_vector", "queues")}))
    data += vq._sub_head("virtio/started") + b"\x01"
    assert vq.decode_states(data, CTX)[1].started is True
    data += vq._sub_head("virtio/64bit_features") + bytes(8)
    with pytest.raises(QemuVirtioLayoutError, match="'virtio/64bit_features' out of QEMU's order"):
        vq.decode(data, CTX)


def test_damaged_request_in_flight():
    pci, dev = linux_like()
    data = bytearray(vq.encode_states(pci, dev))
    # where the list starts: after the part that is the same without it
    start = len(vq.encode_states(copy.copy(pci), QemuVirtioBlkState(**{
        f: getattr(dev, f) for f in ("status", "isr", "queue_sel", "guest_features_lo",
                                     "config", "config_vector", "queues")}))) - 1
    start -= len(vq._sub_head("virtio_pci/modern_state")) + len(vq._sub_head(
        "virtio/extra_state")) + 4 + 4 + 8 + 28 * 1024
    assert data[start] == 1
    bad = bytearray(data)
    bad[start] = 2
    with pytest.raises(QemuVirtioLayoutError, match="in-flight list marker is 2"):
        vq.decode(bytes(bad), CTX)
    bad = bytearray(data)
    bad[start + 1 + 12] = 1  # padding after in_num
    with pytest.raises(QemuVirtioLayoutError, match="padding after in_num is not zero"):
        vq.decode(bytes(bad), CTX)
    bad = bytearray(data)
    bad[start + 1 + 16 + 8 * 5] = 1  # in_addr[5] with one in buffer
    with pytest.raises(QemuVirtioLayoutError, match="in_addr has values past its 1 buffers"):
        vq.decode(bytes(bad), CTX)
    bad = bytearray(data)
    bad[start + 1 + 16 + 16 * 1024] = 1  # in_sg[0].iov_base
    with pytest.raises(QemuVirtioLayoutError, match="non-zero iov_base"):
        vq.decode(bytes(bad), CTX)
    bad = bytearray(data)
    bad[start + 1 + 4:start + 1 + 8] = (2000).to_bytes(4, "little")  # out_num
    with pytest.raises(QemuVirtioLayoutError, match="at most 1024"):
        vq.decode(bytes(bad), CTX)


def test_other_section_versions_are_refused():
    with pytest.raises(QemuVirtioLayoutError, match="section version 3"):
        vq.decode(vq.encode_states(*linux_like()), dict(CTX, version=3))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_damage_decodes_exactly_or_is_a_layout_error(data):
    blob = bytearray(vq.encode_states(*linux_like()))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    blob = bytes(blob)
    try:
        node = vq.decode(blob, CTX)
    except QemuVirtioLayoutError:
        return
    assert vq.encode(node, CTX) == blob


# ---------------------------------------------------------------------------
# nodes a user edited


def test_an_edited_node_is_checked_by_the_strict_input_visitor():
    node = vq.decode(vq.encode_states(*linux_like()), CTX)
    bad = copy.deepcopy(node)
    bad["virtio-backend"]["queues"][0]["last_avail_idx"] = 1 << 16
    with pytest.raises(StateError, match=r"queues\[0\].last_avail_idx"):
        vq.encode(bad, CTX)
    bad = copy.deepcopy(node)
    bad["virtio-backend"]["bogus"] = 1
    with pytest.raises(StateError, match="bogus: unexpected field"):
        vq.encode(bad, CTX)
    bad = copy.deepcopy(node)
    del bad["virtio-backend"]["queues"][0]["vector"]
    with pytest.raises(QemuVirtioLayoutError, match=r"queues\[0\].vector must be present"):
        vq.encode(bad, CTX)
    bad = copy.deepcopy(node)
    bad["msix_table"] = bad["msix_table"][:16]
    with pytest.raises(QemuVirtioLayoutError, match="2 MSI-X vectors: msix_table needs 32"):
        vq.encode(bad, CTX)
    bad = copy.deepcopy(node)
    bad["virtio-backend"]["inflight"][0]["queue"] = 1
    with pytest.raises(QemuVirtioLayoutError, match="device has one queue"):
        vq.encode(bad, CTX)
    # an edit that fits is written
    ok = copy.deepcopy(node)
    ok["virtio-backend"]["queue_sel"] = 5
    assert vq.decode(vq.encode(ok, CTX), CTX) == ok


def test_a_node_left_in_our_layout_is_refused_with_the_way_back():
    node = vq.decode(vq.encode_states(*linux_like()), CTX)
    ours = vq.qemu_to_migtree(node, types.SimpleNamespace(path="/p", stash_key="k"))
    with pytest.raises(QemuVirtioLayoutError, match="backward filter"):
        vq.encode(ours, CTX)


# ---------------------------------------------------------------------------
# the filter pair


def ctx(path: str = "/machine/peripheral/vblk0"):
    return types.SimpleNamespace(path=path, stash_key=vq.QEMU_PAIR_NAME)


def ours_valid(node: dict) -> None:
    plain = {k: v for k, v in node.items() if not k.startswith("__") and k != "virtio-backend"}
    node_to_state(VirtioPciState, plain, 1, "/p")
    blk = node["virtio-backend"]
    node_to_state(VirtioBlkState, {k: v for k, v in blk.items() if not k.startswith("__")}, 1,
                  "/p/virtio-backend")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qemu_states(ours=True))
def test_forward_gives_our_layout_and_backward_the_same_bytes(state):
    data = vq.encode_states(*state)
    node = vq.decode(data, CTX)
    ours = vq.qemu_to_migtree(copy.deepcopy(node), ctx())
    assert (ours["__type__"], ours["virtio-backend"]["__type__"]) == ("virtio-pci",
                                                                       "virtio-blk")
    ours_valid(ours)
    back = vq.migtree_to_qemu(ours, ctx())
    assert back == node
    assert vq.encode(back, CTX) == data


def test_forward_maps_fields_by_meaning():
    pci, dev = linux_like()
    ours = vq.qemu_to_migtree(node_of(pci, dev), ctx())
    blk = ours["virtio-backend"]
    assert ours["device_feature_select"] == ours["driver_feature_select"] == 1
    assert len(ours["msix_pba"]) == 8  # our PBA is a whole QWORD
    assert blk["driver_features"] == 0x10130006054 and blk["capacity"] == 32768
    assert blk["queues"] == [{"size": 256, "enable": True, "msix_vector": 1,
                              "desc": 0x633C000, "driver": 0x633D000, "device": 0x633D240,
                              "last_avail_idx": 49491, "used_idx": 49490}]
    assert blk["inflight"] == [{"queue": 0, "head": 7,
                                "out_sg": [{"addr": 0x62E8010, "len": 16},
                                           {"addr": 0x29C1000, "len": 4096}],
                                "in_sg": [{"addr": 0x62E8020, "len": 1}]}]


def test_legacy_queues_get_their_rings_where_qemu_puts_them():
    pci, dev = linux_like()
    pci.extra_state = None
    dev.virtqueues = None
    dev.guest_features = None
    ours = vq.qemu_to_migtree(node_of(pci, dev), ctx())
    q = ours["virtio-backend"]["queues"][0]
    assert q["driver"] == 0x633C000 + 16 * 256
    assert q["device"] == (q["driver"] + 4 + 2 * 256 + 4095) & ~4095
    assert vq.encode(vq.migtree_to_qemu(ours, ctx()), CTX) == vq.encode_states(pci, dev)


def test_edits_in_our_layout_reach_qemus_fields():
    ours = vq.qemu_to_migtree(node_of(*linux_like()), ctx())
    ours["queue_select"] = 3
    ours["virtio-backend"]["queues"][0]["msix_vector"] = 0
    ours["virtio-backend"]["capacity"] = 65536
    back = vq.migtree_to_qemu(ours, ctx())
    dev = back["virtio-backend"]
    assert dev["queue_sel"] == 3 and dev["queues"][0]["vector"] == 0
    assert int.from_bytes(dev["config"][:8], "little") == 65536


@pytest.mark.parametrize("edit, message", [
    (lambda b: b["virtio-backend"]["queues"][0].update(used_idx=5),
     "used index in guest RAM only"),
    (lambda b: b["virtio-backend"].update(config_generation=2),
     "QEMU 7.2 does not migrate it"),
    (lambda b: b["virtio-backend"]["queues"].append(dict(b["virtio-backend"]["queues"][0])),
     "2 queues; QEMU's device has 1"),
    (lambda b: b.pop("__stash__"), "needs the state QEMU keeps"),
])
def test_what_qemu_has_no_place_for_is_a_filter_error(edit, message):
    ours = vq.qemu_to_migtree(node_of(*linux_like()), ctx())
    edit(ours)
    with pytest.raises(FilterError, match=message):
        vq.migtree_to_qemu(ours, ctx())


def test_qemu_values_wider_than_ours_are_a_filter_error():
    pci, dev = linux_like()
    dev.inflight[0].out_sg[1].len = 1 << 33
    with pytest.raises(FilterError, match=r"does not fit virtio-pci@1/virtio-blk@1.*len"):
        vq.qemu_to_migtree(node_of(pci, dev), ctx())


def test_the_pair_round_trips_under_the_engine():
    from migtree import engine

    node = node_of(*linux_like())
    tree = {"__type__": "container", "__version__": 1, "vblk0": copy.deepcopy(node)}
    fwd = engine.Destination(types={"container": (1, 1), "virtio-pci": (1, 1),
                                    "virtio-blk": (1, 1)})
    rep = engine.apply_filters(tree, fwd, [vq.QEMU_PAIR])
    assert [(a.path, a.before, a.after) for a in rep.applications] == [
        ("/vblk0", "qemu-virtio-pci@1", "virtio-pci@1")]
    back = engine.Destination(types={"container": (1, 1), "qemu-virtio-pci": (1, 1),
                                     "qemu-virtio-blk": (1, 1)})
    engine.apply_filters(tree, back, [vq.QEMU_PAIR])
    assert tree["vblk0"] == node


# ---------------------------------------------------------------------------
# registration


def test_the_plugin_registers_the_decoder_and_the_qemu_types():
    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    reg.add_plugin(virtio_plugin, "migtree-virtio")
    dec = reg.decoders[("qemu", "virtio-blk")]
    assert dec.plugin == "migtree-virtio" and dec.decode is vq.decode
    for name in ("qemu-virtio-pci", "qemu-virtio-blk"):
        info = reg.types.lookup(name)
        assert info.abstract and info.version == 1
    with pytest.raises(MigtreeError):
        reg.types.create("qemu-virtio-pci")


def test_our_device_refuses_qemus_transitional_function(tmp_path):
    """The forward filter's output is a valid virtio-pci/virtio-blk node; our
    device's own load check still refuses QEMU's default (transitional,
    device ID 0x1001) config space, as QEMU refuses a config mismatch."""
    from virtio_helpers import make_build

    from migtree.errors import LoadError
    from migtree.tree import load_tree, save_tree

    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)  # the capacity linux_like's config gives
    root, _machine, dev = make_build("split", str(img))
    try:
        ours = vq.qemu_to_migtree(node_of(*linux_like()), ctx())
        ours_valid(ours)
        del ours["__stash__"]
        tree = save_tree(root)
        tree["machine"]["peripheral"]["vblk0"] = ours
        with pytest.raises(LoadError, match=r"PCI config mismatch at 0x02: the source has 0x01"):
            load_tree(tree, root)
    finally:
        dev.vdev.close()
