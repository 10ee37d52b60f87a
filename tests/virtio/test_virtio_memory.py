"""migtree.memory: bounds-checked guest RAM and its migration in chunks."""

from __future__ import annotations

import io
import tracemalloc

import pytest

from migtree import stream, tree
from migtree.blob import Blob
from migtree.errors import LoadError, MigtreeError
from migtree.memory import (
    GuestMemory,
    GuestMemoryError,
    GuestMemoryObject,
    as_guest_memory,
    install,
    parse_size,
)
from migtree.qom import new_root


def test_bounds_are_checked():
    mem = GuestMemory(8192)
    mem.write(8188, b"abcd")
    assert mem.read(8188, 4) == b"abcd"
    for gpa, n in ((8189, 4), (-1, 1), (2**64, 1), (0, 8193)):
        with pytest.raises(GuestMemoryError):
            mem.read(gpa, n)
    with pytest.raises(GuestMemoryError):
        mem.write(8190, b"xyz")
    with pytest.raises(GuestMemoryError):
        mem.read_u64(8188)
    with pytest.raises(GuestMemoryError):
        mem.view(0, 9000)
    assert issubclass(GuestMemoryError, MigtreeError)
    assert mem.contains(0, 8192) and not mem.contains(1, 8192)
    assert mem.read(8188, 4) == b"abcd"  # failed writes changed nothing


def test_little_endian_helpers():
    mem = GuestMemory(4096)
    mem.write_u16(0, 0x1234)
    mem.write_u32(2, 0xDEADBEEF)
    mem.write_u64(8, 0x0102030405060708)
    assert mem.read(0, 16) == bytes.fromhex("3412efbeadde0000" "0807060504030201")
    assert (mem.read_u16(0), mem.read_u32(2), mem.read_u64(8)) == \
        (0x1234, 0xDEADBEEF, 0x0102030405060708)
    with pytest.raises(ValueError):
        mem.write_u16(0, 0x10000)
    with pytest.raises(ValueError):
        mem.write_u8(0, -1)


def test_sizes():
    assert parse_size("16M") == 16 << 20 and parse_size("64KiB") == 64 << 10
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError):
        parse_size("lots")
    with pytest.raises(ValueError):
        GuestMemory(1000)  # not whole pages


def test_chunks_round_trip():
    a = GuestMemory(3 << 20)
    a.write(5, b"hello")
    a.write((3 << 20) - 5, b"world")
    chunks = list(a.iter_chunks(1 << 20))
    assert [len(c) for c in chunks] == [1 << 20] * 3
    b = GuestMemory(3 << 20)
    b.load_chunks(iter(chunks))
    assert b.read(5, 5) == b"hello" and b.read((3 << 20) - 5, 5) == b"world"
    with pytest.raises(GuestMemoryError):
        GuestMemory(4 << 20).load_chunks(iter(chunks))


def _machine(size):
    root, machine = new_root()
    install(machine, size)
    return root, machine


def test_object_migrates_through_a_stream():
    root, m = _machine(2 << 20)
    m.memory.write(0x1234, b"guest data")
    buf = io.BytesIO()
    stream.save(root, buf)
    _h, t = stream.read_tree(io.BytesIO(buf.getvalue()))
    assert isinstance(t["machine"]["ram"]["ram"], Blob)
    root2, m2 = _machine(2 << 20)
    stream.load(t, root2)
    assert m2.memory.read(0x1234, 10) == b"guest data"


def test_wrong_size_is_refused_and_rolled_back():
    root, m = _machine(1 << 20)
    t = tree.save_tree(root)
    t["machine"]["ram"]["ram"] = Blob(b"\x01" * (2 << 20))
    t["machine"]["ram"]["size"] = 2 << 20
    with pytest.raises(LoadError, match="guest RAM"):
        tree.load_tree(t, root)
    assert m.memory.read(0, 16) == bytes(16)


def test_machine_memory_may_be_the_object():
    obj = GuestMemoryObject(size=8192)
    assert as_guest_memory(obj) is obj.memory
    obj.write_u32(0, 7)                  # the object stands for its RAM
    assert obj.read_u32(0) == 7 and len(obj) == 8192
    assert as_guest_memory(None) is None
    with pytest.raises(AttributeError):
        getattr(obj, "no_such_thing")  # noqa: B009


def test_loading_copies_chunk_by_chunk():
    """Loading 32 MiB allocates no more than a couple of chunks on the heap."""
    size = 32 << 20
    src = GuestMemory(size)
    blob = Blob.from_chunks(src.iter_chunks())
    root, m = _machine(size)
    t = tree.save_tree(root)
    t["machine"]["ram"]["ram"] = blob
    tracemalloc.start()
    tree.load_tree(t, root)
    _cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 << 20


def test_build_teardown_closes_ram_and_disk(tmp_path):
    from virtio_helpers import make_build, make_image

    from migtree.build import close_objects

    img = make_image(str(tmp_path / "d.img"))
    root, machine, dev = make_build("combined", img)
    close_objects(root)
    close_objects(root)  # twice is fine
    assert machine.memory.closed
