"""Benchmark (not a test): decode and convert 128 MiB-RAM streams of QEMU
5.2, 7.2 and 10.0, beside ``cat`` of the same file in the same run.

    PYTHONPATH=plugins/qemu/src:tests/qemu:plugins/qemu/benchmarks \\
        python plugins/qemu/benchmarks/bench_versions.py

For each version a paused ``pc`` QEMU with ``-m 128`` (its newest machine
type) is migrated to a file and every zero page is rewritten as a random
full page (bench_decode.make_stream), so each file carries ~128 MiB of page
data. Then, each in a fresh process (so ``ru_maxrss`` is its own):

* decode: the stream read into migtree's tree through the ``qemu`` format
  (every section decoded, the virtio one by the virtio plugin; RAM kept by
  reference, chunked);
* convert: ``migtree convert --target`` to the next version down (10.0 ->
  7.2 -> 5.2; 5.2 -> 10.0 up), the whole pipeline: read, filter, write the
  QEMU stream to a file.

MiB/s is the stream's size over the wall time; "x cat" is that over
``cat FILE > /dev/null`` of the same file in the same run.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

TARGETS = {"10.0": ("7.2", "pc-i440fx-7.2"), "7.2": ("5.2", "pc-i440fx-5.2"),
           "5.2": ("10.0", "pc-i440fx-10.0")}
NEWEST = {"5.2": "pc-i440fx-5.2", "7.2": "pc-i440fx-7.2", "10.0": "pc-i440fx-10.0"}


def run_mode(mode: str, path: str, dump: str, out: str) -> dict:
    from migtree.formats import open_stream
    from migtree.plugins import get_registry

    registry = get_registry()
    assert "qemu" in registry.formats  # plugins loaded before the clock starts
    tracemalloc.start()
    t0 = time.perf_counter()
    if mode == "decode":
        _, _, tree = open_stream(path, registry)
        info = {"objects": sum(1 for _ in _nodes(tree))}
    else:
        from migtree.targets import filter_to_target, open_target

        target = open_target(dump, registry)
        _, header, tree = open_stream(path, registry)
        report, _ = filter_to_target(tree, target, registry, explain=False)
        with open(out, "wb") as f:
            registry.formats["qemu"].write(f, header, tree)
        info = {"applications": len(report.applications), "written": os.path.getsize(out)}
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    info.update(seconds=dt, py_peak_mib=peak / 2**20,
                maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return info


def _nodes(tree):
    stack = [tree]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(v for v in n.values() if isinstance(v, dict) and "__type__" in v)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--mode":
        print(json.dumps(run_mode(*sys.argv[2:6])))
        return
    from bench_decode import make_stream
    from qemu_streams import StreamConfig, dump_vmstate

    from migtree_qemu import versions

    work = Path(tempfile.gettempdir()) / "migtree-qemu-bench-versions"
    work.mkdir(exist_ok=True)
    print("QEMU " + ", ".join(f"{v}: {versions.find(v).full_version}" for v in versions.VERSIONS))
    for version in versions.VERSIONS:
        cfg = StreamConfig(machine=NEWEST[version], accel="tcg", memory=128, qemu=version)
        path = make_stream(work, cfg)
        size = path.stat().st_size
        t0 = time.perf_counter()
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
        cat = time.perf_counter() - t0
        to, machine = TARGETS[version]
        dump = dump_vmstate(work, machine, to)
        print(f"\nQEMU {version} {NEWEST[version]}: {size / 2**20:.1f} MiB; cat "
              f"{size / 2**20 / cat:8.1f} MiB/s")
        for mode in ("decode", "convert"):
            res = subprocess.run([sys.executable, __file__, "--mode", mode, str(path), str(dump),
                                  str(work / f"out-{version}.qevm")],
                                 check=True, capture_output=True, text=True)
            r = json.loads(res.stdout)
            what = mode if mode == "decode" else f"convert -> {to} {machine}"
            rate = size / 2**20 / r["seconds"]
            print(f"  {what:32s} {rate:8.1f} MiB/s ({rate / (size / 2**20 / cat):.3f} x cat)"
                  f"  {r['seconds']:6.2f} s  peak RSS {r['maxrss_mib']:6.1f} MiB"
                  f"  Python peak {r['py_peak_mib']:6.1f} MiB")


if __name__ == "__main__":
    main()
