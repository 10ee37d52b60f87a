"""``migtree convert IN -o OUT [--from FORMAT] [--to FORMAT] [--target DEST]``:
rewrite a stream in another format: a foreign one a plugin registered (QEMU's
QEVM) to migtree's CBOR stream and back, or a stream to its own format again;
with ``--target``, filter it towards a destination first.

``--target DEST`` names what the stream must load into (:mod:`migtree.targets`):
a build ``.toml``, a schema dump, or a description a plugin recognises (a
QEMU ``-dump-vmstate``). The installed filters and the target's own drive
every node there (as a migration would, but offline, on the side that has
the filters); if any node cannot get there the command refuses, names the
path and the reason, and writes nothing. Without ``--to``, the output format
is OUT's extension's, else the one the target loads. ``--explain`` prints every filter application
(the same report as ``migtree explain --target``).

The input format is sniffed unless ``--from`` names it. The output format
is ``--to``; without it, the format whose extension OUT has (``.qevm``,
``.mt``/``.migtree``/``.cbor``), else ``migtree`` for a foreign input, else
the format a migtree stream says it was converted from (its header's
``extra.source_format``). The output is written to a temporary file beside
OUT and renamed only when complete, so a failed conversion leaves no
partial stream. ``-`` is stdin / stdout.

A foreign format has no room for the stash (what a filter towards an older
destination dropped, docs/filters.md 2.10): ``convert`` then writes it to a
*stash file*, ``OUT.stash`` unless ``--stash-file`` names another, and the
conversion of what that destination saves back (``--stash-from FILE``) puts
it back on every object whose own state is unchanged (docs/filters.md 2.18,
:mod:`migtree.stashfile`).
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from ..textsafe import safe_block, safe_lines

HELP = "convert a stream between migtree's format and a foreign one (QEMU)"

#: extensions that mean the migtree format
MIGTREE_EXTENSIONS = (".mt", ".mtree", ".migtree", ".cbor")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "convert", help=HELP,
        description=HELP + ". Reads any format `migtree inspect` reads; writes migtree's "
        "format or any registered format that has a writer.")
    p.add_argument("input", metavar="IN", help="the stream to convert ('-' for stdin)")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="where to write ('-' for stdout)")
    p.add_argument("--from", dest="from_format", metavar="FORMAT",
                   help="the input's format (default: recognised from its first bytes)")
    p.add_argument("--to", dest="to_format", metavar="FORMAT",
                   help="the output's format: migtree, or a registered one such as qemu")
    p.add_argument("--target", metavar="DEST",
                   help="filter the stream towards DEST first: a build .toml, a schema dump, "
                        "or a description a plugin recognises (QEMU: a -dump-vmstate file)")
    p.add_argument("--explain", action="store_true",
                   help="with --target: print every filter application")
    p.add_argument("--accept", action="append", default=[], metavar="KEY",
                   help="with --target: take the target's refusal named KEY as a warning "
                        "(QEMU: a compat property TYPE.PROPERTY the safety analysis refuses)")
    p.add_argument("--stash-file", metavar="FILE",
                   help="where to keep the stash when OUT's format has no room for it "
                        "(default: OUT.stash)")
    p.add_argument("--stash-from", metavar="FILE",
                   help="put a stash file's entries back on IN's objects whose state is "
                        "unchanged since it was written, before filtering")
    p.set_defaults(func=run, convert_parser=p)


class UsageProblem(Exception):
    """A format named on the command line that does not exist or cannot be
    written (exit status 2, as argparse's own usage errors)."""


def run(args: Any) -> int:
    from ..formats import formats
    from ..plugins import get_registry
    from ..tree import iter_object_nodes

    registry = get_registry()
    known = formats(registry)
    try:
        if args.from_format is not None and args.from_format not in known:
            raise UsageProblem(f"--from {args.from_format}: no such format (installed: "
                               f"{', '.join(known)})")
        if args.to_format is not None:
            _writable(known, args.to_format, f"--to {args.to_format}")
    except UsageProblem as e:
        args.convert_parser.error(str(e))
    if args.explain and not args.target:
        args.convert_parser.error("--explain goes with --target")
    target = None
    if args.target:
        from ..targets import open_target

        target = open_target(args.target, registry, accept=args.accept)
    elif args.accept:
        args.convert_parser.error("--accept goes with --target")
    stash_doc = None
    if args.stash_from:
        from ..stashfile import read as read_stash_file

        stash_doc = read_stash_file(args.stash_from)  # refused before reading IN
    offsets: dict[str, int] = {}
    src, header, tree = read_input(args.input, args.from_format, registry, known, offsets)
    info = sys.stderr if args.output == "-" else sys.stdout
    if target is not None and src == "migtree":
        from ..validate import validate_tree  # the stream's own layout, before filtering

        validate_tree(tree, registry, header=header, offsets=offsets)
    if stash_doc is not None:
        from ..stashfile import apply as apply_stash_file

        applied = apply_stash_file(tree, stash_doc, known[src])
        for line in applied.lines(args.stash_from):
            print(safe_lines(line), file=info)
    if target is not None:
        filtered = _filter(tree, header, target, registry, args, info)
        if filtered is not None:
            return filtered
    try:
        dst = target_format(args.to_format, args.output, src, header, known,
                            default=target.format if target is not None else None)
    except UsageProblem as e:
        args.convert_parser.error(str(e))
    carries = dst == "migtree" or bool(getattr(known[dst], "carries_stash", False))
    stash_file = _stash_file(args, dst, carries)
    entries: list[Any] = []
    stash_bytes = None
    if not carries:
        from ..stashfile import collect, encode

        entries = collect(tree, known[dst])
        if entries and stash_file is not None:  # refused before anything is written
            stash_bytes = encode(entries, stream_format=dst,
                                 target=getattr(target, "name", None))
    size = write_output(args.output, known[dst], header, tree)
    objects = sum(1 for _ in iter_object_nodes(tree))
    what = f"{args.input}: {src} stream, {objects} objects -> {args.output}: {dst} stream"
    if size is not None:
        what += f", {size:,} bytes"
    print(what, file=info)
    if entries:
        _keep_stash(entries, stash_file, stash_bytes, dst, info)
    return 0


def _stash_file(args: Any, dst: str, carries: bool) -> str | None:
    """Where the stash goes when the output format has no room for it."""
    if args.stash_file is not None:
        if carries:
            args.convert_parser.error(f"--stash-file: a {dst} stream carries the stash itself")
        return args.stash_file
    return None if args.output == "-" or carries else args.output + ".stash"


def _keep_stash(entries: list[dict[str, Any]], path: str | None, data: bytes | None,
                dst: str, info: Any) -> None:
    from ..stashfile import entry_keys, write

    keys = [k for e in entries for k in entry_keys(e["stash"])]
    if path is None:
        print(f"migtree convert: warning: the {dst} stream has no room for the stash "
              f"({safe_lines(', '.join(keys))}); it is not kept (name a file with "
              "--stash-file to keep it)", file=sys.stderr)
        return
    if data is not None:  # encoded (and checked) before OUT was written
        write(path, data)
    print(f"stash: {len(keys)} entr{'y' if len(keys) == 1 else 'ies'} at "
          f"{len(entries)} object(s) kept in {safe_lines(path)} (the {dst} stream has no room "
          f"for them): {safe_lines(', '.join(keys))}; converting what the destination "
          f"saves back with --stash-from {safe_lines(path)} puts them back on the objects "
          "it did not change", file=info)


def _filter(tree: dict[str, Any], header: dict[str, Any], target: Any, registry: Any,
            args: Any, info: Any) -> int | None:
    """Drive the tree to the target; print what was done. An exit status
    when it cannot (nothing written), None to go on and write."""
    from ..errors import FilterError
    from ..targets import filter_to_target

    try:
        report, notes = filter_to_target(tree, target, registry, explain=args.explain)
    except FilterError as e:
        print(f"migtree convert: refused, nothing written: {safe_lines(e)}", file=sys.stderr)
        return 1
    if args.explain:
        print(safe_block(report.format_text()), file=info)
    else:
        print(f"{target.name}: {len(report.applications)} filter application(s) "
              f"at {len(report.chains())} path(s)", file=info)
    for note in notes:
        print(f"note: {safe_lines(note)}", file=info)
    schemas = getattr(target, "schemas", None)
    if schemas is not None and isinstance(header, dict):
        header["schemas"] = schemas(tree)
    return None


def read_input(name: str, from_format: str | None, registry: Any,
               known: dict[str, Any], offsets: dict[str, int] | None = None,
               ) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(format, header, tree)`` of the input: sniffed, or read with the
    format ``--from`` names."""
    from ..errors import MigtreeError, StreamError
    from ..formats import open_stream

    if from_format is None:
        if name == "-":
            return open_stream(sys.stdin.buffer, registry, offsets=offsets)
        return open_stream(name, registry, offsets=offsets)
    fmt = known[from_format]
    fp: IO[bytes] = sys.stdin.buffer if name == "-" else open(name, "rb")
    try:
        try:
            header, tree = fmt.read(fp)
        except MigtreeError:
            raise
        except Exception as e:  # a foreign reader's own exception, named
            raise StreamError(f"{from_format} stream: {e.__class__.__name__}: {e}") from e
    finally:
        if fp is not sys.stdin.buffer:
            fp.close()
    return from_format, header, tree


def target_format(to_format: str | None, output: str, src: str, header: dict[str, Any],
                  known: dict[str, Any], default: str | None = None) -> str:
    """The output format's name (see the module docstring for the rule);
    *default* (the format a ``--target`` loads) comes after OUT's extension."""

    def writable(name: str, why: str) -> str:
        return _writable(known, name, why)

    if to_format is not None:
        return writable(to_format, f"--to {to_format}")
    ext = os.path.splitext(output)[1].lower() if output != "-" else ""
    if ext in MIGTREE_EXTENSIONS:
        return "migtree"
    for name, fmt in known.items():
        if ext and ext in tuple(getattr(fmt, "extensions", ()) or ()):
            return writable(name, f"{output} (extension {ext})")
    if default is not None:
        return writable(default, f"the target's format {default!r}")
    if src != "migtree":
        return "migtree"
    extra = header.get("extra") if isinstance(header, dict) else None
    origin = extra.get("source_format") if isinstance(extra, dict) else None
    if isinstance(origin, str) and origin in known:
        return writable(origin, f"the stream's source format {origin!r}")
    raise UsageProblem("the input is a migtree stream: say which format to write with --to "
                     f"(installed: {', '.join(known)})")


def _writable(known: dict[str, Any], name: str, why: str) -> str:
    fmt = known.get(name)
    if fmt is None:
        raise UsageProblem(f"{why}: no such format (installed: {', '.join(known)})")
    if getattr(fmt, "write", None) is None:
        raise UsageProblem(f"{why}: format {name!r} (plugin {fmt.plugin}) can be read but "
                           "not written")
    return name


class _Counting:
    """A write-only file that counts what goes through it."""

    def __init__(self, fp: IO[bytes]) -> None:
        self.fp = fp
        self.size = 0

    def write(self, data: Any) -> int:
        n = self.fp.write(data)
        self.size += len(data) if n is None else n
        return len(data) if n is None else n

    def flush(self) -> None:
        self.fp.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.size


def write_output(output: str, fmt: Any, header: dict[str, Any],
                 tree: dict[str, Any]) -> int | None:
    """Write with ``fmt``; to a temporary file renamed over OUT when done.
    Returns the size written."""
    if output == "-":
        out = _Counting(sys.stdout.buffer)
        fmt.write(out, header, tree)
        sys.stdout.buffer.flush()
        return out.size
    from ..files import atomic_output

    target = os.path.abspath(output)
    with atomic_output(target) as f:  # private, and the old OUT stays if this fails
        fmt.write(f, header, tree)
    return os.path.getsize(target)
