"""``migtree check --from A --to B [--json]``: can what A writes be loaded
by B, through the filters B would run -- decided without a stream and
without running a filter.

A and B are each a build configuration (``.toml``) or a schema dump (JSON,
as ``migtree schema --json`` prints it; shape in docs/filters.md); A may
also be a migtree stream. For each object of A (each type, for a dump
without ``objects``) the engine runs on a skeleton with every filter
replaced by its declaration, so a gap is reported as a real load would
report it: the path, the source ``type@version``, what B wants there and
the nearest reachable ``type@version``. The chain each object would take is
listed too.

The filters are B's: a build's static filters plus the dynamic ones its
objects register; for a dump, the declarations in its ``filters`` list, or
-- when it has none -- the filters installed here.

Exit status 0 only when compatible, 1 when not (or on an error).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HELP = "decide whether what build/dump A writes loads into build/dump B"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("check", help=HELP, description=HELP + ".")
    p.add_argument("--from", dest="source", required=True, metavar="A",
                   help="source: a build .toml, a schema dump .json, or a stream")
    p.add_argument("--to", dest="destination", required=True, metavar="B",
                   help="destination: a build .toml or a schema dump .json")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def _read(path: str, registry: Any, allow_stream: bool) -> tuple[str, Any]:
    """("build", Build) | ("schema", dict) | ("stream", tree)."""
    from ..build import load_build
    from ..errors import MigtreeError

    p = Path(path)
    if p.suffix == ".toml":
        return "build", load_build(p, registry)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise MigtreeError(f"{path}: no such file") from None
    if allow_stream:
        from ..stream import MAGIC_PREFIX, read_tree

        if data[1:1 + len(MAGIC_PREFIX)] == MAGIC_PREFIX:
            return "stream", read_tree(data)[1]
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        what = "a build .toml, a schema dump or a stream" if allow_stream else \
            "a build .toml or a schema dump"
        raise MigtreeError(f"{path}: not {what} (not JSON: {e})") from None
    if not isinstance(doc, dict):
        raise MigtreeError(f"{path}: a schema dump is a JSON object")
    return "schema", doc


def check_paths(source: str, destination: str, registry: Any) -> Any:
    """The :class:`~migtree.engine.CheckReport` for two paths."""
    from ..engine import Destination, check, filters_from_declarations, gather_filters

    _, src = _read(source, registry, allow_stream=True)
    kind, dst = _read(destination, registry, allow_stream=False)
    notes = []
    if kind == "build":
        dest = Destination.of_build(dst)
        filters = gather_filters(dst)
        notes.extend(f"{destination}: {n}" for n in dst.notes)
    else:
        dest = Destination.of_schema(dst, name=Path(destination).name)
        if isinstance(dst.get("filters"), list):
            filters = filters_from_declarations(dst["filters"])
        else:
            filters = gather_filters(registry)
            notes.append(f"{destination} lists no filters: using the {len(filters)} "
                         "installed here")
    report = check(src, dest, filters)
    report.source = source
    report.destination = destination
    report.notes[:0] = notes
    return report


def run(args: Any) -> int:
    from ..plugins import get_registry

    report = check_paths(args.source, args.destination, get_registry())
    if args.json:
        json.dump(report.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(f"check {args.source} -> {args.destination}\n")
        sys.stdout.write(report.format_text() + "\n")
    return 0 if report.compatible else 1
