"""QEMU 5.2, 7.2 and 10.0: their streams read and written back byte-identical,
and moved between them -- natively where QEMU can, through ``migtree
convert --target`` (the loading QEMU's ``-dump-vmstate``) where it cannot,
including the downgrades QEMU refuses.

Every cell of the matrix (tests/qemu/qemu_versions_matrix.py) is run with
the real QEMUs: the original stream loaded by the loading QEMU, the stream
with only its machine type renamed (what an operator would try), and
migtree's conversion; the converted stream must be accepted and the guest
running (the Linux guest's disk I/O going on), or migtree must have refused
before writing, with a reason the real QEMU confirms. The outcomes are the
table in plugins/qemu/README.md, checked here row by row.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import qemu_versions_matrix as mx
from qemu_streams import make_stream

from migtree_qemu import compat, qevm
from migtree_qemu.tree import iter_section_nodes, stream_to_tree, tree_to_stream

pytestmark = [pytest.mark.qemu]

README = Path(__file__).parents[2] / "plugins" / "qemu" / "README.md"
MIGTREE = str(Path(sys.executable).with_name("migtree"))


@pytest.fixture(scope="session")
def root(streams):
    return streams.root


@pytest.fixture(scope="session")
def cells(root):
    """Every SeaBIOS cell, run once per session (about half a minute)."""
    return {(c.source, c.loader, c.machine): c for c in mx.run_all(root)}


@pytest.fixture(scope="session")
def fleet_cells(root):
    """The fleet device set's cells (about half a minute)."""
    return {(c.source, c.loader, c.machine): c for c in mx.run_fleet(root)}


@pytest.fixture(scope="session")
def linux_cells(root, guest_artifacts):
    return {(c.source, c.loader, c.machine): c
            for c in (mx.run_cell(v, m, loader, root, guest_artifacts)
                      for v, m, loader in mx.LINUX)}


def _readme_rows(marker: str = "versions-matrix") -> dict[str, str]:
    text = README.read_text()
    start = text.index(f"<!-- {marker} -->")
    end = text.index(f"<!-- /{marker} -->")
    rows = {}
    for line in text[start:end].splitlines():
        if line.startswith("| ") and not line.startswith("| stream") and "---" not in line:
            cols = [c.strip() for c in line.strip("|").split("|")]
            rows[f"{cols[0]} -> {cols[1]} {cols[4].rsplit('(', 1)[-1]}"] = line
    return rows


def _row_key(cell) -> str:
    guest = ", Linux guest" if cell.guest else ""
    return f"{cell.source[0]} {cell.source[1]}{guest} -> {cell.loader} {cell.machine})"


# -- reading every version -------------------------------------------------------------


@pytest.mark.parametrize("version,machine", mx.SOURCES, ids=[f"{v}-{m}" for v, m in mx.SOURCES])
def test_every_version_reads_and_writes_back_byte_identical(root, version, machine):
    path = make_stream(mx.source_config(version, machine), root)
    original = path.read_bytes()
    with qevm.load(path) as s:
        assert qevm.dumps(s) == original
        assert s.configuration.machine == machine
        tree = stream_to_tree(s)
        back = io.BytesIO()
        qevm.dump(tree_to_stream(tree), back)
    assert back.getvalue() == original
    # the vmdesc is written in the version's own style
    assert (b"\x06\x00" in original) and (s.vmdesc_style == ("qjson" if version == "5.2"
                                                             else "json-writer"))


@pytest.mark.parametrize("version,machine", mx.SOURCES, ids=[f"{v}-{m}" for v, m in mx.SOURCES])
def test_every_section_is_decoded_nothing_left_opaque_but_by_nature(root, version, machine):
    from migtree.formats import open_stream

    path = make_stream(mx.source_config(version, machine), root)
    _, _, tree = open_stream(str(path))
    undecoded = {p: n["__qemu__"]["undecoded"] for p, n in iter_section_nodes(tree)
                 if n["__qemu__"].get("undecoded")}
    assert undecoded == {}
    lifted = [n for _, n in iter_section_nodes(tree) if n["__qemu__"].get("lifted")]
    assert [n["__qemu__"]["vmsd_name"] for n in lifted] == ["virtio-blk"]


