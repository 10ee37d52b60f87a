"""A guest that breaks the virtqueue rules gets the device's error behaviour
(virtio 1.2 §2.1.2, QEMU's virtio_error): DEVICE_NEEDS_RESET, a
configuration-change interrupt, nothing processed until reset — never a
Python exception out of the device, never a write to the disk, never a read
outside guest RAM."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from virtio_helpers import make_build, migrate, read_file

from migtree import tree
from migtree_virtio.constants import (
    BLK_T_IN,
    BLK_T_OUT,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    STATUS_DRIVER_OK,
    STATUS_NEEDS_RESET,
)
from migtree_virtio.testdriver import VirtioBlkDriver

DESC = struct.Struct("<QIHH")


def put_desc(mem, table, i, addr, length, flags=0, nxt=0):
    mem.pack(DESC, table + 16 * i, addr, length, flags, nxt)


def publish(drv, head, *, bump=1):
    """Put ``head`` in the available ring and move idx by ``bump``; kick."""
    lay, mem = drv.lay, drv.mem
    idx = mem.read_u16(lay.avail + 2)
    mem.write_u16(lay.avail + 4 + 2 * (idx % lay.queue_size), head)
    mem.write_u16(lay.avail + 2, (idx + bump) & 0xFFFF)
    drv.kick()


def header(mem, at, rtype, sector=0):
    mem.pack(struct.Struct("<IIQ"), at, rtype, 0, sector)


SCRATCH = 0x300000  # guest RAM the tests use for hand-made requests


@pytest.fixture(params=["combined", "split"])
def guest(request, tmp_path):
    from virtio_helpers import make_image

    img = make_image(str(tmp_path / "disk.img"))
    root, machine, dev = make_build(request.param, img)
    drv = VirtioBlkDriver.init(dev, machine.memory, queue_size=8, segs=2, indirect=True,
                               slot_data=4096)
    yield drv, dev, machine, img
    dev.vdev.close()


def assert_broken(drv, dev, img, before, *, match):
    vdev = dev.vdev
    assert vdev.state.broken
    assert drv.status & STATUS_NEEDS_RESET
    assert any(match in e for e in vdev.errors), vdev.errors
    drv.poll()
    assert drv.interrupts["msi_config"] == 1  # the configuration interrupt arrived
    assert read_file(img) == before
    assert drv.mem.read_u16(drv.lay.used + 2) == 0  # nothing was completed


def _simple_chain(mem, table, first, rtype=BLK_T_IN, data=(SCRATCH + 0x100, 512)):
    header(mem, SCRATCH, rtype)
    put_desc(mem, table, first, SCRATCH, 16, DESC_F_NEXT, first + 1)
    put_desc(mem, table, first + 1, data[0], data[1],
             DESC_F_NEXT | (DESC_F_WRITE if rtype == BLK_T_IN else 0), first + 2)
    put_desc(mem, table, first + 2, SCRATCH + 0x80, 1, DESC_F_WRITE, 0)


CASES = {}


def case(name, match):
    def deco(fn):
        CASES[name] = (fn, match)
        return fn
    return deco


@case("descriptor-loop", "descriptor loop")
def _loop(drv, mem, table):
    header(mem, SCRATCH, BLK_T_IN)
    put_desc(mem, table, 0, SCRATCH, 16, DESC_F_NEXT, 1)
    put_desc(mem, table, 1, SCRATCH + 0x100, 512, DESC_F_NEXT | DESC_F_WRITE, 0)
    publish(drv, 0)


@case("chain-longer-than-queue", "longer than the queue")
def _long(drv, mem, table):
    # an indirect table of 9 buffers for a queue of 8: no loop, just too long
    itable = SCRATCH + 0x1000
    header(mem, SCRATCH, BLK_T_IN)
    put_desc(mem, itable, 0, SCRATCH, 16, DESC_F_NEXT, 1)
    for i in range(1, 9):
        put_desc(mem, itable, i, SCRATCH + 0x200 * i, 512, DESC_F_WRITE | DESC_F_NEXT, i + 1)
    put_desc(mem, itable, 9, SCRATCH + 0x80, 1, DESC_F_WRITE, 0)
    put_desc(mem, table, 0, itable, 16 * 10, DESC_F_INDIRECT, 0)
    publish(drv, 0)


@case("buffer-outside-ram", "outside guest memory")
def _outside(drv, mem, table):
    _simple_chain(mem, table, 0, BLK_T_OUT, data=(mem.size - 256, 512))
    publish(drv, 0)


@case("buffer-at-huge-address", "outside guest memory")
def _huge(drv, mem, table):
    _simple_chain(mem, table, 0, BLK_T_OUT, data=(2**64 - 512, 512))
    publish(drv, 0)


@case("indirect-table-outside-ram", "outside guest memory")
def _itable_outside(drv, mem, table):
    put_desc(mem, table, 0, mem.size + 0x1000, 48, DESC_F_INDIRECT, 0)
    publish(drv, 0)


@case("header-too-short", "shorter than the 16")
def _short(drv, mem, table):
    header(mem, SCRATCH, BLK_T_OUT, 0)
    put_desc(mem, table, 0, SCRATCH, 8, DESC_F_NEXT, 1)
    put_desc(mem, table, 1, SCRATCH + 0x80, 1, DESC_F_WRITE, 0)
    publish(drv, 0)


@case("no-status-byte", "status byte")
def _nostatus(drv, mem, table):
    header(mem, SCRATCH, BLK_T_OUT, 0)
    put_desc(mem, table, 0, SCRATCH, 16, DESC_F_NEXT, 1)
    put_desc(mem, table, 1, SCRATCH + 0x100, 512, 0, 0)
    publish(drv, 0)


@case("head-out-of-range", "but the queue has")
def _head(drv, mem, table):
    publish(drv, 8)


@case("avail-idx-jump", "more than the queue")
def _jump(drv, mem, table):
    _simple_chain(mem, table, 0)
    publish(drv, 0, bump=9)


@case("zero-length-buffer", "zero-length")
def _zero(drv, mem, table):
    _simple_chain(mem, table, 0, data=(SCRATCH + 0x100, 0))
    publish(drv, 0)


@case("readable-after-writable", "follows a device-writable")
def _order(drv, mem, table):
    header(mem, SCRATCH, BLK_T_OUT)
    put_desc(mem, table, 0, SCRATCH + 0x80, 1, DESC_F_WRITE | DESC_F_NEXT, 1)
    put_desc(mem, table, 1, SCRATCH, 16, 0, 0)
    publish(drv, 0)


@case("next-out-of-table", "past the end")
def _next(drv, mem, table):
    header(mem, SCRATCH, BLK_T_IN)
    put_desc(mem, table, 0, SCRATCH, 16, DESC_F_NEXT, 200)
    publish(drv, 0)


@case("nested-indirect", "nested indirect")
def _nested(drv, mem, table):
    itable = SCRATCH + 0x1000
    put_desc(mem, itable, 0, SCRATCH + 0x2000, 48, DESC_F_INDIRECT, 0)
    put_desc(mem, table, 0, itable, 16, DESC_F_INDIRECT, 0)
    publish(drv, 0)


@case("indirect-with-next", "both INDIRECT and NEXT")
def _inext(drv, mem, table):
    put_desc(mem, table, 0, SCRATCH + 0x1000, 48, DESC_F_INDIRECT | DESC_F_NEXT, 1)
    publish(drv, 0)


@case("indirect-bad-length", "multiple of 16")
def _ilen(drv, mem, table):
    put_desc(mem, table, 0, SCRATCH + 0x1000, 40, DESC_F_INDIRECT, 0)
    publish(drv, 0)


@case("indirect-loop", "indirect table")
def _iloop(drv, mem, table):
    itable = SCRATCH + 0x1000
    header(mem, SCRATCH, BLK_T_IN)
    put_desc(mem, itable, 0, SCRATCH, 16, DESC_F_NEXT, 1)
    put_desc(mem, itable, 1, SCRATCH + 0x100, 512, DESC_F_WRITE | DESC_F_NEXT, 0)
    put_desc(mem, table, 0, itable, 32, DESC_F_INDIRECT, 0)
    publish(drv, 0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_guest_input_breaks_the_device_not_the_build(guest, name):
    drv, dev, machine, img = guest
    fn, match = CASES[name]
    before = read_file(img)
    fn(drv, machine.memory, drv.lay.desc)
    assert_broken(drv, dev, img, before, match=match)


def test_indirect_without_negotiation(tmp_path):
    from virtio_helpers import make_image

    img = make_image(str(tmp_path / "disk.img"))
    _root, machine, dev = make_build("split", img)
    drv = VirtioBlkDriver.init(dev, machine.memory, queue_size=8, segs=2, slot_data=4096)
    before = read_file(img)
    put_desc(machine.memory, drv.lay.desc, 0, SCRATCH + 0x1000, 48, DESC_F_INDIRECT, 0)
    publish(drv, 0)
    assert_broken(drv, dev, img, before, match="not negotiated")
    dev.vdev.close()


def test_broken_device_ignores_kicks_until_reset(guest):
    drv, dev, machine, img = guest
    _loop(drv, machine.memory, drv.lay.desc)
    assert dev.vdev.state.broken
    # a valid request now is not processed
    drv.mem.write_u16(drv.lay.avail + 2, 0)  # start over in the guest's ring
    assert dev.vdev.take() is None
    assert not dev.vdev.complete_one()
    # the driver resets and brings the device up again: it works
    drv2 = VirtioBlkDriver.init(dev, machine.memory, queue_size=8, segs=2, slot_data=4096)
    assert not dev.vdev.state.broken
    assert not drv2.status & STATUS_NEEDS_RESET
    assert drv2.status & STATUS_DRIVER_OK
    slot = drv2.read(0, 4096)
    drv2.poll()
    assert drv2.result(slot).data == read_file(img)[:4096]


def test_chain_changed_in_flight_is_caught_on_completion(guest):
    drv, dev, machine, img = guest
    dev.vdev.on_kick = "none"
    before = read_file(img)
    slot = drv.write(0, b"\x11" * 1024)
    req = dev.vdev.take()
    assert req is not None
    # the guest rewrites a descriptor the device owns: point the data elsewhere
    itable = drv.lay.slot(slot) + 0x40
    addr, length, flags, nxt = machine.memory.unpack(DESC, itable + 16)
    put_desc(machine.memory, itable, 1, SCRATCH, length, flags, nxt)
    assert not dev.vdev.complete_one()
    assert dev.vdev.state.broken
    assert any("changed while the device owned it" in e for e in dev.vdev.errors)
    assert read_file(img) == before
    assert drv.result(slot).status == 0xFF  # never completed


def test_broken_state_migrates(guest, tmp_path, registry):
    drv, dev, machine, img = guest
    _loop(drv, machine.memory, drv.lay.desc)
    kind = "split" if dev.TYPE == "virtio-blk-pci" else "combined"
    dst_root, dst_m, dst = make_build(kind, img)
    migrate(dev.root, dst_root, registry)
    assert dst.vdev.state.broken
    assert dst.vdev.take() is None
    d = VirtioBlkDriver.attach(dst, dst_m.memory)
    assert d.status & STATUS_NEEDS_RESET
    dst.vdev.close()


@settings(max_examples=100)
@given(desc=st.binary(min_size=16 * 8, max_size=16 * 8),
       ring=st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8),
       idx=st.integers(0, 0xFFFF), junk_seed=st.integers(0, 2**32 - 1))
def test_garbage_rings_never_escape_as_exceptions(tmp_path_factory, desc, ring, idx, junk_seed):
    """Random descriptor tables and available rings (addresses mostly in a
    small window of RAM filled with random bytes, so headers are random
    too): the device never raises, never writes the disk; whatever it did
    not refuse it completed."""
    from virtio_helpers import make_image

    img = make_image(str(tmp_path_factory.mktemp("g") / "disk.img"))
    _root, machine, dev = make_build("split", img)
    try:
        drv = VirtioBlkDriver.init(dev, machine.memory, queue_size=8, segs=2, indirect=True,
                                   slot_data=4096)
        mem = machine.memory
        mem.write(SCRATCH, random.Random(junk_seed).randbytes(4096))
        table = bytearray(desc)
        for i in range(8):  # half the descriptors point into the junk window
            if table[16 * i] & 1:
                addr = SCRATCH + (int.from_bytes(table[16 * i:16 * i + 2], "little") % 4096)
                table[16 * i:16 * i + 8] = addr.to_bytes(8, "little")
        mem.write(drv.lay.desc, bytes(table))
        for i, h in enumerate(ring):
            mem.write_u16(drv.lay.avail + 4 + 2 * i, h)
        before = read_file(img)
        mem.write_u16(drv.lay.avail + 2, idx)
        drv.kick()
        dev.vdev.run()
        st_ = dev.vdev.state
        assert st_.broken == bool(st_.device_status & STATUS_NEEDS_RESET)
        assert not st_.inflight or st_.broken
        disk = read_file(img)
        if disk != before:
            # only a request the device accepted may write: never a refused one
            assert not st_.broken or mem.read_u16(drv.lay.used + 2) > 0
        tree.save_tree(_root)  # and the state still saves
    finally:
        dev.vdev.close()
