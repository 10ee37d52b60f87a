"""QEMU streams as migtree state trees: nodes at paths, plain values, and
back to the same bytes."""

from __future__ import annotations

import pytest
from qemu_streams import MATRIX, StreamConfig

from migtree_qemu import qevm
from migtree_qemu.errors import QemuEncodeError
from migtree_qemu.tree import (
    QEMU_KEY,
    copy_tree,
    iter_section_nodes,
    stream_to_tree,
    tree_to_stream,
)

pytestmark = pytest.mark.qemu


def _tree(path, **kw):
    with qevm.load(path) as s:
        return stream_to_tree(s, **kw)


def _get(tree, path):
    node = tree
    for p in path.strip("/").split("/"):
        node = node[p]
    return node


@pytest.mark.parametrize("cfg", MATRIX, ids=[c.name for c in MATRIX])
def test_tree_reencodes_byte_identical(streams, cfg: StreamConfig) -> None:
    path = streams(cfg)
    tree = _tree(path)
    assert qevm.dumps(tree_to_stream(tree)) == path.read_bytes()


def test_tree_shape(base_stream) -> None:
    tree = _tree(base_stream)
    assert tree["__type__"] == "container"
    assert tree["machine"]["__type__"] == "qemu-machine"
    cpu = _get(tree, "/machine/qemu/cpu")
    assert cpu["__type__"] == "cpu" and cpu["__version__"] == 12
    assert isinstance(cpu["env.regs"], list) and isinstance(cpu["env.regs"][0], int)
    assert isinstance(cpu["env.segs"][0], dict) and "__type__" not in cpu["env.segs"][0]
    lapic = cpu["lapic"]
    assert lapic["__type__"] == "apic" and lapic["__version__"] == 3
    assert lapic[QEMU_KEY]["idstr"] == "apic" and lapic[QEMU_KEY]["instance_id"] == 0
    assert lapic["lvt"] == [0x10000] * 6
    # PCI devices at their idstr: bus address, then vmsd name
    vblk = _get(tree, "/machine/qemu/0000:00:02.0/virtio-blk")
    assert vblk["__type__"] == "virtio-blk" and isinstance(vblk["virtio"], bytes)
    # second instances get [N]
    assert _get(tree, "/machine/qemu/dma[1]")[QEMU_KEY]["instance_id"] == 1
    # subsections are optional parts under their short name
    fdc = _get(tree, "/machine/qemu/fdc")
    assert fdc["state"]["drives"][0]["media_rate"] == {"media_rate": 0}
    ram = _get(tree, "/machine/qemu/ram")
    assert ram["__type__"] == "qemu-ram" and ram["__version__"] == 4
    assert {"name": "pc.ram", "length": 64 << 20} in ram["blocks"]
    assert all(hasattr(b, "iter_chunks") for b in ram["sections"])
    paths = [p for p, _ in iter_section_nodes(tree)]
    assert len(paths) == len(set(paths))


def test_qom_paths_override_placement(base_stream) -> None:
    tree = _tree(base_stream, paths={("0000:00:02.0/virtio-blk", 0): "/machine/peripheral/vblk0",
                                     ("mc146818rtc", 0): "/machine/unattached/device[3]"})
    assert _get(tree, "/machine/peripheral/vblk0")["__type__"] == "virtio-blk"
    assert _get(tree, "/machine/unattached/device[3]")["__type__"] == "mc146818rtc"
    assert qevm.dumps(tree_to_stream(tree)) == base_stream.read_bytes()


def test_tree_edit_and_moved_node_still_encode(base_stream) -> None:
    tree = copy_tree(_tree(base_stream))
    lapic = _get(tree, "/machine/qemu/cpu/lapic")
    lapic["tpr"] = 0x30
    # a filter may move a node: it is found again by its QEMU identity
    rtc = _get(tree, "/machine/qemu").pop("mc146818rtc")
    tree["machine"]["rtc"] = rtc
    out = qevm.loads(qevm.dumps(tree_to_stream(tree)))
    assert out.device("apic")["tpr"] == 0x30
    assert out.device("mc146818rtc")["cmos_data"] == rtc["cmos_data"]