# -- the matrix ------------------------------------------------------------------------------


def test_every_converted_cell_is_accepted_and_the_guest_runs(cells):
    bad = {k: c.converted.short() for k, c in cells.items() if c.converted.result != "accepted"}
    assert bad == {}
    # the point of it: cells QEMU refuses natively that migtree brings through
    rescued = [k for k, c in cells.items() if c.native.result == "refused"]
    assert len(rescued) >= 8
    for key in rescued:
        assert cells[key].changes, f"{key}: QEMU refuses the original, so something changed"


def test_cells_qemu_loads_natively_are_left_alone_where_the_machine_type_stays(cells):
    for key, c in cells.items():
        if c.native.result == "accepted" and c.machine == c.source[1]:
            assert c.changes == [], (key, c.changes)


def test_the_headline_cases(cells):
    # 10.0 -> 7.2, with 10.0's newest machine types and with an old one on the 10.0 side
    for machine, target in (("pc-i440fx-10.0", "pc-i440fx-7.2"), ("pc-q35-10.0", "pc-q35-7.2"),
                            ("pc-i440fx-7.2", "pc-i440fx-7.2"), ("pc-q35-7.2", "pc-q35-7.2")):
        assert cells[(("10.0", machine), "7.2", target)].converted.result == "accepted"
    newest = cells[(("10.0", "pc-i440fx-10.0"), "7.2", "pc-i440fx-7.2")]
    assert newest.native.result == "refused"
    # the floor: for this small VM the machine's name and the one command 7.2
    # does not know are all that differ, so the naive conversion loads too
    assert newest.renamed.result == "accepted"
    assert mx.describe_changes(newest.changes) == \
        "command-switchover-start dropped, machine-type mapped"
    # 5.2 -> 10.0, on the same machine type and on 10.0's newest
    for machine, target in (("pc-i440fx-5.2", "pc-i440fx-5.2"),
                            ("pc-i440fx-5.2", "pc-i440fx-10.0"),
                            ("pc-q35-5.2", "pc-q35-10.0")):
        assert cells[(("5.2", machine), "10.0", target)].converted.result == "accepted"
    upgraded = cells[(("5.2", "pc-i440fx-5.2"), "10.0", "pc-i440fx-10.0")]
    assert "Missing section footer for 0000:00:01.3/piix4_pm" in upgraded.renamed.detail
    assert "field-piix4-pm-acpi-pci-hotplug-acpi-index restored" in \
        mx.describe_changes(upgraded.changes)


def test_check_gives_the_verdict_convert_reaches(cells, root):
    """``migtree check --from STREAM --to DUMP``: the same pass, nothing written."""
    from qemu_streams import dump_vmstate

    from migtree.commands.check import check_paths
    from migtree.plugins import get_registry

    for (source, loader, machine), cell in cells.items():
        stream = make_stream(mx.source_config(*source), root)
        report = check_paths(str(stream), str(dump_vmstate(root, machine, loader)),
                             get_registry())
        assert report.compatible == (cell.converted.result != "not converted"), \
            (source, loader, machine, report.format_text())


def test_the_readme_table_is_what_the_qemus_did(cells, linux_cells):
    rows = _readme_rows()
    want = mx.markdown(list(cells.values()) + list(linux_cells.values())).splitlines()[2:]
    missing = []
    for cell, line in zip(list(cells.values()) + list(linux_cells.values()), want,
                          strict=True):
        if rows.get(_row_key(cell)) != line:
            missing.append(line)
    assert missing == [], "plugins/qemu/README.md's matrix differs; the observed rows:\n" + \
        "\n".join(missing)


