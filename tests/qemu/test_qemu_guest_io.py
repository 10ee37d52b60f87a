"""A Linux guest doing I/O on its virtio-blk disk: its streams decode,
re-encode byte-identical, and QEMU resumes the guest from what we write."""

from __future__ import annotations

import pytest
from qemu_streams import linux_config, load_stream, resave_under_kvm, wait_serial

from migtree_qemu import qevm

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


@pytest.fixture(scope="module", params=["pc", "q35"])
def linux_stream(request, streams, guest_artifacts):
    cfg = linux_config(guest_artifacts, request.param)
    return cfg, streams(cfg)


def test_linux_stream_roundtrips_byte_identical(linux_stream):
    cfg, path = linux_stream
    original = path.read_bytes()
    with qevm.load(path) as s:
        assert qevm.dumps(s) == original
        # a booted guest: RAM is mostly real pages, the CPU is in long mode
        ram = [x.body for x in s.sections if isinstance(x.body, qevm.RamSection)]
        assert sum(r.full_pages for r in ram) > 1000
        cpu = s.device("cpu")
        assert cpu["env.efer"] & 0x400  # EFER.LMA
        vblk = next(d for d in s.devices() if d.idstr.endswith("/virtio-blk"))
        assert vblk.state.field("virtio").type == "virtio"
        # the virtio-pci proxy's PCI config has bus mastering on (driver bound)
        assert len(vblk.state["virtio"]) > 1000


def test_qemu_resumes_the_guest_from_our_stream(linux_stream, streams, tmp_path):
    cfg, path = linux_stream
    with qevm.load(path) as s:
        ours = tmp_path / "ours.qevm"
        with open(ours, "wb") as f:
            qevm.dump(s, f)
    # a copy of the disk as the source left it, so the guest sees its data
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes((streams.root / f"{cfg.name}.qcow2").read_bytes())
    vm = load_stream(cfg, ours, tmp_path, "resume", disk=disk)
    try:
        vm.qmp.execute("cont")
        # the guest's I/O loop goes on printing progress after the migration
        text = wait_serial(vm, vm.serial, "MIGTREE-IO ", count=5, timeout=120)
        assert "MIGTREE-INIT" not in text  # not a fresh boot: the loop resumed
    finally:
        vm.stop()


def test_kvm_written_stream_of_the_linux_guest(linux_stream, streams, tmp_path):
    """design.md §8: boot under TCG, load into a paused KVM QEMU, migrate
    again; that KVM-written stream round-trips and loads back under KVM."""
    from qemu_streams import need_qemu

    cfg, path = linux_stream
    kcfg = type(cfg)(machine=cfg.machine, accel="kvm", memory=cfg.memory, guest=cfg.guest,
                     running=True)
    need_qemu(kcfg)
    kpath = resave_under_kvm(cfg, path, streams.root)
    original = kpath.read_bytes()
    with qevm.load(kpath) as s:
        assert qevm.dumps(s) == original
        assert any(d.idstr == "kvmclock" for d in s.devices())
        ours = tmp_path / "ours.qevm"
        ours.write_bytes(original)
    vm = load_stream(kcfg, ours, tmp_path, "kvm-load", disk=streams.root / f"{cfg.name}.qcow2")
    try:
        assert vm.qmp.execute("query-migrate")["status"] == "completed"
        assert vm.qmp.execute("query-status")["status"] == "paused"
    finally:
        vm.stop()
