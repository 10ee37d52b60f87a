"""Sections placed at their QOM paths from the stream alone
(:func:`migtree_qemu.placement.static_paths`), checked against the QOM tree
of the QEMU that wrote each stream.

Streams of paused VMs (``-S``, 32 MiB) of QEMU 5.2, 7.2 and 10.0, ``pc``
and ``q35`` at their newest machine type and at 2.12, 1 and 2 vCPUs, with a
``virtio-blk-pci`` the user named (``id=vblk0``) and an ``e1000`` they did
not, with ``-nodefaults`` and with the machine's default devices; and a few
command lines that change what the board creates.  For each stream, every
path ``static_paths`` gives must be the one the walk gives
(:func:`migtree_qemu.qompaths.section_paths`), and what it places is
spelled out per layout below (from the walks), so that placing nothing
would fail.

The streams are made here rather than by ``qemu_streams.make_stream``
because two facts of the live QEMU are saved beside each one besides
``qompaths.walk``: the PCI address of every device whose ``addr`` QEMU 10.0
types as ``str`` (``qompaths.walk`` reads only ``int32`` ones, so its walk
of a 10.0 machine has no PCI addresses), and QEMU's own vCPU list
(``query-cpus-fast``: index -> QOM path, and each CPU's APIC id, which is
the ``apic`` section's instance id).  The vCPU paths are taken from that
list: ``section_paths`` sorts CPU objects by their ``[N]`` and so takes a
``-device`` vCPU (``/machine/peripheral-anon/device[0]``) for vCPU 0, and
looks an APIC up by its instance id as if it were the CPU index.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import qemu_streams
from qemu_streams import QemuVM, StreamConfig, kvm_usable, make_disk, qemu_build

from migtree_qemu import qevm, qompaths
from migtree_qemu.placement import layout_of, static_paths

pytestmark = pytest.mark.qemu

VERSIONS = ("5.2", "7.2", "10.0")
NEWEST = {"5.2": ("pc-i440fx-5.2", "pc-q35-5.2"), "7.2": ("pc-i440fx-7.2", "pc-q35-7.2"),
          "10.0": ("pc-i440fx-10.0", "pc-q35-10.0")}
OLDER = ("pc-i440fx-2.12", "pc-q35-2.12")
CPU_IDSTRS = ("cpu", "cpu_common", "apic")


@dataclasses.dataclass(frozen=True)
class PlacementConfig(StreamConfig):
    memory: int = 32
    extra: tuple[str, ...] = ("-device", "e1000")
    defaults: bool = False  # the machine's default devices (no -nodefaults)
    smp_spec: str = ""  # a whole -smp argument, when not just the count
    tag: str = ""  # names a variant point

    @property
    def name(self) -> str:
        return "-".join(p for p in ("place", super().name, "defaults" if self.defaults else "",
                                    self.tag) if p)

    @property
    def family(self) -> str:
        return "q35" if "q35" in self.machine else "i440fx"

    def args(self, disk_path, serial=None) -> list[str]:
        args = super().args(disk_path, serial)
        if self.defaults:
            args.remove("-nodefaults")
        if self.smp_spec:
            args[args.index("-smp") + 1] = self.smp_spec
        return args


MATRIX = [PlacementConfig(qemu=v, machine=m, smp=s, defaults=d)
          for v in VERSIONS for m in (*NEWEST[v], *OLDER) for s in (1, 2) for d in (False, True)]

FLOPPY = "@FLOPPY@"  # an empty 1.44 MB image in the stream directory


def _variants(v: str) -> list[PlacementConfig]:
    pc, q35 = NEWEST[v]
    c = PlacementConfig
    return [
        c(qemu=v, machine=pc, tag="uservga", extra=("-device", "VGA")),  # the user's display
        c(qemu=v, machine=pc, tag="cirrus", extra=("-vga", "cirrus")),  # the board's display
        c(qemu=v, machine=pc, defaults=True, tag="nohpet",
          extra=("-machine", "hpet=off,vmport=off")),
        c(qemu=v, machine=q35, defaults=True, tag="serials",
          extra=("-serial", "null", "-serial", "null", "-parallel", "none")),
        c(qemu=v, machine=q35, defaults=True, tag="bothserial",  # the board's and a user's
          extra=("-serial", "null", "-device", "isa-serial")),
        c(qemu=v, machine=pc, tag="virtiovga", extra=("-vga", "virtio")),  # not in the layouts
        c(qemu=v, machine=pc, tag="floppy",
          extra=("-drive", f"if=floppy,format=raw,file={FLOPPY}")),
        c(qemu=v, machine=pc, tag="usb", extra=("-machine", "usb=on")),
        c(qemu=v, machine=pc, tag="hotcpu", smp_spec="1,maxcpus=2,sockets=1,cores=2,threads=1",
          extra=("-device", "qemu64-x86_64-cpu,socket-id=0,core-id=1,thread-id=0")),
        c(qemu=v, machine=q35, smp=4, tag="sparse", smp_spec="4,maxcpus=6,sockets=2,cores=3"),
        c(qemu=v, machine=pc, accel="kvm", smp=2, defaults=True, tag="kvm"),
        c(qemu=v, machine=q35, accel="kvm", smp=2, tag="split",
          extra=("-machine", "kernel-irqchip=split")),
    ]


VARIANTS = [c for v in VERSIONS for c in _variants(v)]
ALL = MATRIX + VARIANTS


# -- making the streams ---------------------------------------------------------------


def _walk(qmp) -> dict:
    """``qompaths.walk`` plus the PCI addresses it skips (QEMU 10.0's
    ``addr`` is typed ``str``; its value is still the devfn)."""
    walk = qompaths.walk(qmp)
    for path, qom_type in walk["objects"].items():
        if qom_type in ("memory-region", "irq", "container") or path in walk["pci_devfn"]:
            continue
        for prop in qmp.execute("qom-list", path=path):
            if prop["name"] == "addr" and prop["type"] == "str":
                devfn = qmp.execute("qom-get", path=path, property="addr")
                if isinstance(devfn, int) and devfn >= 0:
                    walk["pci_devfn"][path] = devfn
    return walk


def _cpus(qmp) -> list[dict]:
    """QEMU's vCPUs: index, QOM path, APIC id."""
    return [{"index": c["cpu-index"], "path": c["qom-path"],
             "apic_id": qmp.execute("qom-get", path=c["qom-path"], property="apic-id")}
            for c in qmp.execute("query-cpus-fast")]


