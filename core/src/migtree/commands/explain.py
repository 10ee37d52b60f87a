"""``migtree explain STREAM --to BUILD.toml [--json]``: a dry run of the
filter pass a migration of STREAM into BUILD would make.

``migtree explain STREAM --target DEST [--json]``: the same for any target
``convert --target`` takes (:mod:`migtree.targets`: a build, a schema dump,
a QEMU ``-dump-vmstate``), on a stream of any format: every application,
then the target's notes (for QEMU: the compat properties that differ when
the machine type is mapped). Exit 0 when the filters get there.

It reads the stream (no device consulted), composes the destination build,
runs the engine with ``explain`` on -- every application with its filter,
plugin, static/dynamic, path, before/after ``type@version``, per-field diff,
what was stashed, restored and defaulted -- and then checks, without
assigning anything, that the result would load: every object's new state
builds under the strict input visitor, and coverage holds both ways.

Exit status 0 when the filters get there and the result would load, 1
otherwise (the report up to the failure is still printed).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ..textsafe import SafeWriter, safe, safe_lines, safe_tree

HELP = "dry-run the filters a migration of STREAM into BUILD would apply"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("explain", help=HELP, description=HELP + ".")
    p.add_argument("stream", metavar="STREAM",
                   help="a migtree stream file (with --target: any stream format)")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--to", metavar="BUILD.toml",
                      help="the destination build configuration")
    dest.add_argument("--target", metavar="DEST",
                      help="what convert --target takes: a build, a schema dump, or a "
                           "description a plugin recognises (a QEMU -dump-vmstate)")
    p.add_argument("--accept", action="append", default=[], metavar="KEY",
                   help="with --target: take the target's refusal named KEY as a warning")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def dry_load(tree: dict[str, Any], root: Any) -> dict[str, list[str]]:
    """What :func:`migtree.tree.load_tree` would say about ``tree``, without
    assigning any state or calling ``post_load`` (each object's
    ``check_load`` is asked, as the load asks it): ``errors``, ``missing``
    (objects with state the tree gives nothing), ``unconsumed`` (nodes no
    object takes), ``stashed`` (nodes carrying a stash), ``loaded``."""
    from ..errors import MigtreeError, StateError
    from ..tree import STASH_KEY, TYPE_KEY, VERSION_KEY, is_object_node, iter_object_nodes
    from ..visitor import node_to_state

    out: dict[str, list[str]] = {"errors": [], "missing": [], "unconsumed": [], "stashed": [],
                                 "loaded": []}

    def join(path: str, name: str) -> str:
        return f"/{name}" if path == "/" else f"{path}/{name}"

    def walk(obj: Any, node: dict[str, Any] | None, path: str) -> None:
        if node is None:
            if obj.STATE is not None:
                out["missing"].append(path)
        else:
            t, v = node.get(TYPE_KEY), node.get(VERSION_KEY)
            if t != obj.TYPE:
                out["errors"].append(f"{path}: the tree holds {t}@{v} but the build has "
                                     f"{obj.TYPE}@{obj.VERSION} here")
            elif type(v) is not int or not obj.MIN_VERSION <= v <= obj.VERSION:
                out["errors"].append(f"{path}: {t} version {v!r} is outside the range this "
                                     f"build loads ({obj.MIN_VERSION}..{obj.VERSION})")
            else:
                if obj.STATE is not None:
                    try:
                        state = node_to_state(obj.STATE, node, v, path)
                        check = getattr(obj, "check_load", None)
                        if check is not None:
                            check(state)  # the device's own refusal, before anything changes
                    except StateError as e:
                        out["errors"].append(str(e))
                    except MigtreeError as e:
                        out["errors"].append(f"{path}: {e}")
                out["loaded"].append(path)
                if STASH_KEY in node:
                    out["stashed"].append(path)
            for key, value in node.items():
                if is_object_node(value) and key not in obj._children:
                    out["unconsumed"].extend(p for p, _ in iter_object_nodes(value,
                                                                              join(path, key)))
        for name, child in obj._children.items():
            sub = node.get(name) if node is not None else None
            walk(child, sub if is_object_node(sub) else None, join(path, name))

    walk(root, tree, "/")
    for key in ("missing", "unconsumed"):
        out[key].sort()
    return out


def explain(stream: Any, build: Any) -> dict[str, Any]:
    """The whole dry run as a JSON-able document (the ``--json`` output)."""
    from ..engine import Destination, apply_filters, gather_filters
    from ..errors import FilterError
    from ..stream import read_tree

    header, tree = read_tree(stream)
    error = None
    try:
        report = apply_filters(tree, Destination.of_build(build), gather_filters(build),
                               explain=True)
    except FilterError as e:
        report, error = e.report, str(e)  # type: ignore[attr-defined]
    load = dry_load(tree, build.root) if error is None else None
    ok = error is None and not (load["errors"] or load["missing"] or load["unconsumed"])
    return {"ok": ok, "stream": str(stream), "producer": (header or {}).get("producer"),
            "destination": build.name, "notes": list(build.notes), "error": error,
            "filters": report.as_dict(), "load": load, "_report": report}


def explain_target(stream: str, target_path: str, registry: Any,
                   accept: list[str] | None = None) -> dict[str, Any]:
    """The dry run towards a target (the ``--json`` output of ``--target``)."""
    from ..errors import FilterError
    from ..formats import open_stream
    from ..targets import filter_to_target, open_target

    target = open_target(target_path, registry, accept=accept or [])
    fmt, header, tree = open_stream(stream, registry)
    error, notes = None, []
    try:
        report, notes = filter_to_target(tree, target, registry, explain=True)
    except FilterError as e:
        report, error = e.report, str(e)  # type: ignore[attr-defined]
    return {"ok": error is None, "stream": str(stream), "format": fmt,
            "destination": target.name, "error": error, "notes": notes,
            "filters": report.as_dict(), "_report": report}


def run_target(args: Any) -> int:
    from ..plugins import get_registry

    doc = explain_target(args.stream, args.target, get_registry(), args.accept)
    report = doc.pop("_report")
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0 if doc["ok"] else 1
    out = SafeWriter(sys.stdout)  # names and reasons come from the stream
    out.write(f"{doc['format']} stream {args.stream} towards {safe(doc['destination'])}\n")
    out.write(report.format_text() + "\n")
    for note in doc["notes"]:
        out.write(f"note: {safe_lines(note)}\n")
    if doc["error"] is not None:
        out.write(f"REFUSED: {safe_lines(doc['error'])}\n")
        return 1
    out.write("converts: yes\n")
    return 0


def run(args: Any) -> int:
    from ..build import load_build
    from ..plugins import get_registry

    if args.target is not None:
        return run_target(args)
    build = load_build(args.to, get_registry())
    doc = explain(args.stream, build)
    report = doc.pop("_report")
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0 if doc["ok"] else 1
    out = SafeWriter(sys.stdout)  # names and reasons come from the stream
    producer = safe_tree(doc["producer"] or {})
    out.write(f"stream {args.stream} (written by {producer.get('name', '?')} "
              f"{producer.get('version', '?')}"
              + (f", build {producer['build']}" if producer.get("build") else "")
              + f") into build {safe(build.name)}\n")
    for note in doc["notes"]:
        out.write(f"note: {safe_lines(note)}\n")
    out.write(report.format_text() + "\n")
    if doc["error"] is not None:
        out.write(f"FILTERS FAIL: {safe_lines(doc['error'])}\n")
        return 1
    load = doc["load"]
    for e in load["errors"]:
        out.write(f"LOAD FAILS: {safe_lines(e)}\n")
    for p in load["missing"]:
        out.write(f"LOAD FAILS: {p}: the build has an object with state here but the tree "
                  "has no node for it\n")
    for p in load["unconsumed"]:
        out.write(f"LOAD FAILS: {p}: the tree has a node here that no object in the build "
                  "consumes\n")
    if load["stashed"]:
        out.write(f"stashes kept (for the way back) at: {', '.join(load['stashed'])}\n")
    out.write("would load: yes\n" if doc["ok"] else "would load: no\n")
    return 0 if doc["ok"] else 1