@pytest.mark.slow
def test_the_linux_guest_keeps_doing_io_or_the_refusal_is_real(linux_cells, root,
                                                               guest_artifacts, monkeypatch):
    for key, c in linux_cells.items():
        if c.converted.result == "accepted":
            assert c.converted.detail == "guest I/O goes on", key
            continue
        assert c.converted.result == "not converted", (key, c.converted)
        # the refusal is real: the same conversion without the feature check
        # writes a stream the loading QEMU itself refuses
        reason = c.converted.detail
        feature = re.search(r"negotiated (VIRTIO_\w+) \(bit (\d+)\)", reason)
        assert feature, reason
        monkeypatch.setattr(compat, "VIRTIO_FEATURES",
                            tuple(f for f in compat.VIRTIO_FEATURES
                                  if f.name != feature.group(1)))
        (v, m), loader = c.source, c.loader
        forced = mx.run_cell(v, m, loader, root, guest_artifacts)
        monkeypatch.undo()
        assert forced.converted.result == "refused", key
        bit = 1 << int(feature.group(2))
        got = re.search(r"Features (0x[0-9a-f]+) unsupported\. Allowed features: (0x[0-9a-f]+)",
                        forced.converted.detail)
        assert got and int(got.group(1), 16) & bit and not int(got.group(2), 16) & bit, \
            forced.converted.detail


# -- the fleet device set ------------------------------------------------------------------


def test_every_fleet_cell_is_converted_and_accepted_or_refused_before_writing(fleet_cells):
    for key, c in fleet_cells.items():
        assert c.converted.result in ("accepted", "not converted"), (key, c.converted)
        if c.converted.result == "not converted":
            # a refusal names a guest-visible reason the analysis or a rule found
            assert "qemu-machine@1: " in c.converted.detail or "filter qemu-" in \
                c.converted.detail, (key, c.converted.detail)


def test_every_case_a_naive_conversion_breaks_is_converted_or_refused(fleet_cells):
    broken = {k: c for k, c in fleet_cells.items()
              if c.renamed is not None and c.renamed.result != "accepted"}
    assert broken, "the fleet matrix has cases a naive conversion breaks"
    for key, c in broken.items():
        assert c.converted.result in ("accepted", "not converted"), (key, c.converted)


def test_no_refusal_is_staged(fleet_cells, root):
    """Every refusal of the safety analysis is real: converted anyway (the
    refused properties accepted, one after the other), the loading QEMU
    refuses the stream itself."""
    refused = {k: c for k, c in fleet_cells.items() if "'compat." in c.converted.detail}
    assert refused
    for (source, loader, machine), c in refused.items():
        accept: tuple[str, ...] = ()
        cell = c
        while "'compat." in cell.converted.detail:
            key = cell.converted.detail.split("'compat.", 1)[1].split("'", 1)[0]
            assert key not in accept, (source, loader, cell.converted.detail)
            accept += (key,)
            cell = mx.run_cell(*source, loader, root, target_machine=machine,
                               devices="fleet", accept=accept)
        assert cell.converted.result == "refused", (source, loader, accept, cell.converted)


def test_the_readme_fleet_table_is_what_the_qemus_did(fleet_cells):
    rows = _readme_rows("fleet-matrix")
    want = mx.markdown(list(fleet_cells.values())).splitlines()[2:]
    missing = [line for cell, line in zip(fleet_cells.values(), want, strict=True)
               if rows.get(_row_key(cell)) != line]
    assert missing == [], "plugins/qemu/README.md's fleet matrix differs; observed:\n" + \
        "\n".join(missing)


# -- there and back: the stash -------------------------------------------------------------


DOWN = [("10.0", "pc-i440fx-10.0", "7.2"), ("10.0", "pc-q35-10.0", "5.2"),
        ("7.2", "pc-i440fx-7.2", "5.2"), ("10.0", "pc-i440fx-10.0", "5.2")]


@pytest.mark.parametrize("version,machine,loader", DOWN,
                         ids=[f"{v}-{m}-to-{t}" for v, m, t in DOWN])
