"""``migtree send BUILD.toml --to ADDR``: migrate a build to a destination
that ``migtree serve`` runs.

It composes the build, starts the named workloads (I/O left in flight,
interrupts pending), connects, runs the pre-flight check against what the
destination says it has (refusing before pausing anything when it cannot
work), pauses, streams its state, and waits for the destination's
acknowledgement. On any failure it resumes: the workloads finish here, on the
source, with nothing lost. Exit status: 0 committed; 1 refused or failed (the
source resumed); 3 committed but unconfirmed (the source stays stopped and
keeps its state in a stream file, printed).

``--listen ADDR`` turns the connection around (the destination then runs
``migtree serve --connect ADDR``); the protocol is the same whoever listens.
``--filter-on`` says who runs the filters: ``auto`` (default: the
destination's filters when they reach, else the source's own -- how a newer
build migrates to an older one that lacks the filter), ``source`` or
``destination`` (docs/cli.md, "Who runs the filters").

Guest RAM moves by pre-copy unless ``--stop-and-copy``: passes while the
source runs, then a pause for the last dirty pages and the device state
(``--downtime-limit``, ``--max-bandwidth``, ``--max-passes``,
``--auto-converge``; docs/cli.md).
"""

from __future__ import annotations

from typing import Any

from . import _migargs as A

HELP = "migrate a build to a waiting destination (the source side)"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "send", help=HELP, description=HELP + ". ADDR as for `migtree serve`.")
    A.add_build_arg(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="ADDR", help="the destination's address")
    where.add_argument("--listen", metavar="ADDR",
                       help="wait here for the destination to connect (`migtree serve "
                            "--connect ADDR`) instead")
    p.add_argument("--ready-file", metavar="FILE",
                   help="with --listen: write the address listened on to FILE once listening")
    p.add_argument("--filter-on", choices=("auto", "source", "destination"), default="auto",
                   help="who runs the filters: auto (default: the destination's when they "
                        "reach, else this source's own), source, or destination")
    p.add_argument("--keep-dir", metavar="DIR",
                   help="where to keep the state if the commit goes unconfirmed "
                        "(default: the temporary directory)")
    A.add_workload_args(p, seed=True)
    A.add_precopy_args(p)
    A.add_transport_args(p, source=True)
    A.add_output_args(p)
    p.set_defaults(func=run)


def run(args: Any) -> int:
    from .. import migration as M
    from ..transport import connect

    precopy = A.precopy_options(args)
    build = A.load(args)
    workloads = M.select_workloads(build, args.workload)
    M.run_workloads("start", build, workloads, args.seed)
    if args.listen:
        chan = A.accept_one(args, build.name, "destination")
    else:
        chan = connect(args.to, tls=A.tls_config(args), allow_plaintext=args.allow_plaintext,
                       timeout=args.timeout)
    with chan:
        res = M.send(build, chan, timeout=args.timeout, progress=not args.no_progress,
                     keep_dir=args.keep_dir, filter_side=args.filter_on, precopy=precopy)
    report: dict[str, Any] = {"role": "source", "build": build.name,
                              "backend": build.backend.name, "notes": build.notes,
                              "workload_seed": args.seed, **res.as_dict()}
    if not res.committed and workloads:
        # the source runs on: it finishes what it started, nothing lost
        try:
            M.run_workloads("finish", build, workloads)
            report["workloads"] = M.run_workloads("check", build, workloads)
        except M.MigrationError as e:
            report["workload_error"] = str(e)
    # The exit status is decided by the outcome alone, before anything else
    # can fail: after COMMIT the destination may run the VM, so a failed dump
    # or report must never turn "committed" into "failed, the source resumed".
    status = 0 if res.outcome == "committed" else 3 if res.outcome == "unconfirmed" else 1
    A.dump_state_into(report, build, args.dump_state)
    A.print_report(report, args.json, format_report)
    return status


def format_report(r: dict[str, Any]) -> str:
    dst = r.get("destination") or {}
    lines = [f"source {r['build']} ({r['backend']}): {r['outcome']}"
             + (f" -- to {dst.get('build')} ({dst.get('backend')})" if dst else "")]
    if r.get("error"):
        lines.append(f"  {r['error']}")
    if r.get("source_filters"):
        lines.append("filters applied on the source (the destination lacks them):")
        lines.extend(A.format_filters(r["source_filters"]))
    if r.get("loaded"):
        lines.append("filters applied on the destination:")
        lines.extend(A.format_filters(r["loaded"].get("filters")))
    lines.append(f"stream: {A.human_bytes(r.get('stream_bytes'))}, on the wire: "
                 f"{A.human_bytes(r.get('wire_bytes_sent'))} sent, "
                 f"{A.human_bytes(r.get('wire_bytes_received'))} received")
    lines.extend(A.format_precopy(r))
    if r.get("paused_s") is not None:
        lines.append(f"source paused for {r['paused_s'] * 1000:.1f} ms")
    for name, summary in (r.get("workloads") or {}).items():
        lines.append(f"workload {name} (finished on the source): {summary}")
    return "\n".join(lines)
