"""QEMU's virtio-blk section, decoded by the virtio plugin through the
``migtree_register_opaque_decoders`` hook: real streams decode into a
``qemu-virtio-pci`` node with a ``qemu-virtio-blk`` ``virtio-backend`` child
(configured queues, real ring addresses, moving indices, the in-flight
list), re-encode byte-identical, and QEMU takes back what we write — also
after an edit made in our own virtio-pci/virtio-blk layout, and with a
request in flight."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from qemu_streams import (
    MATRIX,
    QemuVM,
    StreamConfig,
    linux_config,
    load_stream,
    make_disk,
    need_qemu,
    resave_under_kvm,
    wait_serial,
)

from migtree_qemu import qevm, qompaths

pytestmark = pytest.mark.qemu

mstream = pytest.importorskip("migtree.stream", reason="the migtree core is not importable")
import migtree_qemu.plugin as qemu_plugin  # noqa: E402
import migtree_virtio.plugin as virtio_plugin  # noqa: E402
from migtree import builtin, engine, hookimpl  # noqa: E402
from migtree.formats import OpaqueDecoder  # noqa: E402
from migtree.registry import Registry  # noqa: E402
from migtree.visitor import node_to_state  # noqa: E402
from migtree_qemu.tree import iter_section_nodes  # noqa: E402
from migtree_virtio import qemu as vq  # noqa: E402
from migtree_virtio.state import VirtioBlkState, VirtioPciState  # noqa: E402

BACKEND = "/machine/peripheral/vblk0/virtio-backend"
STATUS_DRIVER_OK = 4
F_VERSION_1 = 1 << 32


def registry() -> Registry:
    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    reg.add_plugin(qemu_plugin, "migtree-qemu")
    reg.add_plugin(virtio_plugin, "migtree-virtio")
    return reg


def qemu_format(reg: Registry | None = None):
    reg = reg or registry()
    fmt = reg.formats["qemu"]
    fmt._registry = reg  # decoders and schemas from this registry
    return fmt


def virtio_node(tree: dict) -> tuple[str, dict]:
    """``(path, node)`` of the virtio-blk section (decoded: qemu-virtio-pci)."""
    found = [(p, n) for p, n in iter_section_nodes(tree)
             if n["__qemu__"]["idstr"].endswith("/virtio-blk")]
    assert len(found) == 1, found
    return found[0]


def via_cbor(fmt, path: Path, tmp: Path) -> Path:
    """QEMU -> migtree CBOR (a file, with the header's schemas) -> QEMU."""
    header, tree = fmt.read(path)
    cbor = tmp / f"{path.stem}.migtree"
    with open(cbor, "wb") as f:
        mstream.write_tree(f, header["extra"], tree, Registry(), schemas=header["schemas"])
    _, tree2 = mstream.read_tree(cbor)
    out = tmp / f"{path.stem}.back.qevm"
    with open(out, "wb") as f:
        fmt.write(f, None, tree2)
    return out


class GuestRam:
    """Guest-physical reads from a stream's ``pc.ram`` pages (the last copy
    of each page wins, as on a load)."""

    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        self.pages: dict[int, object] = {}
        with qevm.load(path) as s:
            for r in s.ram_records():
                if r.block != "pc.ram":
                    continue
                if r.flags & qevm.RAM_PAGE:
                    self.pages[r.addr] = r.data
                elif r.flags & qevm.RAM_ZERO:
                    self.pages[r.addr] = bytes([r.data]) * s.page_size
            self.page_size = s.page_size

    def read(self, addr: int, n: int) -> bytes:
        base = addr & ~(self.page_size - 1)
        page = self.pages[base]
        if isinstance(page, qevm.PageRef):
            page = self.data[page.offset:page.offset + self.page_size]
        return bytes(page[addr - base:addr - base + n])

    def u16(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 2), "little")


# ---------------------------------------------------------------------------
# streams this file makes (cached in the session's stream directory)


