"""The QEMU stream as a migtree stream format, registered through the hook;
QEMU -> migtree CBOR -> QEMU gives back the same bytes and QEMU loads them."""

from __future__ import annotations

import io

import pytest
from qemu_streams import MATRIX, StreamConfig, load_stream

from migtree_qemu import qevm

pytestmark = pytest.mark.qemu

mstream = pytest.importorskip("migtree.stream", reason="the migtree core is not importable")
import migtree_qemu.plugin as qemu_plugin  # noqa: E402
from migtree import builtin, hookimpl  # noqa: E402
from migtree.registry import Registry  # noqa: E402


def _registry(*extra):
    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    reg.add_plugin(qemu_plugin, "migtree-qemu")
    for mod, name in extra:
        reg.add_plugin(mod, name)
    return reg


def _format(reg):
    fmt = reg.formats["qemu"]
    fmt._registry = reg  # decoders from this registry, not the installed plugins
    return fmt


def test_hook_registers_the_qemu_format(base_stream):
    reg = _registry()
    assert reg.plugins["migtree-qemu"].formats == ["qemu"]
    fmt = _format(reg)
    assert fmt.sniff(base_stream.read_bytes()[:16])
    assert not fmt.sniff(b"\xa6emagicgMIGTREE")


@pytest.mark.parametrize("cfg", MATRIX, ids=[c.name for c in MATRIX])
def test_qemu_to_migtree_cbor_to_qemu_is_byte_identical(streams, cfg: StreamConfig):
    path = streams(cfg)
    fmt = _format(_registry())
    header, tree = fmt.read(path)
    assert header["format"] == "qemu" and header["machine_type"].startswith("pc-")
    cbor = mstream.write_tree(None, {"source_format": "qemu"}, tree, Registry(),
                              schemas=header["schemas"])
    header2, tree2 = mstream.read_tree(cbor)
    assert header2["extra"] == {"source_format": "qemu"}
    assert "cpu@12" in header2["schemas"] and "apic@3" in header2["schemas"]
    out = io.BytesIO()
    fmt.write(out, header2, tree2)
    assert out.getvalue() == path.read_bytes()


def test_qemu_loads_what_came_back_from_migtree_cbor(streams, tmp_path):
    cfg = StreamConfig(machine="q35", accel="kvm", smp=2)
    path = streams(cfg)
    fmt = _format(_registry())
    header, tree = fmt.read(path)
    # the migtree CBOR stream goes through a file, as convert would write it
    cbor_file = tmp_path / "vm.migtree"
    with open(cbor_file, "wb") as f:
        mstream.write_tree(f, None, tree, Registry(), schemas=header["schemas"])
    _, tree2 = mstream.read_tree(cbor_file)
    # an edit on the way, by path: the tree puts sections at QOM paths
    lapic = tree2["machine"]["unattached"]["device[0]"]["lapic"]
    lapic["tpr"] = 0x10
    back = tmp_path / "back.qevm"
    with open(back, "wb") as f:
        fmt.write(f, None, tree2)
    vm = load_stream(cfg, back, streams.root, name="from-cbor")
    try:
        assert vm.qmp.execute("query-migrate")["status"] == "completed"
        vm.qmp.execute("cont")
        assert vm.qmp.wait_until("query-status", lambda r: r["running"])["status"] == "running"
        again = tmp_path / "again.qevm"
        vm.qmp.execute("stop")
        vm.migrate_to_file(again)
    finally:
        vm.stop()
    with qevm.load(again) as s:
        assert s.device("apic")["tpr"] == 0x10


def test_read_from_a_pipe_and_from_memory(base_stream):
    import subprocess

    fmt = _format(_registry())
    data = base_stream.read_bytes()
    with subprocess.Popen(["cat", str(base_stream)], stdout=subprocess.PIPE) as p:
        header, tree = fmt.read(p.stdout)
    out = io.BytesIO()
    fmt.write(out, header, tree)
    assert out.getvalue() == data
    header, tree = fmt.read(io.BytesIO(data))
    out = io.BytesIO()
    fmt.write(out, header, tree)
    assert out.getvalue() == data


def test_sections_at_qom_paths_from_the_walk_beside_the_stream(base_stream):
    """make_stream saved QEMU's QOM tree as STREAM.qom.json; read() uses it."""
    assert base_stream.with_suffix(".qom.json").exists()
    _, tree = _format(_registry()).read(base_stream)
    vblk = tree["machine"]["peripheral"]["vblk0"]
    assert vblk["__type__"] == "virtio-blk"
    assert vblk["__qemu__"]["idstr"] == "0000:00:02.0/virtio-blk"
    cpu = tree["machine"]["unattached"]["device[0]"]
    assert cpu["__type__"] == "cpu" and cpu["lapic"]["__type__"] == "apic"


class _HexVirtio:
    """Stands in for the virtio plugin's decoder (plugins/virtio owns the
    real one): the hook hands it the 'virtio' blob and takes its value back."""

    format = "qemu"
    key = "virtio-blk"

    def decode(self, data, context):
        return {"length": len(data), "hex": data.hex(), "idstr": context["idstr"]}

    def encode(self, node, context):
        return bytes.fromhex(node["hex"])


class _DecoderPlugin:
    @staticmethod
    @hookimpl
    def migtree_register_opaque_decoders(register):
        register(_HexVirtio())


def test_registered_opaque_decoder_is_used_both_ways(base_stream):
    reg = _registry((_DecoderPlugin, "fake-virtio"))
    assert ("qemu", "virtio-blk") in reg.decoders
    fmt = _format(reg)
    header, tree = fmt.read(base_stream)
    vblk = tree["machine"]["peripheral"]["vblk0"]
    assert vblk["virtio"]["idstr"] == "0000:00:02.0/virtio-blk"
    assert vblk["virtio"]["length"] > 40000
    out = io.BytesIO()
    fmt.write(out, header, tree)
    assert out.getvalue() == base_stream.read_bytes()


def test_core_open_stream_sniffs_qemu_and_converts_both_ways(base_stream, tmp_path):
    """What `migtree convert` does: the core's open_stream picks the qemu
    format by sniffing, its migtree writer takes the header we give
    (schemas, extra), and our writer takes the tree it reads back."""
    formats = pytest.importorskip("migtree.formats", reason="migtree.formats not there yet")
    reg = _registry()
    _format(reg)
    name, header, tree = formats.open_stream(str(base_stream), reg)
    assert name == "qemu" and header["machine_type"] == "pc-i440fx-7.2"
    cbor = tmp_path / "vm.migtree"
    with open(cbor, "wb") as f:
        formats.MIGTREE.write(f, header, tree)
    name2, header2, tree2 = formats.open_stream(str(cbor), reg)
    assert name2 == "migtree"
    assert header2["extra"] == {"source_format": "qemu", "machine_type": "pc-i440fx-7.2"}
    out = io.BytesIO()
    reg.formats["qemu"].write(out, header2, tree2)
    assert out.getvalue() == base_stream.read_bytes()
    # a damaged QEMU stream is a StreamError naming where
    bad = tmp_path / "bad.qevm"
    bad.write_bytes(base_stream.read_bytes()[:5000])
    errors = pytest.importorskip("migtree.errors")
    with pytest.raises(errors.StreamError, match="section 'ram'"):
        formats.open_stream(str(bad), reg)
