"""Every virtio device section of QEMU 5.2, 7.2 and 10.0 streams, decoded by
the virtio plugin (``migtree_virtio.qemu_devices`` and ``.qemu``):
virtio-blk, virtio-net, virtio-balloon, virtio-serial with a console and a
second port, virtio-rng, virtio-scsi with a disk and virtio-gpu, on pc and
q35. Paused machines and the devices guest of guest_builder.py (booted under
TCG, using every device, the balloon inflated over QMP) are saved; nothing
is left undecoded, the bytes come back identical (through a migtree CBOR
stream), what we decoded is what QEMU itself reports (its QMP queries on the
source; guest RAM in the same stream for QEMU 5.2, which lacks
``x-query-virtio-queue-status``), and QEMU loads what we write and the guest
goes on — the serial port's throttled element included."""

from __future__ import annotations

import io
import json
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from qemu_streams import QemuVM, StreamConfig, make_disk, need_qemu, qemu_build, wait_serial

from migtree_qemu.qmp import QMPError

pytestmark = pytest.mark.qemu

mstream = pytest.importorskip("migtree.stream", reason="the migtree core is not importable")
from test_qemu_virtio import GuestRam  # noqa: E402

import migtree_qemu.plugin as qemu_plugin  # noqa: E402
import migtree_virtio.plugin as virtio_plugin  # noqa: E402
from migtree import builtin  # noqa: E402
from migtree.registry import Registry  # noqa: E402
from migtree_qemu.tree import iter_section_nodes  # noqa: E402

VERSIONS = ("5.2", "7.2", "10.0")
MACHINES = ("pc", "q35")
POINTS = [(v, m) for v in VERSIONS for m in MACHINES]
IDS = [f"qemu{v}-{m}" for v, m in POINTS]

#: QOM id -> (vmsd name of its section, the decoded backend's type)
DEVICES = {
    "vblk0": ("virtio-blk", "qemu-virtio-blk"),
    "vnet0": ("virtio-net", "qemu-virtio-net"),
    "vballoon0": ("virtio-balloon", "qemu-virtio-balloon"),
    "vser0": ("virtio-console", "qemu-virtio-serial"),
    "vrng0": ("virtio-rng", "qemu-virtio-rng"),
    "vscsi0": ("virtio-scsi", "qemu-virtio-scsi"),
    "vgpu0": ("virtio-gpu", "qemu-virtio-gpu"),
}
GUEST_MEMORY = 256
#: what the balloon takes from the guest
BALLOON_BYTES = 32 << 20
#: the lines the guest writes to the second serial port
PORT_DATA = b"".join(b"%d\n" % i for i in range(1, 100001))
STATUS_DRIVER_OK = 4
VIRTIO_F_VERSION_1 = 1 << 32


def has_queue_query(version: str) -> bool:
    """x-query-virtio-status and x-query-virtio-queue-status came with 7.0."""
    return tuple(map(int, version.split("."))) >= (7, 0)


def device_args(root: Path, tag: str, port_socket: Path, machine: str) -> tuple[str, ...]:
    """Every device, with nothing leaving QEMU: user-mode networking with
    restrict=on, the console port into a file, the second port on a unix
    socket the test holds. On q35 the RNG sits behind a PCI Express root
    port (a PCI Express function: 4096 bytes of config space, modern only)."""
    scsi = make_disk(root / f"{tag}-scsi.qcow2")
    if machine == "q35":
        rng = ("-device", "pcie-root-port,id=rp0,bus=pcie.0,chassis=1",
               "-device", "virtio-rng-pci,id=vrng0,bus=rp0")
    else:
        rng = ("-device", "virtio-rng-pci,id=vrng0")
    return (
        "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0,id=vnet0",
        "-object", "iothread,id=io0",
        "-device", "virtio-balloon-pci,id=vballoon0,free-page-hint=on,iothread=io0,"
                   "free-page-reporting=on",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"file,id=hvc,path={root / f'{tag}.hvc'},append=on",
        "-device", "virtconsole,chardev=hvc,bus=vser0.0,id=vcon0",
        "-chardev", f"socket,id=port,path={port_socket},server=on,wait=off",
        "-device", "virtserialport,chardev=port,bus=vser0.0,id=vport1,name=org.migtree.port",
        *rng,
        "-drive", f"file={scsi},if=none,id=sd0drive",
        "-device", "virtio-scsi-pci,id=vscsi0",
        "-device", "scsi-hd,drive=sd0drive,bus=vscsi0.0,id=sd0",
        "-device", "virtio-gpu-pci,id=vgpu0",
    )


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    return s