def _make(cfg: PlacementConfig, root: Path) -> Path:
    out = root / f"{cfg.name}.qevm"
    if out.exists():
        return out
    disk = make_disk(root / f"{cfg.name}.qcow2")
    args = [a.replace(FLOPPY, str(root / "floppy.img")) for a in cfg.args(disk)]
    tmp = out.with_suffix(".part")
    with QemuVM(args + ["-S"], root, f"{cfg.name}-src",
                build=qemu_build(cfg.qemu)) as vm:
        qompaths.save(_walk(vm.qmp), out.with_suffix(".qom.json"))
        out.with_suffix(".cpus.json").write_text(json.dumps(_cpus(vm.qmp)))
        vm.migrate_to_file(tmp)
    tmp.rename(out)
    return out


class PlacementStreams:
    """Every stream of one QEMU version, made together (4 at a time) the
    first time a test asks for one, with the ``-dump-vmstate`` of each
    machine type; cached for the session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.made: dict[PlacementConfig, Future] = {}
        self.dumps: dict[tuple[str, str], dict] = {}
        self.unavailable: dict[str, str] = {}

    def __call__(self, cfg: PlacementConfig) -> tuple[Path, dict]:
        qemu_streams.need_qemu(cfg)
        with self.lock:
            if cfg.qemu in self.unavailable:
                pytest.skip(self.unavailable[cfg.qemu])
            if cfg not in self.made:
                self._make_version(cfg.qemu)
        return self.made[cfg].result(), self.dumps[(cfg.qemu, cfg.machine)]

    def _make_version(self, version: str) -> None:
        try:
            qemu_build(version)
        except pytest.skip.Exception as exc:
            self.unavailable[version] = str(exc)
            raise
        (self.root / "floppy.img").write_bytes(bytes(1440 * 1024))
        cfgs = [c for c in ALL if c.qemu == version and (c.accel != "kvm" or kvm_usable())]
        machines = {c.machine for c in cfgs}
        with ThreadPoolExecutor(4) as pool:
            dumps = {m: pool.submit(qemu_streams.dump_vmstate, self.root, m, version)
                     for m in machines}
            self.made.update({c: pool.submit(_make, c, self.root) for c in cfgs})
            for m, f in dumps.items():
                self.dumps[(version, m)] = json.loads(f.result().read_text())


@pytest.fixture(scope="session")
def placement_streams(tmp_path_factory: pytest.TempPathFactory) -> PlacementStreams:
    return PlacementStreams(tmp_path_factory.mktemp("qemu-placement"))


def _walked(path: Path, stream: qevm.QemuStream, dump: dict) -> dict[tuple[str, int], str]:
    """Where the walk puts each section: ``section_paths``, with the vCPUs
    (their ``cpu``, ``cpu_common`` and ``apic``) where QEMU says they are."""
    qom = qompaths.load(path.with_suffix(".qom.json"))
    out = {k: p for k, p in qompaths.section_paths(stream, qom, dump).items()
           if k[0] not in CPU_IDSTRS}
    for cpu in json.loads(path.with_suffix(".cpus.json").read_text()):
        out[("cpu", cpu["index"])] = cpu["path"]
        out[("cpu_common", cpu["index"])] = f"{cpu['path']}/cpu_common"
        if f"{cpu['path']}/lapic" in qom["objects"]:
            out[("apic", cpu["apic_id"])] = f"{cpu['path']}/lapic"
    return out


# -- what each layout places, from the walks ------------------------------------------

_COMMON = {"fw_cfg", "PCIHost", "ioapic", "kvm-tpr-opt"}
_PIIX = _COMMON | {"0000:00:00.0/I440FX", "0000:00:01.0/PIIX3"}
# 5.2 and 7.2: the ISA devices up to the floppy controller (the floppy drives follow)
_PIIX_ISA = _PIIX | {"hpet", "mc146818rtc", "i8254", "pcspk", "fdc"}
_Q35 = _COMMON | {"0000:00:00.0/mch", "0000:00:1f.0/ICH9LPC", "hpet", "mc146818rtc", "i8254",
                  "pcspk", "pckbd", "vmmouse", "port92", "0000:00:1f.2/ich9_ahci"}
PLACED = {
    ("5.2", "i440fx"): _PIIX_ISA,
    ("7.2", "i440fx"): _PIIX_ISA,
    # 10.0: the PIIX3's own functions; the IDE drives follow the PIIX3
    ("10.0", "i440fx"): _PIIX | {"mc146818rtc", "0000:00:01.1/ide", "0000:00:01.3/piix4_pm"},
    ("5.2", "q35"): _Q35,
    ("7.2", "q35"): _Q35 | {"ps2kbd", "ps2mouse"},
    ("10.0", "q35"): _Q35 | {"ps2kbd", "ps2mouse"},
}
#: the board's defaults placed too (before the first device the stream cannot count)
DEFAULTS_PLACED = {"i440fx": {"0000:00:02.0/vga", "serial", "parallel_isa"},
                   "q35": {"serial", "parallel_isa"}}


def _expected(cfg: PlacementConfig, present: set[str]) -> set[str]:
    """The idstrs (other than the vCPUs') *cfg*'s stream must have placed."""
    want = set(PLACED[(cfg.qemu, cfg.family)])
    board_serial = cfg.qemu != "10.0" or cfg.family == "q35"
    if cfg.defaults and board_serial:
        want |= DEFAULTS_PLACED[cfg.family]
    if cfg.tag == "cirrus" and cfg.qemu != "10.0":
        want.add("0000:00:02.0/cirrus_vga")
    if cfg.tag in ("serials", "bothserial"):
        want.discard("serial")  # two of them: walks do not tell instances apart
    if cfg.tag == "virtiovga" and cfg.qemu != "10.0":
        want = set(_PIIX)  # an unknown board device: the count stops before it
    if cfg.tag == "usb" and cfg.qemu == "10.0":
        want.add("0000:00:01.2/uhci")
    if cfg.accel == "kvm":
        want.add("kvmclock")
    return want & present


def _smp_cpus(cfg: PlacementConfig) -> int:
    return int(cfg.smp_spec.split(",")[0]) if cfg.smp_spec else cfg.smp


# -- tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", ALL, ids=[c.name for c in ALL])
def test_static_paths_are_the_walks(placement_streams, cfg: PlacementConfig) -> None:
    path, dump = placement_streams(cfg)
    with qevm.load(path, ram="skip") as s:
        layout = layout_of(s)
        static = static_paths(s)
        walked = _walked(path, s, dump)
        sections = [(sec.idstr, sec.instance_id) for sec in s.devices()]
        cpu_sections = [k for k in sections if k[0] in CPU_IDSTRS]
    assert layout is not None and (layout.qemu, layout.family) == (cfg.qemu, cfg.family)
    wrong = {k: (p, walked.get(k)) for k, p in static.items() if walked.get(k) != p}
    assert not wrong, f"static path != walk's: {wrong}"
    # what is placed: the -smp vCPUs and the layout's board devices; never a user's device
    cpus = _smp_cpus(cfg)
    smp_cpu_paths = {walked[("cpu", i)] for i in range(cpus)}
    placed_cpu = {k for k in cpu_sections if k in static}
    assert placed_cpu == {k for k in cpu_sections
                          if walked.get(k, "").removesuffix("/lapic").removesuffix("/cpu_common")
                          in smp_cpu_paths}
    assert len([k for k in placed_cpu if k[0] == "cpu"]) == cpus
    present = {idstr for idstr, _ in sections}
    placed = {idstr for idstr, _ in static if idstr not in CPU_IDSTRS}
    assert placed == _expected(cfg, present)


def test_user_devices_are_not_placed(placement_streams) -> None:
    """A device from -device is at /machine/peripheral/ID or
    /machine/peripheral-anon/device[N]; the stream has neither the id nor
    the order of anonymous devices."""
    for v in VERSIONS:
        cfg = PlacementConfig(qemu=v, machine=NEWEST[v][0], smp=2, defaults=True)
        path, dump = placement_streams(cfg)
        with qevm.load(path, ram="skip") as s:
            static = static_paths(s)
            walked = _walked(path, s, dump)
        users = {k: p for k, p in walked.items() if p.startswith("/machine/peripheral")}
        assert {p for p in users.values()} == {"/machine/peripheral/vblk0",
                                               "/machine/peripheral-anon/device[0]"}
        assert not set(users) & set(static)


def _format():
    pytest.importorskip("migtree.stream", reason="the migtree core is not importable")
    import migtree_qemu.plugin as qemu_plugin
    from migtree import builtin
    from migtree.registry import Registry

    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    reg.add_plugin(qemu_plugin, "migtree-qemu")
    fmt = reg.formats["qemu"]
    fmt._registry = reg
    return fmt


def _node(tree: dict, path: str) -> dict:
    for part in path.strip("/").split("/"):
        tree = tree[part]
    return tree


@pytest.mark.parametrize("version", VERSIONS)
def test_read_places_sections_without_a_walk(placement_streams, tmp_path, version) -> None:
    """The format's read puts sections at their QOM paths when no walk is
    beside the stream, and the rest where it always did; the stream
    still writes back byte-identical."""
    cfg = PlacementConfig(qemu=version, machine=NEWEST[version][1], smp=2, defaults=True)
    path, dump = placement_streams(cfg)
    alone = tmp_path / "alone.qevm"
    shutil.copyfile(path, alone)
    fmt = _format()
    _, tree = fmt.read(alone)
    with qevm.load(path, ram="skip") as s:
        walked = _walked(path, s, dump)
        keys = [(sec.idstr, sec.instance_id) for sec in s.devices()]
    lapic = _node(tree, walked[("apic", 1)])
    assert lapic["__type__"] == "apic" and lapic["__qemu__"]["instance_id"] == 1
    ahci = _node(tree, walked[("0000:00:1f.2/ich9_ahci", 0)])
    assert ahci["__qemu__"]["idstr"] == "0000:00:1f.2/ich9_ahci"
    # a user's device stays under /machine/qemu
    vblk = [k for k in keys if k[0].endswith("/virtio-blk")][0]
    assert _node(tree, f"/machine/qemu/{vblk[0]}")["__qemu__"]["idstr"] == vblk[0]
    out = io.BytesIO()
    fmt.write(out, None, tree)
    assert out.getvalue() == path.read_bytes()


def test_read_with_a_walk_takes_the_walks_paths_first(placement_streams, tmp_path) -> None:
    """With a walk beside the stream its paths win; static ones fill in the
    sections it does not place, but never a path it already gave."""
    cfg = PlacementConfig(qemu="7.2", machine="pc-i440fx-7.2", smp=1)
    path, dump = placement_streams(cfg)
    with qevm.load(path, ram="skip") as s:
        static = static_paths(s)
    qom = qompaths.load(path.with_suffix(".qom.json"))
    fmt = _format()
    # the walk as saved: PCI devices and vCPUs from it (no -dump-vmstate
    # beside the stream), the HPET from the stream alone
    beside = tmp_path / "walked.qevm"
    shutil.copyfile(path, beside)
    qompaths.save(qom, beside.with_suffix(".qom.json"))
    _, tree = fmt.read(beside)
    assert _node(tree, "/machine/peripheral/vblk0")["__qemu__"]["idstr"].endswith("/virtio-blk")
    assert _node(tree, static[("hpet", 0)])["__type__"] == "hpet"
    # a walk (edited) that puts the disk where the stream alone puts the HPET
    hpet_path, disk_path = static[("hpet", 0)], "/machine/peripheral/vblk0"

    def moved(mapping):
        out = {p: v for p, v in mapping.items()
               if p != hpet_path and not p.startswith(hpet_path + "/")}
        if disk_path in out:
            out[hpet_path] = out.pop(disk_path)
        return out

    objects, devfn = moved(qom["objects"]), moved(qom["pci_devfn"])
    assert devfn[hpet_path] == 2 << 3
    edited = tmp_path / "edited.qevm"
    shutil.copyfile(path, edited)
    qompaths.save({"objects": objects, "pci_devfn": devfn}, edited.with_suffix(".qom.json"))
    _, tree = fmt.read(edited)
    assert _node(tree, hpet_path)["__qemu__"]["idstr"].endswith("/virtio-blk")
    assert _node(tree, "/machine/qemu/hpet")["__type__"] == "hpet"
