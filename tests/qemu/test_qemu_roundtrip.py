"""Real QEMU 7.2 streams decode field by field and re-encode byte-identical."""

from __future__ import annotations

import io

import pytest
from qemu_streams import MATRIX, StreamConfig

from migtree_qemu import qevm
from migtree_qemu.errors import QemuEncodeError
from migtree_qemu.vmstate import NULLPTR, VMStateObject, qemu_json

pytestmark = pytest.mark.qemu



@pytest.mark.parametrize("cfg", MATRIX, ids=[c.name for c in MATRIX])
def test_unmodified_decode_reencodes_byte_identical(streams, cfg: StreamConfig) -> None:
    path = streams(cfg)
    original = path.read_bytes()
    with qevm.load(path) as s:
        assert qevm.dumps(s) == original
        # file writer (chunked) gives the same bytes
        out = io.BytesIO()
        assert qevm.dump(s, out, chunk=4096) == len(original)
        assert out.getvalue() == original


@pytest.mark.parametrize("cfg", MATRIX, ids=[c.name for c in MATRIX])
def test_stream_structure(streams, cfg: StreamConfig) -> None:
    with qevm.load(streams(cfg)) as s:
        expected_machine = "pc-i440fx-7.2" if cfg.machine == "pc" else "pc-q35-7.2"
        assert s.configuration.machine == expected_machine
        kinds = [x.kind_name for x in s.sections]
        assert kinds[0] == "START" and s.sections[0].idstr == "ram"
        assert "END" in kinds
        cpus = [d for d in s.devices() if d.idstr == "cpu"]
        assert [c.instance_id for c in cpus] == list(range(cfg.smp))
        apics = [d for d in s.devices() if d.idstr == "apic"]
        assert len(apics) == cfg.smp
        # the virtio-blk-pci device is there, its virtio state opaque bytes
        (vblk,) = [d for d in s.devices() if d.idstr.endswith("/virtio-blk")]
        f = vblk.state.field("virtio")
        assert f.type == "virtio" and isinstance(f.value, bytes) and len(f.value) > 1000
        # RAM: one MEM_SIZE record announcing the blocks, pages by reference
        first = s.sections[0].body.records[0]
        assert first.flags == qevm.RAM_MEM_SIZE
        blocks = {b.name: b.length for b in first.data}
        assert blocks[{"pc": "pc.ram", "q35": "pc.ram"}[cfg.machine]] == cfg.memory << 20
        assert sum(b.length for b in first.data) == first.addr
        pages = [r for r in s.ram_records() if r.flags & (qevm.RAM_PAGE | qevm.RAM_ZERO)]
        assert all(isinstance(r.data, (qevm.PageRef, int)) for r in pages)


def test_fields_are_typed_ints_not_strings(base_stream) -> None:
    with qevm.load(base_stream) as s:
        apic = s.device("apic")
        assert apic.field("apicbase").type == "uint32"
        assert isinstance(apic["apicbase"], int)
        assert apic["apicbase"] & 0xFFFFF000 == 0xFEE00000
        assert apic["timer_expiry"] == -1  # int64, signed
        assert apic.field("lvt").array_len == 6 and len(apic["lvt"]) == 6
        cpu = s.device("cpu")
        assert len(cpu["env.regs"]) == 16
        assert all(isinstance(v, int) for v in cpu["env.regs"])
        segs = cpu["env.segs"]
        assert len(segs) == 6 and isinstance(segs[0], VMStateObject)
        assert segs[0].vmsd_name == "segment" and isinstance(segs[0]["limit"], int)
        # bools are bools
        bools = [f for d in s.devices() for _, f in d.state.walk() if f.type == "bool"]
        assert bools and all(isinstance(f.value, (bool, list)) for f in bools)
        # every leaf is int, bool, float, bytes, a list of those, or an object
        for path, f in (p for d in s.devices() for p in d.state.walk()):
            vals = f.value if f.array_len is not None else [f.value]
            for v in vals:
                leaf = (int, bool, float, bytes, list, VMStateObject)
                assert isinstance(v, leaf) or v is NULLPTR, path
                assert not isinstance(v, str), path


def test_subsections_are_named_parts_with_versions(base_stream) -> None:
    with qevm.load(base_stream) as s:
        fdc = s.device("fdc")
        drive = fdc["state"].field("drives", index=0).value
        sub = drive.subsection("media_rate")
        assert sub.vmsd_name == "fdrive/media_rate" and sub.version == 1
        assert isinstance(sub["media_rate"], int)


def test_vmdesc_regenerates_exactly(base_stream) -> None:
    data = base_stream.read_bytes()
    at, desc = qevm.find_vmdesc(data)
    with qevm.load(base_stream) as s:
        assert s.vmdesc_object() == desc
        assert qemu_json(s.vmdesc_object()).encode() == data[at + 5 :]


def test_ram_copy_mode_roundtrips_and_skip_mode_refuses_to_write(base_stream) -> None:
    original = base_stream.read_bytes()
    s = qevm.load(base_stream, ram="copy")
    assert s.source is None  # nothing kept open
    assert qevm.dumps(s) == original
    skipped = qevm.load(base_stream, ram="skip")
    ram = [x.body for x in skipped.sections if isinstance(x.body, qevm.RamSection)]
    assert sum(r.dropped_pages for r in ram) > 1000
    assert all(not (r.flags & qevm.RAM_PAGE) for r in skipped.ram_records())
    with pytest.raises(QemuEncodeError, match="RAM pages were not kept"):
        qevm.dumps(skipped)


def test_ram_streams_to_a_callback(base_stream) -> None:
    seen = {"zero": 0, "page": 0, "bytes": 0}

    def on_page(block, addr, data):
        assert isinstance(block, str) and addr % 4096 == 0
        if isinstance(data, int):
            seen["zero"] += 1
        else:
            seen["page"] += 1
            seen["bytes"] += len(data)

    s = qevm.load(base_stream, ram=on_page)
    ram = [x.body for x in s.sections if isinstance(x.body, qevm.RamSection)]
    assert seen["zero"] == sum(r.zero_pages for r in ram)
    assert seen["page"] == sum(r.full_pages for r in ram) > 0
    assert seen["bytes"] == 4096 * seen["page"]


def test_edit_changes_only_that_field(base_stream) -> None:
    original = base_stream.read_bytes()
    with qevm.load(base_stream) as s:
        s.device("apic")["tpr"] = 0x20
        edited = qevm.dumps(s)
    assert len(edited) == len(original)
    diff = [i for i in range(len(original)) if original[i] != edited[i]]
    assert len(diff) == 1
    again = qevm.loads(edited)
    assert again.device("apic")["tpr"] == 0x20


def test_edit_out_of_range_is_refused_with_path(base_stream) -> None:
    with qevm.load(base_stream) as s:
        s.device("apic")["tpr"] = 256
        with pytest.raises(QemuEncodeError) as exc:
            qevm.dumps(s)
    msg = str(exc.value)
    assert "256 does not fit uint8" in msg and "'tpr'" in msg and "'apic'" in msg


def test_buffer_length_change_updates_vmdesc_size(base_stream) -> None:
    with qevm.load(base_stream) as s:
        gs = s.device("globalstate")
        assert gs.field("runstate").type == "buffer"
        desc = s.vmdesc_object()
        (entry,) = [d for d in desc["devices"] if d["name"] == "globalstate"]
        assert entry["fields"][1]["size"] == len(gs["runstate"])
