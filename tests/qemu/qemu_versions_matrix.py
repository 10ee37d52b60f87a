"""The cross-version matrix: streams made by QEMU 5.2, 7.2 and 10.0 on several
machine types, loaded by each version natively and after ``migtree convert
--target`` (the loading version's ``-dump-vmstate`` for the machine type it
will run).

Used by test_qemu_versions.py and by hand, to print the README's table::

    python tests/qemu/qemu_versions_matrix.py OUTDIR   # runs it, prints markdown

A cell's machine type on the loading side is the stream's own when the
loading QEMU has it (then conversion changes only what that QEMU does not
read), else that QEMU's newest machine type of the same family.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fleet_guest
import qemu_streams
from qemu_streams import QemuVM, StreamConfig, load_stream, make_stream, qemu_build, wait_serial

from migtree_qemu import machines, qevm, qompaths
from migtree_qemu.qmp import QMPError

LOADERS = ("5.2", "7.2", "10.0")
#: (producing QEMU, machine type): each version's newest pc and q35, and older ones
SOURCES = (
    ("5.2", "pc-i440fx-5.2"), ("5.2", "pc-q35-5.2"), ("5.2", "pc-i440fx-4.2"),
    ("7.2", "pc-i440fx-7.2"), ("7.2", "pc-q35-7.2"), ("7.2", "pc-i440fx-5.2"),
    ("10.0", "pc-i440fx-10.0"), ("10.0", "pc-q35-10.0"), ("10.0", "pc-i440fx-7.2"),
    ("10.0", "pc-q35-7.2"),
)


def source_config(version: str, machine: str, guest: tuple[str, str] | None = None,
                  devices: str | None = None) -> StreamConfig:
    """SeaBIOS has run (or the Linux guest is doing disk I/O) when QEMU
    *version* migrates; one vCPU, a virtio-blk disk, TCG; *devices* "fleet"
    adds the machine's defaults and a fleet's devices."""
    return StreamConfig(machine=machine, accel="tcg", smp=1, running=True, qemu=version,
                        memory=128 if guest is not None else 64, guest=guest, devices=devices)


_MACHINES: dict[str, set[str]] = {}


def machine_types(version: str) -> set[str]:
    """The machine types QEMU *version* has (``-machine help``)."""
    if version not in _MACHINES:
        build = qemu_build(version)
        out = subprocess.run([*build.argv, "-machine", "help"], capture_output=True,
                             text=True, env=build.environ(), stdin=subprocess.DEVNULL,
                             check=True).stdout
        _MACHINES[version] = {line.split()[0] for line in out.splitlines()[1:] if line.strip()}
    return _MACHINES[version]


def loading_machine(source_machine: str, loader: str) -> str:
    if source_machine in machine_types(loader):
        return source_machine
    family = machines.parse(source_machine)[0]
    best = max((m for m in machine_types(loader) if (machines.parse(m) or ("",))[0] == family),
               key=lambda m: machines.parse(m)[1])
    return best


@dataclass
class Outcome:
    """What a loading QEMU did with a stream: ``accepted`` (loaded, and
    running after ``cont``) or ``refused`` with QEMU's own words, or --
    for a converted cell -- ``not converted`` with migtree's reason."""

    result: str  # "accepted" | "refused" | "not converted"
    detail: str = ""

    def short(self) -> str:
        return self.result if not self.detail else f"{self.result}: {self.detail}"


def qemu_error(text: str) -> str:
    """QEMU's own error lines (the host-CPU feature warnings left out)."""
    lines = [ln.split("qemu-system-x86_64: ", 1)[1].strip() for ln in text.splitlines()
             if "qemu-system-x86_64: " in ln and "warning:" not in ln]
    return "; ".join(lines) or text.strip().splitlines()[-1] if text.strip() else "?"


