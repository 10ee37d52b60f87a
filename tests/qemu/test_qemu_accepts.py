"""QEMU 7.2 loads the streams we write: unmodified and edited."""

from __future__ import annotations

from pathlib import Path

import pytest
from qemu_streams import MATRIX, QemuVM, StreamConfig, load_stream

from migtree_qemu import qevm

pytestmark = pytest.mark.qemu


def _write(stream: qevm.QemuStream, path: Path) -> Path:
    with open(path, "wb") as f:
        qevm.dump(stream, f)
    return path


def _check_runs(vm: QemuVM) -> None:
    assert vm.qmp is not None
    status = vm.qmp.execute("query-status")
    if not status["running"]:
        vm.qmp.execute("cont")
    status = vm.qmp.wait_until("query-status", lambda r: r["running"], timeout=30)
    assert status["status"] == "running"


@pytest.mark.parametrize("cfg", MATRIX, ids=[c.name for c in MATRIX])
def test_qemu_accepts_reencoded_stream(streams, cfg: StreamConfig, tmp_path) -> None:
    src = streams(cfg)
    with qevm.load(src) as s:
        out = _write(s, tmp_path / "ours.qevm")
    assert out.read_bytes() == src.read_bytes()
    vm = load_stream(cfg, out, streams.root, name=f"accept-{tmp_path.name}")
    try:
        info = vm.qmp.execute("query-migrate")
        assert info["status"] == "completed"
        _check_runs(vm)
    finally:
        vm.stop()


def _info_registers(vm: QemuVM) -> str:
    return vm.qmp.execute("human-monitor-command", **{"command-line": "info registers"})


@pytest.mark.parametrize(
    "cfg",
    [StreamConfig(machine="pc", accel="tcg"), StreamConfig(machine="q35", accel="kvm")],
    ids=["pc-tcg", "q35-kvm"],
)

def test_edited_register_reaches_qemu_and_comes_back(streams, cfg, tmp_path) -> None:
    """Change the guest's RAX and the RTC's CMOS seconds byte in the decoded
    stream; QEMU shows the new RAX, and migrating it out again carries both."""
    src = streams(cfg)
    rax = 0x1234_5678_9ABC_DEF0
    with qevm.load(src) as s:
        cpu = s.device("cpu")
        regs = list(cpu["env.regs"])
        assert regs[0] != rax
        regs[0] = rax
        cpu["env.regs"] = regs
        rtc = s.device("mc146818rtc")
        cmos = bytearray(rtc["cmos_data"])
        cmos[0x40] = 0xA5  # a free byte of CMOS RAM
        rtc["cmos_data"] = bytes(cmos)
        edited = _write(s, tmp_path / "edited.qevm")
    vm = QemuVM(cfg.args(streams.root / f"{cfg.name}.qcow2") + ["-S", "-incoming", "defer"],
                tmp_path, "edited")
    with vm:
        vm.incoming_from_file(edited)
        regs_text = _info_registers(vm)
        # the vCPU is in real mode at the reset vector: HMP shows EAX (the
        # low half); the full 64 bits come back in the next migration
        assert f"EAX={rax & 0xFFFFFFFF:08x}" in regs_text, regs_text
        again = tmp_path / "again.qevm"
        vm.migrate_to_file(again)
    with qevm.load(again) as s2:
        assert s2.device("cpu")["env.regs"][0] == rax
        assert s2.device("mc146818rtc")["cmos_data"][0x40] == 0xA5


def test_edited_ram_page_reaches_guest_memory(streams, tmp_path) -> None:
    """Turn a zero page of pc.ram into a page of data in the decoded stream;
    QEMU loads it and the guest's physical memory shows the bytes."""
    cfg = StreamConfig(machine="pc", accel="tcg")
    pattern = bytes(range(256)) * 16
    with qevm.load(streams(cfg)) as s:
        target = None
        for r in s.ram_records():
            kind = r.flags & ~qevm.RAM_CONTINUE
            if kind == qevm.RAM_ZERO and r.block == "pc.ram" and 0x200000 <= r.addr < 0x400000:
                target = r
                break
        assert target is not None
        target.flags = (target.flags & qevm.RAM_CONTINUE) | qevm.RAM_PAGE
        target.data = pattern
        edited = _write(s, tmp_path / "ram-edit.qevm")
    vm = QemuVM(cfg.args(streams.root / f"{cfg.name}.qcow2") + ["-S", "-incoming", "defer"],
                tmp_path, "ram-edit")
    with vm:
        vm.incoming_from_file(edited)
        out = vm.qmp.execute("human-monitor-command",
                             **{"command-line": f"xp /8xb 0x{target.addr + 8:x}"})
    assert "0x08 0x09 0x0a 0x0b 0x0c 0x0d 0x0e 0x0f" in out, out