def test_down_and_back_up_through_a_migtree_stream_is_byte_identical(root, tmp_path, version,
                                                                     machine, loader):
    from qemu_streams import dump_vmstate

    stream = make_stream(mx.source_config(version, machine), root)
    down = dump_vmstate(root, mx.loading_machine(machine, loader), loader)
    up = dump_vmstate(root, machine, version)
    mt, back = tmp_path / "down.mt", tmp_path / "back.qevm"
    run = subprocess.run([MIGTREE, "convert", str(stream), "--target", str(down), "-o", str(mt)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([MIGTREE, "convert", str(mt), "--target", str(up), "-o", str(back)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert back.read_bytes() == stream.read_bytes()


def _object_states(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each object's own state by the QEMU format's stash anchor (its
    section, or its path), and the machine's stream framing (configuration,
    commands) -- what a QEMU that loads and saves a stream may renumber (the
    section ids) left out."""
    from migtree.formats import formats, open_stream
    from migtree.plugins import get_registry
    from migtree.tree import iter_object_nodes

    registry = get_registry()
    fmt = formats(registry)["qemu"]
    _, _, tree = open_stream(str(path), registry)
    states = {fmt.stash_anchor(p, n): fmt.stash_state(n) for p, n in iter_object_nodes(tree)
              if "idstr" in (n.get("__qemu__") or {})}
    meta = tree["machine"]["__qemu__"]
    framing = {"configuration": meta["configuration"],
               "commands": [o for o in meta["order"] if o[0] == "COMMAND"]}
    return states, framing


@pytest.mark.parametrize("version,machine,loader", DOWN,
                         ids=[f"{v}-{m}-to-{t}" for v, m, t in DOWN])
def test_down_through_a_qemu_that_loads_and_saves_and_back_up_keeps_the_stash(
        root, tmp_path, version, machine, loader):
    """A -> B -> A where B is the real older QEMU: it loads the converted
    stream (paused) and saves it again; the stash ``convert`` kept beside
    the stream goes back on the way up, so every object B did not change
    comes back as A had it, the dropped parts included -- and without the
    stash file they do not."""
    from qemu_streams import dump_vmstate, load_stream

    stream = make_stream(mx.source_config(version, machine), root)
    b_machine = mx.loading_machine(machine, loader)
    down = dump_vmstate(root, b_machine, loader)
    up = dump_vmstate(root, machine, version)
    b_in, b_out = tmp_path / "b.qevm", tmp_path / "b-saved.qevm"
    run = subprocess.run([MIGTREE, "convert", str(stream), "--target", str(down),
                          "-o", str(b_in)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    stash_file = Path(f"{b_in}.stash")
    assert stash_file.exists() and f"kept in {stash_file}" in run.stdout
    kept = re.search(r"stash: \d+ entr(?:y|ies) at \d+ object\(s\) kept in \S+ \(the qemu "
                     r"stream has no room for them\): (.*?); converting", run.stdout).group(1)
    vm = load_stream(mx.source_config(loader, b_machine), b_in, tmp_path, "b")
    try:
        vm.migrate_to_file(b_out)
    finally:
        vm.stop()
    back, bare = tmp_path / "back.qevm", tmp_path / "bare.qevm"
    run = subprocess.run([MIGTREE, "convert", str(b_out), "--stash-from", str(stash_file),
                          "--target", str(up), "-o", str(back)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    put_back = {k for line in re.findall(r": put back (.*)", run.stdout)
                for k in line.split(", ")}
    assert put_back == set(kept.split(", ")), run.stdout
    run = subprocess.run([MIGTREE, "convert", str(b_out), "--target", str(up), "-o", str(bare)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr

    a_states, a_framing = _object_states(stream)
    b_given, _ = _object_states(b_in)
    b_saved, _ = _object_states(b_out)
    changed_by_b = {k for k in b_given if b_given[k] != b_saved.get(k)}
    back_states, back_framing = _object_states(back)
    assert set(back_states) == set(a_states)
    differ = {k for k in a_states if a_states[k] != back_states[k]}
    assert differ <= changed_by_b, (differ, changed_by_b)
    assert back_framing == a_framing
    bare_states, bare_framing = _object_states(bare)
    assert bare_framing != a_framing or any(
        a_states[k] != bare_states.get(k) for k in a_states if k not in changed_by_b)
    # and A's own QEMU takes it and runs
    assert mx.try_load(mx.source_config(version, machine), back, tmp_path, "a-again") == \
        mx.Outcome("accepted")


def test_explain_shows_every_drop_stash_and_mapping(root):
    from qemu_streams import dump_vmstate

    stream = make_stream(mx.source_config("10.0", "pc-q35-10.0"), root)
    dump = dump_vmstate(root, "pc-q35-5.2", "5.2")
    out = subprocess.run([MIGTREE, "explain", str(stream), "--target", str(dump), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    apps = {a["filter"]: a for a in doc["filters"]["applications"]}
    assert set(apps) == {"qemu-subsection-pckbd-kbd-extended-state-drop",
                         "qemu-subsection-ich9lpc-pm-pcihp-drop",
                         "qemu-machine-type-map", "qemu-command-switchover-start-drop"}
    assert "qemu-subsection-pckbd-kbd-extended-state.kbd.extended_state" in \
        apps["qemu-subsection-pckbd-kbd-extended-state-drop"]["stashed"]
    assert apps["qemu-machine-type-map"]["diff"]["changed"][
        "__qemu__.configuration.machine"] == ["pc-q35-10.0", "pc-q35-5.2"]
    assert doc["notes"][0].startswith("machine type pc-q35-10.0 -> pc-q35-5.2: ")
    assert any("virtio-device.queue_reset: (default) -> false" in n for n in doc["notes"])


def test_a_refusal_writes_nothing_and_names_section_field_and_reason(root, tmp_path):
    from qemu_streams import dump_vmstate

    stream = make_stream(mx.source_config("10.0", "pc-q35-10.0"), root)
    with qevm.load(stream) as s:
        kbd = s.device("pckbd")["kbd"]
        kbd["status"] = kbd["status"] | 0x01  # a byte waiting in the i8042's output buffer
        held = tmp_path / "held.qevm"
        with open(held, "wb") as f:
            qevm.dump(s, f)
    out = tmp_path / "out.qevm"
    out.write_bytes(b"old")
    run = subprocess.run([MIGTREE, "convert", str(held), "--target",
                          str(dump_vmstate(root, "pc-q35-5.2", "5.2")), "-o", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 1
    assert "refused, nothing written: /machine/" in run.stderr
    assert "pckbd@3" in run.stderr and "kbd.status has OBF set" in run.stderr
    assert out.read_bytes() == b"old"


# -- the fleet guest on the fleet device set -----------------------------------------------


@pytest.fixture(scope="session")
def fleet_guest_artifacts() -> tuple[str, str]:
    """(kernel, initramfs) of the fleet guest (tests/qemu/fleet_guest.py)."""
    from qemu_streams import need_qemu

    need_qemu()
    import fleet_guest
    import guest_builder

    try:
        kernel, initrd = fleet_guest.build_fleet_guest()
    except guest_builder.GuestBuildError as exc:
        pytest.fail(f"cannot build the fleet guest: {exc}")
    return str(kernel), str(initrd)


@pytest.fixture(scope="session")
def linux_fleet_cells(root, fleet_guest_artifacts):
    """The fleet cells with the fleet guest (about a minute each)."""
    return {(c.source, c.loader, c.machine): c
            for c in mx.run_linux_fleet(root, fleet_guest_artifacts)}


@pytest.mark.slow
def test_the_fleet_guest_keeps_every_device_working_after_conversion(linux_fleet_cells):
    """Every cell migtree converts keeps every device of the fleet guest
    working, after loading and after system_reset; every cell it refuses
    is refused for what the running guest did (a virtio feature it
    negotiated, the e1000e clock it runs, MSI-X or extended tags its driver
    enabled), before anything is written."""
    every = (*mx.FLEET_GUEST_DEVICES, "balloon")
    assert len(linux_fleet_cells) == len(mx.LINUX_FLEET)
    for key, c in linux_fleet_cells.items():
        assert c.before == every, (key, "on the source", c.before)
        if c.converted.result == "not converted":
            assert re.search(r"the guest(?:'s driver enabled| negotiated| runs)",
                             c.converted.detail), (key, c.converted)
            continue
        assert c.converted.result == "accepted", (key, c.converted)
        assert c.after == every, (key, "after loading", c.after)
        if c.source in mx.RESET_HANGS_UNMIGRATED:
            continue  # its firmware does not come back from a reset, migrated or not
        assert c.after_reset == every, (key, "after system_reset", c.after_reset)
    # the cells QEMU loads only through migtree's conversion are among them
    converted = [k for k, c in linux_fleet_cells.items()
                 if c.changes and c.converted.result == "accepted"]
    assert any(k[0] == ("10.0", "pc-q35-7.2") and k[1] == "7.2" for k in converted)
    assert any(k[0] == ("5.2", "pc-q35-5.2") and k[2] == "pc-q35-10.0" for k in converted)


@pytest.mark.slow
def test_the_fleet_guest_and_seabios_get_the_same_verdicts(linux_fleet_cells, fleet_cells):
    """Booting Linux on the fleet VM changes what the analysis reads (enabled
    MSI-X, extended tags), not whether a cell converts."""
    verdicts = {k: c.converted.result for k, c in fleet_cells.items()}
    assert {k: c.converted.result for k, c in linux_fleet_cells.items()} == verdicts


def test_the_fleet_guest_runs_every_cell_of_the_fleet_matrix(fleet_cells):
    with_guest = {(v, m, loader, t or mx.loading_machine(m, loader))
                  for v, m, loader, t in mx.LINUX_FLEET}
    assert with_guest == {(*c.source, c.loader, c.machine) for c in fleet_cells.values()}


@pytest.mark.slow
def test_the_readme_fleet_guest_table_is_what_the_qemus_did(linux_fleet_cells):
    text = README.read_text()
    block = text[text.index("<!-- fleet-linux-matrix -->"):
                 text.index("<!-- /fleet-linux-matrix -->")]
    def key(line: str) -> tuple[str, ...]:  # stream, loaded by, the loading machine type
        cols = [c.strip() for c in line.strip("|").split("|")]
        return cols[0], cols[1], cols[2].rsplit("(", 1)[-1]

    rows = {key(line): line for line in block.splitlines()
            if line.startswith("| ") and "---" not in line and " stream " not in line}
    want = mx.fleet_markdown(list(linux_fleet_cells.values())).splitlines()[2:]
    missing = [line for line in want if rows.get(key(line)) != line]
    assert len(rows) == len(want) and missing == [], \
        "plugins/qemu/README.md's fleet guest matrix differs; observed:\n" + "\n".join(missing)


@pytest.mark.slow
@pytest.mark.parametrize("qemu,firmware,comes_back", [
    ("5.2", "5.2", False),  # the unmigrated source
    ("7.2", "5.2", False),  # 5.2's firmware on 7.2: the firmware is the cause
    ("7.2", "7.2", True),   # the control: 7.2's own firmware reboots the same machine type
])
def test_qemu_5_2_q35_firmware_hangs_on_system_reset_without_migrating(root, guest_artifacts,
                                                                      qemu, firmware,
                                                                      comes_back):
    """Why RESET_HANGS_UNMIGRATED exists: a pc-q35-5.2 VM running QEMU 5.2's
    SeaBIOS (Debian 11's) does not boot again after QMP system_reset, though
    it never migrated: the firmware stops. It is the firmware, which is
    guest memory and migrates with the VM: QEMU 7.2 hangs the same way with
    5.2's, and reboots with its own. If the hang is ever gone, the fleet
    cells from 5.2 on q35 must check the reset too."""
    import time

    import qemu_streams
    from qemu_streams import QemuVM, StreamConfig, _build_of, wait_serial

    fw = mx.qemu_build(firmware)
    bios = (fw.root / "usr/share/seabios/bios-256k.bin") if fw.root else None
    cfg = StreamConfig(machine="pc-q35-5.2", accel="tcg", smp=1, running=True, qemu=qemu,
                       memory=256, guest=guest_artifacts, no_reboot=False,
                       extra=("-bios", str(bios)) if bios and firmware != qemu else ())
    workdir = root / f"reset-q35-5.2-qemu{qemu}-firmware{firmware}"
    workdir.mkdir(exist_ok=True)
    disk = qemu_streams.make_disk(workdir / "disk.qcow2")
    serial = workdir / "serial.log"
    serial.unlink(missing_ok=True)
    with QemuVM(cfg.args(disk, serial), workdir, "vm", build=_build_of(qemu)) as vm:
        wait_serial(vm, serial, "Linux version", timeout=240)
        vm.qmp.execute("system_reset")
        if comes_back:
            wait_serial(vm, serial, "Linux version", count=2, timeout=240)
            return
        # longer than the control takes to boot again: still in the firmware
        time.sleep(90)
        assert serial.read_text(errors="replace").count("Linux version") == 1
        regs = vm.qmp.execute("human-monitor-command", **{"command-line": "info registers"})
        assert "RIP=ffffffff" not in regs, regs[:300]  # not back in the kernel