def save_twice(guest: tuple[str, str], root: Path) -> tuple[Path, Path]:
    """The same running Linux guest migrated to a file twice, some I/O apart
    (``cont`` after the first migration): the same VM saved twice."""
    a, b = root / "twice-a.qevm", root / "twice-b.qevm"
    if a.exists() and b.exists():
        return a, b
    cfg = linux_config(guest, "pc")
    disk = make_disk(root / "twice.qcow2")
    serial = root / "twice.serial"
    with QemuVM(cfg.args(disk, serial), root, "twice") as vm:
        for out, count in ((a, 20), (b, 40)):
            wait_serial(vm, serial, "MIGTREE-IO ", count=count)
            qompaths.save(qompaths.walk(vm.qmp), out.with_suffix(".qom.json"))
            vm.migrate_to_file(out.with_suffix(".part"))
            out.with_suffix(".part").rename(out)
            vm.qmp.execute("cont")
    return a, b


def io_error_config(guest: tuple[str, str]) -> StreamConfig:
    return StreamConfig(machine="pc", accel="tcg", smp=2, memory=128, guest=guest,
                        running=True, extra=("-name", "inflight"))


def save_with_request_in_flight(guest: tuple[str, str], root: Path) -> Path:
    """A Linux guest whose disk write fails once (blkdebug injects EIO) with
    ``werror=stop``: QEMU stops the VM with the request kept on virtio-blk's
    retry list, and that list is what ``virtio_blk_save_device`` writes. Two
    vCPUs, so two queues and the queue index before each request."""
    cfg = io_error_config(guest)
    out = root / "inflight.qevm"
    if out.exists():
        return out
    disk = make_disk(root / f"{cfg.name}.qcow2")
    conf = root / "inflight-blkdebug.conf"
    conf.write_text('[inject-error]\nevent = "write_aio"\nerrno = "5"\nonce = "on"\n')
    serial = root / "inflight-src.serial"
    args = [a.replace(f"file={disk},", f"file=blkdebug:{conf}:{disk},werror=stop,rerror=stop,")
            for a in cfg.args(disk, serial)]
    assert any("blkdebug" in a for a in args)
    with QemuVM(args, root, "inflight-src") as vm:
        vm.qmp.wait_until("query-status", lambda r: r.get("status") == "io-error", timeout=180)
        qompaths.save(qompaths.walk(vm.qmp), out.with_suffix(".qom.json"))
        vm.migrate_to_file(out.with_suffix(".part"))
    out.with_suffix(".part").rename(out)
    return out


@pytest.fixture(scope="module", params=["pc", "q35"])
def linux_stream(request, streams, guest_artifacts):
    cfg = linux_config(guest_artifacts, request.param)
    return cfg, streams(cfg)


def queue_status(vm: QemuVM, queue: int) -> dict:
    return vm.qmp.execute("x-query-virtio-queue-status", path=BACKEND, queue=queue)


# ---------------------------------------------------------------------------
# the matrix


@pytest.mark.parametrize("cfg", MATRIX, ids=[c.name for c in MATRIX])
def test_every_stream_of_the_matrix_decodes_and_roundtrips(streams, cfg: StreamConfig):
    path = streams(cfg)
    fmt = qemu_format()
    header, tree = fmt.read(path)
    p, node = virtio_node(tree)
    assert p == "/machine/peripheral/vblk0"
    assert node["__type__"] == "qemu-virtio-pci" and "undecoded" not in node["__qemu__"]
    assert node["__qemu__"]["lifted"] == "virtio"
    dev = node["virtio-backend"]
    assert dev["__type__"] == "qemu-virtio-blk"
    # QEMU 7.2's virtio-blk-pci has num-queues=auto: one queue per vCPU
    assert [q["num"] for q in dev["queues"]] == [256] * cfg.smp
    # one MSI-X vector per queue plus the configuration vector
    assert len(node["msix_table"]) == 16 * (cfg.smp + 1)
    assert {"qemu-virtio-pci@1", "qemu-virtio-blk@1"} <= set(header["schemas"])
    out = io.BytesIO()
    fmt.write(out, header, tree)
    assert out.getvalue() == path.read_bytes()