def drain(s: socket.socket, want: int, timeout: float) -> bytes:
    """What *s* has, up to *want* bytes or until nothing comes for *timeout*
    seconds (or the peer closes)."""
    s.settimeout(timeout)
    got = bytearray()
    while len(got) < want:
        try:
            chunk = s.recv(1 << 20)
        except TimeoutError:
            break
        if not chunk:
            break
        got += chunk
    return bytes(got)


def incoming_from_fd(vm: QemuVM, stream: Path, timeout: float = 300) -> dict:
    """Load *stream* into *vm* (started with ``-incoming defer``) through a
    file descriptor of the file itself (QMP ``getfd``, then
    ``migrate-incoming fd:``): QEMU reads a regular file without ever
    waiting for input, so nothing of its main loop runs in the middle of a
    section. Through a pipe (``exec:cat``) it can, and a virtio-serial port
    that was throttled is flushed from there before its queues are loaded
    (see README "QEMU streams"): QEMU then writes a used element where the
    legacy layout would put the used ring, into the guest's memory.

    The QMP client has no way to pass a file descriptor, so this speaks to
    its socket directly (``send_fds``) and reads the answer with it."""
    assert vm.qmp is not None and vm.proc is not None
    request = {"execute": "getfd", "arguments": {"fdname": "stream"}, "id": "getfd-stream"}
    with open(stream, "rb") as f:
        socket.send_fds(vm.qmp._sock, [json.dumps(request).encode() + b"\r\n"], [f.fileno()])
        while (reply := vm.qmp._read_message()).get("id") != "getfd-stream":
            pass
    if "error" in reply:
        raise QMPError(f"getfd: {reply['error']}")
    try:
        vm.qmp.execute("migrate-incoming", uri="fd:stream")
        return vm.qmp.wait_migration(timeout=timeout)
    except (QMPError, OSError) as exc:
        if vm.proc.poll() is None:
            vm.proc.wait(timeout=20)
        raise QMPError(f"incoming migration failed: {exc}\n{vm.output()}") from exc


def qemu_view(vm: QemuVM, version: str) -> dict:
    """What QEMU reports about the devices of a stopped VM."""
    view: dict = {"rx_filter": vm.qmp.execute("query-rx-filter", name="vnet0")[0],
                  "balloon": vm.qmp.execute("query-balloon")}
    if has_queue_query(version):
        for dev_id in DEVICES:
            path = f"/machine/peripheral/{dev_id}/virtio-backend"
            status = vm.qmp.execute("x-query-virtio-status", path=path)
            queues = [vm.qmp.execute("x-query-virtio-queue-status", path=path, queue=i)
                      for i in range(status["num-vqs"])]
            view[dev_id] = {"status": status, "queues": queues}
    return view


@dataclass
class Made:
    """A stream this file made, and what it needs to be loaded again."""

    version: str
    machine: str
    guest: bool
    path: Path
    cfg: StreamConfig
    disk: Path
    root: Path
    tag: str
    view: dict
    #: bytes the second serial port's socket held when the source stopped
    port_bytes: bytes = b""
    extra: dict = field(default_factory=dict)

    @property
    def hvc(self) -> Path:
        return self.root / f"{self.tag}.hvc"

    def config(self, port_socket: Path) -> StreamConfig:
        return StreamConfig(machine=self.cfg.machine, accel="tcg", memory=self.cfg.memory,
                            guest=self.cfg.guest, running=self.cfg.running,
                            qemu=self.version, extra=device_args(self.root, self.tag,
                                                                 port_socket, self.machine))