def try_load(cfg: StreamConfig, stream: Path, outdir: Path, name: str) -> Outcome:
    """Start *cfg*'s QEMU with ``-incoming defer``, load, ``cont``: did the
    guest get running?"""
    if cfg.machine not in machine_types(cfg.qemu):
        # QEMU refuses before it listens: have it say so (a -dump-vmstate run
        # exits right after machine creation)
        build = qemu_build(cfg.qemu)
        out = subprocess.run([*build.argv, "-machine", cfg.machine, "-nodefaults",
                              "-display", "none", "-dump-vmstate", str(outdir / f"{name}.json")],
                             capture_output=True, text=True, env=build.environ(),
                             stdin=subprocess.DEVNULL)
        return Outcome("refused", qemu_error(out.stderr))
    try:
        vm = load_stream(cfg, stream, outdir, name, disk=outdir / f"{name}.qcow2")
    except Exception as exc:  # QEMU refused: its words are in the message
        return Outcome("refused", qemu_error(str(exc)))
    try:
        vm.qmp.execute("cont")
        vm.qmp.wait_until("query-status", lambda r: r.get("status") == "running", timeout=30)
        if cfg.guest is None:
            return Outcome("accepted")
        # the Linux guest: its disk I/O loop goes on, no fresh boot, no kernel error
        try:
            text = wait_serial(vm, vm.serial, "MIGTREE-IO ", count=5, timeout=120)
        except RuntimeError as exc:
            return Outcome("guest failed", str(exc)[-300:])
        bad = [m for m in KERNEL_ERRORS if m in text]
        if "MIGTREE-INIT" in text or bad:
            return Outcome("guest failed", f"rebooted or kernel errors: {bad}")
        return Outcome("accepted", "guest I/O goes on")
    finally:
        vm.stop()


#: what a Linux guest prints when a device broke under it
KERNEL_ERRORS = ("I/O error", "Oops", "BUG:", "Call Trace", "virtio_blk", "timed out",
                 "Kernel panic")


def convert(stream: Path, dump: Path, out: Path, accept: tuple[str, ...] = (),
            ) -> tuple[Outcome | None, list[Any], list[str]]:
    """``migtree convert STREAM --target DUMP -o OUT`` through the API:
    (None, applications, the target's required launch arguments) when
    written, (Outcome, ...) when refused."""
    from migtree.errors import FilterError
    from migtree.formats import open_stream
    from migtree.plugins import get_registry
    from migtree.targets import filter_to_target, open_target

    registry = get_registry()
    target = open_target(str(dump), registry, accept=list(accept))
    _, header, tree = open_stream(str(stream), registry)
    try:
        report, notes = filter_to_target(tree, target, registry, explain=False)
    except FilterError as e:
        return Outcome("not converted", str(e)), [], []
    fmt = registry.formats["qemu"]
    with open(out, "wb") as f:
        fmt.write(f, header, tree)
    from migtree_qemu import analysis

    launch = analysis.required_globals(analysis.analyse(tree, target))
    return None, report.applications, launch


def naive_conversion(stream: Path, machine: str, loader: str, out: Path) -> Path:
    """What an operator would try by hand: the configuration's machine type
    renamed, and the migration commands the loading QEMU does not know
    dropped -- nothing else."""
    known = tuple(int(x) for x in loader.split("."))
    with qevm.load(stream) as s:
        name = machine.encode()
        for f in s.configuration.state.fields:
            if f.name == "len":
                f.value = len(name)
            elif f.name == "name":
                f.value, f.size = name, len(name)
        s.items = [i for i in s.items if not isinstance(i, qevm.Command)
                   or qevm.MIG_COMMANDS.get(i.command, ("", (99, 0)))[1] <= known]
        with open(out, "wb") as fp:
            qevm.dump(s, fp)
    return out


@dataclass
class Cell:
    source: tuple[str, str]
    loader: str
    machine: str  # the machine type the loading QEMU runs
    native: Outcome
    converted: Outcome
    changes: list[str]
    #: the naive conversion: machine type renamed, unknown commands dropped
    #: (None: same machine type)
    renamed: Outcome | None = None
    guest: bool = False


