"""Run a real qemu-system-x86_64 and make or load migration streams.

Used by the tests (through fixtures in conftest.py) and by hand::

    python tests/qemu/qemu_streams.py OUTDIR   # writes the whole matrix

Nothing here sleeps to wait for QEMU: every wait polls QMP or the process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from migtree_qemu import qompaths, versions
from migtree_qemu.qmp import QMPClient, QMPError

QEMU = shutil.which("qemu-system-x86_64")
QEMU_IMG = shutil.which("qemu-img")
#: the host's QEMU version ("7.2" on Debian 12), None without QEMU
HOST_VERSION = versions.host_build().version if QEMU else None


def qemu_build(version: str | None) -> versions.QemuBuild:
    """The QEMU of *version* (None: the host's); skips the test, saying
    why, when that version cannot be had here."""
    need_qemu()
    try:
        return versions.find(version or HOST_VERSION, build=True)
    except versions.QemuVersionUnavailable as exc:
        pytest.skip(f"QEMU {version} is unavailable here: {exc}")


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


@dataclass(frozen=True)
class StreamConfig:
    """One point of the stream matrix."""

    machine: str = "pc"  # pc | q35 | a versioned machine type (pc-q35-7.2)
    accel: str = "tcg"  # tcg | kvm
    smp: int = 1
    disk: bool = True
    running: bool = False  # let SeaBIOS run before migrating (else -S)
    memory: int = 64
    extra: tuple[str, ...] = field(default=())
    #: boot the tiny Linux guest of guest_builder.py (kernel, initramfs)
    guest: tuple[str, str] | None = None
    #: the QEMU version that makes the stream (None: the host's)
    qemu: str | None = None
    #: "fleet": the machine type's default devices plus the devices a fleet
    #: runs (:func:`fleet_args`)
    devices: str | None = None
    #: a guest's reboot ends QEMU (``-no-reboot``), so that a panic shows;
    #: off where QMP ``system_reset`` must reboot and QMP ``set-action``
    #: (QEMU >= 6.0) cannot say so
    no_reboot: bool = True

    @property
    def name(self) -> str:
        parts = [f"qemu{self.qemu}"] if self.qemu else []
        parts += [self.machine, self.accel, f"smp{self.smp}"]
        if self.disk:
            parts.append("vblk")
        if self.guest:
            parts.append("linux")
        if self.running:
            parts.append("run")
        if self.memory != 64:
            parts.append(f"m{self.memory}")
        if self.devices:
            parts.append(self.devices)
        return "-".join(parts)

    def args(self, disk_path: Path | None, serial: Path | None = None) -> list[str]:
        fleet = self.devices == "fleet"
        args = [
            *([] if fleet else ["-nodefaults"]),
            "-display",
            "none",
            "-machine",
            f"{self.machine},accel={self.accel}",
            "-m",
            str(self.memory),
            "-smp",
            str(self.smp),
        ]
        if self.disk:
            assert disk_path is not None
            args += [
                "-drive",
                f"file={disk_path},if=none,id=d0",
                "-device",
                "virtio-blk-pci,drive=d0,id=vblk0",
            ]
        if fleet:
            assert disk_path is not None
            args += fleet_args(self.machine, disk_path)
        if self.guest:
            kernel, initrd = self.guest
            args += ["-kernel", kernel, "-initrd", initrd,
                     "-append", "console=ttyS0 panic=-1",
                     *(["-no-reboot"] if self.no_reboot else []),
                     "-serial", f"file:{serial}" if serial else "null"]
        return args + list(self.extra)


# The matrix the issue asks for: pc and q35, tcg and kvm, 1 and 2 vCPUs,
# each with a virtio-blk-pci disk; two extra points let SeaBIOS run first.
MATRIX = [
    StreamConfig(machine=m, accel=a, smp=s)
    for m in ("pc", "q35")
    for a in ("tcg", "kvm")
    for s in (1, 2)
] + [
    StreamConfig(machine="pc", accel="tcg", smp=1, running=True),
    StreamConfig(machine="q35", accel="kvm", smp=2, running=True),
]


def fleet_args(machine: str, disk_path: Path) -> list[str]:
    """The devices a fleet runs, on top of the machine type's defaults (no
    ``-nodefaults``: VGA, IDE/AHCI with a CD-ROM (given explicitly, with a
    medium the guest reads, :func:`make_cd_medium`), the floppy on pc,
    PS/2, RTC, HPET, PIT, PIC, IOAPIC, fw_cfg, ICH9 LPC/SMBus on q35). The
    default NIC is given explicitly (its model, e1000 on pc and e1000e on
    q35, on a user-mode network restricted to the guest), so no traffic
    leaves QEMU; a second disk for virtio-scsi sits beside *disk_path*."""
    q35 = "q35" in machine
    scsi = make_disk(disk_path.with_name(disk_path.stem + "-scsi.qcow2"))
    console = disk_path.with_name(disk_path.stem + "-console.log")
    medium = make_cd_medium(disk_path.with_name(disk_path.stem + "-cd.raw"))
    return [
        "-nic", f"user,restrict=on,model={'e1000e' if q35 else 'e1000'}",
        "-device", "qemu-xhci,id=xhci", "-device", "usb-tablet,bus=xhci.0",
        "-netdev", "user,id=n1,restrict=on", "-device", "e1000e,netdev=n1",
        "-netdev", "user,id=n2,restrict=on", "-device", "virtio-net-pci,netdev=n2",
        "-device", "virtio-scsi-pci,id=scsi0",
        "-drive", f"file={scsi},if=none,id=scsidisk0",
        "-device", "scsi-hd,drive=scsidisk0,bus=scsi0.0",
        "-device", "virtio-balloon-pci,id=balloon0",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"file,id=con0,path={console}", "-device", "virtconsole,chardev=con0",
        "-device", "virtio-gpu-pci",
        "-device", "pvpanic",
        # a CD-ROM on the machine's own IDE/AHCI controller: the scsi-hd drive
        # above turns QEMU's default (empty) one off
        "-drive", f"if=ide,media=cdrom,id=cdrom0,format=raw,readonly=on,file={medium}",
    ]


#: a CD-ROM sector
CD_SECTOR = 2048


def make_cd_medium(path: Path, sectors: int = 512) -> Path:
    """A CD-ROM medium whose sector *k* starts with ``MIGTREE-CD k `` (the
    fleet guest checks the sector it read is the one it asked for)."""
    if not path.exists():
        data = b"".join(f"MIGTREE-CD {k} ".encode().ljust(CD_SECTOR, b".")
                        for k in range(sectors))
        path.write_bytes(data)
    return path


def make_disk(path: Path, size: str = "16M") -> Path:
    if not path.exists():
        subprocess.run(
            [QEMU_IMG or "qemu-img", "create", "-q", "-f", "qcow2", str(path), size],
            check=True,
        )
    return path


class QemuVM:
    """A qemu-system-x86_64 process with a QMP socket; a context manager
    that always ends the process it started."""

    def __init__(self, args: list[str], workdir: Path, name: str = "vm",
                 build: versions.QemuBuild | None = None) -> None:
        self.workdir = Path(workdir)
        # a short path: unix socket paths are limited to 107 bytes
        self.sock = Path(tempfile.mkdtemp(prefix="qmp")) / "qmp.sock"
        self.log = self.workdir / f"{name}.log"
        self.env = build.environ() if build is not None else None
        self.argv = [*(build.argv if build is not None else [QEMU or "qemu-system-x86_64"]),
                     *args]
        self.argv += ["-qmp", f"unix:{self.sock},server=on,wait=off"]
        self.proc: subprocess.Popen | None = None
        self.qmp: QMPClient | None = None
        self.serial: Path | None = None

    def start(self) -> QemuVM:
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._logf, stderr=self._logf,
            env=self.env,
        )
        try:
            self.qmp = QMPClient.connect(str(self.sock), timeout=60, process=self.proc)
        except QMPError as exc:
            self.stop()
            raise QMPError(f"{exc}\n{' '.join(self.argv)}\n{self.output()}") from exc
        return self

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.qmp is not None:
            try:
                self.qmp.execute("quit")
            except (QMPError, OSError):
                pass
            self.qmp.close()
            self.qmp = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self._logf.close()
        shutil.rmtree(self.sock.parent, ignore_errors=True)

    def __enter__(self) -> QemuVM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- migration --------------------------------------------------------
    def migrate_to_file(self, path: Path, timeout: float = 300) -> dict:
        assert self.qmp is not None
        self.qmp.execute("migrate", uri=f"exec:cat > {path}")
        return self.qmp.wait_migration(timeout=timeout)

    def incoming_from_file(self, path: Path, timeout: float = 300) -> dict:
        """For a VM started with ``-incoming defer``: load *path*."""
        assert self.qmp is not None and self.proc is not None
        self.qmp.execute("migrate-incoming", uri=f"exec:cat {path}")
        try:
            return self.qmp.wait_migration(timeout=timeout)
        except (QMPError, OSError) as exc:
            # QEMU exits when an incoming migration fails; show its words.
            if self.proc.poll() is None:
                self.proc.wait(timeout=20)
            raise QMPError(f"incoming migration failed: {exc}\n{self.output()}") from exc


def wait_guest_ran(vm: QemuVM) -> None:
    """With the VM running, poll until the vCPUs have left the reset vector
    (SeaBIOS has started)."""
    assert vm.qmp is not None

    vm.qmp.wait_until("query-status", lambda r: r.get("running") is True)
    # query-cpus-fast has no PC: ask HMP 'info registers' until RIP has
    # left the reset vector.
    def left_reset(_: object) -> bool:
        out = vm.qmp.execute("human-monitor-command", **{"command-line": "info registers"})
        for line in out.splitlines():
            if "RIP=" in line or "EIP=" in line:
                rip = line.split("IP=")[1].split()[0]
                return int(rip, 16) not in (0xFFF0, 0xFFFFFFF0)
        return False

    vm.qmp.wait_until("query-status", left_reset, timeout=60)


def wait_serial(vm: QemuVM, log: Path, marker: str, count: int = 1,
                timeout: float = 180) -> str:
    """Poll the guest's serial log until *marker* has appeared *count*
    times; fail with the log if QEMU exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if text.count(marker) >= count:
            return text
        if vm.proc is not None and vm.proc.poll() is not None:
            raise RuntimeError(f"QEMU exited while waiting for {marker!r}:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {count} x {marker!r} after {timeout}s:\n{text[-3000:]}")
        time.sleep(0.2)


