"""``migtree inspect`` and ``migtree schema``, and formats.open_stream."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from mt_testtypes import Blobby, Everything, Widget, make_registry

from migtree import formats, plugins, stream
from migtree.blob import Blob
from migtree.cli import main
from migtree.errors import PluginError, StreamError
from migtree.formats import OpaqueDecoder, StreamFormat, open_stream
from migtree.hookspecs import hookimpl
from migtree.jsonview import stream_from_json
from migtree.qom import new_root
from migtree.visitor import schema_of


def make_stream() -> bytes:
    root, machine = new_root()
    w = machine.add_device(Widget(), "w0")
    w.state.a32 = 0x1234
    w.state.var = bytes(range(30))
    w.state.regs = [0xFEE00000 + i for i in range(8)]
    w.add_child("inner", Widget())
    b = machine.add_device(Blobby(), "b0")
    b.state.data = Blob(b"\x5a" * 70000)
    return stream.save(root, registry=make_registry(), build_name="lab")


def fake_read(fp):
    magic = fp.read(4)
    assert magic == b"FAKE"
    return ({"fake_version": 1, "note": fp.read().decode()},
            {"__type__": "container", "__version__": 1,
             "dev": {"__type__": "fake-dev", "__version__": 3, "regs": b"\x01\x02"}})


class FakeFormatPlugin:
    @hookimpl
    def migtree_register_stream_formats(self, register):
        register(StreamFormat("fake", sniff=lambda head: head.startswith(b"FAKE"),
                              read=fake_read, description="a test format"))
        register(StreamFormat("zz-broken", sniff=lambda head: head.startswith(b"BRK"),
                              read=lambda fp: 1 / 0))

    @hookimpl
    def migtree_register_opaque_decoders(self, register):
        register(OpaqueDecoder("fake", "blob", decode=lambda b, c: {"b": b},
                               encode=lambda n, c: n["b"]))


@pytest.fixture
def registry(monkeypatch):
    reg = make_registry()
    reg.add_plugin(FakeFormatPlugin(), "fake-formats")
    monkeypatch.setattr(plugins, "_registry", reg)
    return reg


@pytest.fixture
def stream_file(tmp_path):
    path = tmp_path / "s.mtree"
    path.write_bytes(make_stream())
    return path


# -- inspect --------------------------------------------------------------------------

def test_inspect_text(registry, stream_file, capsys):
    assert main(["inspect", str(stream_file)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == (f"{stream_file}: migtree stream, format version 1, "
                        f"{stream_file.stat().st_size:,} bytes, 8 objects")
    assert lines[1] == "producer: migtree " + stream.read_tree(stream_file)[0]["producer"][
        "version"] + ", build 'lab'"
    assert "test-widget@2 (test-types)" in lines[3]
    assert "/machine/peripheral/w0  test-widget@2" in lines
    assert "    a32 = 4660 (0x1234)" in lines
    assert any(line.startswith("    var = bytes[30] 00 01 02") for line in lines)
    assert "    regs = [0xfee00000, 0xfee00001," in out
    assert any(line.startswith("    data = blob, 70,000 bytes, sha256 ") for line in lines)
    assert "/machine/peripheral/w0/inner  test-widget@2" in lines


def test_inspect_works_without_the_plugins_that_wrote_it(monkeypatch, stream_file, capsys):
    bare = make_registry.__globals__["Registry"]()
    monkeypatch.setattr(plugins, "_registry", bare)
    assert main(["inspect", str(stream_file)]) == 0
    assert "/machine/peripheral/w0  test-widget@2" in capsys.readouterr().out


def test_inspect_json_is_the_invertible_view(registry, stream_file, capsys):
    assert main(["inspect", "--json", "--inline-blobs", str(stream_file)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "migtree"
    assert doc["header"]["schemas"]["test-widget@2"]["fields"] == schema_of(Everything, 2)
    assert {"path": "/machine/peripheral/w0/inner", "type": "test-widget", "version": 2} \
        in doc["objects"]
    assert stream_from_json(doc) == stream.read_tree(stream_file)


def test_inspect_stdin(registry, stream_file):
    proc = subprocess.run([sys.executable, "-m", "migtree", "inspect", "--json", "-"],
                          input=stream_file.read_bytes(), capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["format"] == "migtree"


def test_inspect_a_foreign_format(registry, tmp_path, capsys):
    path = tmp_path / "f.bin"
    path.write_bytes(b"FAKEhello")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: fake stream, 9 bytes, 2 objects")
    assert "note: 'hello'" in out and "/dev  fake-dev@3" in out
    assert "    regs = bytes[2] 01 02" in out


def test_inspect_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.mtree"
    data = bytearray(make_stream())
    data[300] ^= 0x10
    bad.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "migtree", "inspect", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("migtree: error: offset ")
    assert "checksum mismatch" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_inspect_unknown_format(registry, tmp_path, capsys):
    path = tmp_path / "x"
    path.write_bytes(b"hello world")
    assert main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert "unknown stream format (first bytes: 68 65 6c 6c 6f 20 77 6f)" in err
    assert "installed: migtree, fake, zz-broken" in err


# -- open_stream -------------------------------------------------------------------------

def test_open_stream_every_kind_of_input(registry, stream_file):
    want = stream.read_tree(stream_file)
    data = stream_file.read_bytes()

    class Pipe(io.RawIOBase):
        def __init__(self):
            self.b = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, buf):
            chunk = self.b.read(min(len(buf), 7))
            buf[:len(chunk)] = chunk
            return len(chunk)

    for src in (stream_file, str(stream_file), data, io.BytesIO(data), Pipe()):
        fmt, header, tree = open_stream(src, registry)
        assert fmt == "migtree" and (header, tree) == want


def test_open_stream_foreign_errors_name_the_format(registry):
    with pytest.raises(StreamError, match="zz-broken stream: division by zero"):
        open_stream(b"BRK...", registry)

    def bad_sniff(head):
        raise RuntimeError("boom")

    registry.formats["aa-bad"] = StreamFormat("aa-bad", sniff=bad_sniff, read=fake_read,
                                              plugin="bad-plugin")
    with pytest.raises(PluginError, match="'aa-bad' \\(plugin bad-plugin\\): sniff failed"):
        open_stream(b"anything", registry)
    # our own format is recognised before any plugin is asked
    assert open_stream(make_stream(), registry)[0] == "migtree"


def test_formats_are_recorded_with_their_plugin(registry):
    assert registry.formats["fake"].plugin == "fake-formats"
    assert registry.decoders[("fake", "blob")].plugin == "fake-formats"
    assert list(formats.formats(registry)) == ["migtree", "fake", "zz-broken"]


def test_migtree_format_writes_what_it_reads(registry, stream_file):
    header, tree = stream.read_tree(stream_file)
    out = io.BytesIO()
    formats.MIGTREE.write(out, header, tree)
    assert stream.read_tree(out.getvalue())[1] == tree


# -- schema --------------------------------------------------------------------------------

def test_schema_json_shape(registry, capsys):
    assert main(["schema", "--json", "test-widget", "machine"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == ["format", "types"] and doc["format"] == "migtree-schema"
    assert list(doc["types"]) == ["test-widget", "machine"]
    w = doc["types"]["test-widget"]
    assert set(w) == {"parent", "abstract", "version", "min_version", "plugin", "versions"}
    assert (w["parent"], w["version"], w["min_version"], w["plugin"]) == \
        ("device", 2, 1, "test-types")
    assert w["versions"] == {"1": schema_of(Everything, 1), "2": schema_of(Everything, 2)}
    assert doc["types"]["machine"]["versions"]["1"] == [{"name": "clock_ns", "kind": "i64"}]


def test_schema_all_types(registry, capsys):
    assert main(["schema", "--json"]) == 0
    names = list(json.loads(capsys.readouterr().out)["types"])
    assert names == sorted(names) and {"container", "test-plain", "test-widget"} <= set(names)


def test_schema_text(registry, capsys):
    assert main(["schema", "test-widget"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test-widget  (parent device, plugin test-types)\n"
                          "  version 2 (writes and loads):\n")
    assert "    regs         u32[8]\n" in out
    assert "    shorts       u16[<=5]\n" in out
    assert "    points       struct Point[<=4]\n        x  i16\n        y  i16\n" in out
    assert "    sub          optional struct Sub\n" in out
    assert "    added_in_v2  u32   since v2\n" in out
    assert "  version 1 (loads):\n" in out


def test_schema_unknown_type(registry, capsys):
    assert main(["schema", "no-such-type"]) == 1
    assert "no installed plugin registers no-such-type (known: " in capsys.readouterr().err


def test_inspect_json_of_a_value_the_view_cannot_render(registry, tmp_path, capsys):
    registry.formats["odd"] = StreamFormat(
        "odd", sniff=lambda head: head.startswith(b"ODD"), plugin="odd-plugin",
        read=lambda fp: ({}, {"__type__": "container", "__version__": 1, "x": object()}))
    path = tmp_path / "o"
    path.write_bytes(b"ODD")
    assert main(["inspect", "--json", str(path)]) == 1
    assert "odd stream: the JSON view has no rendering for a object" in capsys.readouterr().err
    assert main(["inspect", str(path)]) == 0  # the text view shows it as it can


def test_schema_dump_is_what_the_filter_engine_reads(registry):
    from migtree.commands.schema import describe
    from migtree.engine import Destination

    dest = Destination.of_schema(describe(registry))
    assert dest.types["test-widget"] == (1, 2) and dest.types["machine"] == (1, 1)
