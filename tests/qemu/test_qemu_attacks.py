"""Crafted QEMU streams and edited QEMU metadata (issue 18): each was a
memory blow-up, a traceback or a wrong success; each is now a clean
QemuStreamError within a cost bounded by the input's size (needs no QEMU)."""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest
from test_qemu_codec_synthetic import _stream

from migtree_qemu import qevm
from migtree_qemu.errors import QemuEncodeError, QemuStreamError, QemuVmdescMismatchError
from migtree_qemu.tree import stream_to_tree, tree_to_stream
from migtree_qemu.vmstate import ELEMENTS_BASE, ELEMENTS_PER_BYTE


def _with_vmdesc(data: bytes, desc) -> bytes:
    at, _ = qevm.find_vmdesc(data)
    text = json.dumps(desc, separators=(",", ":")).encode()
    return data[: at + 1] + len(text).to_bytes(4, "big") + text


def _nested_empty_structs(levels: int, n: int) -> dict:
    obj: dict = {"vmsd_name": "e", "version": 1, "fields": []}
    for _ in range(levels):
        obj = {"vmsd_name": "e", "version": 1,
               "fields": [{"name": "a", "array_len": n, "type": "struct", "size": 0,
                           "struct": obj}]}
    return obj


def test_nested_arrays_of_empty_structs_are_refused_within_the_budget():
    """1000^4 empty structs described in a few hundred bytes: each level's
    array_len fits in the bytes left (empty structs take none), so the
    reader used to allocate until memory ran out."""
    data = qevm.dumps(_stream())
    _, desc = qevm.find_vmdesc(data)
    dev = next(d for d in desc["devices"] if d["name"] == "0000:00:03.0/thing")
    dev["fields"].insert(0, {"name": "bomb", "array_len": 1000, "type": "struct", "size": 0,
                             "struct": _nested_empty_structs(3, 1000)})
    bomb = _with_vmdesc(data, desc)
    tracemalloc.start()
    try:
        with pytest.raises(QemuVmdescMismatchError, match="more elements than a stream"):
            qevm.loads(bomb, ram="skip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    budget = ELEMENTS_PER_BYTE * len(bomb) + ELEMENTS_BASE
    assert peak < 1024 * budget, (peak, budget)  # a bounded number of small objects


@pytest.mark.parametrize("name", ["x\n", "x\x1b[2J", "\x00", "a\x7f"])
def test_a_section_name_with_control_characters_is_refused(name):
    s = _stream()
    sec = next(x for x in s.items if isinstance(x, qevm.Section) and x.idstr == "legacy")
    sec.idstr = name
    with pytest.raises(QemuStreamError, match="section name"):
        qevm.loads(qevm.dumps(s), ram="skip")


def test_a_vmdesc_not_written_back_identically_is_refused():
    data = qevm.dumps(_stream())
    _, desc = qevm.find_vmdesc(data)
    assert qevm.loads(data, ram="copy") is not None
    edited = _with_vmdesc(data, desc)  # the same JSON, spaced differently from QEMU
    assert edited != data
    with pytest.raises(QemuVmdescMismatchError, match="not the JSON QEMU writes"):
        qevm.loads(edited, ram="skip")


def test_every_accepted_stream_is_written_back_identically():
    for s in (_stream(), _stream(("x-ignore-shared",))):
        data = qevm.dumps(s)
        assert qevm.dumps(qevm.loads(data, ram="copy")) == data


def _tree():
    return stream_to_tree(qevm.loads(qevm.dumps(_stream())), paths={})


@pytest.mark.parametrize("edit", [
    lambda m: m.__setitem__("order", [7]),
    lambda m: m.__setitem__("order", [["FULL", 1]]),
    lambda m: m.__setitem__("order", [["FULL", 1, "x", 0, True, 9]]),
    lambda m: m.__setitem__("qevm_version", [3]),
    lambda m: m.__setitem__("qevm_version", 1 << 40),
    lambda m: m.__setitem__("page_size", 3),
    lambda m: m.__setitem__("page_size", 0),
    lambda m: m.pop("vmdesc_keys"),
    lambda m: m.__setitem__("vmdesc_keys", [1, 2]),
    lambda m: m.__setitem__("configuration", 5),
], ids=["order-int", "order-short", "order-long", "version-list", "version-huge",
        "page-size-3", "page-size-0", "no-vmdesc-keys", "vmdesc-keys-int", "config-int"])
def test_edited_machine_metadata_is_an_encode_error(edit):
    tree = _tree()
    edit(tree["machine"]["__qemu__"])
    with pytest.raises(QemuEncodeError):
        tree_to_stream(tree)


def test_the_writer_reads_back_what_it_writes():
    """convert's QEMU output is read by the QEMU reader before it counts as
    written; a section name QEMU could not have written is refused there."""
    from migtree_qemu.format import QemuStreamFormat

    tree = _tree()
    meta = tree["machine"]["__qemu__"]
    QemuStreamFormat().write(io.BytesIO(), None, tree)  # the untouched tree writes
    for node in _section_nodes(tree):
        if node["__qemu__"]["idstr"] == "legacy":
            node["__qemu__"]["idstr"] = "legacy\n"
    meta["order"] = [[*e[:2], "legacy\n", *e[3:]] if e[0] != "COMMAND" and e[2] == "legacy"
                     else e for e in meta["order"]]
    with pytest.raises(QemuEncodeError, match="refused by the reader"):
        QemuStreamFormat().write(io.BytesIO(), None, tree)


def _section_nodes(tree):
    from migtree_qemu.tree import iter_section_nodes
    return [n for _, n in iter_section_nodes(tree)]


def test_a_pipe_is_spooled_only_up_to_the_limit():
    data = qevm.dumps(_stream())

    class Pipe(io.RawIOBase):
        def __init__(self):
            self.b = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, buf):
            chunk = self.b.read(len(buf))
            buf[: len(chunk)] = chunk
            return len(chunk)

    with pytest.raises(QemuStreamError, match="longer than the limit of 1000 bytes"):
        qevm.load(io.BufferedReader(Pipe()), ram="skip", max_size=1000)
    assert qevm.load(io.BufferedReader(Pipe()), ram="copy").size == len(data)


def test_many_tiny_sections_cost_a_bounded_multiple_of_their_size():
    from test_qemu_codec_synthetic import _config

    from migtree_qemu.qevm import READ_BYTES_BASE, READ_BYTES_PER_INPUT_BYTE, QemuStream, Section
    from migtree_qemu.vmstate import Field, VMStateObject

    items = [Section(qevm.SECTION_FULL, i + 1, "d", i, 1,
                     VMStateObject("d", 1, [Field("x", "uint8", 1)])) for i in range(20000)]
    data = qevm.dumps(QemuStream(configuration=_config(), items=items))
    tracemalloc.start()
    try:
        qevm.loads(data, ram="skip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= READ_BYTES_PER_INPUT_BYTE * len(data) + READ_BYTES_BASE, peak / len(data)
