"""``migtree restore BUILD.toml STREAM``: load a stream file into a build --
read the whole stream into a tree (a migtree stream with its checksum
verified, or any format an installed plugin reads), let the filters
drive it to what the build has, and load it all-or-nothing -- then print
what the filters did. With ``--workload`` the workloads finish on the
restored build and their checks are printed."""

from __future__ import annotations

from typing import Any

from . import _migargs as A

HELP = "load a stream file into a build, through the filters"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("restore", help=HELP, description=HELP + ".")
    A.add_build_arg(p)
    p.add_argument("stream", metavar="STREAM", help="a migtree stream (from save or send)")
    p.add_argument("--explain", action="store_true",
                   help="show per-field diffs of every filter application")
    A.add_workload_args(p, seed=False)
    A.add_output_args(p)
    p.set_defaults(func=run)


def run(args: Any) -> int:
    from .. import migration as M
    from .. import stream
    from ..engine import Destination, apply_filters, gather_filters
    from ..errors import MigtreeError
    from ..formats import open_stream
    from ..progress import CountingReader, Progress

    build = A.load(args)
    workloads = M.select_workloads(build, args.workload)
    with open(args.stream, "rb") as fp, Progress(f"reading {args.stream}") as bar:
        if args.no_progress:
            bar.enabled = False
        offsets: dict[str, int] = {}
        fmt, header, tree = open_stream(CountingReader(fp, bar), build.registry,
                                        offsets=offsets)
    if fmt == "migtree":  # the stream's own layout, before any filter (migtree.validate)
        from ..validate import validate_tree

        validate_tree(tree, build.registry, header=header, offsets=offsets)
    freport = apply_filters(tree, Destination.of_build(build), gather_filters(build),
                            explain=args.explain)
    try:
        lreport = stream.load(tree, build.root, registry=build.registry)
    except MigtreeError as e:  # the destination's check, after the filters
        from ..validate import with_offsets

        raise with_offsets(e, offsets) from e
    report: dict[str, Any] = {"build": build.name, "backend": build.backend.name,
                              "stream": args.stream, "format": fmt,
                              "producer": header.get("producer"),
                              "filters": freport.as_dict(), "load": lreport.as_dict()}
    if workloads:
        M.run_workloads("finish", build, workloads)
        report["workloads"] = M.run_workloads("check", build, workloads)
    A.dump_state(build, args.dump_state)
    if args.json:
        A.print_json(report)
        return 0
    producer = header.get("producer") or {}
    from ..textsafe import safe, safe_block

    # the producer's names come from the stream: escaped (migtree.textsafe)
    print(f"restored {args.stream} ({fmt} stream written by "
          f"{safe(producer.get('build', '?'))}, {safe(producer.get('name', '?'))} "
          f"{safe(producer.get('version', '?'))}) into {build.name} ({build.backend.name})")
    if args.explain:
        print(safe_block(freport.format_text()))
    else:
        print("filters applied:")
        print(safe_block("\n".join(A.format_filters(report["filters"]))))
    print(f"loaded {len(lreport.loaded)} objects")
    print("\n".join(A.format_stash(report["load"], indent="")))
    for name, summary in (report.get("workloads") or {}).items():
        print(f"workload {name}: {summary}")
    return 0
