"""``migtree serve BUILD.toml --listen ADDR``: a destination waiting for an
incoming migration.

It composes the build, takes a snapshot of its state (to put back if the
source never commits), listens, answers the source's connection with what
it has (HELLO: types, objects, filters), receives the stream, filters it,
loads it all-or-nothing, acknowledges, and on COMMIT runs: the named
workloads ``finish`` what the source started. Exit status 0 when the
migration committed, 1 otherwise (the build then holds what it held before).

``--connect ADDR`` turns the connection around: the source listens
(``migtree send --listen ADDR``) and this destination connects; the
protocol is the same whoever listens.
"""

from __future__ import annotations

from typing import Any

from . import _migargs as A

HELP = "wait for an incoming migration into a build (the destination side)"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help=HELP, description=HELP + ". ADDR is unix:PATH (or a bare path), "
        "tls:HOST:PORT (mutual TLS: --cert, --key, --ca; the source must present a "
        "certificate the CA signed), tcp:127.0.0.1:PORT (plaintext, loopback only, with "
        "--allow-plaintext) or file:DIR (a rendezvous directory). Port 0 picks a free port; "
        "the address actually listened on is printed on stderr and written to --ready-file.")
    A.add_build_arg(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", metavar="ADDR", help="where to wait")
    where.add_argument("--connect", metavar="ADDR",
                       help="connect to a source waiting there (`migtree send --listen`) "
                            "instead of listening")
    p.add_argument("--server-name", help="with --connect to a tls: address: the name the "
                                         "source's certificate must carry")
    p.add_argument("--ready-file", metavar="FILE",
                   help="write the address listened on to FILE once listening (for scripts)")
    p.add_argument("--explain", action="store_true",
                   help="record per-field diffs of every filter application in the report")
    A.add_workload_args(p, seed=False)
    A.add_transport_args(p, source=False)
    A.add_output_args(p)
    p.set_defaults(func=run)


def run(args: Any) -> int:
    from .. import migration as M
    build = A.load(args)
    workloads = M.select_workloads(build, args.workload)
    snapshot = M.Snapshot(build)
    if args.connect:
        from ..transport import connect

        chan = connect(args.connect, tls=A.tls_config(args),
                       allow_plaintext=args.allow_plaintext, timeout=args.timeout)
        refused: list[Any] = []
        A.note(f"{build.name}: connected to the source at {chan.peer}")
    else:
        chan = A.accept_one(args, build.name, "source")
        refused = chan.refused_peers  # type: ignore[attr-defined]
    with chan:
        res = M.receive(build, chan, timeout=args.timeout, explain=args.explain,
                        progress=not args.no_progress, snapshot=snapshot)
    snapshot.close()
    report: dict[str, Any] = {"role": "destination", "build": build.name,
                              "backend": build.backend.name, "notes": build.notes,
                              "refused_peers": refused, **res.as_dict()}
    ok = res.committed
    if res.committed and workloads:
        try:
            M.run_workloads("finish", build, workloads)
            report["workloads"] = M.run_workloads("check", build, workloads)
        except M.MigrationError as e:  # the VM runs here now; its workload broke
            report["workload_error"] = str(e)
            ok = False
    A.dump_state_into(report, build, args.dump_state)
    A.print_report(report, args.json, format_report)
    return 0 if ok else 1


def format_report(r: dict[str, Any]) -> str:
    src = r.get("source") or {}
    lines = [f"destination {r['build']} ({r['backend']}): {r['outcome']}"
             + (f" -- from {src.get('build')} ({src.get('backend')})" if src else "")]
    if r.get("error"):
        lines.append(f"  error ({r.get('stage')}): {r['error']}")
    if r.get("filters"):
        lines.append("filters applied:")
        lines.extend(A.format_filters(r["filters"]))
    if r.get("load") is not None:
        lines.extend(A.format_stash(r["load"]))
    lines.append(f"stream: {A.human_bytes(r.get('stream_bytes'))}")
    for name, summary in (r.get("workloads") or {}).items():
        lines.append(f"workload {name}: {summary}")
    if r.get("workload_error"):
        lines.append(f"workload failed: {r['workload_error']}")
    return "\n".join(lines)
