"""Arguments and helpers shared by the build and migration commands
(``build``, ``save``, ``restore``, ``serve``, ``send``, ``migrate``).
Not a command itself: the CLI skips modules whose name starts with ``_``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..build import parse_size


def add_build_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("build", metavar="BUILD.toml", help="the build configuration")
    p.add_argument("--create-drives", metavar="SIZE", type=_size, default=None,
                   help="create every disk image the build names that does not exist yet, "
                        "zero-filled, of SIZE (e.g. 8M)")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_workload_args(p: argparse.ArgumentParser, *, seed: bool) -> None:
    p.add_argument("--workload", default="none", metavar="NAMES",
                   help="workloads to run: 'auto' (every installed workload that applies to "
                        "the build), 'none' (default), or comma-separated names; see "
                        "`migtree plugins`")
    if seed:
        p.add_argument("--seed", type=int, default=0,
                       help="seed for the workloads' start (default 0)")


def add_transport_args(p: argparse.ArgumentParser, *, source: bool) -> None:
    g = p.add_argument_group("transport security")
    g.add_argument("--cert", help="this side's TLS certificate (PEM), for tls: addresses")
    g.add_argument("--key", help="this side's TLS private key (PEM)")
    g.add_argument("--ca", help="CA certificate(s) (PEM) that signed the peer's certificate")
    if source:
        g.add_argument("--server-name", help="the name the destination's certificate must "
                                             "carry (default: the host of the address)")
    g.add_argument("--allow-plaintext", action="store_true",
                   help="allow plaintext tcp: on a loopback address (never allowed elsewhere)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="give up when the peer sends nothing for this long (default 120)")


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    p.add_argument("--dump-state", metavar="STREAM",
                   help="at the end, write this build's state to STREAM (a migtree stream), "
                        "whatever the outcome")
    p.add_argument("--no-progress", action="store_true",
                   help="never show a progress bar (it only shows on a terminal anyway)")


def accept_one(args: Any, name: str, peer: str) -> Any:
    """Listen on ``args.listen`` (writing ``args.ready_file`` once
    listening) and accept one connection from the ``peer`` side; the
    channel carries ``refused_peers``."""
    from ..files import write_atomic
    from ..transport import Address, Listener

    listener = Listener(Address.parse(args.listen), tls=tls_config(args),
                        allow_plaintext=args.allow_plaintext)
    try:
        note(f"{name}: listening on {listener.address}")
        if args.ready_file:
            write_atomic(args.ready_file, f"{listener.address}\n".encode())
        chan = listener.accept(timeout=args.timeout)
    finally:
        listener.close()
    chan.refused_peers = listener.refused
    note(f"{name}: {peer} connected from {chan.peer}")
    return chan


def tls_config(args: Any) -> Any:
    from ..transport import TlsConfig

    given = [x for x in (args.cert, args.key, args.ca) if x]
    if not given:
        return None
    if len(given) != 3:
        raise SystemExit("migtree: error: --cert, --key and --ca go together")
    return TlsConfig(args.cert, args.key, args.ca,
                     server_name=getattr(args, "server_name", None))


def load(args: Any) -> Any:
    """The build named by ``args.build``, creating drives first when asked;
    backend fallbacks are said on stderr, in one line each."""
    from ..build import load_build
    from ..migration import create_missing_drives
    from ..plugins import get_registry

    registry = get_registry()
    if getattr(args, "create_drives", None):
        for path in create_missing_drives(args.build, args.create_drives, registry):
            note(f"created {path} ({args.create_drives} bytes, zero-filled)")
    build = load_build(args.build, registry)
    for n in build.notes:
        note(f"{build.name}: {n}")
    return build


def note(message: str) -> None:
    from ..textsafe import safe_lines

    print(f"migtree: {safe_lines(message)}", file=sys.stderr, flush=True)


def dump_state(build: Any, path: str | None) -> None:
    if not path:
        return
    from .. import stream
    from ..files import atomic_output

    with atomic_output(path) as fp:  # private; a failed write leaves the old file
        stream.save(build.root, fp, registry=build.registry, build_name=build.name)


def dump_state_into(report: dict[str, Any], build: Any, path: str | None) -> None:
    """:func:`dump_state`, its failure recorded in the report instead of
    raised (the migration's outcome, not the dump, decides the exit status)."""
    from ..errors import MigtreeError

    try:
        dump_state(build, path)
    except (OSError, MigtreeError) as e:
        report["dump_state_error"] = f"--dump-state {path}: {e}"
        note(f"WARNING: {report['dump_state_error']}")


def print_report(report: dict[str, Any], as_json: bool, render: Any) -> None:
    """The report, as JSON (exact) or as text (terminal-safe); a report that
    cannot be rendered as text is printed as JSON rather than lost."""
    if as_json:
        print_json(report)
        return
    from ..textsafe import safe_lines, safe_tree

    try:
        # every string of the report may come from the peer or a stream;
        # errors keep their line breaks, indented under the report line
        shown = safe_tree({k: v for k, v in report.items() if k != "error"})
        if report.get("error") is not None:
            shown["error"] = safe_lines(report["error"])
        text = render(shown)
    except Exception as e:
        note(f"WARNING: the text report failed ({type(e).__name__}: {e}); JSON follows")
        print_json(report)
        return
    print(text)


def print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=False, default=_default)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _default(o: Any) -> Any:
    if isinstance(o, bytes | bytearray):
        return o.hex()
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    return str(o)


