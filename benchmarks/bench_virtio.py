"""Benchmark (not a test): the virtio-blk device and guest-memory migration.

1. **4 KiB reads.** The guest driver (:mod:`migtree_virtio.testdriver`)
   reads a whole disk image 4 KiB at a time, queue depth 32 (the driver
   submits 32 reads, kicks once, the device serves them, the driver reaps
   and releases). Compared in the same run with two plain copies of the same
   bytes: ``shutil.copyfile`` of the image, and a Python loop doing
   ``os.pread`` of 4 KiB blocks into a buffer (the least any userspace
   4 KiB reader pays per request).
2. **Guest memory through the stream.** 256 MiB of guest RAM (every page
   written) saved with :func:`migtree.stream.save` to a file, read back with
   :func:`migtree.stream.read_tree` and loaded with :func:`migtree.stream.load`
   into another machine's RAM. Compared with ``shutil.copyfile`` of the stream
   file (same bytes, plain copy). Peak memory: tracemalloc's peak of each
   phase and the ``ru_maxrss`` growth beyond the mappings themselves, for
   64 MiB and 256 MiB of RAM (bounded means: the same for both).

Target (issue 6): >= 0.5x the plain copy; peak memory independent of the RAM
size. Run: ``python benchmarks/bench_virtio.py [--disk-mib N] [--ram-mib N]``
with migtree and migtree-virtio importable.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc

from migtree import memory, stream
from migtree.qom import new_root
from migtree.registry import Registry

MIB = 1 << 20


def registry() -> Registry:
    from migtree import builtin
    from migtree_virtio import plugin

    reg = Registry()
    reg.add_plugin(builtin, "migtree")
    reg.add_plugin(plugin, "migtree-virtio")
    return reg


def maxrss() -> int:
    """Peak resident set size so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# -- 1. 4 KiB reads -------------------------------------------------------------------

def bench_reads(tmp: str, disk_mib: int, repeats: int) -> dict:
    from migtree_virtio import VirtioPci
    from migtree_virtio.testdriver import VirtioBlkDriver

    img = os.path.join(tmp, "disk.img")
    with open(img, "wb") as f:
        for _ in range(disk_mib):
            f.write(os.urandom(MIB))
    size = disk_mib * MIB
    root, machine = new_root()
    dev = VirtioPci("virtio-blk", drive=img)
    machine.add_device(dev, "vblk0")
    mem = memory.install(machine, 64 * MIB)
    drv = VirtioBlkDriver.init(dev, mem, queue_size=128, segs=1, slot_data=4096)
    depth = min(32, drv.lay.nslots)
    nblocks = size // 4096

    def serve() -> None:
        block = 0
        while block < nblocks:
            slots = [drv.read(8 * (block + k), 4096, kick=False)
                     for k in range(min(depth, nblocks - block))]
            drv.kick()
            done = drv.poll()
            assert len(done) == len(slots)
            for s in done:
                drv.release(s)
            block += len(slots)

    def copyfile() -> None:
        shutil.copyfile(img, img + ".copy")

    buf = bytearray(4096)

    def pread_loop() -> None:
        fd = os.open(img, os.O_RDONLY)
        try:
            for off in range(0, size, 4096):
                buf[:] = os.pread(fd, 4096, off)
        finally:
            os.close(fd)

    serve()  # warm the page cache and the code paths
    t_dev = best(serve, repeats)
    t_copy = best(copyfile, repeats)
    t_pread = best(pread_loop, repeats)
    os.unlink(img + ".copy")
    dev.vdev.close()
    mem.close()
    return {"bytes": size, "requests": nblocks, "device": t_dev, "copyfile": t_copy,
            "pread4k": t_pread}


# -- 2. guest memory through the stream ---------------------------------------------------

def machine_with_ram(ram: int):
    root, machine = new_root()
    mem = memory.install(machine, ram)
    return root, machine, mem


def bench_memory(tmp: str, ram_mib: int, reg: Registry, repeats: int) -> dict:
    ram = ram_mib * MIB
    path = os.path.join(tmp, "ram.mig")
    src_root, _m, src = machine_with_ram(ram)
    pattern = os.urandom(MIB)
    for off in range(0, ram, MIB):  # every page touched, incompressible
        src.write(off, pattern[off // MIB % 251:] + pattern[:off // MIB % 251])

    def save() -> None:
        with open(path, "wb") as f:
            stream.save(src_root, f, registry=reg)

    rss0 = maxrss()
    tracemalloc.start()
    save()
    _c, save_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    save_rss = maxrss() - rss0
    t_save = best(save, repeats)
    stream_bytes = os.path.getsize(path)

    dst_root, _dm, dst = machine_with_ram(ram)

    def load() -> None:
        with open(path, "rb") as f:
            _h, t = stream.read_tree(f)
        stream.load(t, dst_root, registry=reg)

    rss1 = maxrss()
    tracemalloc.start()
    load()
    _c, load_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    load_rss = maxrss() - rss1 - ram  # the destination mapping is now resident
    assert dst.read(0, MIB) == src.read(0, MIB) and dst.read(ram - MIB, MIB) == src.read(ram - MIB,
                                                                                         MIB)
    t_load = best(load, repeats)

    def copyfile() -> None:
        shutil.copyfile(path, path + ".copy")

    def rwloop() -> None:
        with open(path, "rb", buffering=0) as fi, open(path + ".copy", "wb") as fo:
            while chunk := fi.read(MIB):
                fo.write(chunk)

    t_copy = best(copyfile, repeats)
    t_rw = best(rwloop, repeats)
    os.unlink(path + ".copy")
    os.unlink(path)
    src.close()
    dst.close()
    return {"ram": ram, "stream_bytes": stream_bytes, "save": t_save, "load": t_load,
            "copyfile": t_copy, "rwloop": t_rw, "save_peak": save_peak, "load_peak": load_peak,
            "save_rss": save_rss, "load_rss": load_rss}


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / MIB / seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--disk-mib", type=int, default=32)
    ap.add_argument("--ram-mib", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    reg = registry()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        r = bench_reads(tmp, args.disk_mib, args.repeats)
        print(f"4 KiB reads, queue depth 32, {r['bytes'] // MIB} MiB ({r['requests']} requests):")
        dev = mbps(r["bytes"], r["device"])
        for name in ("copyfile", "pread4k"):
            base = mbps(r["bytes"], r[name])
            print(f"  device {dev:8.1f} MB/s   plain {name:9s} {base:8.1f} MB/s   "
                  f"ratio {dev / base:.2f}x")
        print(f"  {r['requests'] / r['device']:.0f} requests/s")
        results = [bench_memory(tmp, mib, reg, args.repeats)
                   for mib in sorted({64, args.ram_mib})]
    for m in results:
        mib = m["ram"] // MIB
        copy = mbps(m["ram"], m["copyfile"])
        rw = mbps(m["ram"], m["rwloop"])
        print(f"guest memory {mib} MiB through the stream ({m['stream_bytes'] / MIB:.1f} MiB "
              f"of stream); plain copies of the stream file: copyfile {copy:.1f} MB/s, "
              f"1 MiB read/write loop {rw:.1f} MB/s")
        for phase in ("save", "load"):
            rate = mbps(m["ram"], m[phase])
            print(f"  {phase} {rate:8.1f} MB/s   ratio {rate / copy:.2f}x copyfile, "
                  f"{rate / rw:.2f}x read/write loop   tracemalloc peak "
                  f"{m[phase + '_peak'] / MIB:.1f} MiB   ru_maxrss growth beyond the mapping "
                  f"{max(m[phase + '_rss'], 0) / MIB:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
