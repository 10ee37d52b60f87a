"""``migtree relay --listen ADDR --to ADDR --target DEST``: a live migration
relayed between two emulators of different versions, converted in flight.

The core knows nothing of the emulator: the target (:mod:`migtree.targets`,
as for ``convert --target``) names the stream format it loads, and that
format must have the ``relay`` capability (docs/plugin-hooks.md, "Relaying
a live migration"). The format streams the source's bytes to the
destination and hands the state that needs converting to the core's
conversion (:func:`migtree.targets.filter_to_target`, the code ``convert
--target`` runs) when it arrives. The QEMU plugin's is
:mod:`migtree_qemu.relay`.

Exit status 0 when the destination has everything (and, with
``--destination-control``, runs), 1 when the relay refused or a side failed
(the message names section, field and reason; a source given with
``--source-control`` is resumed), 2 for usage errors.
"""

from __future__ import annotations

import json
import sys
from typing import Any

HELP = "relay a live migration from one emulator to another, converting it in flight"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "relay", help=HELP,
        description=HELP + ". The source migrates to --listen; the converted stream goes to "
        "--to (the destination's incoming address) as it arrives.")
    p.add_argument("--listen", required=True, metavar="ADDR",
                   help="where the source migrates to: unix:PATH, tcp:HOST:PORT, or - "
                        "(stdin, for a source's exec: migration)")
    p.add_argument("--to", dest="destination", required=True, metavar="ADDR",
                   help="the destination's incoming address: unix:PATH, tcp:HOST:PORT, "
                        "or - (stdout)")
    p.add_argument("--target", required=True, metavar="DEST",
                   help="what the destination loads, as convert --target takes it "
                        "(QEMU: the destination's -dump-vmstate for its machine type)")
    p.add_argument("--accept", action="append", default=[], metavar="KEY",
                   help="take the target's refusal named KEY as a warning")
    p.add_argument("--source-control", metavar="ADDR",
                   help="the source's control socket (QEMU: its QMP socket), to resume "
                        "its guest if the relay fails after the source stopped it")
    p.add_argument("--destination-control", metavar="ADDR",
                   help="the destination's control socket (QEMU: QMP), to wait until it "
                        "runs and report the added pause")
    p.add_argument("--explain", action="store_true",
                   help="print every filter application of the conversion")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run, relay_parser=p)


def run(args: Any) -> int:
    from ..errors import MigtreeError
    from ..formats import formats
    from ..plugins import get_registry
    from ..targets import filter_to_target, open_target

    registry = get_registry()
    target = open_target(args.target, registry, accept=args.accept)
    fmt = formats(registry).get(target.format)
    relay = getattr(fmt, "relay", None)
    if relay is None:
        args.relay_parser.error(f"{target.name} loads format {target.format!r}, which cannot "
                                "relay a live migration (no relay capability)")
    info = sys.stderr if args.destination == "-" else sys.stdout
    from ..visitor import precompile

    precompile(registry)  # not inside the guest's pause, on first use

    def convert(tree: dict[str, Any]) -> tuple[Any, Any]:
        # the notes (compat properties, the safety analysis's lines) only
        # inform: the relay asks for them once the state is on its way
        report, _ = filter_to_target(tree, target, registry, explain=args.explain, notes=False)
        return report, lambda: list(target.notes(tree))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        result = relay(args.listen, args.destination, target=target, convert=convert,
                       source_control=args.source_control,
                       destination_control=args.destination_control, log=log)
    except MigtreeError as e:
        print(f"migtree relay: failed: {e}", file=sys.stderr)
        recovery = getattr(e, "recovery", None)
        if recovery:
            print(f"migtree relay: {recovery}", file=sys.stderr)
        return 1
    import resource

    # the relay's own peak memory (RAM passes through, it is never buffered)
    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.json:
        out = dict(result.as_dict())
        out["peak_rss_kib"] = peak_rss_kib
        out["applications"] = len(result.report.applications) if result.report else 0
        out["notes"] = list(result.notes)
        print(json.dumps(out, indent=2), file=info)
        return 0
    if result.report is not None:
        if args.explain:
            print(result.report.format_text(), file=info)
        else:
            print(f"{target.name}: {len(result.report.applications)} filter application(s) "
                  f"at {len(result.report.chains())} path(s)", file=info)
    for note in result.notes:
        print(f"note: {note}", file=info)
    for key, value in result.as_dict().items():
        print(f"{key}: {value}", file=info)
    print(f"peak_rss_kib: {peak_rss_kib}", file=info)
    return 0
