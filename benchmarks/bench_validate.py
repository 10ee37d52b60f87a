"""Benchmark (not a test): what validating before filtering costs
(migtree.validate, docs/filters.md 2.8a) next to reading the stream.

A userspace build with N vCPUs (one apic node each) and 16 MiB of guest RAM
is saved to a migtree stream; then, with ``time.perf_counter`` and the
minimum over several repeats, this times :func:`migtree.stream.read_tree` of
those bytes (what every destination pays) and :func:`migtree.validate.validate_tree`
of the tree it returns (the added check), and prints their ratio. Run:
``.venv/bin/python benchmarks/bench_validate.py [--cpus N] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

from migtree import stream
from migtree.build import load_build
from migtree.plugins import get_registry
from migtree.validate import validate_tree


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpus", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    reg = get_registry()
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "b.toml"
        cfg.write_text(f'[machine]\nbackend = "userspace"\ncpus = {args.cpus}\n'
                       'memory = "16M"\n')
        build = load_build(cfg, reg)
        data = stream.save(build.root, registry=reg)
    header, tree = stream.read_tree(data)

    def best(fn) -> float:
        times = []
        for _ in range(args.repeats):
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    t_read = best(lambda: stream.read_tree(data))
    t_check = best(lambda: validate_tree(tree, reg, header=header))
    print(f"stream: {len(data):,} bytes, {args.cpus} vCPUs, 16 MiB RAM")
    print(f"read_tree      {t_read * 1000:9.2f} ms")
    print(f"validate_tree  {t_check * 1000:9.2f} ms")
    print(f"ratio validate / read    {t_check / t_read:9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
