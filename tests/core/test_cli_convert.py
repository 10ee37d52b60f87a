"""``migtree convert``: between migtree's CBOR stream and a registered
foreign format (here a test format with a writer; QEMU's is tested in
tests/qemu/test_qemu_virtio_cli.py), with the format sniffed, forced,
named, taken from the extension or from where a migtree stream came from."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mt_testtypes import Blobby, Widget, make_registry

from migtree import plugins, stream
from migtree.blob import Blob
from migtree.cli import main
from migtree.errors import StreamError
from migtree.formats import StreamFormat, sniff_migtree
from migtree.hookspecs import hookimpl
from migtree.jsonview import from_json, to_json
from migtree.qom import new_root

MAGIC = b"JTREE\n"


def make_stream(a32: int = 0x1234, blob: bytes = b"\x5a" * 70000) -> bytes:
    """A stream saved from a build of the test types (two devices, a child,
    a 70 kB blob)."""
    root, machine = new_root()
    w = machine.add_device(Widget(), "w0")
    w.state.a32 = a32
    w.state.var = bytes(range(30))
    w.add_child("inner", Widget())
    b = machine.add_device(Blobby(), "b0")
    b.state.data = Blob(blob)
    return stream.save(root, registry=make_registry(), build_name="lab")


def jtree_read(fp):
    """A foreign format for the tests: a magic line, then the JSON view."""
    if fp.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a jtree stream")
    doc = json.loads(fp.read())
    return ({"format": "jtree", "extra": {"source_format": "jtree"},
             "schemas": from_json(doc["schemas"])}, from_json(doc["tree"]))


def jtree_write(fp, header, tree):
    if tree.get("poison"):
        fp.write(MAGIC + b"{half")
        raise RuntimeError("the writer broke half way")
    fp.write(MAGIC + json.dumps({"schemas": to_json((header or {}).get("schemas", {})),
                                 "tree": to_json(tree, inline_blobs=True)}).encode())


class JtreeFormat:
    """A format object as a plugin may write it (like migtree-qemu's), with
    the ``extensions`` convert looks at."""

    name = "jtree"
    description = "JSON tree (tests)"
    extensions = (".jtree",)
    plugin = None

    def sniff(self, head):
        return head.startswith(MAGIC)

    read = staticmethod(jtree_read)
    write = staticmethod(jtree_write)


class JtreePlugin:
    @hookimpl
    def migtree_register_stream_formats(self, register):
        register(JtreeFormat())
        register(StreamFormat("readonly", sniff=lambda head: head.startswith(b"RO"),
                              read=lambda fp: ({}, {"__type__": "container",
                                                    "__version__": 1})))


@pytest.fixture
def registry(monkeypatch):
    reg = make_registry()
    reg.add_plugin(JtreePlugin(), "jtree-format")
    monkeypatch.setattr(plugins, "_registry", reg)
    return reg


@pytest.fixture
def mt(tmp_path):
    path = tmp_path / "vm.mt"
    path.write_bytes(make_stream())
    return path


def tree_of(path):
    from migtree.formats import open_stream

    return open_stream(str(path))[2]


def test_migtree_to_foreign_and_back(registry, mt, tmp_path, capsys):
    out = tmp_path / "vm.jtree"  # the extension picks the format
    assert main(["convert", str(mt), "-o", str(out)]) == 0
    assert out.read_bytes().startswith(MAGIC)
    assert capsys.readouterr().out.strip() == (
        f"{mt}: migtree stream, 8 objects -> {out}: jtree stream, {out.stat().st_size:,} bytes")
    back = tmp_path / "back.bin"
    assert main(["convert", str(out), "-o", str(back)]) == 0  # foreign -> migtree by default
    assert sniff_migtree(back.read_bytes()[:64])
    header, tree = stream.read_tree(back)
    assert tree == stream.read_tree(mt)[1]
    assert tree["machine"]["peripheral"]["b0"]["data"].read() == b"\x5a" * 70000
    # the foreign reader's header is kept: schemas, and where it came from
    assert header["extra"] == {"source_format": "jtree"}
    assert "test-widget@2" in header["schemas"]


def test_a_migtree_stream_goes_back_to_the_format_it_came_from(registry, mt, tmp_path):
    j = tmp_path / "a.jtree"
    m = tmp_path / "a.cbor"
    again = tmp_path / "again.out"
    assert main(["convert", str(mt), "-o", str(j)]) == 0
    assert main(["convert", str(j), "-o", str(m)]) == 0
    assert main(["convert", str(m), "-o", str(again)]) == 0  # extra.source_format: jtree
    assert again.read_bytes() == j.read_bytes()


def test_to_and_from_name_the_formats(registry, mt, tmp_path):
    j = tmp_path / "x.data"
    assert main(["convert", str(mt), "-o", str(j), "--to", "jtree"]) == 0
    m = tmp_path / "x.jtree"  # --to wins over the extension
    assert main(["convert", "--from", "jtree", str(j), "-o", str(m), "--to", "migtree"]) == 0
    assert tree_of(m) == tree_of(mt)
    # a stream to its own format again: re-encoded, the same state
    again = tmp_path / "again.mt"
    assert main(["convert", str(mt), "-o", str(again), "--to", "migtree"]) == 0
    assert tree_of(again) == tree_of(mt)


def test_usage_errors_exit_2(registry, mt, tmp_path, capsys):
    out = tmp_path / "o"
    for argv, message in [
        (["--to", "nope"], "--to nope: no such format (installed: migtree, jtree, readonly)"),
        (["--to", "readonly"], "format 'readonly' (plugin jtree-format) can be read but not "
                               "written"),
        (["--from", "nope"], "--from nope: no such format"),
        ([], "the input is a migtree stream: say which format to write with --to"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(["convert", str(mt), "-o", str(out), *argv])
        assert e.value.code == 2
        assert message in capsys.readouterr().err
    assert not out.exists()


def test_read_errors_name_the_format(registry, mt, tmp_path, capsys):
    out = tmp_path / "o.mt"
    assert main(["convert", "--from", "jtree", str(mt), "-o", str(out)]) == 1
    assert "jtree stream: ValueError: not a jtree stream" in capsys.readouterr().err
    bad = tmp_path / "bad.mt"
    bad.write_bytes(mt.read_bytes()[:-10])
    assert main(["convert", str(bad), "-o", str(out), "--to", "jtree"]) == 1
    assert "migtree: error:" in capsys.readouterr().err
    assert not out.exists()


def test_a_failed_write_leaves_nothing_behind(registry, tmp_path, capsys):
    src = tmp_path / "p.jtree"
    jtree_write_ok = {"__type__": "container", "__version__": 1, "poison": True}
    src.write_bytes(MAGIC + json.dumps({"schemas": {}, "tree": jtree_write_ok}).encode())
    out = tmp_path / "out.jtree"
    out.write_bytes(b"an older file")
    with pytest.raises(RuntimeError, match="half way"):
        main(["convert", str(src), "-o", str(out)])
    assert out.read_bytes() == b"an older file"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jtree", "p.jtree"]


def test_stdin_to_stdout(mt):
    """Through a pipe, with the installed plugins (a real process)."""
    proc = subprocess.run([sys.executable, "-m", "migtree", "convert", "-", "-o", "-",
                           "--to", "migtree"], input=mt.read_bytes(), capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert stream.read_tree(proc.stdout)[1] == stream.read_tree(mt)[1]
    assert b"-: migtree stream, 8 objects -> -: migtree stream" in proc.stderr


def test_corrupt_input_is_not_written(registry, mt, tmp_path):
    data = bytearray(mt.read_bytes())
    data[200] ^= 0xFF
    bad = tmp_path / "bad.mt"
    bad.write_bytes(bytes(data))
    with pytest.raises(StreamError):
        from migtree.commands.convert import read_input
        from migtree.formats import formats

        read_input(str(bad), None, registry, formats(registry))