def make_stream(cfg: StreamConfig, outdir: Path) -> Path:
    """Start QEMU for *cfg*, migrate it to ``outdir/<name>.qevm``; return it.
    The disk image is kept beside it (``<name>.qcow2``) for loading back.
    A Linux guest is migrated once its I/O loop has printed 40 progress
    lines (``MIGTREE-IO``), with its readers and writer still running."""
    outdir = Path(outdir)
    out = outdir / f"{cfg.name}.qevm"
    if out.exists():
        return out
    disk = make_disk(outdir / f"{cfg.name}.qcow2") if cfg.disk else None
    serial = outdir / f"{cfg.name}-src.serial"
    args = cfg.args(disk, serial)
    if not cfg.running:
        args.append("-S")
    tmp = out.with_suffix(".part")
    with QemuVM(args, outdir, f"{cfg.name}-src", build=_build_of(cfg.qemu)) as vm:
        if cfg.guest:
            wait_serial(vm, serial, "MIGTREE-IO ", count=40)
        elif cfg.running:
            wait_guest_ran(vm)
        # the QOM tree beside the stream, to place sections at QOM paths
        qompaths.save(qompaths.walk(vm.qmp), out.with_suffix(".qom.json"))
        vm.migrate_to_file(tmp)
    tmp.rename(out)
    return out


