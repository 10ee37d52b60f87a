"""The codec on hand-made streams: VMState types, RAM record kinds and
stream items that the x86 machines of the matrix do not produce (needs no
QEMU)."""

from __future__ import annotations

import math
import struct

import pytest

from migtree_qemu import qevm
from migtree_qemu.errors import QemuUnknownSubsectionError, QemuVersionError
from migtree_qemu.qevm import (
    Command,
    Configuration,
    PageRef,
    QemuStream,
    RamBlockInfo,
    RamRecord,
    RamSection,
    Section,
)
from migtree_qemu.tree import stream_to_tree, tree_to_stream
from migtree_qemu.vmstate import NULLPTR, Field, VMStateObject

NAN_PAYLOAD = struct.unpack(">d", bytes.fromhex("7ff4000000000001"))[0]


def _config(caps=()):
    name = b"pc-i440fx-7.2"
    st = VMStateObject("configuration", 1, [Field("len", "uint32", len(name)),
                                            Field("name", "buffer", name, size=len(name))])
    if caps:
        st.subsections.append(VMStateObject("configuration/capabilities", 1, [
            Field("caps_count", "uint32", len(caps)),
            Field("capabilities", "capability", list(caps), array_len=len(caps))]))
    st.subsections.append(VMStateObject("configuration/uuid", 1, [
        Field("uuid.data", "uint8", list(range(16)), array_len=16)]))
    return Configuration(st)


def _device() -> VMStateObject:
    inner = VMStateObject("inner", 2, [Field("a", "int8", -5), Field("b", "uint16", 65535)])
    inner.subsections.append(VMStateObject("inner/extra", 1, [Field("flag", "bool", True)]))
    tmp = VMStateObject("thing_tmp", 0, [Field("t", "int16", -2)])
    return VMStateObject("thing", 7, [
        Field("f", "float64", 1.5),
        Field("nan", "float64", NAN_PAYLOAD),
        Field("big", "uint64 equal", 2**64 - 1),
        Field("when", "timer", -1),
        Field("ok", "bool", False),
        Field("irq", "pci irq state", [0, -1, 2, 3]),
        Field("blob", "mystery type", b"\x01\x02\x03", size=3),
        Field("inner", "struct", inner, keys=("name", "type", "struct", "size")),
        Field("ptrs", "struct", NULLPTR, index=0, keys=("name", "index", "type", "struct",
                                                         "size")),
        Field("ptrs", "struct", VMStateObject("p", 1, [Field("x", "uint32", 9)]), index=1,
              keys=("name", "index", "type", "struct", "size")),
        Field("segs", "struct",
              [VMStateObject("seg", 1, [Field("s", "uint8", i)]) for i in range(3)],
              array_len=3, keys=("name", "array_len", "type", "struct", "size")),
        Field("tmp", "tmp", tmp,
              keys=("name", "type", "vmsd_name", "version", "fields", "size")),
    ], [VMStateObject("thing/sub", 3, [Field("v", "uint32", 1)])])


def _stream(caps=()) -> QemuStream:
    blocks = [RamBlockInfo("pc.ram", 2 * 4096, 0x1000 if caps else None),
              RamBlockInfo("/rom@etc/x", 4096, 0x9000 if caps else None)]
    ram_start = RamSection([RamRecord(qevm.RAM_MEM_SIZE, 3 * 4096, None, blocks),
                            RamRecord(qevm.RAM_EOS)])
    ram_part = RamSection([
        RamRecord(qevm.RAM_PAGE, 0, "pc.ram", bytes(range(256)) * 16),
        RamRecord(qevm.RAM_ZERO | qevm.RAM_CONTINUE, 4096, "pc.ram", 0),
        RamRecord(qevm.RAM_XBZRLE, 0, "/rom@etc/x", b"\x01\x00\x02\xab\xcd"),
        RamRecord(qevm.RAM_COMPRESS_PAGE | qevm.RAM_CONTINUE, 0, "/rom@etc/x",
                  b"\x00\x00\x00\x03xyz"),
        RamRecord(qevm.RAM_EOS)])
    old = VMStateObject("", 0, [Field("data", "buffer", b"old-style bytes", size=15)])
    return QemuStream(configuration=_config(caps), items=[
        Section(qevm.SECTION_START, 2, "ram", 0, 4, ram_start),
        Command(2, b"\x00\x01"),
        Section(qevm.SECTION_PART, 2, "ram", 0, 4, ram_part),
        Section(qevm.SECTION_END, 2, "ram", 0, 4, RamSection([RamRecord(qevm.RAM_EOS)])),
        Section(qevm.SECTION_FULL, 3, "0000:00:03.0/thing", 0, 7, _device()),
        Section(qevm.SECTION_FULL, 4, "legacy", 1, 5, old,
                desc_keys=("name", "instance_id", "size", "fields")),
    ])


