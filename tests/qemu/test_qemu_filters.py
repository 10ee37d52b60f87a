"""migtree filters on QEMU's own state: the kvm plugin's kvm-apic <-> apic
pair, run by the core's engine on the apic sections of real QEMU streams."""

from __future__ import annotations

import pytest
from qemu_streams import QemuVM, StreamConfig

from migtree_qemu import qevm
from migtree_qemu.tree import stream_to_tree, tree_to_stream

pytestmark = pytest.mark.qemu

engine = pytest.importorskip("migtree.engine", reason="the migtree core is not importable")
kvm_filters = pytest.importorskip("migtree_kvm.filters",
                                  reason="the migtree-kvm plugin is not importable")


def _types(tree):
    out = {}

    def walk(n):
        out[n["__type__"]] = (n["__version__"], n["__version__"])
        for v in n.values():
            if isinstance(v, dict) and "__type__" in v:
                walk(v)

    walk(tree)
    return out


def _lapics(tree):
    cpus = tree["machine"]["qemu"]
    return [v["lapic"] for k, v in cpus.items() if k.startswith("cpu")]


@pytest.mark.parametrize("cfg", [StreamConfig(machine="pc", accel="kvm", smp=2),
                                 StreamConfig(machine="q35", accel="tcg", smp=2,
                                              running=True)],
                         ids=["pc-kvm-smp2", "q35-tcg-smp2-run"])
def test_apic_to_kvm_apic_and_back_is_byte_identical(streams, cfg):
    path = streams(cfg)
    with qevm.load(path) as s:
        tree = stream_to_tree(s)
    qemu_types = _types(tree)
    to_kvm = dict(qemu_types)
    del to_kvm["apic"]
    to_kvm["kvm-apic"] = (1, 1)
    pair = kvm_filters.filter_pair()
    report = engine.apply_filters(tree, engine.Destination(types=to_kvm), [pair])
    assert [a.path for a in report.applications] == [
        "/machine/qemu/cpu/lapic", "/machine/qemu/cpu[1]/lapic"]
    assert all(n["__type__"] == "kvm-apic" and len(n["regs"]) == 1024 for n in _lapics(tree))
    engine.apply_filters(tree, engine.Destination(types=qemu_types), [pair])
    assert all(n["__type__"] == "apic" for n in _lapics(tree))
    assert qevm.dumps(tree_to_stream(tree)) == path.read_bytes()


def test_edit_in_kvm_apic_form_reaches_qemu(streams, tmp_path):
    """Edit the TPR in the in-kernel register page (kvm-apic form), filter
    back to QEMU's apic, write the stream: QEMU loads it and saves the new
    TPR again."""
    cfg = StreamConfig(machine="pc", accel="tcg")
    with qevm.load(streams(cfg)) as s:
        tree = stream_to_tree(s)
    qemu_types = _types(tree)
    to_kvm = dict(qemu_types)
    del to_kvm["apic"]
    to_kvm["kvm-apic"] = (1, 1)
    pair = kvm_filters.filter_pair()
    engine.apply_filters(tree, engine.Destination(types=to_kvm), [pair])
    (lapic,) = _lapics(tree)
    regs = bytearray(lapic["regs"])
    regs[0x80] = 0x20  # APIC_TASKPRI
    lapic["regs"] = bytes(regs)
    report = engine.apply_filters(tree, engine.Destination(types=qemu_types), [pair],
                                  explain=True)
    (app,) = report.applications
    assert app.filter == "kvm-apic-to-apic"
    (lapic,) = _lapics(tree)
    assert lapic["tpr"] == 0x20
    edited = tmp_path / "edited.qevm"
    with open(edited, "wb") as f:
        qevm.dump(tree_to_stream(tree), f)
    vm = QemuVM(cfg.args(streams.root / f"{cfg.name}.qcow2") + ["-S", "-incoming", "defer"],
                tmp_path, "tpr")
    with vm:
        vm.incoming_from_file(edited)
        again = tmp_path / "again.qevm"
        vm.migrate_to_file(again)
    with qevm.load(again) as s2:
        assert s2.device("apic")["tpr"] == 0x20