def resave_under_kvm(cfg: StreamConfig, stream: Path, outdir: Path) -> Path:
    """Load *stream* (written by a TCG QEMU) into a paused KVM QEMU and
    migrate it out again: a KVM-written stream with a Linux guest's state,
    although Linux does not boot under this host's KVM (design.md §8)."""
    kcfg = StreamConfig(machine=cfg.machine, accel="kvm", smp=cfg.smp, disk=cfg.disk,
                        running=cfg.running, memory=cfg.memory, extra=cfg.extra,
                        guest=cfg.guest, qemu=cfg.qemu)
    out = Path(outdir) / f"{kcfg.name}-resaved.qevm"
    if out.exists():
        return out
    disk = Path(outdir) / f"{cfg.name}.qcow2"
    args = kcfg.args(disk if cfg.disk else None) + ["-S", "-incoming", "defer"]
    tmp = out.with_suffix(".part")
    with QemuVM(args, Path(outdir), f"{kcfg.name}-resave", build=_build_of(cfg.qemu)) as vm:
        vm.incoming_from_file(stream)
        vm.migrate_to_file(tmp)
    tmp.rename(out)
    return out


def load_stream(cfg: StreamConfig, stream: Path, outdir: Path, name: str = "dst",
                disk: Path | None = None):
    """Start QEMU for *cfg* (its ``qemu`` version) with ``-S -incoming
    defer`` and load *stream*.  Returns the :class:`QemuVM` (paused; caller
    stops it).  A Linux guest's serial console goes to ``vm.serial``."""
    outdir = Path(outdir)
    disk = disk or outdir / f"{cfg.name}.qcow2"
    if cfg.disk:
        make_disk(disk)
    serial = outdir / f"{cfg.name}-{name}.serial"
    vm = QemuVM(cfg.args(disk if cfg.disk else None, serial) + ["-S", "-incoming", "defer"],
                outdir, f"{cfg.name}-{name}", build=_build_of(cfg.qemu))
    vm.serial = serial
    vm.start()
    try:
        vm.incoming_from_file(stream)
    except BaseException:
        vm.stop()
        raise
    return vm