def format_filters(filters: dict[str, Any] | None, indent: str = "  ") -> list[str]:
    """``path: before -> after via f1, f2`` for every path a filter touched."""
    if not filters or not filters.get("applications"):
        return [f"{indent}(none: every object was acceptable as it was)"]
    by_path: dict[str, list[dict[str, Any]]] = {}
    for a in filters["applications"]:
        by_path.setdefault(a["path"], []).append(a)
    lines = []
    for path, apps in by_path.items():
        names = ", ".join(f"{a['filter']}" + (" (dynamic)" if a.get("kind") == "dynamic" else "")
                          for a in apps)
        lines.append(f"{indent}{path}: {apps[0]['before']} -> {apps[-1]['after']} via {names}")
    return lines


def format_stash(load: dict[str, Any] | None, indent: str = "  ") -> list[str]:
    """What the loaded objects keep of the stash the filters left, and so
    what a later save writes back (docs/filters.md 2.17); always a line."""
    kept = (load or {}).get("kept") or {}
    if not kept:
        return [f"{indent}stash: none (nothing the source had is kept beside the state)"]
    lines = [f"{indent}stash kept (a later save writes it back while the device's state "
             "stays as loaded):"]
    for path, stash in kept.items():
        items = [f"{pair}.{name}={_short_value(value)}" for pair, entry in stash.items()
                 for name, value in (entry.items() if isinstance(entry, dict) else [])]
        shown = ", ".join(items) if items else repr(stash)
        lines.append(f"{indent}  {path}: {shown}")
    return lines


def _short_value(value: Any, limit: int = 48) -> str:
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f", {len(value)} bytes" if isinstance(value, bytes | str) else ""
    return f"{text[:limit - 3]}...{size}"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def add_precopy_args(p: Any) -> None:
    """Options of pre-copy (``send`` and ``migrate``; docs/cli.md)."""
    g = p.add_argument_group("pre-copy (guest RAM moves while the source runs)")
    g.add_argument("--stop-and-copy", action="store_true",
                   help="no pre-copy: pause first, then send everything (the old way)")
    g.add_argument("--downtime-limit", type=float, default=300.0, metavar="MS",
                   help="pause once the last dirty pages would take at most this long to "
                        "send at the measured bandwidth (default 300 ms)")
    g.add_argument("--max-bandwidth", metavar="RATE",
                   help="cap pre-copy passes at RATE bytes per second (e.g. 100M; the final "
                        "pass, during the pause, is not capped); default: no cap")
    g.add_argument("--max-passes", type=int, default=30, metavar="N",
                   help="pause after N passes even when the estimate is above the limit "
                        "(the report gives the expected and the actual pause; default 30)")
    g.add_argument("--auto-converge", action="store_true",
                   help="throttle the guest when passes do not converge (only where the "
                        "embedding hands migtree a throttle; the CLI's workloads do not run "
                        "during the passes)")


def precopy_argv(args: Any) -> list[str]:
    """The pre-copy options again, for a child ``migtree send``."""
    out = ["--downtime-limit", str(args.downtime_limit), "--max-passes", str(args.max_passes)]
    if args.stop_and_copy:
        out.append("--stop-and-copy")
    if args.max_bandwidth:
        out += ["--max-bandwidth", args.max_bandwidth]
    if args.auto_converge:
        out.append("--auto-converge")
    return out


def precopy_options(args: Any) -> Any:
    """``PrecopyOptions`` from the command line (None: stop-and-copy)."""
    from ..memory import parse_size
    from ..migration import PrecopyOptions

    if args.stop_and_copy:
        return None
    try:
        cap = parse_size(args.max_bandwidth) if args.max_bandwidth else None
        return PrecopyOptions(downtime_limit=args.downtime_limit / 1000.0, max_bandwidth=cap,
                              max_passes=args.max_passes, auto_converge=args.auto_converge)
    except ValueError as e:
        raise SystemExit(f"migtree: error: {e}") from None


def format_precopy(r: dict[str, Any]) -> list[str]:
    """Report lines for a source's pre-copy (passes, rates, pauses)."""
    pc = r.get("precopy")
    lines = [f"  note: {n}" for n in r.get("mode_notes") or []]
    if not pc:
        if r.get("mode") == "stop-and-copy" and r.get("paused_s") is not None:
            lines.append("stop-and-copy: guest RAM was sent during the pause")
        return lines
    mb = 1e6
    live = [p for p in pc["passes"] if not p["final"]]
    final = [p for p in pc["passes"] if p["final"]]
    bw = pc.get("bandwidth_Bps")
    lines.append(f"pre-copy: {len(live)} pass(es) while the source ran"
                 + (" + the final pass paused" if final else "")
                 + f", {pc['page_bytes_sent'] / mb:.1f} MB of pages for "
                 f"{pc['ram_bytes'] / mb:.1f} MB of RAM"
                 + (f", bandwidth {bw / mb:.0f} MB/s" if bw else "")
                 + ("" if pc["converged"] else
                    f"; did NOT converge within {pc['max_passes']} passes"))
    for p in pc["passes"]:
        rate = p.get("dirty_rate_Bps")
        lines.append(f"  pass {p['pass']}{' (paused)' if p['final'] else ''}: "
                     f"{p['pages']} pages, {p['bytes'] / mb:.2f} MB in "
                     f"{p['seconds'] * 1000:.1f} ms"
                     + (f", guest dirtied {rate / mb:.1f} MB/s" if rate is not None else "")
                     + (f", throttle {p['throttle']:.0%}" if p.get("throttle") else ""))
    exp = pc.get("expected_downtime_s")
    act = pc.get("actual_downtime_s")
    lines.append(f"  pause: expected {exp * 1000:.1f} ms for the last pages" if exp is not None
                 else "  pause: expected (unknown: no bandwidth measured)")
    if act is not None:
        lines[-1] += (f", actual {act * 1000:.1f} ms in all (limit "
                      f"{pc['downtime_limit_s'] * 1000:.0f} ms)")
    return lines