def run_cell(version: str, machine: str, loader: str, root: Path,
             guest: tuple[str, str] | None = None, target_machine: str | None = None,
             devices: str | None = None, accept: tuple[str, ...] = ()) -> Cell:
    """One cell; *target_machine* forces the loading machine type (an
    upgrade to the loader's newest, say)."""
    src_cfg = source_config(version, machine, guest, devices)
    stream = make_stream(src_cfg, root)
    target_machine = target_machine or loading_machine(machine, loader)
    dst_cfg = StreamConfig(machine=machine, accel="tcg", smp=1, running=True, qemu=loader,
                           memory=src_cfg.memory, guest=guest, devices=devices)
    tag = f"{src_cfg.name}-to-{loader}-{target_machine}"
    disk = root / f"{src_cfg.name}.qcow2"
    (root / f"{tag}-native.qcow2").write_bytes(disk.read_bytes())
    native = try_load(dst_cfg, stream, root, f"{tag}-native")
    renamed = None
    conv_cfg = StreamConfig(machine=target_machine, accel="tcg", smp=1, running=True,
                            qemu=loader, memory=src_cfg.memory, guest=guest, devices=devices)
    if target_machine != machine:
        (root / f"{tag}-renamed.qcow2").write_bytes(disk.read_bytes())
        renamed = try_load(conv_cfg, naive_conversion(stream, target_machine, loader,
                                                      root / f"{tag}-renamed.qevm"),
                           root, f"{tag}-renamed")
    dump = qemu_streams.dump_vmstate(root, target_machine, loader)
    out = root / f"{tag}.qevm"
    refused, apps, launch = convert(stream, dump, out, accept)
    changes = [f"{a.path}: {a.filter}" for a in apps]
    if refused is not None:
        return Cell((version, machine), loader, target_machine, native, refused, changes,
                    renamed, guest is not None)
    (root / f"{tag}-converted.qcow2").write_bytes(disk.read_bytes())
    if launch:  # what the safety analysis says the target must be started with
        conv_cfg = dataclasses.replace(conv_cfg, extra=tuple(launch))
        changes = changes + ["launch: " + " ".join(launch[1::2])]
    converted = try_load(conv_cfg, out, root, f"{tag}-converted")
    return Cell((version, machine), loader, target_machine, native, converted, changes,
                renamed, guest is not None)


def describe_changes(changes: list[str]) -> str:
    """The filters applied, shortly: ``subsection-pckbd-kbd-extended-state
    dropped``, ``machine-type mapped``, ``field-...-acpi-index restored``."""
    launch = [c.split(": ", 1)[1] for c in changes if c.startswith("launch: ")]
    changes = [c for c in changes if not c.startswith("launch: ")]
    names = sorted({c.split(": ", 1)[1] for c in changes})
    short = [re.sub(r"-(drop|map|restore)$",
                    lambda m: {"drop": " dropped", "map": " mapped",
                               "restore": " restored"}[m.group(1)],
                    re.sub(r"^qemu-", "", n)) for n in names]
    globals_ = [g for g in " ".join(launch).split()]
    if globals_:
        short.append("target run with -global " + " ".join(globals_))
    return ", ".join(short) or "nothing"


def markdown(cells: list[Cell]) -> str:
    rows = ["| stream (QEMU, machine type) | loaded by | QEMU natively | QEMU after a naive "
            "conversion (machine type renamed, unknown commands dropped) | migtree convert "
            "--target (machine type) | what migtree changed |",
            "| --- | --- | --- | --- | --- | --- |"]
    for c in cells:
        renamed = c.renamed.short() if c.renamed else "(same machine type)"
        guest = ", Linux guest" if c.guest else ""
        rows.append(f"| {c.source[0]} {c.source[1]}{guest} | {c.loader} | {c.native.short()} | "
                    f"{renamed} | {c.converted.short()} ({c.machine}) | "
                    f"{describe_changes(c.changes)} |")
    return "\n".join(rows)