def dump_vmstate(outdir: Path, machine: str = "pc", qemu: str | None = None) -> Path:
    """``-dump-vmstate`` of QEMU *qemu* (None: the host's) for *machine*."""
    prefix = f"vmstate-qemu{qemu}-" if qemu else "vmstate-"
    out = Path(outdir) / f"{prefix}{machine}.json"
    if not out.exists():
        build = _build_of(qemu)
        argv = list(build.argv) if build is not None else [QEMU or "qemu-system-x86_64"]
        tmp = out.with_suffix(".part")
        subprocess.run(
            [*argv, "-nodefaults", "-display", "none",
             "-machine", f"{machine},accel=tcg", "-dump-vmstate", str(tmp)],
            check=True, stdin=subprocess.DEVNULL, capture_output=True,
            env=build.environ() if build is not None else None,
        )
        tmp.rename(out)
    return out


def _build_of(version: str | None) -> versions.QemuBuild | None:
    """None for the host's QEMU (the default everywhere), else that version's."""
    if version is None or version == HOST_VERSION:
        return None
    return qemu_build(version)


# Test helpers live here, not in conftest.py: every test directory has a
# conftest module, so `from conftest import ...` would pick whichever came first.
def need_qemu(cfg: StreamConfig | None = None) -> None:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed (Debian: qemu-system-x86)")
    if cfg is not None and cfg.accel == "kvm" and not kvm_usable():
        pytest.skip("/dev/kvm is not usable here; KVM streams cannot be made")


def linux_config(guest: tuple[str, str], machine: str = "pc") -> StreamConfig:
    return StreamConfig(machine=machine, accel="tcg", smp=1, memory=128, guest=guest,
                        running=True)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "streams")
    target.mkdir(parents=True, exist_ok=True)
    for c in MATRIX:
        print(make_stream(c, target), flush=True)
    print(dump_vmstate(target, "pc"))
    print(dump_vmstate(target, "q35"))

