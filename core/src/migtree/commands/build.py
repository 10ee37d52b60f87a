"""``migtree build show BUILD.toml``: the object tree a build configuration
composes, with QOM paths, types and schema versions; the backend (and the
fallback taken, if any); the filters its objects registered for the
migrations it takes part in."""

from __future__ import annotations

from typing import Any

from . import _migargs as A

HELP = "work with build configurations (show the composed object tree)"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("build", help=HELP, description=HELP + ".")
    sub = p.add_subparsers(dest="build_command", metavar="SUBCOMMAND")
    show = sub.add_parser(
        "show", help="print the object tree a build composes, with QOM paths",
        description="Compose the build (as `serve`/`send` would) and print every object: "
                    "QOM path, type@version, and the properties the configuration gave it.")
    A.add_build_arg(show)
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    show.set_defaults(func=run_show)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(p: Any) -> int:
    p.print_help()
    return 2


def describe(build: Any) -> dict[str, Any]:
    objects = []
    for obj in build.root.walk():
        info = build.registry.types.get(obj.TYPE)
        objects.append({"path": obj.path, "type": obj.TYPE, "version": obj.VERSION,
                        "min_version": obj.MIN_VERSION, "stateful": obj.STATE is not None,
                        "plugin": info.plugin if info else None})
    return {
        "name": build.name, "source": build.source,
        "backend": build.backend.name, "backend_plugin": build.backend.plugin,
        "notes": build.notes, "objects": objects,
        "devices": build.config.get("device", []),
        "dynamic_filters": [{"name": f.name, "match": str(f.match),
                             "produces": str(f.produces), "path": f.path,
                             "plugin": f.plugin} for f in build.dynamic_filters],
    }


def render(d: dict[str, Any]) -> str:
    lines = [f"build {d['name']}" + (f" ({d['source']})" if d["source"] else ""),
             f"backend: {d['backend']} ({d['backend_plugin']})"]
    lines.extend(f"note: {n}" for n in d["notes"])
    width = max(len(o["path"]) for o in d["objects"])
    for o in d["objects"]:
        tv = f"{o['type']}@{o['version']}"
        if o["min_version"] != o["version"]:
            tv += f" (loads {o['min_version']}..{o['version']})"
        lines.append(f"  {o['path']:<{width}}  {tv}" + ("" if o["stateful"] else "  (no state)"))
    if d["dynamic_filters"]:
        lines.append("filters this build's objects registered:")
        for f in d["dynamic_filters"]:
            lines.append(f"  {f['name']}: {f['match']} -> {f['produces']} at {f['path']} "
                         f"[{f['plugin']}]")
    return "\n".join(lines)


def run_show(args: Any) -> int:
    build = A.load(args)
    d = describe(build)
    if args.json:
        A.print_json(d)
    else:
        print(render(d))
    return 0
