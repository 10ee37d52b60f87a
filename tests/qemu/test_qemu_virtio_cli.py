"""``migtree convert`` and ``migtree diff`` on real QEMU streams, with the
virtio section decoded: QEMU -> migtree CBOR -> QEMU is byte-identical
through the CLI, and the same guest saved twice differs where it should
(the virtqueue's index, the clocks, the CPU), by path and field."""

from __future__ import annotations

import json

import pytest
from qemu_streams import MATRIX, linux_config
from test_qemu_virtio import registry, save_twice

pytestmark = pytest.mark.qemu

from migtree import plugins  # noqa: E402
from migtree.cli import main  # noqa: E402
from migtree.formats import open_stream  # noqa: E402


@pytest.fixture
def cli_registry(monkeypatch):
    reg = registry()
    monkeypatch.setattr(plugins, "_registry", reg)
    return reg


@pytest.fixture(scope="module")
def twice(streams, guest_artifacts):
    return save_twice(guest_artifacts, streams.root)


@pytest.mark.parametrize("cfg", [MATRIX[0], MATRIX[-1]], ids=[MATRIX[0].name, MATRIX[-1].name])
def test_convert_from_qemu_and_back_is_byte_identical(cli_registry, streams, cfg, tmp_path,
                                                      capsys):
    path = streams(cfg)
    mt = tmp_path / "vm.migtree"
    assert main(["convert", "--from", "qemu", str(path), "-o", str(mt)]) == 0
    assert main(["convert", str(mt), "-o", str(tmp_path / "back.bin"), "--to", "qemu"]) == 0
    assert (tmp_path / "back.bin").read_bytes() == path.read_bytes()
    # without --to: a migtree stream converted from QEMU goes back to QEMU
    assert main(["convert", str(mt), "-o", str(tmp_path / "again.out")]) == 0
    assert (tmp_path / "again.out").read_bytes() == path.read_bytes()
    out = capsys.readouterr().out
    assert f"{path}: qemu stream" in out and f"-> {mt}: migtree stream" in out
    fmt, header, tree = open_stream(str(mt))
    assert fmt == "migtree" and header["extra"]["source_format"] == "qemu"
    assert header["schemas"]["qemu-virtio-pci@1"]["plugin"] == "migtree-virtio"
    vblk = tree["machine"]["peripheral"]["vblk0"]
    assert vblk["__type__"] == "qemu-virtio-pci"
    assert vblk["virtio-backend"]["__type__"] == "qemu-virtio-blk"


def test_inspect_shows_the_decoded_virtio_section(cli_registry, streams, guest_artifacts,
                                                  capsys):
    path = streams(linux_config(guest_artifacts, "pc"))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    i = out.index("/machine/peripheral/vblk0/virtio-backend  qemu-virtio-blk@1")
    body = "\n".join(out[i:i + 40])
    assert "status = 15 (0xf)" in body and "queues:" in body and "last_avail_idx" in body
    assert "virtio = bytes[" not in "\n".join(out)


def test_diff_of_the_same_guest_saved_twice(cli_registry, twice, capsys):
    a, b = twice
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out.splitlines()
    i = out.index("/machine/peripheral/vblk0/virtio-backend  qemu-virtio-blk@1")
    assert out[i + 1].startswith("    queues[0].last_avail_idx: ")
    assert any(line.startswith("/machine/unattached/device[0]  cpu@") for line in out)
    assert any(line.startswith("    sections[") and "blob" in line for line in out)  # RAM
    # the device's configuration did not change between the saves: only the index
    assert main(["diff", "--json", str(a), str(b), "--path", "/machine/peripheral"]) == 1
    doc = json.loads(capsys.readouterr().out)
    (change,) = doc["changed"]
    assert change["path"] == "/machine/peripheral/vblk0/virtio-backend"
    (field,) = change["fields"]
    assert field["field"] == "queues[0].last_avail_idx" and field["a"] != field["b"]
    _, _, ta = open_stream(str(a))
    assert field["a"] == ta["machine"]["peripheral"]["vblk0"]["virtio-backend"]["queues"][0][
        "last_avail_idx"]


def test_diff_across_formats_is_the_same_state(cli_registry, twice, tmp_path, capsys):
    a, _ = twice
    mt = tmp_path / "a.mt"
    assert main(["convert", str(a), "-o", str(mt)]) == 0
    assert main(["diff", str(a), str(mt)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "the same state"
