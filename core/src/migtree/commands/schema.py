"""``migtree schema [TYPE...] [--json]``: the state schema of installed
types, every version each knows (the loadable range and the older layouts in
``HISTORY``), like ``qemu-system-x86_64 -dump-vmstate`` but complete.

The ``--json`` document (docs/wire-format.md, "Schema JSON"; ``migtree
check`` reads it, keep it stable)::

    {"format": "migtree-schema",
     "types": {NAME: {"parent": str|null, "abstract": bool, "version": V,
                      "min_version": M, "plugin": DIST,
                      "versions": {"V": [FIELD, ...], ...}}}}

where each FIELD is what a stream header's schemas hold
(``migtree.visitor.schema_of``).

``--build BUILD.toml`` describes one build as a destination, the way
``migtree serve`` announces it in HELLO: the document gets ``name`` (the
build's), ``objects`` (every path: type, the versions it loads, whether it
has state) and ``filters`` (the declarations of every filter the build
would run: the installed ones and its dynamic ones). Written on the host of
an older build, it is what ``migtree check --from NEW.toml --to OLD.json``
and ``migtree convert IN --target OLD.json`` need to judge a migration
there exactly (docs/cli.md, "Who runs the filters").
"""

from __future__ import annotations

import json
import sys
from typing import Any

HELP = "show the state schema of installed types, every version"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("schema", help=HELP, description=HELP + " (like qemu "
                              "-dump-vmstate, with the history of each type).")
    p.add_argument("types", nargs="*", metavar="TYPE", help="only these types (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--build", metavar="BUILD.toml",
                   help="also describe this build as a destination: its objects and the "
                        "filters it would run (what `serve` announces)")
    p.set_defaults(func=run)


def describe(registry: Any, names: list[str] | None = None) -> dict[str, Any]:
    """The ``--json`` document for ``names`` (default: every type)."""
    from ..errors import UnknownTypeError
    from ..visitor import schema_of

    infos = list(registry.types)
    if names:
        by_name = {t.name: t for t in infos}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise UnknownTypeError(f"no installed plugin registers {', '.join(missing)} "
                                   f"(known: {', '.join(sorted(by_name))})")
        infos = [by_name[n] for n in names]
    types = {}
    for t in infos:
        types[t.name] = {
            "parent": t.parent, "abstract": t.abstract, "version": t.version,
            "min_version": t.min_version, "plugin": t.plugin,
            "versions": {str(v): schema_of(cls, v) for v, cls in t.versions().items()},
        }
    return {"format": "migtree-schema", "types": types}


def describe_build(path: str, registry: Any) -> dict[str, Any]:
    """``name``, ``objects`` and ``filters`` of the build at *path*, as
    ``migtree serve`` announces them (migration.describe_destination)."""
    from ..build import load_build
    from ..migration import describe_destination

    hello = describe_destination(load_build(path, registry))
    return {"name": hello["build"], "objects": hello["destination"]["objects"],
            "filters": hello["filters"]}


def run(args: Any) -> int:
    from ..plugins import get_registry

    registry = get_registry()
    doc = describe(registry, args.types)
    if args.build:
        doc.update(describe_build(args.build, registry))
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_text(doc))
    return 0


def render_text(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, t in doc["types"].items():
        head = f"{name}"
        facts = [f"parent {t['parent']}" if t["parent"] else "root type",
                 f"plugin {t['plugin']}"]
        if t["abstract"]:
            facts.append("abstract")
        lines.append(f"{head}  ({', '.join(facts)})")
        if not t["versions"]:
            lines.append(f"  version {t['version']}: no state")
        loadable = range(t["min_version"], t["version"] + 1)
        for v, fields in sorted(t["versions"].items(), key=lambda kv: -int(kv[0])):
            note = "writes and loads" if int(v) == t["version"] else \
                "loads" if int(v) in loadable else "history: reached only through filters"
            lines.append(f"  version {v} ({note}):")
            if not fields:
                lines.append("    (no fields)")
            _fields(lines, fields, "    ")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def kind_text(d: dict[str, Any]) -> str:
    """``u32``, ``u32[8]``, ``bytes[<=32]``, ``optional struct Sub``..."""
    k = d["kind"]
    n = (f"[{d['length']}]" if "length" in d else f"[<={d['max_length']}]"
         if "max_length" in d else "")
    if k == "array":
        return f"{kind_text(d['element'])}{n or '[]'}"
    if k == "struct":
        return f"struct {d.get('struct', '?')}"
    if k == "optional":
        return f"optional {kind_text(d['inner'])}"
    return f"{k}{n}"


def _fields(lines: list[str], fields: list[dict[str, Any]], ind: str) -> None:
    width = max((len(f["name"]) for f in fields), default=0) + 2
    for f in fields:
        since = f"   since v{f['since']}" if "since" in f else ""
        lines.append(f"{ind}{f['name']:<{width}}{kind_text(f)}{since}")
        inner = f
        while inner.get("kind") in ("array", "optional"):
            inner = inner.get("element") or inner.get("inner")
        if inner.get("kind") == "struct" and inner.get("fields"):
            _fields(lines, inner["fields"], ind + "    ")
