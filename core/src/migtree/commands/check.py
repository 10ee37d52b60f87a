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

The verdict is exactly what ``send``/``migrate``/``restore`` then do, by
the rule of docs/cli.md ("Who runs the filters"): B's filters (a build's
static filters plus the dynamic ones its objects register; for a dump, the
declarations in its ``filters`` list, or -- when it has none -- the filters
installed here) when they bring A there; else, when A is a build or a dump,
A's own filters (a build's: the filters installed here, which ``send``
runs on the source; a dump's: its ``filters`` list), since the source then
filters before sending. A stream has no side that could filter it but B's
(``restore``); ``convert --target`` filters it offline with the filters
installed here. The report says which side's filters the verdict is for.

A and B may also be *descriptions* another emulator writes of what it
accepts (QEMU's ``-dump-vmstate``): when a file is not a build, a schema
dump or a stream, every registered stream format that has
``read_description`` and ``check`` (``migtree.formats.StreamFormat``) is
asked, in name order, whether it is one of its descriptions. Two
descriptions of one format are compared by that format's ``check``, with
the filters installed here; the core knows nothing of the format.

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
                   help="source: a build .toml, a schema dump .json, a stream, or a "
                        "description a stream format reads (QEMU's -dump-vmstate)")
    p.add_argument("--to", dest="destination", required=True, metavar="B",
                   help="destination: a build .toml, a schema dump .json, or a description "
                        "of the same format as A")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


class Description:
    """A file a registered stream format recognised as one of its
    descriptions (``StreamFormat.read_description``)."""

    def __init__(self, fmt: Any, name: str, value: Any) -> None:
        self.format = fmt
        self.name = name
        self.value = value


def _description(path: str, data: bytes, registry: Any) -> Description | None:
    """Ask every registered format with ``read_description`` and ``check``,
    in name order, whether *data* is one of its descriptions."""
    from ..errors import MigtreeError, PluginError
    from ..formats import formats

    for name, fmt in formats(registry).items():
        reader = getattr(fmt, "read_description", None)
        if not callable(reader) or not callable(getattr(fmt, "check", None)):
            continue
        try:
            value = reader(data)
        except MigtreeError as e:
            raise MigtreeError(f"{path}: {name} description: {e}") from None
        except Exception as e:
            raise PluginError(f"stream format {name!r} (plugin {fmt.plugin}): "
                              f"read_description failed on {path}: "
                              f"{e.__class__.__name__}: {e}") from e
        if value is not None:
            return Description(fmt, name, value)
    return None


def _read(path: str, registry: Any, allow_stream: bool) -> tuple[str, Any]:
    """("build", Build) | ("schema", dict) | ("stream", tree) |
    ("description", :class:`Description`)."""
    from ..build import load_build
    from ..engine import SCHEMA_FORMAT
    from ..errors import MigtreeError

    p = Path(path)
    if p.suffix == ".toml":
        return "build", load_build(p, registry)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise MigtreeError(f"{path}: no such file") from None
    if allow_stream:
        from ..formats import formats, open_stream
        from ..stream import MAGIC_PREFIX, read_tree

        if data[1:1 + len(MAGIC_PREFIX)] == MAGIC_PREFIX:
            return "stream", read_tree(data)[1]
        for fmt in formats(registry).values():  # a foreign stream (QEMU's)
            if fmt.name != "migtree" and fmt.sniff(data[:4096]):
                return "stream", open_stream(p, registry)[2]
    try:
        doc = json.loads(data)
    except RecursionError:
        raise MigtreeError(f"{path}: JSON nested too deeply to be a description") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        desc = _description(path, data, registry)
        if desc is not None:
            return "description", desc
        what = "a build .toml, a schema dump or a stream" if allow_stream else \
            "a build .toml or a schema dump"
        raise MigtreeError(f"{path}: not {what} (not JSON: {e})") from None
    if isinstance(doc, dict) and "types" not in doc and doc.get("format") != SCHEMA_FORMAT:
        desc = _description(path, data, registry)
        if desc is not None:
            return "description", desc
    if not isinstance(doc, dict):
        raise MigtreeError(f"{path}: a schema dump is a JSON object")
    return "schema", doc