class DeviceStreams:
    """Makes (once per session) the streams of this file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[tuple, Made] = {}
        self._guest: tuple[str, str] | None = None

    def guest(self) -> tuple[str, str]:
        if self._guest is None:
            import guest_builder

            try:
                kernel, initrd = guest_builder.build_devices_guest()
            except guest_builder.GuestBuildError as exc:
                pytest.fail(f"cannot build the devices guest: {exc}")
            self._guest = (str(kernel), str(initrd))
        return self._guest

    def guest_stream(self, version: str, machine: str) -> Made:
        """The devices guest's stream; on q35 the guest poisons freed pages
        (init_on_free=1), except on QEMU 5.2, which cannot load that back
        (see test_page_poison_is_decoded_under_the_name_each_version_writes)."""
        return self(version, machine, guest=True,
                    poison=machine == "q35" and version != "5.2")

    def __call__(self, version: str, machine: str, guest: bool = False,
                 poison: bool = False) -> Made:
        key = (version, machine, guest, poison)
        if key not in self.cache:
            need_qemu()
            self.cache[key] = self._make(version, machine, guest, poison)
        return self.cache[key]

    def _make(self, version: str, machine: str, guest: bool, poison: bool) -> Made:
        build = qemu_build(version)
        tag = f"dev-qemu{version}-{machine}" + ("-linux" if guest else "") + \
            ("-poison" if poison else "")
        sock = Path(self.root) / f"{tag}-src.sock"
        extra = device_args(self.root, tag, sock, machine)
        if poison:  # the guest poisons freed pages: it negotiates PAGE_POISON
            extra += ("-append", "console=ttyS0 panic=-1 init_on_free=1")
        cfg = StreamConfig(machine=machine, memory=GUEST_MEMORY if guest else 64,
                           guest=self.guest() if guest else None, running=guest,
                           qemu=version, extra=extra)
        disk = make_disk(self.root / f"{tag}.qcow2")
        serial = self.root / f"{tag}-src.serial"
        args = cfg.args(disk, serial) + ([] if guest else ["-S"])
        path = self.root / f"{tag}.qevm"
        with QemuVM(args, self.root, f"{tag}-src", build=build) as vm:
            port = connect(sock)  # the host side of the port, never read
            try:
                if guest:
                    wait_serial(vm, serial, "MIGTREE-DEV ready", timeout=180)
                    target = (GUEST_MEMORY << 20) - BALLOON_BYTES
                    vm.qmp.execute("balloon", value=target)
                    vm.qmp.wait_until("query-balloon", lambda r: r["actual"] == target,
                                      timeout=120)
                    wait_serial(vm, serial, "MIGTREE-LOOP ", count=5, timeout=120)
                    vm.qmp.execute("stop")
                vm.migrate_to_file(path.with_suffix(".part"))
                # after the save, not before: migrating changes the balloon
                # (free page hinting runs while RAM is sent)
                view = qemu_view(vm, version)
            finally:
                vm.stop()
                held = drain(port, len(PORT_DATA), timeout=2)
                port.close()
        path.with_suffix(".part").rename(path)
        return Made(version, machine, guest, path, cfg, disk, self.root, tag, view, held)

    def load(self, made: Made, stream: Path, name: str) -> tuple[QemuVM, socket.socket]:
        """Start QEMU (paused, ``-incoming defer``) with *made*'s devices,
        connect to its second serial port (before the state arrives: QEMU
        resumes writing a throttled element as soon as it is loaded) and
        load *stream*. The caller stops the VM and closes the socket."""
        sock = self.root / f"{made.tag}-{name}.sock"
        cfg = made.config(sock)
        serial = self.root / f"{made.tag}-{name}.serial"
        disk = self.root / f"{made.tag}-{name}.qcow2"
        shutil.copyfile(made.disk, disk)
        vm = QemuVM(cfg.args(disk, serial) + ["-S", "-incoming", "defer"], self.root,
                    f"{made.tag}-{name}", build=qemu_build(made.version))
        vm.serial = serial
        vm.start()
        port = None
        try:
            port = connect(sock)
            incoming_from_fd(vm, stream)
        except BaseException:
            vm.stop()
            if port is not None:
                port.close()
            raise
        return vm, port


@pytest.fixture(scope="session")
def device_streams(tmp_path_factory: pytest.TempPathFactory) -> DeviceStreams:
    # unix socket paths must stay short: keep them out of deep pytest paths
    root = tmp_path_factory.mktemp("vdev")
    return DeviceStreams(root)


def registry() -> Registry:
    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    reg.add_plugin(qemu_plugin, "migtree-qemu")
    reg.add_plugin(virtio_plugin, "migtree-virtio")
    return reg


def qemu_format():
    reg = registry()
    fmt = reg.formats["qemu"]
    fmt._registry = reg  # decoders and schemas from this registry
    return fmt


def through_cbor(path: Path, out: Path) -> tuple[dict, dict, bytes]:
    """QEMU stream -> tree -> migtree CBOR stream -> tree -> QEMU stream:
    ``(header, tree read back from CBOR, the QEMU bytes written)``."""
    fmt = qemu_format()
    header, tree = fmt.read(path)
    buf = io.BytesIO()
    mstream.write_tree(buf, header["extra"], tree, Registry(), schemas=header["schemas"])
    _, again = mstream.read_tree(io.BytesIO(buf.getvalue()))
    qbuf = io.BytesIO()
    fmt.write(qbuf, None, again)
    out.write_bytes(qbuf.getvalue())
    return header, again, qbuf.getvalue()


def virtio_sections(tree: dict) -> dict[str, dict]:
    """vmsd name -> the decoded ``qemu-virtio-pci`` node of every virtio
    section (virtio-gpu's is its section's ``virtio`` field: the section has
    a second field, so it is not lifted)."""
    vmsds = {vmsd for vmsd, _ in DEVICES.values()}
    out = {}
    for _, node in iter_section_nodes(tree):
        q = node["__qemu__"]
        vmsd = q.get("vmsd_name") if q.get("lifted") else node["__type__"]
        if vmsd in vmsds:
            out[vmsd] = node if q.get("lifted") else node["virtio"]
    return out


def backends(tree: dict) -> dict[str, dict]:
    """QOM id -> the decoded device (``virtio-backend``) node."""
    by_vmsd = virtio_sections(tree)
    return {dev_id: by_vmsd[vmsd]["virtio-backend"] for dev_id, (vmsd, _) in DEVICES.items()}


def check_decoded(header: dict, tree: dict) -> None:
    """Every virtio section decoded, by its own type; no section anywhere
    kept bytes because a decoder failed."""
    for path, node in iter_section_nodes(tree):
        assert "undecoded" not in node["__qemu__"], (path, node["__qemu__"]["undecoded"])
    found = virtio_sections(tree)
    assert set(found) == {vmsd for vmsd, _ in DEVICES.values()}
    for dev_id, (vmsd, backend) in DEVICES.items():
        assert found[vmsd]["__type__"] == "qemu-virtio-pci", dev_id
        assert found[vmsd]["virtio-backend"]["__type__"] == backend, dev_id
        assert f"{backend}@1" in header["schemas"]
    assert "qemu-virtio-pci@1" in header["schemas"]


def vlan_ids(vlans: bytes) -> set[int]:
    """VLAN ids set in QEMU's ``vlans`` (u32 words, x86 byte order, bit j
    of word i is VLAN 32 i + j)."""
    words = [int.from_bytes(vlans[i:i + 4], "little") for i in range(0, len(vlans), 4)]
    return {32 * i + j for i, w in enumerate(words) for j in range(32) if w >> j & 1}


def mac_text(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def check_against_qemu(made: Made, tree: dict) -> None:
    """What we decoded is what QEMU reported about its devices when it saved
    them (query-rx-filter, query-balloon; x-query-virtio-* from 7.0 on)."""
    dev = backends(tree)
    net, rx = dev["vnet0"], made.view["rx_filter"]
    assert mac_text(net["mac"]) == rx["main-mac"]
    assert bool(net["promisc"]) == rx["promiscuous"]
    assert vlan_ids(net["vlans"]) == set(rx["vlan-table"])
    multicast = [mac_text(m) for m in net["mac_table"] if m[0] & 1]
    unicast = [mac_text(m) for m in net["mac_table"] if not m[0] & 1]
    assert sorted(multicast) == sorted(rx["multicast-table"])
    assert sorted(unicast) == sorted(rx["unicast-table"])
    # query-balloon's actual is the guest's memory minus the balloon's pages
    memory = made.cfg.memory << 20
    assert memory - dev["vballoon0"]["actual"] * 4096 == made.view["balloon"]["actual"]
    if not has_queue_query(made.version):
        return
    for dev_id, node in dev.items():
        qemu = made.view[dev_id]
        status = qemu["status"]
        assert (node["isr"], node["queue_sel"], len(node["queues"])) == (
            status["isr"], status["queue-sel"], status["num-vqs"]), dev_id
        assert bool(node.get("started")) == status["started"], dev_id
        rings = node.get("virtqueues", {}).get("vq", [])
        for i, (q, st) in enumerate(zip(node["queues"], qemu["queues"], strict=True)):
            ring = rings[i] if i < len(rings) else {"avail": 0, "used": 0}
            assert (q["num"], q["desc"], ring["avail"], ring["used"], q["last_avail_idx"]) == (
                st["vring-num"], st["vring-desc"], st["vring-avail"], st["vring-used"],
                st["last-avail-idx"]), (dev_id, i)


def check_rings_in_ram(made: Made, tree: dict) -> None:
    """For every queue a driver set up: the proxy's own copy of the ring
    addresses (``virtio_pci/modern_state``) agrees with the device's, and the
    rings' indices in guest RAM (same stream) fit the saved
    ``last_avail_idx`` — and, from 7.0 on, the used index QEMU reported."""
    ram = GuestRam(made.path)
    by_vmsd = virtio_sections(tree)
    for dev_id, (vmsd, _) in DEVICES.items():
        pci = by_vmsd[vmsd]
        node = pci["virtio-backend"]
        modern = pci["extra_state"]["modern_state"]["vqs"]
        rings = node["virtqueues"]["vq"]
        for i, q in enumerate(node["queues"]):
            if not q["desc"]:
                continue
            ring = rings[i]
            assert (modern[i]["desc"], modern[i]["avail"], modern[i]["used"]) == (
                q["desc"], ring["avail"], ring["used"]), (dev_id, i)
            assert modern[i]["enabled"] and modern[i]["num"] == q["num"]
            avail_idx = ram.u16(ring["avail"] + 2)
            used_idx = ram.u16(ring["used"] + 2)
            # the driver made available what the device took (and maybe more);
            # the device returned what it took, but for what it holds
            assert (avail_idx - q["last_avail_idx"]) % 65536 <= q["num"], (dev_id, i)
            assert (q["last_avail_idx"] - used_idx) % 65536 <= q["num"], (dev_id, i)
            if has_queue_query(made.version):
                st = made.view[dev_id]["queues"][i]
                assert st["used-idx"] == used_idx, (dev_id, i)
                assert st["inuse"] == (q["last_avail_idx"] - used_idx) % 65536, (dev_id, i)


# ---------------------------------------------------------------------------
# paused machines: every device at its reset state


@pytest.mark.parametrize("version, machine", POINTS, ids=IDS)
def test_every_virtio_section_of_a_paused_machine_decodes_and_writes_back(
        device_streams, version, machine, tmp_path):
    made = device_streams(version, machine)
    header, tree, written = through_cbor(made.path, tmp_path / "back.qevm")
    check_decoded(header, tree)
    check_against_qemu(made, tree)
    dev = backends(tree)
    for dev_id, node in dev.items():
        assert node["status"] == 0 and not node.get("started"), dev_id
        assert all(q["desc"] == 0 and q["last_avail_idx"] == 0 for q in node["queues"])
    assert dev["vser0"]["ports_map"] == [0b11]  # the console at 0, the port at 1
    config = {vmsd: len(pci["pci_config"]) for vmsd, pci in virtio_sections(tree).items()}
    assert config.pop("virtio-rng") == (4096 if machine == "q35" else 256)
    assert set(config.values()) == {256}
    assert [p["id"] for p in dev["vser0"]["ports"]] == [0, 1]
    assert written == made.path.read_bytes()


@pytest.mark.parametrize("version, machine", POINTS, ids=IDS)
def test_qemu_loads_the_paused_machine_we_wrote(device_streams, version, machine, tmp_path):
    made = device_streams(version, machine)
    back = tmp_path / "back.qevm"
    through_cbor(made.path, back)
    vm, port = device_streams.load(made, back, "paused-dst")
    try:
        assert vm.qmp.execute("query-status")["status"] in ("paused", "inmigrate",
                                                            "prelaunch")
        assert vm.qmp.execute("query-rx-filter", name="vnet0")[0]["main-mac"] == \
            made.view["rx_filter"]["main-mac"]
    finally:
        vm.stop()
        port.close()


# ---------------------------------------------------------------------------
# the devices guest


@pytest.mark.parametrize("version, machine", POINTS, ids=IDS)
def test_a_linux_guest_using_every_device_decodes_to_what_qemu_reports(
        device_streams, version, machine, tmp_path):
    made = device_streams.guest_stream(version, machine)
    header, tree, written = through_cbor(made.path, tmp_path / "back.qevm")
    check_decoded(header, tree)
    check_against_qemu(made, tree)
    check_rings_in_ram(made, tree)
    assert written == made.path.read_bytes()
    dev = backends(tree)
    for dev_id, node in dev.items():
        assert node["status"] & STATUS_DRIVER_OK and node["started"] is True, dev_id
        assert node["guest_features"] & VIRTIO_F_VERSION_1, dev_id
    taken = {dev_id: [q["last_avail_idx"] for q in node["queues"]]
             for dev_id, node in dev.items()}
    # what the guest did moved these queues: disk reads, DHCP and pings
    # (receive and transmit), console lines, random bytes, SCSI reads, the
    # GPU's mode setting, the balloon's inflation
    assert taken["vblk0"][0] > 0
    assert taken["vnet0"][0] > 0 and taken["vnet0"][1] > 0
    assert taken["vser0"][1] > 0  # port 0's transmit queue
    assert taken["vrng0"][0] > 0
    assert taken["vscsi0"][2] > 0  # the first request queue
    assert taken["vgpu0"][0] > 0
    assert taken["vballoon0"][0] > 0
    balloon = dev["vballoon0"]
    assert balloon["num_pages"] == balloon["actual"] == BALLOON_BYTES // 4096
    assert balloon["free_page_report"] is not None  # free-page-hint=on, negotiated
    # inflate, deflate, stats, free page hints, free page reports (no state of its own)
    assert len(balloon["queues"]) == 5
    net = dev["vnet0"]
    assert net["net_status"] & 1  # link up
    ports = {p["id"]: p for p in dev["vser0"]["ports"]}
    assert ports[0]["guest_connected"] and ports[0]["host_connected"]  # /dev/hvc0 held open


@pytest.mark.parametrize("version, machine", POINTS, ids=IDS)
def test_the_throttled_serial_port_carries_its_element(device_streams, version, machine,
                                                       tmp_path):
    """The guest wrote more to the second port than the host side took (the
    test never reads its socket): QEMU saved the element it was writing
    out, with the buffer and offset it had reached."""
    made = device_streams.guest_stream(version, machine)
    _, tree = qemu_format().read(made.path)
    serial = backends(tree)["vser0"]
    (port,) = [p for p in serial["ports"] if p["id"] == 1]
    elem = port["elem"]
    assert port["host_connected"]
    assert elem["in_sg"] == [] and elem["out_sg"]
    assert 0 <= elem["iov_idx"] < len(elem["out_sg"])
    assert elem["iov_offset"] <= elem["out_sg"][elem["iov_idx"]]["len"]
    assert all(0 < sg["addr"] < GUEST_MEMORY << 20 for sg in elem["out_sg"])
    # what the element still had to write is in guest RAM: the next lines
    ram = GuestRam(made.path)
    first = elem["out_sg"][elem["iov_idx"]]
    rest = ram.read(first["addr"] + elem["iov_offset"], 32)
    assert PORT_DATA.startswith(made.port_bytes)
    assert PORT_DATA[len(made.port_bytes):].startswith(rest)
    if has_queue_query(version):
        # port 1's transmit queue is queue 5 (port 0: 0/1, control: 2/3)
        assert made.view["vser0"]["queues"][5]["inuse"] == 1


@pytest.mark.parametrize("version, machine", POINTS, ids=IDS)
def test_qemu_loads_what_we_wrote_and_the_guest_goes_on(device_streams, version, machine,
                                                        tmp_path):
    """Our bytes (through migtree CBOR) load into the same QEMU; its own view
    of every queue is what we decoded; on cont the guest's loop goes on,
    console lines keep arriving, and the second port resumes the element it
    was writing where the decoded ``iov_idx``/``iov_offset`` say, then the
    rest of the queue: the bytes the source had not written, exactly."""
    made = device_streams.guest_stream(version, machine)
    back = tmp_path / "back.qevm"
    _, tree, _ = through_cbor(made.path, back)
    lines = made.hvc.read_bytes().count(b"MIGTREE-HVC")
    (elem,) = [p["elem"] for p in backends(tree)["vser0"]["ports"] if p["id"] == 1]
    elem_rest = sum(sg["len"] for sg in elem["out_sg"][elem["iov_idx"]:]) - elem["iov_offset"]
    vm, port = device_streams.load(made, back, "dst")
    try:
        assert vm.qmp.execute("query-status")["status"] == "paused"
        dst = qemu_view(vm, version)
        assert dst["rx_filter"] == made.view["rx_filter"]
        assert dst["balloon"] == made.view["balloon"]
        for dev_id, node in backends(tree).items() if has_queue_query(version) else ():
            rings = node["virtqueues"]["vq"]
            for i, (q, st) in enumerate(zip(node["queues"], dst[dev_id]["queues"],
                                            strict=True)):
                ring = rings[i] if i < len(rings) else {"avail": 0, "used": 0}
                assert (st["vring-num"], st["vring-desc"], st["vring-avail"],
                        st["vring-used"]) == (q["num"], q["desc"], ring["avail"],
                                              ring["used"]), (dev_id, i)
                taken = (st["last-avail-idx"] - q["last_avail_idx"]) % 65536
                # the throttled port (port 1's transmit queue) writes on as
                # soon as it is loaded, paused or not: the test holds its socket
                assert taken == 0 or (dev_id, i) == ("vser0", 5), (dev_id, i, taken)
        vm.qmp.execute("cont")
        rest = drain(port, len(PORT_DATA) - len(made.port_bytes), timeout=60)
        assert len(rest) > elem_rest
        assert made.port_bytes + rest == PORT_DATA
        text = wait_serial(vm, vm.serial, "MIGTREE-LOOP ", count=3, timeout=120)
        assert "MIGTREE-INIT" not in text and "MIGTREE-DEV ready" not in text
        assert made.hvc.read_bytes().count(b"MIGTREE-HVC") > lines
    finally:
        vm.stop()
        port.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_an_edit_of_the_receive_filter_reaches_qemu(device_streams, version, tmp_path):
    """virtio-net's own part, edited in the tree (promiscuous mode on, one
    more multicast address: the field grows by 6 bytes), is what QEMU's
    query-rx-filter reports after loading it."""
    made = device_streams.guest_stream(version, "pc")
    fmt = qemu_format()
    header, tree = fmt.read(made.path)
    net = backends(tree)["vnet0"]
    extra_mac = bytes.fromhex("01005e7f0102")
    net["promisc"] = 1
    net["mac_table"] = [*net["mac_table"], extra_mac]
    edited = tmp_path / "edited.qevm"
    with open(edited, "wb") as f:
        fmt.write(f, header, tree)
    assert edited.stat().st_size == made.path.stat().st_size + 6
    vm, port = device_streams.load(made, edited, "edited")
    try:
        rx = vm.qmp.execute("query-rx-filter", name="vnet0")[0]
        assert rx["promiscuous"] is True
        assert sorted(rx["multicast-table"]) == sorted(
            [*made.view["rx_filter"]["multicast-table"], mac_text(extra_mac)])
    finally:
        vm.stop()
        port.close()


# ---------------------------------------------------------------------------
# page poisoning: QEMU 5.2 misspells its subsection


@pytest.mark.parametrize("version", VERSIONS)
def test_page_poison_is_decoded_under_the_name_each_version_writes(device_streams, version,
                                                                   tmp_path):
    """A guest booted with init_on_free=1 negotiates PAGE_POISON: QEMU 7.2
    and 10.0 save 'virtio-balloon-device/page-poison', QEMU 5.2
    'vitio-balloon-device/page-poison' (sic). Both decode and write back
    byte-identical; QEMU 7.2 and 10.0 load theirs. QEMU 5.2 cannot load its
    own: its loader stops at the misspelt name and misses everything after
    it, which is why the node keeps the two names apart."""
    if version == "5.2":
        made = device_streams(version, "pc", guest=True, poison=True)
    else:
        made = device_streams.guest_stream(version, "q35")
    back = tmp_path / "back.qevm"
    header, tree, written = through_cbor(made.path, back)
    check_decoded(header, tree)
    assert written == made.path.read_bytes()
    balloon = backends(tree)["vballoon0"]
    misspelt = version == "5.2"
    assert balloon.get("vitio_page_poison" if misspelt else "page_poison") == {"poison_val": 0}
    assert ("page_poison" if misspelt else "vitio_page_poison") not in balloon
    if misspelt:
        with pytest.raises(QMPError, match="virtio-balloon"):
            device_streams.load(made, back, "poison-dst")
        return
    vm, port = device_streams.load(made, back, "poison-dst")
    try:
        assert vm.qmp.execute("query-status")["status"] == "paused"
    finally:
        vm.stop()
        port.close()

