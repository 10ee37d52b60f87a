"""python -m migtree_qemu: inspect, diff, check, roundtrip on real streams."""

from __future__ import annotations

import json

import pytest
from qemu_streams import StreamConfig

from migtree_qemu import qevm
from migtree_qemu.__main__ import main

pytestmark = pytest.mark.qemu


def test_inspect_lists_sections_and_what_stays_opaque(base_stream, capsys):
    assert main(["inspect", str(base_stream), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["machine_type"] == "pc-i440fx-7.2"
    assert info["ram"]["blocks"]["pc.ram"] == 64 << 20
    vblk = next(s for s in info["sections"] if s["idstr"].endswith("/virtio-blk"))
    assert vblk["opaque"] == [{"field": "virtio", "type": "virtio", "bytes": vblk["size"]}]
    apic = next(s for s in info["sections"] if s["idstr"] == "apic")
    assert apic["opaque"] == [] and apic["fields"] == 19
    assert main(["inspect", str(base_stream)]) == 0
    text = capsys.readouterr().out
    assert "opaque virtio (virtio," in text and "apic#0 v3" in text


def test_diff_of_the_same_vm_saved_twice(streams, tmp_path, capsys):
    """Same VM, saved before and after SeaBIOS ran: diff names paths and
    fields; a stream against itself has no differences."""
    a = streams(StreamConfig())
    b = streams(StreamConfig(running=True))
    assert main(["diff", str(a), str(a)]) == 0
    assert capsys.readouterr().out.strip() == "no differences"
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    # the QOM walks saved beside the streams put sections at QOM paths
    assert "/machine/peripheral/vblk0: virtio:" in out
    assert "/lapic:" in out or "env.eip" in out
    assert "/machine/unattached/device[0]: env.eip:" in out


def test_check_and_roundtrip(streams, base_stream, tmp_path, capsys):
    dump = streams.dump_vmstate("pc")
    assert main(["check", str(base_stream), "--vmstate", str(dump)]) == 0
    assert "not covered by the dump" in capsys.readouterr().out
    out = tmp_path / "rt.qevm"
    assert main(["roundtrip", str(base_stream), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == "byte-identical"
    assert out.read_bytes() == base_stream.read_bytes()


def test_bad_stream_is_one_line_and_status_1(base_stream, tmp_path, capsys):
    bad = tmp_path / "cut.qevm"
    bad.write_bytes(base_stream.read_bytes()[:1000])
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("migtree_qemu: error: stream truncated") and err.count("\n") == 1


def test_errors_are_migtree_stream_errors_when_the_core_is_there(base_stream):
    errors = pytest.importorskip("migtree.errors", reason="the migtree core is not importable")
    with pytest.raises(errors.StreamError) as e:
        qevm.loads(b"QEVX" + base_stream.read_bytes()[4:])
    assert e.value.offset == 0
