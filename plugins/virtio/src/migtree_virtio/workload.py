"""The ``virtio-blk-io`` workload for ``migtree migrate``: block I/O left in
flight on the source, finished on the destination.

``start`` brings up a :class:`migtree_virtio.testdriver.VirtioBlkDriver` on
every virtio-blk PCI function of the build (combined or split), submits a
seeded mix of writes, reads, flushes and GET_IDs, then steps each device so
that some requests are completed, some taken but not completed, and the rest
not looked at. ``finish`` (on the destination, or on a reference build that
never migrated) picks the drivers up from guest RAM, lets the devices finish
and reaps. ``check`` summarises what the guest ended up with: the disk's
digest, every request's status, used length and data digest, the used ring,
the interrupts the driver saw, the device status.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from migtree.build import Workload
from migtree.memory import as_guest_memory

from .blk import VirtioBlk
from .constants import BLK_T_IN, BLK_T_OUT, SECTOR_SIZE
from .testdriver import VirtioBlkDriver, region_size

DRIVER_BASE = 0x100000
QUEUE_SIZE = 64
SLOT_DATA = 0x4000
MMIO_BASE = 0xE000_0000


def block_devices(machine: Any) -> list[Any]:
    """The virtio-blk PCI functions of ``machine``, in path order."""
    out = []
    for obj in machine.walk():
        vdev = getattr(obj, "vdev", None)
        if getattr(obj, "transport", None) is obj or obj.TYPE == "virtio-blk-pci":
            if isinstance(vdev, VirtioBlk):
                out.append(obj)
    return sorted(out, key=lambda o: o.path)


def _region(k: int) -> tuple[int, int]:
    size = region_size(QUEUE_SIZE, slot_data=SLOT_DATA)
    stride = (size + 0xFFFFF) // 0x100000 * 0x100000
    return DRIVER_BASE + k * stride, MMIO_BASE + k * 0x10_0000


def applies(machine: Any) -> bool:
    devs = block_devices(machine)
    if not devs or as_guest_memory(machine.memory) is None:
        return False
    base, _ = _region(len(devs))
    return as_guest_memory(machine.memory).size >= base


def start(machine: Any, seed: int) -> None:
    rng = random.Random(seed)
    for k, dev in enumerate(block_devices(machine)):
        base, mmio = _region(k)
        vdev = dev.vdev
        vdev.on_kick = "none"
        mem = as_guest_memory(machine.memory)
        drv = VirtioBlkDriver.init(dev, mem, base=base, queue_size=QUEUE_SIZE,
                                   slot_data=SLOT_DATA, mmio_base=mmio)
        sectors = max(drv.capacity, 1)
        n = min(drv.lay.nslots, rng.randint(8, 24))
        for _ in range(n):
            op = rng.random()
            nsec = rng.randint(1, SLOT_DATA // SECTOR_SIZE)
            sector = rng.randrange(0, max(sectors - nsec, 1))
            if op < 0.45:
                data = rng.randbytes(nsec * SECTOR_SIZE)
                drv.submit(BLK_T_OUT, sector, data, kick=False)
            elif op < 0.85:
                drv.submit(BLK_T_IN, sector, nsec * SECTOR_SIZE, kick=False)
            elif op < 0.93:
                drv.flush(kick=False)
            else:
                drv.get_id(kick=False)
        drv.kick()
        done = rng.randint(0, n // 2)
        vdev.process(done)
        drv.poll()
        for _ in range(rng.randint(0, n - done)):
            if vdev.take() is None:
                break
        if len(vdev.state.inflight) > 1 and rng.random() < 0.5:
            vdev.complete_one(rng.randrange(len(vdev.state.inflight)))


def finish(machine: Any) -> None:
    for k, dev in enumerate(block_devices(machine)):
        base, _ = _region(k)
        vdev = dev.vdev
        vdev.on_kick = "process"
        drv = VirtioBlkDriver.attach(dev, as_guest_memory(machine.memory), base=base)
        vdev.run()
        drv.poll()


def check(machine: Any) -> dict:
    out: dict[str, Any] = {}
    for k, dev in enumerate(block_devices(machine)):
        base, _ = _region(k)
        drv = VirtioBlkDriver.attach(dev, as_guest_memory(machine.memory), base=base)
        reqs = [{"slot": r.slot, "type": r.type, "sector": r.sector, "length": r.length,
                 "state": r.state, "status": r.status, "used_len": r.used_len,
                 "data_sha256": hashlib.sha256(r.data).hexdigest()} for r in drv.results()]
        out[dev.path] = {
            "disk_sha256": file_sha256(dev.vdev.disk.path),
            "requests": reqs,
            "used": drv.used_entries(),
            "interrupts": drv.interrupts,
            "device_status": drv.status,
            "broken": dev.vdev.state.broken,
        }
    return out


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


WORKLOAD = Workload(name="virtio-blk-io", applies=applies, start=start, finish=finish,
                    check=check)