def test_without_the_virtio_plugin_the_section_stays_a_blob(base_stream):
    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    reg.add_plugin(qemu_plugin, "migtree-qemu")
    _, tree = qemu_format(reg).read(base_stream)
    _, node = virtio_node(tree)
    assert node["__type__"] == "virtio-blk" and isinstance(node["virtio"], bytes)


def test_written_without_the_plugin_is_a_clear_error(base_stream):
    header, tree = qemu_format().read(base_stream)
    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    reg.add_plugin(qemu_plugin, "migtree-qemu")
    with pytest.raises(Exception, match="decoded by a plugin that is not loaded"):
        qemu_format(reg).write(io.BytesIO(), header, tree)


class _BrokenDecoderPlugin:
    """A plugin whose virtio decoder fails on every section."""

    @staticmethod
    @hookimpl
    def migtree_register_opaque_decoders(register):
        def decode(data, ctx):
            raise ValueError(f"cannot read {len(data)} bytes")

        register(OpaqueDecoder("qemu", "virtio-blk", decode=decode,
                               encode=lambda node, ctx: b""))


def test_a_failing_decoder_leaves_the_bytes_opaque_and_says_why(base_stream):
    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    reg.add_plugin(qemu_plugin, "migtree-qemu")
    reg.add_plugin(_BrokenDecoderPlugin, "broken-virtio")
    fmt = qemu_format(reg)
    header, tree = fmt.read(base_stream)
    _, node = virtio_node(tree)
    assert node["__type__"] == "virtio-blk" and isinstance(node["virtio"], bytes)
    assert node["__qemu__"]["undecoded"] == {
        "virtio": f"ValueError: cannot read {len(node['virtio'])} bytes"}
    out = io.BytesIO()
    fmt.write(out, header, tree)  # the bytes, as they were
    assert out.getvalue() == base_stream.read_bytes()


# ---------------------------------------------------------------------------
# the Linux guest doing I/O


def check_guest_virtio(path: Path, node: dict) -> dict:
    """What a booted guest's virtio-blk section must show; returns queue 0."""
    dev = node["virtio-backend"]
    assert dev["status"] & STATUS_DRIVER_OK and dev["started"] is True
    assert dev["guest_features"] & F_VERSION_1
    assert dev["guest_features_lo"] == dev["guest_features"] & 0xFFFFFFFF
    (q,) = dev["queues"]
    ring = dev["virtqueues"]["vq"][0]
    # a split ring as Linux lays it out: table, then the available ring, then
    # the used ring (4-byte aligned); real guest-physical addresses
    assert 0 < q["desc"] < ring["avail"] < ring["used"] < 128 << 20
    assert ring["avail"] == q["desc"] + 16 * q["num"]
    # MSI-X: queue 0 on vector 1, configuration changes on vector 0
    assert (dev["config_vector"], q["vector"]) == (0, 1)
    # the proxy's copy of what the driver wrote into the common configuration
    modern = node["extra_state"]["modern_state"]["vqs"][0]
    assert modern == {"num": 256, "enabled": True, "desc": q["desc"],
                      "avail": ring["avail"], "used": ring["used"]}
    # indices that moved: thousands of requests went through the ring, and
    # guest RAM in the same stream agrees — everything the guest made
    # available was taken (avail.idx) and returned (used.idx); QEMU drained
    # the requests when it stopped the VM, so none is in flight
    ram = GuestRam(path)
    assert q["last_avail_idx"] > 1000
    assert ram.u16(ring["avail"] + 2) == q["last_avail_idx"]
    assert ram.u16(ring["used"] + 2) == q["last_avail_idx"]
    assert dev["inflight"] == []
    return {**q, **ring}