def test_tree_errors_name_the_path(base_stream) -> None:
    tree = _tree(base_stream)
    lapic = _get(tree, "/machine/qemu/cpu/lapic")
    del lapic["esr"]
    with pytest.raises(QemuEncodeError) as e:
        tree_to_stream(tree)
    assert "/machine/qemu/cpu/lapic" in str(e.value) and "'esr'" in str(e.value)
    lapic["esr"] = 0
    lapic["bogus"] = 1
    with pytest.raises(QemuEncodeError, match="no QEMU layout for 'bogus'"):
        tree_to_stream(tree)


def test_dropping_an_optional_subsection(base_stream) -> None:
    tree = _tree(base_stream)
    fdc = _get(tree, "/machine/qemu/fdc")
    fdc["state"]["drives"][1]["media_rate"] = None
    out = qevm.loads(qevm.dumps(tree_to_stream(tree)))
    drives = out.device("fdc")["state"]
    assert drives.field("drives", index=0).value.subsections
    assert not drives.field("drives", index=1).value.subsections


def test_opaque_decoder_hook_point(base_stream) -> None:
    """A plugin's decoder sees the virtio bytes and gives back its value;
    its encoder is used on the way back (here: a trivial hex codec)."""
    seen = {}

    class Hex:
        def decode(self, data, ctx):
            seen.update(ctx)
            return {"hex": data.hex()}

        def encode(self, value, ctx):
            return bytes.fromhex(value["hex"])

    tree = _tree(base_stream, decoders={"virtio-blk": Hex()})
    vblk = _get(tree, "/machine/qemu/0000:00:02.0/virtio-blk")
    assert isinstance(vblk["virtio"], dict)
    assert seen["field"] == "virtio" and seen["idstr"] == "0000:00:02.0/virtio-blk"
    with pytest.raises(QemuEncodeError, match="decoded by a plugin that is not loaded"):
        tree_to_stream(tree)
    assert qevm.dumps(tree_to_stream(tree, decoders={"virtio-blk": Hex()})) == \
        base_stream.read_bytes()


def test_qom_walk_puts_sections_at_qom_paths(streams) -> None:
    """The helper saved QEMU's QOM tree beside each stream (qom-list walk):
    sections land at the paths QEMU itself uses."""
    import json

    from migtree_qemu import qompaths

    cfg = StreamConfig(machine="pc", accel="kvm", smp=2)
    path = streams(cfg)
    qom = qompaths.load(path.with_suffix(".qom.json"))
    dump = json.loads(streams.dump_vmstate("pc").read_text())
    with qevm.load(path) as s:
        paths = qompaths.section_paths(s, qom, dump)
        tree = stream_to_tree(s, paths=paths)
    objects = qom["objects"]
    vblk = _get(tree, "/machine/peripheral/vblk0")
    assert objects["/machine/peripheral/vblk0"] == "virtio-blk-pci"
    assert vblk["__type__"] == "virtio-blk"
    assert vblk[QEMU_KEY]["idstr"] == "0000:00:02.0/virtio-blk"
    cpus = sorted(p for p, t in objects.items() if t.endswith("-x86_64-cpu"))
    assert len(cpus) == 2
    for i, cpu_path in enumerate(cpus):
        cpu = _get(tree, cpu_path)
        assert cpu["__type__"] == "cpu" and cpu[QEMU_KEY]["instance_id"] == i
        assert objects[cpu_path + "/lapic"] == "kvm-apic"  # QOM type under KVM
        assert cpu["lapic"]["__type__"] == "apic"  # the VMState both APICs share
    rtc_path = next(p for p, t in objects.items() if t == "mc146818rtc")
    assert _get(tree, rtc_path)["__type__"] == "mc146818rtc"
    assert qevm.dumps(tree_to_stream(tree)) == path.read_bytes()
