"""QEMU's virtio-blk section, decoded: the bytes ``virtio_save`` writes for a
virtio-blk-pci device, turned into a ``qemu-virtio-pci`` node (the PCI
proxy) with a ``qemu-virtio-blk`` child ``virtio-backend`` (the virtio
device), and written back byte for byte.

The frame around the device (transport config, device header, queues,
``virtio/*`` subsections) is :mod:`migtree_virtio.qemu_frame`'s, shared with
the other devices (:mod:`migtree_virtio.qemu_devices`). virtio-blk's own
part is ``virtio_blk_save_device`` (``hw/block/virtio-blk.c``): per request
in flight, s8 1, the queue index u32 (only with more than one queue), (u32
``ndescs`` when RING_PACKED is offered) and QEMU's ``VirtQueueElementOld`` —
a 49,168-byte C struct in the host's byte order (little-endian x86-64
here): index, out_num, in_num, 1024 in and out addresses, 1024 in and out
iovecs; then s8 0. The same in QEMU 5.2, 7.2 and 10.0.

The node types are QEMU's layout, not ours: ``qemu-virtio-pci@1`` and
``qemu-virtio-blk@1`` (abstract types, registered so streams carry their
schemas and the strict input visitor checks a node before it is encoded).
The filter pair :data:`QEMU_PAIR` turns them into this plugin's own
``virtio-pci@1`` + ``virtio-blk@1`` and back; what QEMU keeps and we do not
rides in the stash, so the way back is byte-identical.
"""

from __future__ import annotations

from typing import Any

import attrs

from migtree.errors import FilterError
from migtree.fields import U32, array, optional, u32
from migtree.filters import Filter, FilterPair
from migtree.formats import OpaqueDecoder
from migtree.visitor import node_to_state, state_to_node

from .qemu_frame import (  # noqa: F401  (re-exported: this module's public names)
    BACKEND,
    ELEMENT_SIZE,
    PCI_CAP_ID_EXP,
    PCI_CAP_ID_MSIX,
    PCI_CAPABILITY_LIST,
    PCI_CONFIG_SPACE_SIZE,
    PCI_MSIX_ENTRY_SIZE,
    PCI_STATUS,
    PCI_STATUS_CAP_LIST,
    PCIE_CONFIG_SPACE_SIZE,
    QEMU_VM_SUBSECTION,
    TYPE_PCI,
    VIRTIO_QUEUE_MAX,
    VIRTQUEUE_MAX_SIZE,
    DeviceLayout,
    Frame,
    QemuModernQueue,
    QemuModernState,
    QemuPackedQueue,
    QemuPackedVirtqueues,
    QemuQueue,
    QemuRingAddrs,
    QemuRingsize,
    QemuSg,
    QemuVirtioDeviceState,
    QemuVirtioLayoutError,
    QemuVirtioPci,
    QemuVirtioPciExtra,
    QemuVirtioPciState,
    QemuVirtqueues,
    Reader,
    be,
    decode_frame,
    device_type,
    element_bytes,
    encode_frame,
    frame_node,
    msix_vectors,
    ndescs_bytes,
    node_states,
    read_element,
    sub_head,
    where_of,
)
from .qemu_frame import fields_of as _fields

TYPE_BLK = "qemu-virtio-blk"
#: the QEMU section version of virtio-blk (``vmstate_virtio_blk``) this layout is
VMSD_VERSION = 2

#: kept for callers of the older names
_sub_head = sub_head


# ---------------------------------------------------------------------------
# state declarations (QEMU's names)


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
class QemuVirtioBlkState(QemuVirtioDeviceState):
    """``qemu-virtio-blk``: QEMU's ``VirtIODevice`` and ``VirtIOBlock`` as
    ``virtio_save`` writes them."""

    inflight: list[QemuRequest] = array(QemuRequest, max_length=1 << 16,
                                        doc="virtio_blk_save_device: requests in flight, "
                                            "in QEMU's list order")


# ---------------------------------------------------------------------------
# virtio_blk_save_device


def _read_blk(r: Reader, dev: QemuVirtioBlkState, frame: Frame) -> None:
    nq = frame.nq
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
        if frame.packed:
            req.ndescs = r.be(4, f"{what} ndescs")
        req.index, req.out_sg, req.in_sg = read_element(r, what)
        dev.inflight.append(req)


def _write_blk(dev: QemuVirtioBlkState, frame: Frame) -> bytes:
    out = bytearray()
    where, nq = frame.where, frame.nq
    for i, req in enumerate(dev.inflight):
        out += b"\x01"
        if nq > 1:
            if req.queue >= nq:
                raise QemuVirtioLayoutError(f"{where}: inflight[{i}].queue {req.queue} of "
                                            f"{nq} queues")
            out += be(req.queue, 4)
        elif req.queue != 0:
            raise QemuVirtioLayoutError(f"{where}: inflight[{i}].queue is {req.queue} but the "
                                        "device has one queue")
        out += ndescs_bytes(req.ndescs, frame.packed, f"inflight[{i}]", where)
        out += element_bytes(req.index, req.out_sg, req.in_sg)
    return bytes(out + b"\x00")


#: virtio-blk's part of the frame
BLK = DeviceLayout(
    type_name=TYPE_BLK, vmsd_name="virtio-blk", section_version=VMSD_VERSION,
    state=QemuVirtioBlkState, read=_read_blk, write=_write_blk,
    elements=lambda dev: dev.inflight,
    description="QEMU 5.2/7.2/10.0 virtio-blk-pci 'virtio' field (virtio_save) <-> "
                "qemu-virtio-pci node with a qemu-virtio-blk virtio-backend child")

QemuVirtioBlk = device_type(
    TYPE_BLK, QemuVirtioBlkState,
    "QEMU's virtio-blk device state (the proxy's ``virtio-backend``) as its stream holds "
    "it. Not instantiable.", __name__)


def decode_states(data: bytes, ctx: Any = None) -> tuple[QemuVirtioPciState,
                                                          QemuVirtioBlkState]:
    """Parse the ``virtio`` field of a QEMU virtio-blk-pci section."""
    return decode_frame(data, ctx, BLK)


def decode(data: bytes, ctx: Any = None) -> dict[str, Any]:
    """The ``virtio`` field's bytes as a ``qemu-virtio-pci`` node with its
    ``qemu-virtio-blk`` child ``virtio-backend``."""
    return frame_node(*decode_states(data, ctx), BLK)


def encode_states(pci: QemuVirtioPciState, dev: QemuVirtioBlkState, where: str = "") -> bytes:
    return encode_frame(pci, dev, BLK, where)


def encode(node: dict[str, Any], ctx: Any = None) -> bytes:
    """The ``virtio`` field's bytes of a ``qemu-virtio-pci`` node (with its
    ``qemu-virtio-blk`` child); every value is checked by the core's strict
    input visitor first, so a bad edit is an error naming its field."""
    where = where_of(ctx, BLK.vmsd_name)
    return encode_states(*node_states(node, BLK, where), where)


#: registered through ``migtree_register_opaque_decoders``
DECODER = OpaqueDecoder(format="qemu", key=BLK.vmsd_name, decode=decode, encode=encode,
                        description=BLK.description)


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