def test_linux_guest_virtio_section_is_state_not_a_blob(linux_stream):
    cfg, path = linux_stream
    _, tree = qemu_format().read(path)
    p, node = virtio_node(tree)
    assert p == "/machine/peripheral/vblk0"
    check_guest_virtio(path, node)
    # the guest-visible configuration: 16 MiB, as the disk was made
    assert int.from_bytes(node["virtio-backend"]["config"][:8], "little") == (16 << 20) // 512


def test_kvm_resaved_linux_guest_decodes_the_same(linux_stream, streams):
    cfg, path = linux_stream
    kcfg = StreamConfig(machine=cfg.machine, accel="kvm", memory=cfg.memory, guest=cfg.guest,
                        running=True)
    need_qemu(kcfg)
    kpath = resave_under_kvm(cfg, path, streams.root)
    fmt = qemu_format()
    header, tree = fmt.read(kpath)
    _, knode = virtio_node(tree)
    _, node = virtio_node(fmt.read(path)[1])
    assert check_guest_virtio(kpath, knode) == check_guest_virtio(path, node)
    out = io.BytesIO()
    fmt.write(out, header, tree)
    assert out.getvalue() == kpath.read_bytes()


def test_qemu_reports_what_we_decoded_and_the_guest_goes_on(linux_stream, streams, tmp_path):
    """Decoded -> migtree CBOR -> encoded: QEMU loads it, its own view of the
    queue (x-query-virtio-queue-status) is what we decoded, and the guest's
    I/O loop continues."""
    cfg, path = linux_stream
    fmt = qemu_format()
    back = via_cbor(fmt, path, tmp_path)
    assert back.read_bytes() == path.read_bytes()
    _, node = virtio_node(fmt.read(back)[1])
    q = check_guest_virtio(back, node)
    disk = tmp_path / "disk.qcow2"
    shutil.copyfile(streams.root / f"{cfg.name}.qcow2", disk)
    vm = load_stream(cfg, back, tmp_path, "virtio", disk=disk)
    try:
        st = queue_status(vm, 0)
        assert (st["vring-num"], st["vring-desc"], st["vring-avail"], st["vring-used"],
                st["last-avail-idx"]) == (q["num"], q["desc"], q["avail"], q["used"],
                                           q["last_avail_idx"])
        assert st["used-idx"] == q["last_avail_idx"] and st["inuse"] == 0
        vm.qmp.execute("cont")
        text = wait_serial(vm, vm.serial, "MIGTREE-IO ", count=5, timeout=120)
        assert "MIGTREE-INIT" not in text
        assert queue_status(vm, 0)["last-avail-idx"] != q["last_avail_idx"]
    finally:
        vm.stop()


def test_an_edit_that_changes_the_fields_size_is_described_again(linux_stream):
    """A request added to the in-flight list makes the 'virtio' field 49,169
    bytes longer; the stream's description (vmdesc) follows and the stream
    reads back with the request."""
    cfg, path = linux_stream
    fmt = qemu_format()
    header, tree = fmt.read(path)
    _, node = virtio_node(tree)
    req = {"queue": 0, "index": 3, "out_sg": [{"addr": 0x1000, "len": 16}],
           "in_sg": [{"addr": 0x2000, "len": 1}]}
    node["virtio-backend"]["inflight"].append(req)
    out = io.BytesIO()
    fmt.write(out, header, tree)
    assert len(out.getvalue()) - path.stat().st_size == 1 + vq.ELEMENT_SIZE
    _, again = fmt.read(io.BytesIO(out.getvalue()))
    assert virtio_node(again)[1]["virtio-backend"]["inflight"] == [req]


# ---------------------------------------------------------------------------
# through our own layout (the filter pair)


