"""``migtree plugins [--json]``: every installed plugin distribution, what
it registered, and what went wrong.

Exit status 0 when every plugin loaded, 1 when one failed to load (it is
still listed, with its error), so CI can run ``migtree plugins`` as a smoke
test of an installation.
"""

from __future__ import annotations

import json
import sys
from typing import Any

HELP = "list installed plugins, what each registered, and load errors"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plugins", help=HELP, description=HELP + ". MIGTREE_LOAD_PLUGINS and "
        "MIGTREE_DISABLE_PLUGINS (comma-separated distribution names) restrict what loads.")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def describe(registry: Any) -> list[dict[str, Any]]:
    """The ``--json`` document: one object per distribution migtree tried to
    load, in load order; ``error`` is ``null`` for those that loaded.
    Distributions skipped on purpose (allow/deny lists) are not in it: they
    are noted on stderr, and in the text listing."""
    from ..plugins import registered_by

    plugins = []
    for rec in registry.plugins.values():
        got = registered_by(registry, rec.name) if rec.error is None else {}
        plugins.append({
            "name": rec.name,
            "version": rec.version,
            "entry_points": dict(rec.entry_points),
            "hooks": list(rec.hooks),
            "types": [_type(t) for t in got.get("types", [])],
            "filters": [_filter(f) for f in got.get("filters", [])],
            "backends": [_backend(b) for b in got.get("backends", [])],
            "formats": [f.name for f in got.get("formats", [])],
            "decoders": [f"{d.format}:{d.key}" for d in got.get("decoders", [])],
            "workloads": [w.name for w in got.get("workloads", [])],
            "error": rec.error,
        })
    return plugins


def _type(t: Any) -> dict[str, Any]:
    return {"name": t.name, "version": t.version, "min_version": t.min_version,
            "versions": sorted(t.versions()) or [t.version], "parent": t.parent,
            "abstract": t.abstract}


def _filter(f: Any) -> dict[str, Any]:
    return {"name": f.name, "match": str(f.match), "produces": str(f.produces),
            "creates": {k: str(v) for k, v in f.creates.items()},
            "consumes": {k: str(v) for k, v in f.consumes.items()},
            "path": f.path, "priority": f.priority, "pair": f.pair,
            "description": f.description}


def _backend(b: Any) -> dict[str, Any]:
    try:
        ok, reason = b.available()
    except Exception as e:  # a listing never fails because one backend's probe did
        ok, reason = False, f"available() raised {e.__class__.__name__}: {e}"
    return {"name": b.name, "description": getattr(b, "description", ""),
            "available": bool(ok), "reason": reason or ""}


def render_text(plugins: list[dict[str, Any]], registry: Any) -> str:
    lines: list[str] = []
    for p in plugins:
        head = f"{p['name']} {p['version'] or '(in-process)'}"
        lines.append(head + ("  [FAILED]" if p["error"] else ""))
        if p["entry_points"]:
            eps = ", ".join(f"{k} = {v}" for k, v in p["entry_points"].items())
            lines.append(f"  entry points: {eps}")
        if p["error"]:
            lines.append(f"  error: {p['error']}")
            continue
        if p["hooks"]:
            lines.append(f"  hooks: {', '.join(p['hooks'])}")
        if p["types"]:
            lines.append("  types: " + ", ".join(
                f"{t['name']}@{','.join(map(str, t['versions']))}"
                + (" (abstract)" if t["abstract"] else "") for t in p["types"]))
        for f in p["filters"]:
            extra = f", pair {f['pair']}" if f["pair"] else ""
            lines.append(f"  filter {f['name']}: {f['match']} -> {f['produces']}{extra}")
        for b in p["backends"]:
            state = "available" if b["available"] else f"unavailable: {b['reason']}"
            lines.append(f"  backend {b['name']}: {b['description']} ({state})")
        for key in ("formats", "decoders", "workloads"):
            if p[key]:
                lines.append(f"  {key}: {', '.join(p[key])}")
    lines.extend(_skipped(registry))
    return "\n".join(lines)


def _skipped(registry: Any) -> list[str]:
    return [f"skipped {name}: {why}" for name, why in sorted(registry.skipped.items())]


def run(args: Any) -> int:
    from ..plugins import get_registry

    registry = get_registry()
    plugins = describe(registry)
    if args.json:
        json.dump(plugins, sys.stdout, indent=2)
        sys.stdout.write("\n")
        for line in _skipped(registry):
            print(f"migtree: {line}", file=sys.stderr)
    else:
        print(render_text(plugins, registry))
    return 1 if any(p["error"] for p in plugins) else 0