#: the machine type upgraded too: 5.2's state on 10.0's newest machine types
UPGRADES = (("5.2", "pc-i440fx-5.2", "10.0", "pc-i440fx-10.0"),
            ("5.2", "pc-q35-5.2", "10.0", "pc-q35-10.0"))
#: the Linux guest doing disk I/O, on the headline cases (it boots under TCG)
LINUX = (("10.0", "pc-i440fx-10.0", "7.2"), ("10.0", "pc-q35-10.0", "7.2"),
         ("10.0", "pc-i440fx-7.2", "7.2"), ("7.2", "pc-q35-7.2", "5.2"),
         ("10.0", "pc-i440fx-10.0", "5.2"), ("5.2", "pc-i440fx-5.2", "10.0"))


#: the fleet device set (qemu_streams.fleet_args): each version's newest
#: machine types and 10.0 on an older one, to every version, and two upgrades
FLEET_SOURCES = (
    ("5.2", "pc-i440fx-5.2"), ("5.2", "pc-q35-5.2"), ("7.2", "pc-i440fx-7.2"),
    ("7.2", "pc-q35-7.2"), ("10.0", "pc-i440fx-10.0"), ("10.0", "pc-q35-10.0"),
    ("10.0", "pc-i440fx-7.2"), ("10.0", "pc-q35-7.2"),
)
FLEET_UPGRADES = (("5.2", "pc-q35-5.2", "10.0", "pc-q35-10.0"),
                  ("7.2", "pc-i440fx-7.2", "10.0", "pc-i440fx-10.0"))


def run_fleet(root: Path) -> list[Cell]:
    cells = [run_cell(v, m, loader, root, devices="fleet")
             for v, m in FLEET_SOURCES for loader in LOADERS]
    cells += [run_cell(v, m, loader, root, target_machine=t, devices="fleet")
              for v, m, loader, t in FLEET_UPGRADES]
    return cells


# -- the fleet guest on the fleet device set ------------------------------------------------

#: (producing QEMU, machine type, loading QEMU, loading machine type or None for
#: :func:`loading_machine`'s): every cell of the fleet matrix, run with the
#: fleet guest (tests/qemu/fleet_guest.py) using every device. Where migtree
#: converts, the guest must keep every device working; where it refuses, the
#: refusal is made from the Linux guest's own state (its driver's use of what
#: the target cannot present). The same-version cells are QEMU's own
#: migrations, the control.
LINUX_FLEET = (*((v, m, loader, None) for v, m in FLEET_SOURCES for loader in LOADERS),
               *FLEET_UPGRADES)
#: (producing QEMU, machine type) whose guest does not come back from a QMP
#: ``system_reset`` even when it never migrated: QEMU 5.2's SeaBIOS (1.14,
#: Debian 11) stops in the firmware when it reboots a pc-q35-5.2 machine under
#: TCG. The firmware is guest memory (``pc.bios``): it travels with the
#: stream and hangs the same way on 7.2 and 10.0 (7.2's own reboots that
#: machine type). Pinned by test_qemu_versions'
#: ``test_qemu_5_2_q35_firmware_hangs_on_system_reset_without_migrating``;
#: these cells check every device after loading, not after a reset.
RESET_HANGS_UNMIGRATED = frozenset({("5.2", "pc-q35-5.2")})
#: what a round of the fleet guest names when every device worked (its NICs:
#: the default NIC, e1000e, virtio-net); "balloon" is the host's: the
#: balloon reached the size QMP ``balloon`` asked for
FLEET_GUEST_DEVICES = fleet_guest.FLEET_DEVICES
#: what a Linux guest prints when a device broke under it (and a hung task's words)
FLEET_KERNEL_ERRORS = ("I/O error", "Oops", "BUG:", "Call Trace", "timed out", "Kernel panic",
                       "hung task", "blocked for more than", "Hardware Unit Hang")