def qemu_destination(tree: dict, *, ours: bool) -> engine.Destination:
    """Every type the QEMU tree has, as it is; plus our virtio types
    (``ours``: the virtio section goes to virtio-pci) or QEMU's."""
    types: dict[str, tuple[int, int]] = {}

    def walk(n: dict) -> None:
        t, v = n["__type__"], n["__version__"]
        lo, hi = types.get(t, (v, v))
        types[t] = (min(lo, v), max(hi, v))
        for x in n.values():
            if isinstance(x, dict) and "__type__" in x:
                walk(x)

    walk(tree)
    for name in ("qemu-virtio-pci", "qemu-virtio-blk", "virtio-pci", "virtio-blk"):
        types.pop(name, None)
    if ours:
        types.update({"virtio-pci": (1, 1), "virtio-blk": (1, 1)})
    else:
        types.update({"qemu-virtio-pci": (1, 1), "qemu-virtio-blk": (1, 1)})
    return engine.Destination(types=types)


def to_ours(tree: dict) -> engine.FilterReport:
    return engine.apply_filters(tree, qemu_destination(tree, ours=True), [vq.QEMU_PAIR])


def to_qemu(tree: dict) -> engine.FilterReport:
    return engine.apply_filters(tree, qemu_destination(tree, ours=False), [vq.QEMU_PAIR])


def test_filtered_into_our_layout_and_back_is_byte_identical(linux_stream):
    cfg, path = linux_stream
    fmt = qemu_format()
    header, tree = fmt.read(path)
    _, qnode = virtio_node(tree)
    want = check_guest_virtio(path, qnode)
    report = to_ours(tree)
    assert [a.filter for a in report.applications] == ["qemu-virtio-blk-pci-to-virtio-pci"]
    pci = tree["machine"]["peripheral"]["vblk0"]
    blk = pci["virtio-backend"]
    assert (pci["__type__"], blk["__type__"]) == ("virtio-pci", "virtio-blk")
    # what our own devices load (the strict input visitor says so)
    node_to_state(VirtioPciState, {k: v for k, v in pci.items() if not k.startswith("__")
                                   and k != "virtio-backend"}, 1, "/vblk0")
    node_to_state(VirtioBlkState, {k: v for k, v in blk.items() if not k.startswith("__")},
                  1, "/vblk0/virtio-backend")
    (q,) = blk["queues"]
    assert (q["size"], q["desc"], q["driver"], q["device"], q["enable"]) == (
        256, want["desc"], want["avail"], want["used"], True)
    # QEMU does not save used_idx; nothing in flight, so it is last_avail_idx,
    # which guest RAM confirms
    assert q["used_idx"] == q["last_avail_idx"] == want["last_avail_idx"]
    assert blk["capacity"] == (16 << 20) // 512 and blk["device_status"] == 0x0F
    to_qemu(tree)
    out = io.BytesIO()
    fmt.write(out, header, tree)
    assert out.getvalue() == path.read_bytes()


def test_an_edit_in_our_layout_reaches_qemu(linux_stream, streams, tmp_path):
    """queue_select (the driver's queue selector, which a running Linux
    driver no longer uses) edited on our virtio-pci node is what QEMU's
    x-query-virtio-status reports after the load; the guest goes on."""
    cfg, path = linux_stream
    fmt = qemu_format()
    header, tree = fmt.read(path)
    to_ours(tree)
    tree["machine"]["peripheral"]["vblk0"]["queue_select"] = 5
    to_qemu(tree)
    assert tree["machine"]["peripheral"]["vblk0"]["virtio-backend"]["queue_sel"] == 5
    edited = tmp_path / "edited.qevm"
    with open(edited, "wb") as f:
        fmt.write(f, header, tree)
    assert edited.read_bytes() != path.read_bytes()
    disk = tmp_path / "disk.qcow2"
    shutil.copyfile(streams.root / f"{cfg.name}.qcow2", disk)
    vm = load_stream(cfg, edited, tmp_path, "edited", disk=disk)
    try:
        st = vm.qmp.execute("x-query-virtio-status", path=BACKEND)
        assert st["queue-sel"] == 5
        vm.qmp.execute("cont")
        wait_serial(vm, vm.serial, "MIGTREE-IO ", count=5, timeout=120)
    finally:
        vm.stop()


