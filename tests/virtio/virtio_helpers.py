"""Shared pieces of the virtio tests: builds, disk images, a migration, and
the source/finish steps of the in-flight migration scenario."""

from __future__ import annotations

import io
import os
import random
import shutil
from typing import Any

import attrs

from migtree import builtin, memory
from migtree.qom import new_root
from migtree.registry import Registry
from migtree_virtio import VirtioBlkPci, VirtioPci
from migtree_virtio import plugin as virtio_plugin
from migtree_virtio.constants import BLK_T_FLUSH, BLK_T_GET_ID, BLK_T_IN, BLK_T_OUT, SECTOR_SIZE
from migtree_virtio.filters import PAIR
from migtree_virtio.testdriver import VirtioBlkDriver

MEM = 4 << 20
DISK = 256 << 10


def make_registry() -> Registry:
    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    reg.add_plugin(virtio_plugin, "migtree-virtio")
    return reg


def make_image(path: str, size: int = DISK, seed: int = 0) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(random.Random(seed).randbytes(size))
    return path


def copy_image(src: str, dst: str) -> str:
    shutil.copyfile(src, dst)
    return dst


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def make_build(kind: str, drive: str, *, mem: int = MEM, dev_id: str = "vblk0",
               **props: Any) -> tuple[Any, Any, Any]:
    """``(root, machine, device)``: ``kind`` is ``"combined"`` (one
    virtio-blk-pci) or ``"split"`` (virtio-pci with a virtio-blk child)."""
    root, machine = new_root()
    if kind == "combined":
        dev = VirtioBlkPci(drive=drive, **props)
    elif kind == "split":
        dev = VirtioPci("virtio-blk", drive=drive, **props)
    else:
        raise ValueError(kind)
    machine.add_device(dev, dev_id)
    memory.install(machine, mem)
    for obj in root.walk():
        obj.realize()
    return root, machine, dev


def close_build(dev: Any, machine: Any) -> None:
    dev.vdev.close()
    machine.memory.close()


def migrate(src_root: Any, dst_root: Any, registry: Registry, *, via: str = "stream") -> Any:
    """Save the source, filter the tree to the destination with the engine,
    load it (all-or-nothing). ``via="stream"`` goes through real CBOR bytes."""
    from migtree import engine, stream, tree

    if via == "stream":
        buf = io.BytesIO()
        stream.save(src_root, buf, registry=registry)
        _header, t = stream.read_tree(io.BytesIO(buf.getvalue()))
    else:
        t = tree.save_tree(src_root)
        _detach_blobs(t)
    engine.apply_filters(t, dst_root, [PAIR])
    if via == "stream":
        return stream.load(t, dst_root, registry=registry)
    return tree.load_tree(t, dst_root)


def _detach_blobs(node: dict[str, Any]) -> None:
    """save_tree leaves live blob sources (the RAM mapping itself) in the tree;
    the input visitor takes only a migtree.blob.Blob (or bytes), so copy them
    into Blobs, chunk by chunk, as a stream reader would hand them over."""
    from migtree.blob import Blob

    for key, value in node.items():
        if type(value) is dict:
            _detach_blobs(value)
        elif hasattr(value, "iter_chunks") and not isinstance(value, Blob):
            node[key] = Blob.from_chunks(value.iter_chunks())


# -- the in-flight scenario -------------------------------------------------------

@attrs.define
class Op:
    type: int
    sector: int = 0
    nbytes: int = 0
    seed: int = 0

    def submit(self, drv: VirtioBlkDriver, *, kick: bool) -> int:
        if self.type == BLK_T_OUT:
            data = random.Random(self.seed).randbytes(self.nbytes)
            return drv.submit(BLK_T_OUT, self.sector, data, kick=kick)
        if self.type == BLK_T_IN:
            return drv.submit(BLK_T_IN, self.sector, self.nbytes, kick=kick)
        return drv.submit(self.type, 0, kick=kick)


@attrs.define
class Plan:
    """What the source does before the migration."""

    ops: list[Op]
    processed: int      # taken and completed, one at a time
    taken: int          # then taken without completing
    completes: list[int]  # then complete inflight[i % len] for each i
    poll: bool          # the guest reaps completions before the migration
    late: list[Op]      # submitted (and kicked) after that: not looked at


def random_ops(rng: random.Random, n: int, sectors: int, max_sectors: int = 16) -> list[Op]:
    ops = []
    for _ in range(n):
        r = rng.random()
        nsec = rng.randint(1, max_sectors)
        sector = rng.randrange(0, sectors - nsec)
        if r < 0.45:
            ops.append(Op(BLK_T_OUT, sector, nsec * SECTOR_SIZE, rng.getrandbits(32)))
        elif r < 0.85:
            ops.append(Op(BLK_T_IN, sector, nsec * SECTOR_SIZE))
        elif r < 0.93:
            ops.append(Op(BLK_T_FLUSH))
        else:
            ops.append(Op(BLK_T_GET_ID))
    return ops


DRIVER = {"queue_size": 256, "slot_data": 16 * SECTOR_SIZE, "segs": 3}


def run_source(dev: Any, mem: Any, plan: Plan, **driver_kw: Any) -> VirtioBlkDriver:
    kw = {**DRIVER, **driver_kw}
    vdev = dev.vdev
    vdev.on_kick = "none"
    drv = VirtioBlkDriver.init(dev, mem, **kw)
    for op in plan.ops:
        op.submit(drv, kick=False)
    drv.kick()
    vdev.process(plan.processed)
    for _ in range(plan.taken):
        vdev.take()
    for i in plan.completes:
        if vdev.state.inflight:
            vdev.complete_one(i % len(vdev.state.inflight))
    if plan.poll:
        drv.poll()
    for op in plan.late:
        op.submit(drv, kick=True)
    return drv


def finish(dev: Any, mem: Any) -> VirtioBlkDriver:
    dev.vdev.on_kick = "process"
    drv = VirtioBlkDriver.attach(dev, mem)
    dev.vdev.run()
    drv.poll()
    return drv


def outcome(drv: VirtioBlkDriver, dev: Any) -> dict[str, Any]:
    """What the guest ended up with, and the disk."""
    return {
        "requests": [attrs.asdict(r) for r in drv.results()],
        "used": drv.used_entries(),
        "interrupts": drv.interrupts,
        "status": drv.status,
        "disk": read_file(dev.vdev.disk.path),
    }


def scratch(dirpath: str, name: str) -> str:
    os.makedirs(dirpath, exist_ok=True)
    return os.path.join(dirpath, name)