_FLEET_ROUND = re.compile(r"MIGTREE-FLEET (\d+)((?: [a-z0-9]+)*) mem=(\d+)")
MIB = 1 << 20
#: the fleet guest's RAM, and what the balloon leaves it (MiB): on the source before migrating
#: (inflated), on the loading side (deflated), after its system_reset (inflated)
FLEET_MEMORY = 256
FLEET_BALLOON = (192, 224, 208)


def fleet_rounds(text: str) -> list[tuple[int, frozenset[str], int]]:
    """The fleet guest's rounds in *text*: (n, the devices that worked, MemTotal MiB)."""
    return [(int(m.group(1)), frozenset(m.group(2).split()), int(m.group(3)))
            for m in _FLEET_ROUND.finditer(text)]


def _tablet_event(vm: Any, step: int) -> None:
    """Move the usb-tablet (the only absolute pointer): the guest counts its events."""
    pos = 1000 + (step * 3000) % 30000
    vm.qmp.execute("input-send-event", events=[
        {"type": "abs", "data": {"axis": "x", "value": pos}},
        {"type": "abs", "data": {"axis": "y", "value": pos}}])


def wait_fleet(vm: Any, log: Path, after: str | None = None, rounds: int = 3,
               timeout: float = 240, start: int = 0) -> tuple[str, frozenset[str]]:
    """Poll the serial *log* (from byte *start*; the part after the last
    *after* marker, when given) until *rounds* consecutive rounds name every
    device, moving the tablet meanwhile. Returns (the log, the devices that
    worked): every device, or on timeout those named in the last *rounds*
    rounds."""
    want = frozenset(FLEET_GUEST_DEVICES)
    deadline = time.monotonic() + timeout
    step = 0
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        part = text[start:]
        if after is not None:
            part = text.rsplit(after, 1)[1] if after in text else ""
        seen = [devices for _, devices, _ in fleet_rounds(part)]
        if len(seen) >= rounds and all(want <= d for d in seen[-rounds:]):
            return text, want
        if vm.proc is not None and vm.proc.poll() is not None:
            raise RuntimeError(f"QEMU exited while the fleet guest ran:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            return text, frozenset().union(*seen[-rounds:])
        _tablet_event(vm, step)
        step += 1
        time.sleep(0.5)


def set_balloon(vm: Any, mib: int, timeout: float = 90) -> bool:
    """Ask the balloon for *mib* MiB of guest RAM; did the guest get there?"""
    vm.qmp.execute("balloon", value=mib * MIB)
    try:
        vm.qmp.wait_until("query-balloon", lambda r: r.get("actual") == mib * MIB,
                          timeout=timeout)
    except QMPError:  # the guest did not get there
        return False
    return True


def balloon_step(vm: Any, log: Path, mib: int) -> tuple[str, frozenset[str], bool, int]:
    """Move the balloon to *mib* MiB while the fleet guest runs, then wait
    for two more rounds with every device. Returns (the log, the devices
    that worked in those rounds, whether the balloon got there -- QEMU's
    ``query-balloon`` and the guest's MemTotal moved by as much, within 2
    MiB --, the guest's MemTotal in MiB)."""
    text = log.read_text(errors="replace")
    was = vm.qmp.execute("query-balloon")["actual"] // MIB
    rounds = fleet_rounds(text)
    mem_was = rounds[-1][2] if rounds else 0
    reached = set_balloon(vm, mib)
    start = len(text)
    text, devices = wait_fleet(vm, log, rounds=2, start=start)
    rounds = fleet_rounds(text[start:])
    mem = rounds[-1][2] if rounds else 0
    return text, devices, reached and abs((mem_was - mem) - (was - mib)) <= 2, mem


def _console_lines(disk: Path) -> int:
    """The fleet guest's lines in the console port's file (``fleet_args``
    puts it beside the VM's disk)."""
    console = disk.with_name(disk.stem + "-console.log")
    return console.read_text(errors="replace").count("MIGTREE-FLEET-HVC") \
        if console.exists() else 0


def _console_confirms(devices: frozenset[str], disk: Path, had: int) -> frozenset[str]:
    """*devices*, without ``hvc`` unless the host's end of the console port
    got more than the *had* lines it had: the bytes arrive."""
    return devices if _console_lines(disk) > had else devices - {"hvc"}


def _crashloaded(vm: Any) -> int:
    """The pvpanic crash-loaded events QEMU has reported over QMP so far."""
    vm.qmp.execute("query-status")  # reads the events that arrived meanwhile
    return sum(1 for e in vm.qmp.events if e.get("event") == "GUEST_CRASHLOADED")


def _pvpanic_confirms(devices: frozenset[str], vm: Any, had: int) -> frozenset[str]:
    """*devices*, without ``pvpanic`` unless QEMU reported more than the *had*
    crash-loaded events it had: the guest's writes reached the device."""
    return devices if _crashloaded(vm) > had else devices - {"pvpanic"}


def _worked(devices: frozenset[str], balloon: bool) -> tuple[str, ...]:
    names = [d for d in FLEET_GUEST_DEVICES if d in devices]
    return tuple(names + (["balloon"] if balloon else []))


def make_fleet_stream(cfg: StreamConfig, root: Path) -> tuple[Path, tuple[str, ...], str]:
    """Boot the fleet guest (*cfg*), wait for rounds with every device
    working, inflate the balloon (256 -> 192 MiB), migrate. Returns (the
    stream, the devices that worked, what went wrong: "" when nothing);
    its disks are ``<stream>.qcow2`` and ``<stream>-scsi.qcow2``, kept."""
    out = root / f"{cfg.name}-fleetguest.qevm"
    done = out.with_suffix(".worked")
    if out.exists() and done.exists():
        worked, _, problem = done.read_text().partition("\n")
        return out, tuple(worked.split()), problem
    disk = qemu_streams.make_disk(out.with_suffix(".qcow2"))
    serial = out.with_suffix(".serial")
    serial.unlink(missing_ok=True)
    tmp = out.with_suffix(".part")
    with QemuVM(cfg.args(disk, serial), root, out.stem + "-src",
                build=qemu_streams._build_of(cfg.qemu)) as vm:
        _, devices = wait_fleet(vm, serial)
        text, more, balloon, _ = balloon_step(vm, serial, FLEET_BALLOON[0])
        worked = _worked(_pvpanic_confirms(_console_confirms(devices & more, out, 0), vm, 0),
                         balloon)
        problem = _fleet_problem(text, worked)
        qompaths.save(qompaths.walk(vm.qmp), out.with_suffix(".qom.json"))
        vm.migrate_to_file(tmp)
    tmp.rename(out)
    done.write_text(" ".join(worked) + "\n" + problem)
    return out, worked, problem


def _fleet_problem(text: str, worked: tuple[str, ...]) -> str:
    """What went wrong in a stretch of the guest's serial output: devices
    that stopped, kernel errors, a reboot; "" when nothing."""
    problems = []
    stopped = [d for d in (*FLEET_GUEST_DEVICES, "balloon") if d not in worked]
    if stopped:
        problems.append("stopped: " + " ".join(stopped))
    bad = [m for m in FLEET_KERNEL_ERRORS if m in text]
    if bad:
        problems.append(f"kernel errors: {bad}")
    return "; ".join(problems)


@dataclass
class FleetCell:
    """A cell of the fleet matrix run with the fleet guest: migtree's
    conversion loaded, and which devices worked on the source, after
    loading and after ``system_reset`` on the loading side."""

    source: tuple[str, str]
    loader: str
    machine: str
    converted: Outcome
    changes: list[str]
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    after_reset: tuple[str, ...] = ()
    #: the guest's MemTotal (MiB) on the loading side: after deflating, and after
    #: the reset and inflating
    memory: tuple[int, ...] = ()


def run_linux_fleet_cell(version: str, machine: str, loader: str, root: Path,
                         guest: tuple[str, str], target_machine: str | None = None
                         ) -> FleetCell:
    """One cell with the fleet guest: the source's devices all working and
    its balloon inflated when it migrates; migtree's conversion loaded (the
    launch arguments the analysis gives), ``cont``, every device working
    again and the balloon deflated to 224 MiB, no kernel error; then QMP
    ``system_reset``: a fresh boot with every device working."""
    src_cfg = StreamConfig(machine=machine, accel="tcg", smp=1, running=True, qemu=version,
                           memory=FLEET_MEMORY, guest=guest, devices="fleet")
    stream, before, problem = make_fleet_stream(src_cfg, root)
    target_machine = target_machine or loading_machine(machine, loader)
    key = ((version, machine), loader, target_machine)
    if problem:
        return FleetCell(*key, Outcome("guest failed", f"on the source: {problem}"), [], before)
    dump = qemu_streams.dump_vmstate(root, target_machine, loader)
    tag = f"{stream.stem}-to-{loader}-{target_machine}"
    out = root / f"{tag}.qevm"
    refused, apps, launch = convert(stream, dump, out)
    changes = [f"{a.path}: {a.filter}" for a in apps]
    if refused is not None:
        return FleetCell(*key, refused, changes, before)
    # the source's disks, both of them, as the loading side's
    disk = root / f"{tag}-converted.qcow2"
    disk.write_bytes(stream.with_suffix(".qcow2").read_bytes())
    disk.with_name(disk.stem + "-scsi.qcow2").write_bytes(
        stream.with_name(stream.stem + "-scsi.qcow2").read_bytes())
    # QEMU < 6.0 has no QMP set-action: its -no-reboot would turn the
    # system_reset below into a shutdown, so it runs without (a guest panic
    # then shows as a reboot, which is checked for too)
    set_action = tuple(map(int, loader.split("."))) >= (6, 0)
    dst_cfg = StreamConfig(machine=target_machine, accel="tcg", smp=1, running=True,
                           qemu=loader, memory=FLEET_MEMORY, guest=guest, devices="fleet",
                           extra=tuple(launch), no_reboot=set_action)
    if launch:
        changes.append("launch: " + " ".join(launch[1::2]))
    try:
        vm = load_stream(dst_cfg, out, root, f"{tag}-converted", disk=disk)
    except Exception as exc:  # QEMU refused: its words are in the message
        return FleetCell(*key, Outcome("refused", qemu_error(str(exc))), changes, before)
    mem: list[int] = []
    try:
        vm.qmp.execute("cont")
        vm.qmp.wait_until("query-status", lambda r: r.get("status") == "running", timeout=30)
        _, devices = wait_fleet(vm, vm.serial)
        text, more, balloon, memtotal = balloon_step(vm, vm.serial, FLEET_BALLOON[1])
        after = _worked(_pvpanic_confirms(_console_confirms(devices & more, disk, 0), vm, 0),
                        balloon)
        hvc_lines = _console_lines(disk)
        crashloaded = _crashloaded(vm)
        mem.append(memtotal)
        problems = [_fleet_problem(text, after)]
        if "MIGTREE-FLEET-BOOT" in text:
            problems.append("the guest rebooted")
        if (version, machine) in RESET_HANGS_UNMIGRATED:
            problem = "; ".join(p for p in problems if p)
            return FleetCell(*key, Outcome("guest failed", problem) if problem else Outcome(
                "accepted", f"every device goes on; system_reset not checked: QEMU {version}'s "
                            f"firmware hangs on it on {machine} without migrating too"),
                changes, before, after, (), tuple(mem))
        # a reset on the loading side: the guest boots afresh on the loaded devices
        # (the command line's -no-reboot would make it a shutdown)
        if set_action:
            vm.qmp.execute("set-action", reboot="reset")
        vm.qmp.execute("system_reset")
        wait_serial(vm, vm.serial, "MIGTREE-FLEET-BOOT", timeout=240)
        _, devices = wait_fleet(vm, vm.serial, after="MIGTREE-FLEET-BOOT")
        # the balloon kept its target through the reset (the new guest's driver
        # inflated to it); inflated further, the new guest gives the pages
        text, more, balloon, memtotal = balloon_step(vm, vm.serial, FLEET_BALLOON[2])
        after_reset = _worked(_pvpanic_confirms(
            _console_confirms(devices & more, disk, hvc_lines), vm, crashloaded), balloon)
        booted = text.rsplit("MIGTREE-FLEET-BOOT", 1)[1]
        mem.append(memtotal)
        reset_problem = _fleet_problem(booted, after_reset)
        if reset_problem:
            problems.append(f"after system_reset: {reset_problem}")
        # kernel errors anywhere on the loading side: before the reset and during it
        bad = [m for m in FLEET_KERNEL_ERRORS if m in text]
        if bad and not any("kernel errors" in p for p in problems):
            problems.append(f"kernel errors: {bad}")
    except (RuntimeError, QMPError) as exc:  # QEMU exited or the guest never booted again
        return FleetCell(*key, Outcome("guest failed", str(exc)[-300:]), changes, before,
                         memory=tuple(mem))
    finally:
        vm.stop()
    problem = "; ".join(p for p in problems if p)
    result = Outcome("guest failed", problem) if problem else \
        Outcome("accepted", "every device goes on, also after system_reset")
    return FleetCell(*key, result, changes, before, after, after_reset, tuple(mem))


def run_linux_fleet(root: Path, guest: tuple[str, str]) -> list[FleetCell]:
    """The :data:`LINUX_FLEET` cells with the fleet guest (*guest*: its kernel
    and initramfs, fleet_guest.build_fleet_guest())."""
    return [run_linux_fleet_cell(v, m, loader, root, guest, target_machine=t)
            for v, m, loader, t in LINUX_FLEET]


#: a register's or field's value in a reason: the running guest's, so it
#: differs from run to run (the e1000e's clock); the table shows the name
_RUN_VALUE = re.compile(r"=(?:0x[0-9a-fA-F]+|-?\d+)")


def _stable(text: str) -> str:
    return _RUN_VALUE.sub("=...", text)


def fleet_markdown(cells: list[FleetCell]) -> str:
    rows = ["| stream (QEMU, machine type), fleet guest | loaded by | migtree convert --target "
            "(machine type) | working before (balloon inflated) | after loading (balloon "
            "deflated) | after system_reset | what migtree changed |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in cells:
        rows.append(f"| {c.source[0]} {c.source[1]} | {c.loader} | {_stable(c.converted.short())} "
                    f"({c.machine}) | {' '.join(c.before) or '-'} | "
                    f"{' '.join(c.after) or '-'} | {' '.join(c.after_reset) or '-'} | "
                    f"{describe_changes(c.changes)} |")
    return "\n".join(rows)


def run_all(root: Path, guest: tuple[str, str] | None = None) -> list[Cell]:
    cells = [run_cell(v, m, loader, root) for v, m in SOURCES for loader in LOADERS]
    cells += [run_cell(v, m, loader, root, target_machine=t) for v, m, loader, t in UPGRADES]
    if guest is not None:
        cells += [run_cell(v, m, loader, root, guest) for v, m, loader in LINUX]
    return cells


if __name__ == "__main__":
    outdir = Path(sys.argv[1] if len(sys.argv) > 1 else "matrix")
    outdir.mkdir(parents=True, exist_ok=True)
    import guest_builder

    print(markdown(run_all(outdir, tuple(map(str, guest_builder.build_guest())))))
    print()
    print(markdown(run_fleet(outdir)))
    import fleet_guest

    print()
    print(fleet_markdown(run_linux_fleet(outdir, tuple(map(str,
                                                           fleet_guest.build_fleet_guest())))))
