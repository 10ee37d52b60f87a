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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qemu_streams
from qemu_streams import StreamConfig, load_stream, make_stream, qemu_build, wait_serial

from migtree_qemu import machines, qevm

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
