"""Benchmark (not a test): decode a QEMU stream with 128 MiB of guest RAM.

    PYTHONPATH=plugins/qemu/src:tests/qemu python plugins/qemu/benchmarks/bench_decode.py [STREAM]

Without STREAM it makes one: a paused ``pc`` QEMU with ``-m 128`` is
migrated to a file, then every zero page of its RAM is rewritten by the
codec as a full page of random bytes (a stream QEMU loads like any other),
so the file carries ~128 MiB of page data.  Each mode runs in a fresh
process, so its peak RSS (``ru_maxrss``) is its own; ``tracemalloc`` gives the
peak of Python allocations.  The stream is mmap'd: walking the RAM records
touches every page of the file (a page header sits in each 4 KiB), so the
file-backed part of RSS grows to the file's size even with RAM skipped;
that is page cache, not memory the decoder allocated (see "anon").
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def make_stream(workdir: Path, cfg=None) -> Path:
    """A stream of *cfg* (default: QEMU 7.2, pc, 128 MiB) whose zero pages
    are rewritten as random full pages."""
    from qemu_streams import StreamConfig
    from qemu_streams import make_stream as make

    from migtree_qemu import qevm

    cfg = cfg or StreamConfig(machine="pc", accel="tcg", memory=128)
    src = make(cfg, workdir)
    out = workdir / ("bench-128m-full.qevm" if cfg.qemu is None
                     else f"bench-{cfg.name}-full.qevm")
    if out.exists():
        return out
    rnd = os.urandom(1 << 20)
    with qevm.load(src, ram="copy") as s:
        n = 0
        for sec in s.sections:
            body = sec.body
            if not isinstance(body, qevm.RamSection):
                continue
            for r in body.records:
                if r.flags & ~qevm.RAM_CONTINUE == qevm.RAM_ZERO:
                    r.flags = (r.flags & qevm.RAM_CONTINUE) | qevm.RAM_PAGE
                    off = (n * 4096) % (len(rnd) - 4096)
                    r.data = rnd[off : off + 4096]
                    n += 1
        with open(out, "wb") as f:
            qevm.dump(s, f)
    return out


def run_mode(mode: str, path: str) -> dict:
    from migtree_qemu import qevm

    tracemalloc.start()
    t0 = time.perf_counter()
    info: dict = {}
    if mode == "skip":
        s = qevm.load(path, ram="skip")
        info["sections"] = len(s.items)
    elif mode == "reference":
        with qevm.load(path) as s:
            info["pages"] = sum(1 for _ in s.ram_records())
    elif mode == "read":
        h = hashlib.sha1()
        qevm.load(path, ram=lambda block, addr, data: h.update(data)
                  if not isinstance(data, int) else None)
        info["sha1"] = h.hexdigest()[:12]
    elif mode == "roundtrip":
        with qevm.load(path) as s, open(os.devnull, "wb") as null:
            info["written"] = qevm.dump(s, null)
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    info.update(seconds=dt, py_peak_mib=peak / 2**20,
                maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    for line in status.splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            info[line.split(":")[0]] = int(line.split()[1]) / 1024
    return info


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--mode":
        print(json.dumps(run_mode(sys.argv[2], sys.argv[3])))
        return
    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
    else:
        path = make_stream(Path(tempfile.gettempdir()) / "migtree-qemu-bench")
    size = path.stat().st_size
    print(f"stream: {path} ({size / 2**20:.1f} MiB)")
    t0 = time.perf_counter()
    subprocess.run(f"cat '{path}' > /dev/null", shell=True, check=True)
    dt = time.perf_counter() - t0
    print(f"{'cat > /dev/null':28s} {size / 2**20 / dt:9.1f} MiB/s  {dt:7.3f} s")
    for mode, label in [("skip", "decode, RAM skipped"),
                        ("reference", "decode, RAM by reference"),
                        ("read", "decode, every page read"),
                        ("roundtrip", "decode + re-encode")]:
        out = subprocess.run([sys.executable, __file__, "--mode", mode, str(path)],
                             check=True, capture_output=True, text=True)
        r = json.loads(out.stdout)
        print(f"{label:28s} {size / 2**20 / r['seconds']:9.1f} MiB/s  {r['seconds']:7.3f} s"
              f"  peak RSS {r['maxrss_mib']:6.1f} MiB (now anon {r.get('RssAnon', 0):5.1f},"
              f" file-backed {r.get('RssFile', 0):6.1f})"
              f"  Python peak {r['py_peak_mib']:5.1f} MiB")


if __name__ == "__main__":
    main()