@pytest.mark.parametrize("caps", [(), ("x-ignore-shared",)], ids=["plain", "ignore-shared"])
def test_synthetic_stream_roundtrips(caps):
    data = qevm.dumps(_stream(caps))
    s = qevm.loads(data, ram="copy")
    assert qevm.dumps(s) == data
    assert s.configuration.capabilities == list(caps)
    thing = s.device("0000:00:03.0/thing")
    assert thing == _device() or _floats_equal(thing, _device())
    assert thing["f"] == 1.5 and thing["big"] == 2**64 - 1 and thing["when"] == -1
    assert thing["irq"] == [0, -1, 2, 3] and thing["ok"] is False
    assert thing.field("ptrs", index=0).value is NULLPTR
    assert thing["inner"].subsection("extra")["flag"] is True
    assert thing["tmp"]["t"] == -2 and thing["blob"] == b"\x01\x02\x03"
    assert s.section("legacy", 1).state["data"] == b"old-style bytes"
    assert any(isinstance(i, Command) for i in s.items)
    recs = list(s.ram_records())
    kinds = [r.flags & ~qevm.RAM_CONTINUE for r in recs]
    assert qevm.RAM_XBZRLE in kinds and qevm.RAM_COMPRESS_PAGE in kinds
    blocks = recs[0].data
    assert [b.mr_addr for b in blocks] == ([0x1000, 0x9000] if caps else [None, None])
    # the tree keeps all of it too (floats as IEEE bits)
    tree = stream_to_tree(qevm.loads(data))
    node = tree["machine"]["qemu"]["0000:00:03.0"]["thing"]
    assert node["f"] == 0x3FF8000000000000 and isinstance(node["nan"], int)
    assert qevm.dumps(tree_to_stream(tree)) == data


def _floats_equal(a, b) -> bool:
    x, y = a["nan"], b["nan"]
    return (isinstance(x, bytes) or math.isnan(x)) and isinstance(y, float)


def test_ram_reference_pages_point_into_the_source():
    data = qevm.dumps(_stream())
    s = qevm.loads(data)
    page = next(r for r in s.ram_records() if r.flags & qevm.RAM_PAGE)
    assert isinstance(page.data, PageRef)
    assert data[page.data.offset : page.data.offset + 4096] == bytes(range(256)) * 16


def test_unknown_configuration_subsection_and_version():
    s = _stream()
    s.configuration.state.subsections.append(VMStateObject("configuration/new", 1, []))
    with pytest.raises(QemuUnknownSubsectionError, match="configuration/new"):
        qevm.loads(qevm.dumps(s))
    s = _stream()
    s.configuration.state.subsections[0].version = 2
    with pytest.raises(QemuVersionError, match="configuration/uuid.*version 2"):
        qevm.loads(qevm.dumps(s))


# -- sizes are counted, not encoded (the vmdesc asks for every field's size) --------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from migtree_qemu.vmstate import INT_TYPES, encode_object, encoded_size  # noqa: E402


@st.composite
def _objects(draw, depth=0):
    fields = []
    for i in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["int", "bool", "bytes", "float", "irq", "cap", "null",
                                     "struct"] if depth < 2 else ["int", "bytes", "bool"]))
        if kind == "int":
            t = draw(st.sampled_from(sorted(INT_TYPES)))
            width, signed = INT_TYPES[t]
            lo = -(1 << (8 * width - 1)) if signed else 0
            ints = st.integers(lo - 2, lo + (1 << (8 * width)) + 1)  # a few out of range
            if draw(st.booleans()):
                n = draw(st.integers(0, 3))
                fields.append(Field(f"f{i}", t, draw(st.lists(ints, min_size=n, max_size=n)),
                                    array_len=n))
            else:
                fields.append(Field(f"f{i}", t, draw(ints)))
        elif kind == "bool":
            fields.append(Field(f"f{i}", "bool", draw(st.booleans())))
        elif kind == "bytes":
            fields.append(Field(f"f{i}", draw(st.sampled_from(["buffer", "unused", "capability"])),
                                draw(st.binary(max_size=9))))
        elif kind == "float":
            fields.append(Field(f"f{i}", "float64", draw(st.floats(allow_nan=False))))
        elif kind == "irq":
            fields.append(Field(f"f{i}", "pci irq state", draw(st.lists(
                st.integers(-2**31, 2**31 - 1), min_size=4, max_size=4))))
        elif kind == "cap":
            fields.append(Field(f"f{i}", "capability", draw(st.text("abc", max_size=5))))
        elif kind == "null":
            fields.append(Field(f"f{i}", "struct", NULLPTR))
        else:
            fields.append(Field(f"f{i}", "struct", draw(_objects(depth=depth + 1))))
    subs = [draw(_objects(depth=depth + 1)) for _ in range(draw(st.integers(0, 1 if depth < 2
                                                                            else 0)))]
    return VMStateObject(draw(st.text("xyz/", min_size=1, max_size=6)), 1, fields, subs)


@settings(max_examples=300, deadline=None)
@given(_objects())
def test_a_counted_size_is_the_encoded_length(obj):
    """encoded_size counts what encode_object would write; where encoding
    refuses a value (out of range), the size refuses the same way."""
    from migtree_qemu.errors import QemuEncodeError

    out = bytearray()
    try:
        encode_object(out, obj)
    except QemuEncodeError:
        with pytest.raises(QemuEncodeError):
            encoded_size(obj)
        return
    assert encoded_size(obj) == len(out)
    for f in obj.fields:
        for v in (f.value if f.array_len is not None else [f.value]):
            part = bytearray()
            from migtree_qemu.vmstate import _encode_element
            _encode_element(part, f, v, f.label)
            assert encoded_size(v, f) == len(part)