class DescriptionCheck:
    """A format's ``check`` report on two descriptions, with what the core
    adds: which format and plugin judged, and with how many filters."""

    def __init__(self, report: Any, fmt: Description, filters: int) -> None:
        self.report = report
        self.format = fmt
        self.notes = [f"compared by stream format {fmt.name!r} (plugin "
                      f"{fmt.format.plugin}) with the {filters} filters installed here"]

    @property
    def compatible(self) -> bool:
        return bool(self.report.compatible)

    def as_dict(self) -> dict[str, Any]:
        return {**self.report.as_dict(),
                "checked_by": {"format": self.format.name, "plugin": self.format.format.plugin,
                               "notes": list(self.notes)}}

    def format_text(self) -> str:
        return self.report.format_text() + "".join(f"\nnote {n}" for n in self.notes)


class StreamTargetCheck:
    """A stream against a description a format can also convert to (a QEMU
    ``-dump-vmstate``): the verdict ``convert --target`` would reach -- the
    same filter pass, on the stream's own state, nothing written."""

    def __init__(self, source: str, tree: dict[str, Any], destination: str,
                 registry: Any) -> None:
        from ..errors import FilterError
        from ..targets import filter_to_target, open_target

        self.source, self.destination = source, destination
        target = open_target(destination, registry)
        self.target = target.name
        self.error: str | None = None
        self.notes: list[str] = []
        try:
            self.report, self.notes = filter_to_target(tree, target, registry, explain=False)
        except FilterError as e:
            self.report, self.error = e.report, str(e)  # type: ignore[attr-defined]

    @property
    def compatible(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "destination": self.destination, "target": self.target,
                "compatible": self.compatible, "refused": self.error,
                "chains": self.report.chains(), "notes": list(self.notes)}

    def format_text(self) -> str:
        lines = [f"{self.source} -> {self.target}"]
        lines += [f"  {path}: {' -> '.join(chain)}" for path, chain in self.report.chains().items()]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"REFUSED: {self.error}" if self.error else "compatible: yes (convert "
                     "--target writes what this destination loads)")
        return "\n".join(lines)


_KINDS = {"build": "a build", "schema": "a schema dump", "stream": "a stream"}


def _check_descriptions(source: tuple[str, str, Any], destination: tuple[str, str, Any],
                        registry: Any) -> DescriptionCheck:
    """Two ``(path, kind, value)``, at least one a description."""
    from ..engine import gather_filters
    from ..errors import MigtreeError, PluginError

    (spath, skind, src), (dpath, dkind, dst) = source, destination
    if skind != dkind:
        (p, d), (q, k) = (((spath, src), (dpath, dkind)) if skind == "description"
                          else ((dpath, dst), (spath, skind)))
        raise MigtreeError(f"{p} is a {d.name} description and {q} is {_KINDS[k]}: compare "
                           "a description with a description of the same format")
    if src.name != dst.name:
        raise MigtreeError(f"{spath} is a {src.name} description and {dpath} a "
                           f"{dst.name} one: they cannot be compared")
    filters = gather_filters(registry)
    try:
        report = src.format.check(src.value, dst.value, filters)
    except MigtreeError:
        raise
    except Exception as e:
        raise PluginError(f"stream format {src.name!r} (plugin {src.format.plugin}): check "
                          f"failed: {e.__class__.__name__}: {e}") from e
    return DescriptionCheck(report, src, len(filters))


def check_paths(source: str, destination: str, registry: Any) -> Any:
    """The :class:`~migtree.engine.CheckReport` for two paths (a
    :class:`DescriptionCheck` for two descriptions)."""
    from ..engine import Destination, check, filters_from_declarations, gather_filters

    src_kind, src = _read(source, registry, allow_stream=True)
    kind, dst = _read(destination, registry, allow_stream=False)
    if src_kind == "stream" and kind == "description":
        return StreamTargetCheck(source, src, destination, registry)
    if "description" in (src_kind, kind):
        return _check_descriptions((source, src_kind, src), (destination, kind, dst), registry)
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
    if src_kind == "stream":
        report = check(src, dest, filters)
    else:
        from ..migration import plan_filters

        if src_kind == "build":
            own = gather_filters(registry)
        elif isinstance(src.get("filters"), list):
            own = filters_from_declarations(src["filters"])
        else:
            own = gather_filters(registry)
        report = plan_filters(src, dest, filters, own,
                              own_registry=registry if src_kind == "build" else None).report
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
        from ..textsafe import safe_block

        # the report names what the two descriptions (or a stream) chose
        sys.stdout.write(f"check {args.source} -> {args.destination}\n")
        sys.stdout.write(safe_block(report.format_text()) + "\n")
    return 0 if report.compatible else 1