# ---------------------------------------------------------------------------
# the same VM saved twice; a request in flight


def test_same_guest_saved_twice_indices_move(streams, guest_artifacts):
    a, b = save_twice(guest_artifacts, streams.root)
    fmt = qemu_format()
    qa = check_guest_virtio(a, virtio_node(fmt.read(a)[1])[1])
    qb = check_guest_virtio(b, virtio_node(fmt.read(b)[1])[1])
    # the rings stay where the driver put them; the indices moved on
    assert (qa["desc"], qa["avail"], qa["used"]) == (qb["desc"], qb["avail"], qb["used"])
    assert qa["last_avail_idx"] != qb["last_avail_idx"]


def test_request_in_flight_decodes_and_qemu_completes_it(streams, guest_artifacts, tmp_path):
    path = save_with_request_in_flight(guest_artifacts, streams.root)
    fmt = qemu_format()
    header, tree = fmt.read(path)
    p, node = virtio_node(tree)
    assert p == "/machine/peripheral/vblk0"
    dev = node["virtio-backend"]
    assert len(dev["queues"]) == 2  # two vCPUs: the queue index is in the stream
    assert dev["inflight"], "the failed write should be on QEMU's retry list"
    for req in dev["inflight"]:
        # a virtio-blk request: 16-byte header and data out, 1 status byte in
        assert req["out_sg"][0]["len"] == 16 and req["in_sg"][-1]["len"] == 1
        assert all(0 < sg["addr"] < 128 << 20 for sg in req["out_sg"] + req["in_sg"])
        assert req["queue"] in (0, 1) and 0 <= req["index"] < 256
        assert "ndescs" not in req  # RING_PACKED is not offered
        assert any(sg["len"] >= 512 for sg in req["out_sg"][1:])  # it was a write
    out = io.BytesIO()
    fmt.write(out, header, tree)
    assert out.getvalue() == path.read_bytes()
    # our layout: the request in flight, and used_idx derived as QEMU derives it
    per_queue = {i: sum(r["queue"] == i for r in dev["inflight"]) for i in (0, 1)}
    last = [q["last_avail_idx"] for q in dev["queues"]]
    to_ours(tree)
    blk = tree["machine"]["peripheral"]["vblk0"]["virtio-backend"]
    assert [(r["queue"], r["head"]) for r in blk["inflight"]] == [
        (r["queue"], r["index"]) for r in dev["inflight"]]
    assert [q["used_idx"] for q in blk["queues"]] == [
        (last[i] - per_queue[i]) & 0xFFFF for i in (0, 1)]
    to_qemu(tree)
    back = tmp_path / "back.qevm"
    with open(back, "wb") as f:
        fmt.write(f, header, tree)
    assert back.read_bytes() == path.read_bytes()
    # QEMU (without the injected error) loads it, counts the requests in use
    # as we do, retries them on cont, and the guest's I/O goes on
    cfg = io_error_config(guest_artifacts)
    disk = tmp_path / "disk.qcow2"
    shutil.copyfile(streams.root / f"{cfg.name}.qcow2", disk)
    vm = load_stream(cfg, back, tmp_path, "inflight-dst", disk=disk)
    try:
        for i in (0, 1):
            st = queue_status(vm, i)
            assert st["inuse"] == per_queue[i]
            assert st["used-idx"] == (last[i] - per_queue[i]) & 0xFFFF
        vm.qmp.execute("cont")
        wait_serial(vm, vm.serial, "MIGTREE-IO ", count=3, timeout=120)
    finally:
        vm.stop()
