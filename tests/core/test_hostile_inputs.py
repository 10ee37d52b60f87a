"""Inputs an attacker crafts (issue 18): each was a traceback, an unbounded
cost or a wrong success before; each is now a clean error naming what is
wrong, within a cost bounded by the input's size."""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

import pytest

from migtree import jsonview, stream
from migtree.build import load_build
from migtree.errors import BuildError, StreamError
from migtree.qom import Container

sys.path.insert(0, str(Path(__file__).resolve().parent / "bad_inputs"))

from bad_inputs.craft import SCHEMA_DEV, build, header, obj

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("kind", [{"a": 1}, ["u8"], [], {}, None, 7])
def test_a_schema_kind_of_the_wrong_type_is_a_clean_error(kind):
    dev = dict(SCHEMA_DEV, fields=[{"name": "a", "kind": kind}])
    data = build(obj("/"), hdr=header(schemas={"container@1": header()["schemas"]["container@1"],
                                               "dev@1": dev}))
    with pytest.raises(StreamError, match=r"schemas\['dev@1'\]\.fields\[0\] must be a map "
                                          r"with a kind"):
        stream.read_tree(data)


@pytest.mark.parametrize("name", ["d\n", "d\r", "d\x1b[2J", "d\x00"])
def test_a_path_with_a_control_character_is_refused(name):
    data = build(obj("/"), obj("/" + name, "dev", fields={"a": 1}))
    with pytest.raises(StreamError, match="malformed path"):
        stream.read_tree(data)


def test_a_child_name_ending_in_a_newline_is_refused():
    with pytest.raises(ValueError, match="invalid child name"):
        Container().add_child("x\n", Container())


def test_the_json_view_refuses_absurd_nesting_cleanly():
    doc: object = 1
    for _ in range(900):
        doc = [doc]
    with pytest.raises(jsonview.JsonViewError, match="nested deeper"):
        jsonview.stream_from_json({"tree": doc})
    with pytest.raises(ValueError):  # still a ValueError for callers that catch that
        jsonview.stream_from_json({"header": {}})


def test_many_tiny_sections_cost_a_bounded_multiple_of_their_size():
    """docs/wire-format.md, "Cost": the reader keeps at most
    READ_BYTES_PER_INPUT_BYTE bytes of Python objects per input byte."""
    n = 20000
    data = build(obj("/"), *[obj(f"/t{i}") for i in range(n)])
    tracemalloc.start()
    try:
        stream.read_tree(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= stream.READ_BYTES_PER_INPUT_BYTE * len(data) + stream.READ_BYTES_BASE, \
        (peak, len(data), peak / len(data))


# -- build files ----------------------------------------------------------------------------------

def _build_file(tmp_path: Path, text: str | bytes) -> Path:
    p = tmp_path / "b.toml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    (tmp_path / "disk.img").write_bytes(bytes(1 << 20))
    return p


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('backend = "userspace"', 'backend = ["userspace"]'),
     "machine.backend: must be a backend name"),
    (lambda t: t.replace('serial = "migtree-demo"', "serial = {a = 1}"),
     r"device\[0\]: virtio-pci"),
    (lambda t: t.replace('id = "vblk0"', 'id = "vblk0\\n"'), r"device\[0\]\.id: invalid child"),
    (lambda t: t.replace('drive = "disk.img"', 'drive = "missing.img"'),
     r"device\[0\]: virtio-pci: No such file"),
    (lambda t: t.replace('memory = "16M"', "memory = 4"), "machine.memory"),
], ids=["backend-list", "serial-table", "id-newline", "missing-drive", "memory-4"])
def test_a_damaged_build_file_is_a_build_error(tmp_path, edit, message):
    text = (EXAMPLES / "userspace-split.toml").read_text()
    changed = edit(text)
    assert changed != text
    with pytest.raises(BuildError, match=message):
        load_build(_build_file(tmp_path, changed))


def test_a_build_file_that_is_not_utf8_is_a_build_error(tmp_path):
    with pytest.raises(BuildError, match="not UTF-8"):
        load_build(_build_file(tmp_path, b'name = "\xff"\n'))


def test_the_fuzz_cases_are_json(tmp_path):
    # the JSON view's error is a MigtreeError as well (the CLI prints it, no traceback)
    from migtree.errors import MigtreeError
    with pytest.raises(MigtreeError):
        jsonview.stream_from_json(json.loads('{"tree": {"$blob": {"size": 1}}}'))


def test_check_to_a_deeply_nested_description_is_a_clean_error(tmp_path, capsys):
    from migtree.cli import main

    src = _build_file(tmp_path, (EXAMPLES / "userspace-split.toml").read_text())
    deep = tmp_path / "deep.json"
    deep.write_text('{"format": "migtree-schema", "types": ' + "[" * 3000 + "]" * 3000 + "}")
    assert main(["check", "--from", str(src), "--to", str(deep)]) == 1
    err = capsys.readouterr().err
    assert "nested too deeply" in err and "Traceback" not in err


def test_a_deeply_nested_build_file_is_a_build_error(tmp_path):
    with pytest.raises(BuildError, match="nested too deeply"):
        load_build(_build_file(tmp_path, "[a]\nb = " + "[" * 5000 + "]" * 5000 + "\n"))


@pytest.mark.parametrize("name", ["x\n", "a/b", "__stash__", "sp ace"])
def test_the_writer_refuses_an_object_name_the_reader_would_refuse(name):
    tree = {"__type__": "container", "__version__": 1,
            name: {"__type__": "container", "__version__": 1}}
    with pytest.raises(StreamError, match="not a valid name"):
        stream.write_tree(None, None, tree)
