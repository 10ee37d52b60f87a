"""``migtree save BUILD.toml -o STREAM``: compose a build, optionally start
workloads on it, and write its state as a migtree stream (a snapshot: no
destination, no commit). ``-o -`` writes to stdout."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from . import _migargs as A

HELP = "write a build's state to a stream file"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("save", help=HELP, description=HELP + ".")
    A.add_build_arg(p)
    p.add_argument("-o", "--output", required=True, metavar="STREAM",
                   help="the stream file to write ('-' for stdout)")
    A.add_workload_args(p, seed=True)
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.set_defaults(func=run)


def run(args: Any) -> int:
    from .. import migration as M
    from .. import stream
    from ..progress import CountingWriter, Progress

    build = A.load(args)
    workloads = M.select_workloads(build, args.workload)
    M.run_workloads("start", build, workloads, args.seed)
    to_stdout = args.output == "-"
    from ..files import atomic_output

    # a file is written whole or not at all: a failed save leaves the old one
    with (contextlib.nullcontext(sys.stdout.buffer) if to_stdout
          else atomic_output(args.output)) as fp, Progress(f"saving {build.name}") as bar:
        if args.no_progress:
            bar.enabled = False
        out = CountingWriter(fp, bar)
        stream.save(build.root, out, registry=build.registry, build_name=build.name)
    objects = sum(1 for _ in build.root.walk())
    A.note(f"saved {build.name}: {objects} objects, {A.human_bytes(out.count)}"
           + ("" if to_stdout else f" to {args.output}")
           + (f"; workloads started: {', '.join(w.name for w in workloads)}"
              if workloads else ""))
    return 0
