"""``migtree diff``: two streams saved from builds of the test types, compared
by object path and field, in text and JSON, across formats; exit status 0
same, 1 different, 2 unreadable. (Two saves of a real QEMU guest are in
tests/qemu/test_qemu_virtio_cli.py.)"""

from __future__ import annotations

import json

import pytest
from mt_testtypes import Blobby, Plain, Widget, make_registry
from test_cli_convert import JtreePlugin

from migtree import plugins, stream
from migtree.blob import Blob
from migtree.cli import main
from migtree.commands.diff import ABSENT, diff_trees
from migtree.qom import new_root


def save(*, a32=0x1234, tag=0, blob=b"\x5a" * 70000, points=2, extra=False, name="lab"):
    root, machine = new_root()
    w = machine.add_device(Widget(), "w0")
    w.state.a32 = a32
    w.state.regs = [i * 3 for i in range(8)]
    w.state.points = [type(w.state.origin)(i, -i) for i in range(points)]
    w.add_child("inner", Widget())
    b = machine.add_device(Blobby(), "b0")
    b.state.data = Blob(blob)
    b.state.tag = tag
    if extra:
        machine.add_device(Plain(), "p0")
    return stream.save(root, registry=make_registry(), build_name=name)


@pytest.fixture
def registry(monkeypatch):
    reg = make_registry()
    reg.add_plugin(JtreePlugin(), "jtree-format")
    monkeypatch.setattr(plugins, "_registry", reg)
    return reg


@pytest.fixture
def files(tmp_path):
    def write(name, data):
        p = tmp_path / name
        p.write_bytes(data)
        return str(p)
    return write


def test_the_same_state_is_exit_0(registry, files, capsys):
    a = files("a.mt", save())
    b = files("b.mt", save(name="another build name"))  # header differs, state does not
    assert main(["diff", a, b]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"A: {a} (migtree stream, 8 objects)", f"B: {b} (migtree stream, 8 objects)",
                   "the same state"]


def test_fields_by_path(registry, files, capsys):
    a = files("a.mt", save())
    b = files("b.mt", save(a32=0x1235, tag=7, blob=b"\x5a" * 69999 + b"\x00", points=3))
    assert main(["diff", a, b]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "/machine/peripheral/b0  test-blobby@1" in out
    i = out.index("/machine/peripheral/b0  test-blobby@1")
    assert out[i + 1].startswith("    data: blob, 70,000 bytes, sha256 ")
    assert " -> blob, 70,000 bytes, sha256 " in out[i + 1]
    assert out[i + 2] == "    tag: 0 -> 7"
    j = out.index("/machine/peripheral/w0  test-widget@2")
    assert out[j + 1] == "    a32: 4660 (0x1234) -> 4661 (0x1235)"
    assert out[j + 2] == "    points[2]: <absent> -> {x: 2, y: -2}"
    assert out[-1] == "4 fields differ in 2 objects"


def test_objects_only_in_one_and_type_changes(registry, files, capsys):
    a = files("a.mt", save())
    b = files("b.mt", save(extra=True))
    assert main(["diff", a, b]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "only in B: /machine/peripheral/p0  test-plain@1" in out
    assert out[-1] == "0 fields differ in 0 objects; 0 objects only in A, 1 only in B"
    ta = stream.read_tree(save())[1]
    tb = stream.read_tree(save())[1]
    tb["machine"]["peripheral"]["w0"]["__version__"] = 1
    del tb["machine"]["peripheral"]["w0"]["added_in_v2"]
    (path, t_a, t_b, fields), = diff_trees(ta, tb)["changed"]
    assert (path, t_a, t_b) == ("/machine/peripheral/w0", "test-widget@2", "test-widget@1")
    assert fields == [("__version__", 2, 1), ("added_in_v2", 0, ABSENT)]


def test_json(registry, files, capsys):
    a = files("a.mt", save())
    b = files("b.mt", save(a32=5, extra=True))
    assert main(["diff", "--json", a, b]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["a"] == {"stream": a, "format": "migtree", "objects": 8}
    assert doc["b"]["objects"] == 9 and doc["equal"] is False
    assert doc["changed"] == [{"path": "/machine/peripheral/w0", "a_type": "test-widget@2",
                               "b_type": "test-widget@2",
                               "fields": [{"field": "a32", "a": 0x1234, "b": 5}]}]
    assert doc["only_in_b"] == [{"path": "/machine/peripheral/p0", "type": "test-plain@1"}]


def test_path_and_ignore(registry, files, capsys):
    a = files("a.mt", save())
    b = files("b.mt", save(a32=5, tag=1))
    assert main(["diff", a, b, "--path", "/machine/peripheral/w0"]) == 1
    out = capsys.readouterr().out
    assert "a32" in out and "tag" not in out and "(migtree stream, 2 objects)" in out
    assert main(["diff", a, b, "--path", "/machine/peripheral/w0", "--ignore", "a*"]) == 0
    assert main(["diff", a, b, "--ignore", "a32", "--ignore", "t?g"]) == 0
    capsys.readouterr()


def test_across_formats(registry, files, tmp_path, capsys):
    a = files("a.mt", save())
    j = str(tmp_path / "a.jtree")
    assert main(["convert", a, "-o", j]) == 0
    assert main(["diff", a, j]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"B: {j} (jtree stream, 8 objects)", "the same state"]


def test_unreadable_is_exit_2(registry, files, capsys):
    a = files("a.mt", save())
    bad = files("bad.mt", save()[:-3])
    assert main(["diff", a, bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"migtree: error: {bad}: ")
    assert main(["diff", a, files("x.bin", b"nothing we know")]) == 2
    assert "unknown stream format" in capsys.readouterr().err
    assert main(["diff", "-", "-"]) == 2


def test_lists_and_structs_compare_element_by_element():
    a = {"__type__": "container", "__version__": 1,
         "d": {"__type__": "t", "__version__": 1, "regs": [1, 2, 3],
               "q": [{"num": 256, "desc": 1}], "raw": b"\x00" * 4, "s": {"x": 1}}}
    b = {"__type__": "container", "__version__": 1,
         "d": {"__type__": "t", "__version__": 1, "regs": [1, 9, 3, 4],
               "q": [{"num": 256, "desc": 2}], "raw": b"\x00\x01\x00\x00", "s": {"y": 1}}}
    (_, _, _, fields), = diff_trees(a, b)["changed"]
    assert fields == [("regs", [1, 2, 3], [1, 9, 3, 4]), ("q[0].desc", 1, 2),
                      ("raw", b"\x00" * 4, b"\x00\x01\x00\x00"), ("s.x", 1, ABSENT),
                      ("s.y", ABSENT, 1)]
    b["d"]["regs"] = [1, 9, 3]
    (_, _, _, fields), = diff_trees(a, b)["changed"]
    assert fields[0] == ("regs[1]", 2, 9)
