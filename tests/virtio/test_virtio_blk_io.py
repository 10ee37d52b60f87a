"""The guest driver against both builds: reads, writes, flushes and GET_ID
checked byte for byte against the disk image; chained and indirect
descriptors; IOERR/UNSUPP; read-only; INTx; stepping."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from virtio_helpers import DISK, make_build, make_image, read_file

from migtree_virtio.constants import (
    BLK_F_FLUSH,
    BLK_F_RO,
    BLK_S_IOERR,
    BLK_S_OK,
    BLK_S_UNSUPP,
    F_RING_INDIRECT_DESC,
    F_VERSION_1,
    STATUS_FEATURES_OK,
)
from migtree_virtio.testdriver import DriverError, VirtioBlkDriver


@pytest.mark.parametrize("indirect", [False, True])
@pytest.mark.parametrize("segs", [1, 3])
def test_reads_and_writes_match_the_image(build, image, indirect, segs):
    _root, machine, dev = build
    drv = VirtioBlkDriver.init(dev, machine.memory, queue_size=64, segs=segs,
                               indirect=indirect, slot_data=8192)
    assert drv.capacity == DISK // 512
    ref = bytearray(read_file(image))
    rng = random.Random(5)
    for _ in range(30):
        sector = rng.randrange(0, DISK // 512 - 16)
        n = rng.randint(1, 16) * 512
        if rng.random() < 0.5:
            data = rng.randbytes(n)
            slot = drv.write(sector, data)
            ref[sector * 512:sector * 512 + n] = data
            assert drv.poll() == [slot]
            assert drv.result(slot).status == BLK_S_OK
            assert drv.result(slot).used_len == 1
        else:
            slot = drv.read(sector, n)
            assert drv.poll() == [slot]
            r = drv.result(slot)
            assert (r.status, r.used_len) == (BLK_S_OK, n + 1)
            assert r.data == bytes(ref[sector * 512:sector * 512 + n])
        drv.release(slot)
    assert read_file(image) == bytes(ref)
    assert drv.interrupts["msi_queue"] == 30


def test_flush_and_get_id(tmp_path):
    img = make_image(str(tmp_path / "d.img"))
    _root, m, dev = make_build("split", img, serial="migtree-disk-0")
    drv = VirtioBlkDriver.init(dev, m.memory)
    assert drv.features >> BLK_F_FLUSH & 1
    f = drv.flush()
    g = drv.get_id()
    drv.poll()
    assert drv.result(f).status == BLK_S_OK
    assert drv.result(g).data == b"migtree-disk-0".ljust(20, b"\0")
    assert drv.result(g).used_len == 21
    dev.vdev.close()


def test_errors_are_statuses_not_breakage(build, image):
    _root, machine, dev = build
    drv = VirtioBlkDriver.init(dev, machine.memory)
    before = read_file(image)
    past = drv.write(DISK // 512 - 1, b"x" * 1024)        # runs past the end
    odd = drv.write(0, b"x" * 100)                          # not whole blocks
    far = drv.read(2**63, 512)                              # sector beyond capacity
    unk = drv.submit(77, 0)                                 # unknown type
    drv.poll()
    assert [drv.result(s).status for s in (past, odd, far, unk)] == \
        [BLK_S_IOERR, BLK_S_IOERR, BLK_S_IOERR, BLK_S_UNSUPP]
    assert read_file(image) == before
    assert not dev.vdev.state.broken


def test_read_only_drive(tmp_path):
    img = make_image(str(tmp_path / "d.img"))
    _root, m, dev = make_build("combined", img, read_only=True)
    drv = VirtioBlkDriver.init(dev, m.memory)
    assert drv.features >> BLK_F_RO & 1
    before = read_file(img)
    w = drv.write(0, b"y" * 512)
    r = drv.read(0, 512)
    drv.poll()
    assert drv.result(w).status == BLK_S_IOERR
    assert drv.result(r).data == before[:512]
    assert read_file(img) == before
    dev.vdev.close()


def test_intx_when_msix_is_off(build, image):
    _root, machine, dev = build
    drv = VirtioBlkDriver.init(dev, machine.memory, msix=False)
    t = dev.transport
    assert not t.msix_enabled
    dev.vdev.on_kick = "none"
    drv.read(0, 512)
    assert not t.intx_level
    dev.vdev.process()
    assert t.intx_level
    assert t.config_read(0x06, 2) & 0x08  # PCI status: interrupt pending
    drv.poll()  # reads the ISR, which clears it and lowers the line
    assert not t.intx_level
    assert drv.interrupts["intx"] == 1
    assert t.msi_log == []


def test_no_interrupt_flag_suppresses_interrupts(build):
    _root, machine, dev = build
    drv = VirtioBlkDriver.init(dev, machine.memory)
    machine.memory.write_u16(drv.lay.avail, 1)  # VRING_AVAIL_F_NO_INTERRUPT
    drv.read(0, 512)
    drv.poll()
    assert drv.interrupts["msi_queue"] == 0
    assert dev.transport.msi_log == []


def test_masked_vector_is_pending_until_unmasked(build):
    _root, machine, dev = build
    drv = VirtioBlkDriver.init(dev, machine.memory)
    t = dev.transport
    table = drv.bars[drv.table_bar]
    t.mmio_write(table + 16 + 12, 4, 1)       # mask vector 1 (queue 0)
    drv.read(0, 512)
    assert t.msi_log == []
    pba = drv.bars[drv.table_bar] + 0x800
    assert t.mmio_read(pba, 4) == 0b10
    t.mmio_write(table + 16 + 12, 4, 0)       # unmask: delivered now
    assert t.msi_log == [(drv.lay.base + 0x80, 0x4001)]
    assert t.mmio_read(pba, 4) == 0


def test_stepping_take_then_complete(build):
    _root, machine, dev = build
    drv = VirtioBlkDriver.init(dev, machine.memory)
    vdev = dev.vdev
    vdev.on_kick = "take"
    slots = [drv.read(i, 512) for i in range(4)]
    assert len(vdev.state.inflight) == 4
    assert drv.poll() == []
    assert vdev.complete_one(2)
    assert drv.poll() == [slots[2]]
    assert vdev.complete_all() == 3
    assert sorted(drv.poll()) == sorted([slots[0], slots[1], slots[3]])
    vdev.on_kick = "none"
    drv.read(9, 512)
    assert vdev.pending() == 1 and not vdev.state.inflight
    assert vdev.process(1) == 1 and vdev.pending() == 0


def test_driver_without_version_1_is_refused(build):
    _root, machine, dev = build
    with pytest.raises(DriverError, match="refused"):
        VirtioBlkDriver.init(dev, machine.memory, features=1 << BLK_F_FLUSH)
    assert not dev.vdev.state.device_status & STATUS_FEATURES_OK


def test_features_not_offered_are_dropped(tmp_path):
    img = make_image(str(tmp_path / "d.img"))
    _root, m, dev = make_build("split", img, indirect=False)
    want = 1 << F_VERSION_1 | 1 << F_RING_INDIRECT_DESC
    drv = VirtioBlkDriver.init(dev, m.memory, features=want)
    assert dev.vdev.state.driver_features == 1 << F_VERSION_1
    assert drv.status & STATUS_FEATURES_OK
    dev.vdev.close()


@settings(max_examples=40)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, DISK // 512 - 8),
                              st.integers(1, 8), st.integers(0, 255)), min_size=1, max_size=25),
       segs=st.integers(1, 4), indirect=st.booleans())
def test_any_sequence_matches_a_plain_file_model(tmp_path_factory, ops, segs, indirect):
    img = make_image(str(tmp_path_factory.mktemp("io") / "d.img"))
    _root, m, dev = make_build("split", img)
    try:
        drv = VirtioBlkDriver.init(dev, m.memory, queue_size=128, segs=segs,
                                   indirect=indirect, slot_data=4096)
        model = bytearray(read_file(img))
        for is_write, sector, n, fill in ops:
            if is_write:
                s = drv.write(sector, bytes([fill]) * (n * 512))
                model[sector * 512:(sector + n) * 512] = bytes([fill]) * (n * 512)
            else:
                s = drv.read(sector, n * 512)
            drv.poll()
            r = drv.result(s)
            assert r.status == BLK_S_OK
            if not is_write:
                assert r.data == bytes(model[sector * 512:(sector + n) * 512])
            drv.release(s)
        assert read_file(img) == bytes(model)
    finally:
        dev.vdev.close()
