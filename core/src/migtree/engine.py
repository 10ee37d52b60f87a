"""The filter engine: drives every node of a state tree to what the
destination build loads, by the shortest chain of declared filters.

Semantics (docs/filters.md is the long form, and each point has a test):

* **Target-directed.** A node is *acceptable* when its ``type@version`` is
  what the destination has at that path (type equal, version in the
  object's loadable range) or, where the destination has no object at that
  path, when the destination registers its type with the version in range.
  Acceptable nodes are never rewritten. Any other node is driven to an
  acceptable ``type@version`` by the shortest chain of filters, found by a
  breadth-first search over the ``type@version`` graph the declarations
  (``match`` -> ``produces``) span. Among chains of equal length the engine
  takes the first in the order of the filters' ``(-priority, name)`` keys,
  step by step -- never registration order.
* **Order.** Post-order: a node's children (in the node's key order) before
  the node itself. Children that a filter on the node's chain ``consumes``
  are driven to the declared range instead of to the destination. Then the
  node's chain runs one application at a time; after each, the node is
  re-evaluated (so ``v1 -> v2 -> v3`` goes step by step), and the child
  objects the filter created or replaced are processed (recursively) before
  the node is looked at again. Before a filter runs, its ``consumes``
  children are driven to the declared range.
* **Declarations are checked.** After each application: the node is
  ``produces``; each ``creates`` child exists with that ``type@version``;
  each ``consumes`` child is gone; no other child object appeared,
  disappeared or changed type. Otherwise ``filter X declared Y but
  produced Z``.
* **Bound.** At most ``max_applications`` (32) per node.
* **Errors.** :class:`~migtree.errors.FilterError` naming the path, the
  filter, its plugin, and the cause (chained). Only the in-memory tree is
  touched, never a build's objects.

Dispatch costs a dict lookup per acceptable node: filters are indexed by the
type they match once, and chains are cached per ``(type@version, target)``.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from .errors import FilterError, MigtreeError
from .filters import Filter, FilterContext, FilterPair, TypeRange, TypeVersion

TYPE_KEY = "__type__"
VERSION_KEY = "__version__"
STASH_KEY = "__stash__"
MAX_APPLICATIONS = 32
SCHEMA_FORMAT = "migtree-schema"
_EMPTY: dict[str, Any] = {}


class SchemaDumpError(MigtreeError):
    """A schema dump (``migtree schema --json``) does not have the documented shape."""


# -- the destination -----------------------------------------------------------


@attrs.define
class Slot:
    """What the destination has at one path: a type, the versions it loads,
    whether it has state, and the slots of its children."""

    type: str
    lo: int
    hi: int
    stateful: bool = True
    children: dict[str, Slot] = attrs.Factory(dict)

    def accepts(self, t: Any, v: Any) -> bool:
        return t == self.type and type(v) is int and self.lo <= v <= self.hi

    def __str__(self) -> str:
        return _range_str(self.type, self.lo, self.hi)


def _range_str(t: str, lo: int, hi: int) -> str:
    return f"{t}@{lo}" if lo == hi else f"{t}@{lo}..{hi}"


def _join(path: str, name: str) -> str:
    return f"/{name}" if path == "/" else f"{path}/{name}"


def _path_of(parts: tuple[str, ...]) -> str:
    return "/" + "/".join(parts)


@attrs.frozen
class Misfit:
    """Why a destination cannot take a node although its ``type@version``
    is one it loads: a part (``key``, dotted) must be ``absent`` (the
    destination does not know it), can be ``present`` again (the node's
    stash holds it and the destination knows it: optional), or is
    ``required`` (the destination needs it and the node lacks it)."""

    key: str
    want: str  # "absent" | "present" | "required"
    reason: str


@attrs.define
class Destination:
    """Where a tree is going.

    :ivar types: every type the destination registers -> ``(min_version,
        version)``, the versions its input visitor loads.
    :ivar root: the slot of ``/`` when the destination's composition is
        known (a build, or a schema dump with ``objects``), else ``None``:
        then every node is judged by ``types`` alone.
    :ivar shape: optional ``shape(path, node) -> [Misfit, ...]``: what the
        destination cannot take in a node whose ``type@version`` it loads
        (a QEMU target's unknown subsections); filters that keep the
        ``type@version`` and declare the misfit's key in ``drops`` /
        ``restores`` fix them (docs/filters.md 2.15).
    """

    types: dict[str, tuple[int, int]]
    root: Slot | None = None
    name: str = "destination"
    shape: Callable[[str, dict[str, Any]], list[Misfit]] | None = None

    @classmethod
    def of_build(cls, root: Any, registry: Any = None) -> Destination:
        """The destination a build describes: ``root`` is a QOM root (or a
        :class:`migtree.build.Build`, which brings its registry)."""
        name = "build"
        if hasattr(root, "root") and hasattr(root, "registry"):
            registry = registry if registry is not None else root.registry
            name = getattr(root, "name", None) or name
            root = root.root
        if registry is None:
            from .plugins import get_registry

            registry = get_registry()

        from .pins import wire_range

        def slot(obj: Any) -> Slot:
            lo, hi = wire_range(obj)  # a pinned object loads its pinned version only
            return Slot(obj.TYPE, lo, hi, obj.STATE is not None,
                        {n: slot(c) for n, c in obj._children.items()})

        types = {info.name: (info.min_version, info.version) for info in registry.types}
        top = slot(root)
        for s in _iter_slots(top):
            types.setdefault(s.type, (s.lo, s.hi))
        return cls(types=types, root=top, name=name)

    @classmethod
    def of_schema(cls, dump: Mapping[str, Any], name: str = "schema") -> Destination:
        """The destination a schema dump describes (shape in docs/filters.md):
        ``{"types": {NAME: {"version": V, "min_version": M, ...}}, "objects":
        {PATH: {"type": T, "version": V, "min_version": M, "stateful": B}}}``
        (``objects`` optional)."""
        types = _schema_types(dump)
        objects = _schema_objects(dump)
        root = None
        if objects is not None:
            root = _slots_from_objects(objects)
        return cls(types={t: (lo, hi) for t, (lo, hi, _) in types.items()}, root=root,
                   name=str(dump.get("name") or name))

    @classmethod
    def of(cls, what: Any, registry: Any = None) -> Destination:
        """A :class:`Destination` from a destination, a build, a QOM root or a
        schema dump."""
        if isinstance(what, Destination):
            return what
        if isinstance(what, Mapping):
            return cls.of_schema(what)
        return cls.of_build(what, registry)

    def slot(self, path: str) -> Slot | None:
        s = self.root
        if s is None:
            return None
        for part in [p for p in path.split("/") if p]:
            s = s.children.get(part)
            if s is None:
                return None
        return s

    def as_schema(self) -> dict[str, Any]:
        """This destination in the schema-dump shape (without field lists)."""
        out: dict[str, Any] = {
            "format": SCHEMA_FORMAT, "name": self.name,
            "types": {t: {"version": hi, "min_version": lo}
                      for t, (lo, hi) in sorted(self.types.items())}}
        if self.root is not None:
            objs: dict[str, Any] = {}

            def walk(s: Slot, path: str) -> None:
                objs[path] = {"type": s.type, "version": s.hi, "min_version": s.lo,
                              "stateful": s.stateful}
                for n, c in s.children.items():
                    walk(c, _join(path, n))

            walk(self.root, "/")
            out["objects"] = objs
        return out


def _iter_slots(s: Slot):
    yield s
    for c in s.children.values():
        yield from _iter_slots(c)


def _need_int(v: Any, where: str) -> int:
    if type(v) is not int or v < 0:
        raise SchemaDumpError(f"schema dump: {where}: expected a non-negative integer, "
                              f"got {v!r}")
    return v


def _schema_types(dump: Any) -> dict[str, tuple[int, int, bool]]:
    if not isinstance(dump, Mapping) or not isinstance(dump.get("types"), Mapping):
        raise SchemaDumpError("schema dump: expected a map with a 'types' map "
                              "(the output of `migtree schema --json`)")
    out = {}
    for name, info in dump["types"].items():
        if not isinstance(info, Mapping):
            raise SchemaDumpError(f"schema dump: types.{name}: expected a map")
        hi = _need_int(info.get("version"), f"types.{name}.version")
        lo = _need_int(info.get("min_version", hi), f"types.{name}.min_version")
        if lo > hi:
            raise SchemaDumpError(f"schema dump: types.{name}: min_version {lo} > version {hi}")
        out[str(name)] = (lo, hi, bool(info.get("abstract", False)))
    return out


def _schema_objects(dump: Mapping[str, Any]) -> dict[str, tuple[str, int, int, bool]] | None:
    objs = dump.get("objects")
    if objs is None:
        return None
    if not isinstance(objs, Mapping):
        raise SchemaDumpError("schema dump: 'objects' must map paths to objects")
    out = {}
    for path, info in objs.items():
        where = f"objects.{path}"
        if not isinstance(path, str) or not path.startswith("/"):
            raise SchemaDumpError(f"schema dump: {where}: paths are absolute")
        if isinstance(info, str):
            try:
                r = TypeRange.parse(info)
            except MigtreeError as e:
                raise SchemaDumpError(f"schema dump: {where}: {e}") from None
            out[path] = (r.type, r.lo, r.hi, True)
            continue
        if not isinstance(info, Mapping) or not isinstance(info.get("type"), str):
            raise SchemaDumpError(f"schema dump: {where}: expected {{\"type\": ..., "
                                  "\"version\": ...}} or \"TYPE@VERSION\"")
        hi = _need_int(info.get("version"), f"{where}.version")
        lo = _need_int(info.get("min_version", hi), f"{where}.min_version")
        out[path] = (info["type"], lo, hi, bool(info.get("stateful", True)))
    return out


def _slots_from_objects(objects: dict[str, tuple[str, int, int, bool]]) -> Slot:
    if "/" not in objects:
        raise SchemaDumpError("schema dump: objects: the root '/' is not listed")
    slots = {p: Slot(t, lo, hi, st) for p, (t, lo, hi, st) in objects.items()}
    for path in sorted(slots, key=lambda p: (p.count("/"), p)):
        if path == "/":
            continue
        parent, _, name = path.rstrip("/").rpartition("/")
        parent = parent or "/"
        if parent not in slots:
            raise SchemaDumpError(f"schema dump: objects: {path}: its parent {parent} is not "
                                  "listed")
        slots[parent].children[name] = slots[path]
    return slots["/"]


# -- filters: gathering, declarations ------------------------------------------


def gather_filters(source: Any, registry: Any = None,
                   extra: Iterable[Any] = ()) -> list[Filter]:
    """The filters of a migration into ``source``.

    ``source`` is a :class:`~migtree.build.Build` (its registry's static
    filters plus the dynamic ones its objects registered), a
    :class:`~migtree.registry.Registry` (its static filters), or a QOM root
    (the dynamic filters in its machine's ``dynamic_filters``, plus
    ``registry``'s static ones when given). Dynamic filters are marked
    ``dynamic=True``. ``extra`` filters are added as given.
    """
    static: list[Any] = []
    dynamic: list[Any] = []
    if hasattr(source, "dynamic_filters") and hasattr(source, "registry"):  # a Build
        registry = registry if registry is not None else source.registry
        dynamic = list(source.dynamic_filters or [])
    elif hasattr(source, "filters") and hasattr(source, "types"):  # a Registry
        registry = source
    elif hasattr(source, "walk"):  # a QOM object
        for obj in source.walk():
            if hasattr(obj, "dynamic_filters"):
                dynamic = list(obj.dynamic_filters)
                break
    elif source is not None:
        raise FilterError(f"gather_filters: expected a build, a registry or a QOM root, "
                          f"got {source!r}")
    if registry is not None:
        static = list(registry.filters.values())
    out: list[Filter] = []
    for f in static:
        out.extend(_expand(f))
    for f in dynamic:
        out.extend(_expand(f, dynamic=True))
    for f in extra:
        out.extend(_expand(f))
    return out


def _expand(f: Any, dynamic: bool | None = None) -> list[Filter]:
    if isinstance(f, FilterPair):
        fs = list(f.filters())
    elif isinstance(f, Filter):
        fs = [f]
    else:
        raise FilterError(f"expected a Filter or FilterPair, got {f!r}")
    if dynamic:
        fs = [x if x.dynamic else attrs.evolve(x, dynamic=True) for x in fs]
    return fs


def describe_filter(f: Filter) -> dict[str, Any]:
    """A filter's declaration as plain data (for schema dumps and JSON)."""
    return {"name": f.name, "match": str(f.match), "produces": str(f.produces),
            "creates": {k: str(v) for k, v in f.creates.items()},
            "consumes": {k: str(v) for k, v in f.consumes.items()},
            "path": f.path, "priority": f.priority, "pair": f.pair,
            "plugin": f.plugin, "dynamic": f.dynamic, "description": f.description}


def _not_runnable(node: Any, ctx: Any) -> Any:
    raise FilterError(f"filter {ctx.filter.name} was read from a declaration and cannot run")


def filters_from_declarations(decls: Iterable[Mapping[str, Any]]) -> list[Filter]:
    """Filters rebuilt from :func:`describe_filter` output (a schema dump's
    ``filters``): good for :func:`check`, which never runs them."""
    out = []
    for i, d in enumerate(decls):
        try:
            out.append(Filter(
                name=d["name"], match=d["match"], produces=d["produces"], func=_not_runnable,
                creates=d.get("creates") or {}, consumes=d.get("consumes") or {},
                path=d.get("path"), priority=int(d.get("priority", 0)), pair=d.get("pair"),
                description=d.get("description", ""),
                plugin=d.get("plugin", "<schema dump>"), dynamic=bool(d.get("dynamic"))))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError,
                MigtreeError) as e:  # a declaration from a peer or a file: any shape
            raise SchemaDumpError(f"schema dump: filters[{i}]: {e}") \
                from None
    return out


def compile_path_pattern(pattern: str) -> re.Pattern[str]:
    """``*`` is one whole path component (or, inside a component, any
    characters but ``/``: ``device[*]``); ``**`` is any number of
    components, none included."""
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise FilterError(f"path pattern {pattern!r} must be absolute (start with '/')")
    pieces = []
    for p in [p for p in pattern.split("/") if p]:
        if p == "**":
            pieces.append("(?:/[^/]+)*")
        elif p == "*":
            pieces.append("/[^/]+")
        else:
            pieces.append("/" + "[^/]*".join(re.escape(s) for s in p.split("*")))
    return re.compile("^" + "".join(pieces) + "$")


def _match_path(rx: re.Pattern[str], path: str) -> bool:
    return rx.fullmatch("" if path == "/" else path) is not None


def _decl(f: Filter) -> tuple:
    return (f.match, f.produces, tuple(sorted(f.creates.items())),
            tuple(sorted(f.consumes.items())), f.priority, f.drops, f.restores)


def _dotted_get(node: Any, key: str) -> Any:
    """The value at a dotted key (``kbd.extended_state``), None if absent.
    A key that itself contains dots (QEMU names fields ``env.regs``) is
    found too: at each level the longest matching key is tried first."""
    if type(node) is not dict:
        return None
    if key in node:
        return node[key]
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:i])
        if head in node:
            found = _dotted_get(node[head], ".".join(parts[i:]))
            if found is not None:
                return found
    return None


def _edge_key(f: Filter) -> tuple[int, str, str]:
    return (-f.priority, f.name, f.path or "")


# -- the report ----------------------------------------------------------------


@attrs.define
class Application:
    """One filter applied to one node."""

    filter: str
    plugin: str
    dynamic: bool
    path: str
    before: str
    after: str
    #: why the node was driven: ``"destination"`` or ``"consumed by F at P"``
    reason: str = "destination"
    #: (explain only) ``added``/``removed``/``changed`` fields (dotted into
    #: structs and kept children) and ``created``/``consumed`` child objects
    diff: dict[str, dict[str, Any]] | None = None
    #: (explain only) stash entries the filter added: ``"KEY.FIELD" -> value``
    stashed: dict[str, Any] | None = None
    #: (explain only) stash entries the filter took back
    restored: dict[str, Any] | None = None
    #: (explain only) fields the filter filled with a default
    defaulted: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        return "dynamic" if self.dynamic else "static"

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"filter": self.filter, "plugin": self.plugin, "kind": self.kind,
                             "path": self.path, "before": self.before, "after": self.after,
                             "reason": self.reason}
        for k in ("diff", "stashed", "restored", "defaulted"):
            v = getattr(self, k)
            if v is not None:
                d[k] = jsonable(v)
        return d


@attrs.define
class FilterReport:
    """What a pass did: every application, in the order it happened."""

    destination: str = "destination"
    applications: list[Application] = attrs.Factory(list)
    #: object nodes seen (including ones created on the way)
    nodes: int = 0
    explain: bool = False

    def chains(self) -> dict[str, list[str]]:
        """path -> the filters applied there, in order."""
        out: dict[str, list[str]] = {}
        for a in self.applications:
            out.setdefault(a.path, []).append(a.filter)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"destination": self.destination, "nodes": self.nodes,
                "applications": [a.as_dict() for a in self.applications],
                "chains": self.chains()}

    def format_text(self) -> str:
        if not self.applications:
            return f"{self.nodes} object nodes, all acceptable to {self.destination} as they are"
        lines = []
        by_path: dict[str, list[Application]] = {}
        for a in self.applications:
            by_path.setdefault(a.path, []).append(a)
        for path, apps in by_path.items():
            n = len(apps)
            lines.append(f"{path}: {apps[0].before} -> {apps[-1].after} "
                         f"({n} filter{'s' if n != 1 else ''})"
                         + (f", {apps[0].reason}" if apps[0].reason != "destination" else ""))
            for i, a in enumerate(apps, 1):
                lines.append(f"  {i}. {a.filter} [{a.plugin}, {a.kind}]: {a.before} -> {a.after}")
                diff = a.diff or {}
                for key in ("created", "consumed", "added", "removed"):
                    _items(lines, key, diff.get(key))
                for k, (old, new) in (diff.get("changed") or {}).items():
                    lines.append(f"     changed: {k}: {_short(old)} -> {_short(new)}")
                for key in ("stashed", "restored", "defaulted"):
                    _items(lines, key, getattr(a, key))
        lines.append(f"{len(self.applications)} application(s) at {len(by_path)} path(s); "
                     f"{self.nodes} object nodes")
        return "\n".join(lines)


def _items(lines: list[str], label: str, part: dict[str, Any] | None) -> None:
    """``label: k=v, k=v`` on one line, or one ``k=v`` a line when long."""
    if not part:
        return
    items = [f"{k}={_short(v)}" for k, v in part.items()]
    one = f"     {label}: " + ", ".join(items)
    if len(one) <= 100:
        lines.append(one)
    else:
        lines.append(f"     {label}:")
        lines.extend(f"       {i}" for i in items)


def jsonable(v: Any) -> Any:
    """Plain JSON data for a tree value: bytes become ``{"hex": ...}`` (or a
    length and digest when long)."""
    t = type(v)
    if t is bytes or t is bytearray:
        b = bytes(v)
        if len(b) <= 64:
            return {"hex": b.hex()}
        return {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
    if t is dict:
        return {str(k): jsonable(x) for k, x in v.items()}
    if t is list or t is tuple:
        return [jsonable(x) for x in v]
    if v is None or t in (int, str, bool, float):
        return v
    if hasattr(v, "iter_chunks") and hasattr(v, "__len__"):
        return {"blob": len(v)}
    return repr(v)


def _short(v: Any, limit: int = 60) -> str:
    if type(v) in (bytes, bytearray):
        text = f"<{len(v)} bytes>" if len(v) > 16 else "0x" + bytes(v).hex()
    else:
        text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- explain: snapshots and diffs ---------------------------------------------


@attrs.frozen
class _Child:
    ref: Any  # the child node itself (identity), kept alive
    tv: str
    own: dict[str, Any]


def _in_range(rng: TypeRange, node: dict[str, Any]) -> bool:
    t, v = node.get(TYPE_KEY), node.get(VERSION_KEY)
    return t == rng.type and type(v) is int and rng.lo <= v <= rng.hi


def _tv_str(node: Any) -> str:
    return f"{node.get(TYPE_KEY)}@{node.get(VERSION_KEY)}"


def _copy_plain(v: Any) -> Any:
    """A copy of the plain containers in ``v``; anything else (bytes, blobs)
    is immutable for a filter's purposes and kept by reference."""
    t = type(v)
    if t is dict:
        return {k: _copy_plain(x) for k, x in v.items()}
    if t is list:
        return [_copy_plain(x) for x in v]
    return v


def _snapshot(node: dict[str, Any]) -> dict[str, Any]:
    snap: dict[str, Any] = {}
    for k, v in node.items():
        if type(v) is dict and TYPE_KEY in v:
            own = {ck: _copy_plain(cv) for ck, cv in v.items()
                   if ck not in (TYPE_KEY, VERSION_KEY)
                   and not (type(cv) is dict and TYPE_KEY in cv)}
            snap[k] = _Child(v, _tv_str(v), own)
        else:
            snap[k] = _copy_plain(v)
    return snap


def _diff_plain(a: Any, b: Any, key: str, out: dict[str, dict[str, Any]]) -> None:
    if type(a) is dict and type(b) is dict:
        for k in a:
            sub = f"{key}.{k}"
            if k not in b:
                out["removed"][sub] = a[k]
            else:
                _diff_plain(a[k], b[k], sub, out)
        for k in b:
            if k not in a:
                out["added"][f"{key}.{k}"] = b[k]
    elif type(a) is not type(b) or a != b:
        out["changed"][key] = (a, b)


def _diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"added": {}, "removed": {}, "changed": {}, "created": {},
                                      "consumed": {}}
    for k, b in before.items():
        if k in (TYPE_KEY, VERSION_KEY, STASH_KEY):
            continue
        if k not in after:
            if isinstance(b, _Child):
                out["consumed"][k] = b.tv
            else:
                out["removed"][k] = b
            continue
        a = after[k]
        a_obj = type(a) is dict and TYPE_KEY in a
        if isinstance(b, _Child):
            if not a_obj or a is not b.ref or _tv_str(a) != b.tv:
                out["consumed"][k] = b.tv
                if a_obj:
                    out["created"][k] = _tv_str(a)
                else:
                    out["added"][k] = a
            else:  # the same child, maybe edited in place
                now = {ck: cv for ck, cv in a.items() if ck not in (TYPE_KEY, VERSION_KEY)
                       and not (type(cv) is dict and TYPE_KEY in cv)}
                _diff_plain(b.own, now, k, out)
        elif a_obj:
            out["removed"][k] = b
            out["created"][k] = _tv_str(a)
        else:
            _diff_plain(b, a, k, out)
    for k, a in after.items():
        if k in (TYPE_KEY, VERSION_KEY, STASH_KEY) or k in before:
            continue
        if type(a) is dict and TYPE_KEY in a:
            out["created"][k] = _tv_str(a)
        else:
            out["added"][k] = a
    return {k: v for k, v in out.items() if v}


def _stash_diff(before: Any, after: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    b = before if type(before) is dict else {}
    a = after if type(after) is dict else {}
    stashed: dict[str, Any] = {}
    restored: dict[str, Any] = {}
    for key in set(a) | set(b):
        ea = a.get(key) if type(a.get(key)) is dict else {}
        eb = b.get(key) if type(b.get(key)) is dict else {}
        for f in ea:
            if f not in eb or ea[f] != eb[f]:
                stashed[f"{key}.{f}"] = _copy_plain(ea[f])
        for f in eb:
            if f not in ea:
                restored[f"{key}.{f}"] = eb[f]
    return dict(sorted(stashed.items())), dict(sorted(restored.items()))


# -- targets -------------------------------------------------------------------


class _Target:
    """What a node is being driven to."""

    __slots__ = ("kind", "type", "lo", "hi", "types", "key", "why")

    def __init__(self, kind: str, *, type: str = "", lo: int = 0, hi: int = 0,
                 types: dict[str, tuple[int, int]] | None = None, why: str = "destination"):
        self.kind, self.type, self.lo, self.hi = kind, type, lo, hi
        self.types = types
        self.why = why
        self.key = ("registered",) if kind == "registered" else (kind, type, lo, hi)

    def accepts(self, t: Any, v: Any) -> bool:
        if type(v) is not int:
            return False
        if self.kind == "registered":
            r = self.types.get(t)
            return r is not None and r[0] <= v <= r[1]
        return t == self.type and self.lo <= v <= self.hi

    def wanted_types(self) -> dict[str, tuple[int, int]]:
        if self.kind == "registered":
            return self.types
        return {self.type: (self.lo, self.hi)}

    def describe(self, src_type: Any) -> str:
        if self.kind == "slot":
            return f"{_range_str(self.type, self.lo, self.hi)} (what the destination has here)"
        if self.kind == "consumes":
            return f"{_range_str(self.type, self.lo, self.hi)} ({self.why})"
        r = self.types.get(src_type)
        if r is not None:
            return (f"{_range_str(src_type, *r)} (the versions the destination loads; it has "
                    "no object at this path)")
        return (f"a type the destination registers ({src_type} is not registered there; it "
                "has no object at this path)")


# -- the engine ----------------------------------------------------------------


class _FilterIndex:
    """Filters bucketed by the type they match, each bucket in edge order.
    Built once per filter collection: the last few are kept (filters are
    frozen), so a process running many migrations with the same filters
    does not index them again."""

    _cache: dict[tuple[int, ...], tuple[list[Any], _FilterIndex]] = {}
    _CACHE_SIZE = 8

    @classmethod
    def of(cls, filters: Iterable[Any]) -> _FilterIndex:
        items = list(filters)
        key = tuple(map(id, items))
        hit = cls._cache.get(key)
        if hit is not None:  # the cache keeps its items alive: equal ids, same objects
            return hit[1]
        index = cls(items)
        if len(cls._cache) >= cls._CACHE_SIZE:
            cls._cache.pop(next(iter(cls._cache)))
        cls._cache[key] = (items, index)  # items keeps the ids in the key alive
        return index

    def __init__(self, items: list[Any]) -> None:
        # one pass over the filters: dedupe, bucket by matched type, then sort
        # each bucket by (-priority, name, path) -- never by the order given
        by_name: dict[str, Filter] = {}
        dups: dict[str, list[Filter]] = {}
        buckets: dict[str, list[Filter]] = {}
        for item in items:
            for f in ((item,) if type(item) is Filter else _expand(item)):
                prev = by_name.get(f.name)
                if prev is None:
                    by_name[f.name] = f
                else:
                    if prev is not f and _decl(prev) != _decl(f):
                        raise FilterError(
                            f"filter name {f.name!r} is used by two different declarations: "
                            f"{prev.match} -> {prev.produces} ({prev.plugin}) and "
                            f"{f.match} -> {f.produces} ({f.plugin})")
                    same = dups.setdefault(f.name, [prev])
                    if any(g.path == f.path for g in same):
                        continue  # the same filter given again (e.g. by every instance)
                    same.append(f)
                bucket = buckets.get(f.match.type)
                if bucket is None:
                    buckets[f.match.type] = [f]
                else:
                    bucket.append(f)
        #: filters with a path pattern, in order; an edge carries its index here
        self.limited: list[tuple[Filter, re.Pattern[str]]] = []
        self.by_type: dict[str, list[tuple[Filter, int]]] = {}
        for t, bucket in buckets.items():
            if len(bucket) > 1:
                bucket.sort(key=_edge_key)
            edges = []
            for f in bucket:
                idx = -1
                if f.path is not None:
                    idx = len(self.limited)
                    self.limited.append((f, compile_path_pattern(f.path)))
                edges.append((f, idx))
            self.by_type[t] = edges
        self.filters = [f for edges in self.by_type.values() for f, _ in edges]


class _Engine:
    def __init__(self, filters: Iterable[Any], destination: Destination, *,
                 explain: bool = False, max_applications: int = MAX_APPLICATIONS,
                 symbolic: bool = False, collect: bool = False, any_path: bool = False):
        self.dest = destination
        self.registered = destination.types
        self.shape = destination.shape
        self.explain = explain
        self.max = max_applications
        self.symbolic = symbolic
        self.collect = collect
        self.any_path = any_path
        self.tree: dict[str, Any] | None = None  # the tree being run, for FilterContext.tree
        self.report = FilterReport(destination=destination.name, explain=explain)
        self.errors: list[tuple[str, FilterError]] = []
        self._registered_target = _Target("registered", types=self.registered)
        self._chains: dict[tuple, list[Filter] | None] = {}
        self._applicable_cache: dict[str, frozenset[int]] = {}
        self._slot_targets: dict[int, _Target] = {}

        index = _FilterIndex.of(filters)
        self.by_type = index.by_type
        self._limited = index.limited
        self.filters = index.filters

    # -- graph search -------------------------------------------------------
    def _applicable(self, path: str) -> frozenset[int]:
        if not self._limited:
            return frozenset()
        if self.any_path:
            return frozenset(range(len(self._limited)))
        got = self._applicable_cache.get(path)
        if got is None:
            got = frozenset(i for i, (_, rx) in enumerate(self._limited) if _match_path(rx, path))
            self._applicable_cache[path] = got
        return got

    def _edges(self, t: str, v: int, applicable: frozenset[int]):
        for f, idx in self.by_type.get(t, ()):
            if f.match.lo <= v <= f.match.hi and (idx < 0 or idx in applicable):
                yield f

    def _chain(self, tv: tuple[str, int], target: _Target,
               applicable: frozenset[int]) -> list[Filter] | None:
        """The chain to apply: shortest, then first by (-priority, name) step by step."""
        key = (tv, target.key, applicable)
        if key in self._chains:
            return self._chains[key]
        result: list[Filter] | None = None
        if target.accepts(*tv):
            result = []
        else:
            parent: dict[tuple[str, int], tuple[tuple[str, int], Filter] | None] = {tv: None}
            frontier = [tv]
            found = None
            while frontier and found is None:
                nxt = []
                for cur in frontier:
                    for f in self._edges(cur[0], cur[1], applicable):
                        p = (f.produces.type, f.produces.version)
                        if p in parent:
                            continue
                        parent[p] = (cur, f)
                        if target.accepts(*p):
                            found = p
                            break
                        nxt.append(p)
                    if found is not None:
                        break
                frontier = nxt
            if found is not None:
                result = []
                cur = found
                while parent[cur] is not None:
                    prev, f = parent[cur]
                    result.append(f)
                    cur = prev
                result.reverse()
        self._chains[key] = result
        return result

    def _reachable(self, tv: tuple[str, int],
                   applicable: frozenset[int]) -> dict[tuple[str, int], list[Filter]]:
        seen: dict[tuple[str, int], list[Filter]] = {tv: []}
        q = deque([tv])
        while q:
            cur = q.popleft()
            for f in self._edges(cur[0], cur[1], applicable):
                p = (f.produces.type, f.produces.version)
                if p not in seen:
                    seen[p] = seen[cur] + [f]
                    q.append(p)
        del seen[tv]
        return seen

    def _no_chain(self, path: str, tv: tuple[str, int], target: _Target,
                  applicable: frozenset[int]) -> FilterError:
        src = f"{tv[0]}@{tv[1]}"
        reach = self._reachable(tv, applicable)
        wanted = target.wanted_types()

        def rank(item):
            (t, v), chain = item
            if t in wanted:
                lo, hi = wanted[t]
                return (0, lo - v if v < lo else v - hi, len(chain), t, v)
            return (1, 0, len(chain), t, v)

        near = sorted(reach.items(), key=rank)[:5]
        msg = f"{path}: no chain of filters turns {src} into {target.describe(tv[0])}; "
        if near:
            msg += "nearest reachable: " + "; ".join(
                f"{t}@{v} (via {' -> '.join(f.name for f in chain)})" for (t, v), chain in near)
        else:
            others = [f for f, _ in self._limited if f.match.contains(TypeVersion(*tv))]
            msg += f"no filter matches {src}" + (
                f" at this path (path-limited filters that match it elsewhere: "
                f"{', '.join(sorted(f.name for f in others))})" if others else "")
        err = FilterError(msg)
        err.path, err.source, err.wanted = path, src, target.describe(tv[0])  # type: ignore[attr-defined]
        err.nearest = [f"{t}@{v}" for (t, v), _ in near]  # type: ignore[attr-defined]
        return err

    # -- the walk -----------------------------------------------------------
    def run(self, tree: dict[str, Any]) -> dict[str, Any]:
        if not (type(tree) is dict and TYPE_KEY in tree):
            raise FilterError("the tree's root is not an object node (no __type__)")
        root_slot = self.dest.root
        self.tree = tree
        return self._walk(tree, (), root_slot)

    def _walk(self, node: dict[str, Any], parts: tuple[str, ...], slot: Slot | None):
        """A node driven to the destination (fast path for acceptable ones)."""
        self.report.nodes += 1
        v = node.get(VERSION_KEY)
        if slot is not None:
            ok = node.get(TYPE_KEY) == slot.type and type(v) is int and slot.lo <= v <= slot.hi
        else:
            r = self.registered.get(node.get(TYPE_KEY))
            ok = r is not None and type(v) is int and r[0] <= v <= r[1]
        if not ok or (self.shape is not None and self.shape(_path_of(parts), node)):
            return self._drive(node, parts, slot, None)
        kids = [k for k, c in node.items() if type(c) is dict and TYPE_KEY in c]
        if kids:
            sc = slot.children if slot is not None else _EMPTY
            for k in kids:
                c = node[k]
                n = self._walk(c, parts + (k,), sc.get(k))
                if n is not c:
                    node[k] = n
        return node

    def _target(self, slot: Slot | None, want: _Target | None) -> _Target:
        if want is not None:
            return want
        if slot is not None:
            got = self._slot_targets.get(id(slot))
            if got is None:
                got = self._slot_targets[id(slot)] = _Target("slot", type=slot.type,
                                                             lo=slot.lo, hi=slot.hi)
            return got
        return self._registered_target

    def _drive(self, node: dict[str, Any], parts: tuple[str, ...], slot: Slot | None,
               want: _Target | None) -> dict[str, Any]:
        if not self.collect:
            return self._drive_inner(node, parts, slot, want)
        try:
            return self._drive_inner(node, parts, slot, want)
        except FilterError as e:
            path = _path_of(parts)
            if not any(p == path and str(x) == str(e) for p, x in self.errors):
                self.errors.append((path, e))
            return node

    def _children(self, node: dict[str, Any], parts: tuple[str, ...], slot: Slot | None,
                  consumed: dict[str, _Target], keys: list[str]) -> None:
        """Process the child objects under ``keys``, in that order."""
        sc = slot.children if slot is not None else _EMPTY
        for k in keys:
            c = node[k]
            if k in consumed:
                self.report.nodes += 1
                n = self._drive(c, parts + (k,), None, consumed[k])
            else:
                n = self._walk(c, parts + (k,), sc.get(k))
            if n is not c:
                node[k] = n

    def _consumed_by(self, chain: list[Filter] | None, path: str) -> dict[str, _Target]:
        if not chain or not any(f.consumes for f in chain):
            return _EMPTY
        out: dict[str, _Target] = {}
        for f in chain:
            for name, rng in f.consumes.items():
                if name not in out:
                    out[name] = _Target("consumes", type=rng.type, lo=rng.lo, hi=rng.hi,
                                        why=f"consumed by filter {f.name} at {path}")
        return out

    def _drive_inner(self, node: dict[str, Any], parts: tuple[str, ...], slot: Slot | None,
                     want: _Target | None) -> dict[str, Any]:
        path = _path_of(parts)
        t, v = node.get(TYPE_KEY), node.get(VERSION_KEY)
        if not isinstance(t, str) or type(v) is not int:
            raise FilterError(f"{path}: malformed object node: __type__ {t!r}, __version__ "
                              f"{v!r} (expected a string and an integer)")
        target = self._target(slot, want)
        applicable = self._applicable(path)
        chain = self._chain((t, v), target, applicable)
        # children first; those the chain consumes go to the declared range
        keys = [k for k, c in node.items() if type(c) is dict and TYPE_KEY in c]
        if keys:
            self._children(node, parts, slot, self._consumed_by(chain, path), keys)
        if chain is None:
            raise self._no_chain(path, (t, v), target, applicable)
        applied: list[tuple[Filter, str, str]] = []
        tried: set[str] = set()  # filters that keep type@version, each run once
        while True:
            tv = (node[TYPE_KEY], node[VERSION_KEY])
            if target.accepts(*tv):
                flt = self._fit(node, path, tv, applicable, tried)
                if flt is None:
                    return node
            else:
                chain = self._chain(tv, target, applicable)
                if not chain:
                    raise self._no_chain(path, tv, target, applicable)
                flt = chain[0]
            if len(applied) >= self.max:
                steps = ", ".join(f"{n} ({a} -> {b})" for n, a, b in
                                  ((f.name, a, b) for f, a, b in applied))
                names = sorted({f.name for f, _, _ in applied})
                raise FilterError(
                    f"{path}: gave up after {len(applied)} filter applications (the bound) "
                    f"without reaching {target.describe(t)}: a loop, or a chain longer than "
                    f"the bound; filters involved: {', '.join(names)}; applied: {steps}")
            for name, rng in flt.consumes.items():
                c = node.get(name)
                if not (type(c) is dict and TYPE_KEY in c):
                    raise FilterError(
                        f"{path}: filter {flt.name} ({flt.plugin}) consumes child {name!r} "
                        f"({rng}) but the node has no such child object")
                if not _in_range(rng, c):
                    want_c = _Target("consumes", type=rng.type, lo=rng.lo, hi=rng.hi,
                                     why=f"consumed by filter {flt.name} at {path}")
                    n = self._drive(c, parts + (name,), None, want_c)
                    if n is not c:
                        node[name] = n
                    if not _in_range(rng, n):  # collect mode: the child's error is recorded
                        raise FilterError(
                            f"{path}: filter {flt.name} ({flt.plugin}) consumes child "
                            f"{name!r} as {rng}, and it cannot be brought there from "
                            f"{_tv_str(n)}")
            before = f"{tv[0]}@{tv[1]}"
            kids_before = {k: (node[k], _tv_str(node[k])) for k in keys}
            node, kids = self._apply(flt, node, path, before, kids_before, target)
            applied.append((flt, before, str(flt.produces)))
            keys = list(kids)
            # children the filter created or replaced are processed now
            fresh = [k for k, c in kids.items()
                     if k in flt.creates or kids_before.get(k, (None,))[0] is not c]
            if fresh:
                rest = self._chain((node[TYPE_KEY], node[VERSION_KEY]), target, applicable)
                self._children(node, parts, slot, self._consumed_by(rest, path), fresh)

    def _fit(self, node: dict[str, Any], path: str, tv: tuple[str, int],
             applicable: frozenset[int], tried: set[str]) -> Filter | None:
        """For a node at a ``type@version`` the destination loads: the
        filter (keeping ``type@version``) that fixes its first misfit, or
        None when the destination takes it as it is.  A part that could be
        restored but has no filter is left out (it is optional); a part the
        destination cannot take with no filter to drop it is an error."""
        if self.shape is None or self.symbolic:
            return None
        for m in self.shape(path, node):
            for f in self._edges(tv[0], tv[1], applicable):
                if f.name in tried or (f.produces.type, f.produces.version) != tv:
                    continue
                if m.key in (f.drops if m.want == "absent" else f.restores):
                    tried.add(f.name)
                    return f
            if m.want != "present":
                verb = "drops" if m.want == "absent" else "restores"
                err = FilterError(
                    f"{path}: {tv[0]}@{tv[1]}: {m.reason}; no filter for "
                    f"{tv[0]}@{tv[1]} {verb} {m.key!r}"
                    + (f" (already applied: {', '.join(sorted(tried))})" if tried else ""))
                err.path, err.source, err.wanted = (  # type: ignore[attr-defined]
                    path, f"{tv[0]}@{tv[1]}", f"{m.key} {m.want}")
                err.nearest = []  # type: ignore[attr-defined]
                raise err
        return None

    def _apply(self, flt: Filter, node: dict[str, Any], path: str, before: str,
               kids_before: dict[str, Any],
               target: _Target) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run ``flt`` on ``node``; the result and its child objects."""
        ctx = FilterContext(path=path, filter=flt, tree=self.tree)
        snap = _snapshot(node) if self.explain else None
        stash_before = _copy_plain(node.get(STASH_KEY)) if self.explain else None
        kind = "dynamic" if flt.dynamic else "static"
        if self.symbolic:
            result: Any = {k: c for k, c in node.items() if k not in flt.consumes}
            result[TYPE_KEY], result[VERSION_KEY] = flt.produces.type, flt.produces.version
            for name, tv in flt.creates.items():
                result[name] = {TYPE_KEY: tv.type, VERSION_KEY: tv.version}
        else:
            try:
                result = flt.func(node, ctx)
            except Exception as e:
                raise FilterError(
                    f"{path}: filter {flt.name} ({flt.plugin}, {kind}) failed on {before}: "
                    f"{e.__class__.__name__}: {e}") from e
        kids = self._verify(flt, result, path, before, kids_before)
        app = Application(flt.name, flt.plugin, flt.dynamic, path, before, str(flt.produces),
                          reason=target.why)
        if self.explain:
            app.diff = _diff(snap, result)
            app.stashed, app.restored = _stash_diff(stash_before, result.get(STASH_KEY))
            app.defaulted = dict(ctx.defaulted)
        self.report.applications.append(app)
        return result, kids

    def _verify(self, flt: Filter, result: Any, path: str, before: str,
                kids_before: dict[str, Any]) -> dict[str, Any]:
        """Hold ``flt`` to its declaration; the result's child objects."""

        def lie(message: str) -> FilterError:
            return FilterError(f"{path}: filter {flt.name} ({flt.plugin}) {message}")

        if type(result) is not dict:
            raise lie(f"declared {flt.produces} but returned a {type(result).__name__}, "
                      "not a node")
        v = result.get(VERSION_KEY)
        if (result.get(TYPE_KEY) != flt.produces.type or type(v) is not int
                or v != flt.produces.version):
            raise lie(f"declared {flt.produces} but produced {_tv_str(result)} (from {before})")
        for key in flt.drops:
            if _dotted_get(result, key) is not None:
                raise lie(f"declared it drops {key!r} but produced a node that still has it")
        kids = {k: c for k, c in result.items() if type(c) is dict and TYPE_KEY in c}
        if not kids and not kids_before and not flt.creates:
            return kids
        for name, tv in flt.creates.items():
            c = kids.get(name)
            if c is None:
                raise lie(f"declared {flt.produces} creating child {name!r} as {tv} but "
                          "produced no such child")
            if c.get(TYPE_KEY) != tv.type or c.get(VERSION_KEY) != tv.version:
                raise lie(f"declared child {name!r} as {tv} but produced {_tv_str(c)}")
        for name in flt.consumes:
            if name in kids and name not in flt.creates:
                raise lie(f"declared it consumes child {name!r} but produced a node that "
                          "still has it")
        for name, c in kids.items():
            if name in flt.creates:
                continue
            old = kids_before.get(name)
            if old is None:
                raise lie(f"declared {flt.produces} but produced an undeclared child {name!r} "
                          f"({_tv_str(c)}); declare it in creates")
            if old[1] != _tv_str(c):
                raise lie(f"turned child {name!r} from {old[1]} into {_tv_str(c)} without "
                          "declaring it in creates")
        for name, old in kids_before.items():
            if name not in kids and name not in flt.consumes:
                raise lie(f"removed child {name!r} ({old[1]}) without declaring it in "
                          "consumes")
        return kids


def apply_filters(tree: dict[str, Any], destination: Any, filters: Iterable[Any], *,
                  explain: bool = False,
                  max_applications: int = MAX_APPLICATIONS) -> FilterReport:
    """Drive every node of ``tree`` to ``destination``, in place.

    :param tree: the state tree (as :func:`migtree.stream.read_tree` returns
        it); rewritten in place. On error it is left half rewritten: discard it.
    :param destination: a :class:`Destination` (or a build / QOM root / schema
        dump, passed to :meth:`Destination.of`).
    :param filters: :class:`Filter` s and :class:`FilterPair` s, static and
        dynamic (:func:`gather_filters` collects a build's).
    :param explain: record per-field diffs, stash and defaults of every application.
    :return: the :class:`FilterReport`; with ``explain`` it has everything
        ``migtree explain`` shows.
    :raises FilterError: no chain, a filter raised, lied about its output, or
        a node needed more than ``max_applications``. ``error.report`` holds
        what was applied before.
    """
    dest = Destination.of(destination)
    engine = _Engine(filters, dest, explain=explain, max_applications=max_applications)
    try:
        result = engine.run(tree)
    except FilterError as e:
        e.report = engine.report  # type: ignore[attr-defined]
        raise
    if result is not tree:
        tree.clear()
        tree.update(result)
    return engine.report


# -- static check ----------------------------------------------------------------


@attrs.define
class CheckEntry:
    """One source object (or type@version) and what becomes of it."""

    path: str | None
    source: str
    #: ``ok`` (acceptable as it is), ``filtered`` (a chain gets it there),
    #: ``consumed`` (a parent's filter folds it in), ``gap`` (no way)
    status: str
    wanted: str = ""
    chain: list[dict[str, str]] = attrs.Factory(list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class CheckReport:
    source: str
    destination: str
    entries: list[CheckEntry] = attrs.Factory(list)
    #: destination objects with state that nothing in the source provides
    missing: list[str] = attrs.Factory(list)
    #: source objects that nothing in the destination takes
    unconsumed: list[str] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    #: which side's filters the verdict is for ("destination" or "source";
    #: None when the caller did not apply the rule of migtree.migration)
    filtered_by: str | None = None

    @property
    def compatible(self) -> bool:
        return not self.missing and not self.unconsumed and not any(
            e.status == "gap" for e in self.entries)

    @property
    def gaps(self) -> list[CheckEntry]:
        return [e for e in self.entries if e.status == "gap"]

    def as_dict(self) -> dict[str, Any]:
        return {"compatible": self.compatible, "source": self.source,
                "destination": self.destination,
                "entries": [e.as_dict() for e in self.entries], "missing": self.missing,
                "unconsumed": self.unconsumed, "notes": self.notes,
                "filtered_by": self.filtered_by}

    def format_text(self) -> str:
        lines = []
        for e in self.entries:
            where = e.path if e.path is not None else "(any path)"
            if e.status == "gap":
                lines.append(f"GAP  {e.error}")
            elif e.status == "filtered":
                steps = " -> ".join(f"{s['filter']}" for s in e.chain)
                lines.append(f"ok   {where}: {e.source} -> {e.chain[-1]['to']} via {steps}"
                             + (f" ({e.wanted})" if e.wanted else ""))
            elif e.status == "consumed":
                via = (f" after {' -> '.join(s['filter'] for s in e.chain)} (to "
                       f"{e.chain[-1]['to']})" if e.chain else "")
                lines.append(f"ok   {where}: {e.source} {e.wanted}{via}")
            else:
                lines.append(f"ok   {where}: {e.source}" + (f" ({e.wanted})" if e.wanted else ""))
        for p in self.missing:
            lines.append(f"GAP  {p}: the destination has an object with state here but the "
                         "source provides no node for it")
        for p in self.unconsumed:
            lines.append(f"GAP  {p}: the source has a node here that no object in the "
                         "destination consumes")
        lines.extend(f"note {n}" for n in self.notes)
        if self.filtered_by and self.compatible:
            lines.append(f"filters run on the {self.filtered_by}")
        n_gap = len(self.gaps) + len(self.missing) + len(self.unconsumed)
        lines.append("compatible" if self.compatible else f"NOT compatible: {n_gap} gap(s)")
        return "\n".join(lines)


def _skeleton(node: dict[str, Any]) -> dict[str, Any]:
    out = {TYPE_KEY: node.get(TYPE_KEY), VERSION_KEY: node.get(VERSION_KEY)}
    for k, c in node.items():
        if type(c) is dict and TYPE_KEY in c:
            out[k] = _skeleton(c)
    return out


def _skeleton_of_object(obj: Any) -> dict[str, Any]:
    from .pins import wire_version

    out: dict[str, Any] = {TYPE_KEY: obj.TYPE, VERSION_KEY: wire_version(obj)}
    for n, c in obj._children.items():
        out[n] = _skeleton_of_object(c)
    return out


def _source_skeletons(source: Any) -> tuple[str, dict[str, Any] | None, list[tuple[str, int]]]:
    """(name, a skeleton tree or None, path-less type@versions)."""
    if isinstance(source, Mapping) and TYPE_KEY in source:
        return "tree", _skeleton(dict(source)), []
    if isinstance(source, Mapping):
        types = _schema_types(source)
        objects = _schema_objects(source)
        name = str(source.get("name") or "schema")
        if objects is not None:
            slot = _slots_from_objects(objects)

            def sk(s: Slot) -> dict[str, Any]:
                out: dict[str, Any] = {TYPE_KEY: s.type, VERSION_KEY: s.hi}
                for n, c in s.children.items():
                    out[n] = sk(c)
                return out

            return name, sk(slot), []
        return name, None, sorted((t, hi) for t, (lo, hi, abstract) in types.items()
                                  if not abstract)
    name = "build"
    if hasattr(source, "root") and hasattr(source, "registry"):
        name = getattr(source, "name", None) or name
        source = source.root
    return name, _skeleton_of_object(source), []


def _iter_paths(node: dict[str, Any], path: str = "/"):
    yield path, node
    for k, c in node.items():
        if type(c) is dict and TYPE_KEY in c:
            yield from _iter_paths(c, _join(path, k))


def check(source: Any, destination: Any, filters: Iterable[Any], *,
          max_applications: int = MAX_APPLICATIONS) -> CheckReport:
    """Decide, without a stream and without running a filter, whether what
    ``source`` writes reaches ``destination`` through ``filters``.

    ``source``: a schema dump (per type, or per path with ``objects``), a
    build or QOM root (its objects, per path, at the versions they write), or
    a state tree. ``destination``: as for :func:`apply_filters`. The engine
    runs on a skeleton of the source (types, versions and children only) with
    each filter replaced by its declaration, so a gap is reported with the
    same precision as a real load: path, source, wanted, nearest reachable.
    """
    dest = Destination.of(destination)
    name, skel, loose = _source_skeletons(source)
    report = CheckReport(source=name, destination=dest.name)
    filters = list(filters)
    if skel is not None:
        engine = _Engine(filters, dest, explain=False, symbolic=True, collect=True,
                         max_applications=max_applications)
        src = [(p, _tv_str(n)) for p, n in _iter_paths(skel)]
        try:
            final = engine.run(skel)
        except FilterError as e:  # the root itself (collect mode records the rest)
            engine.errors.append(("/", e))
            final = skel
        _fill_entries(report, engine, src, final)
        if dest.root is not None:
            _coverage(report, final, dest.root)
        else:
            report.notes.append("the destination lists no objects (a schema dump without "
                                "'objects'): nodes are judged by its registered types only")
    else:
        report.notes.append("the source lists no objects (a schema dump without 'objects'): "
                            "each type it registers is checked at the version it writes, "
                            "and path-limited filters are assumed to apply")
        dest_loose = Destination(types=dest.types, root=None, name=dest.name)
        for t, v in loose:
            engine = _Engine(filters, dest_loose, symbolic=True, collect=True, any_path=True,
                             max_applications=max_applications)
            node = {TYPE_KEY: t, VERSION_KEY: v}
            engine.run(node)
            e_path = "/"
            apps = [a for a in engine.report.applications if a.path == e_path]
            errs = [x for p, x in engine.errors if p == e_path]
            entry = CheckEntry(None, f"{t}@{v}", "gap" if errs else
                               ("filtered" if apps else "ok"))
            if errs:
                entry.error = str(errs[0]).replace("/: ", f"{t}@{v} (any path): ", 1)
            entry.chain = [_step(a) for a in apps]
            report.entries.append(entry)
    return report


def _step(a: Application) -> dict[str, str]:
    return {"filter": a.filter, "plugin": a.plugin, "kind": a.kind, "from": a.before,
            "to": a.after}


def _fill_entries(report: CheckReport, engine: _Engine, src: list[tuple[str, str]],
                  final: dict[str, Any]) -> None:
    final_paths = {p for p, _ in _iter_paths(final)}
    errs: dict[str, FilterError] = {}
    for p, e in engine.errors:
        errs.setdefault(p, e)
    apps: dict[str, list[Application]] = {}
    for a in engine.report.applications:
        apps.setdefault(a.path, []).append(a)
    by_name = {f.name: f for f in engine.filters}
    listed = set()
    for path, tv in src:
        listed.add(path)
        entry = CheckEntry(path, tv, "ok")
        if path in errs:
            entry.status, entry.error = "gap", str(errs[path])
            entry.wanted = getattr(errs[path], "wanted", "")
        elif path in apps:
            entry.status = "filtered"
        if path in apps:
            entry.chain = [_step(a) for a in apps[path]]
        if entry.status != "gap" and path not in final_paths:
            entry.status = "consumed"
            parent, _, name = path.rpartition("/")
            parent = parent or "/"
            by = next((a.filter for a in apps.get(parent, [])
                       if name in by_name[a.filter].consumes), None)
            entry.wanted = (f"consumed by filter {by} at {parent}" if by else
                            "folded into its parent by a filter")
        report.entries.append(entry)
    for path, e in errs.items():  # nodes a split created
        if path not in listed:
            report.entries.append(CheckEntry(path, getattr(e, "source", "?"), "gap",
                                             error=str(e)))
    for path, n in _iter_paths(final):  # children a split created
        if path in listed or path in errs:
            continue
        lst = apps.get(path, [])
        parent, _, name = path.rpartition("/")
        parent = parent or "/"
        by = next((a.filter for a in apps.get(parent, [])
                   if name in by_name[a.filter].creates), None)
        report.entries.append(CheckEntry(
            path, lst[0].before if lst else _tv_str(n), "filtered" if lst else "ok",
            wanted=f"created by filter {by} at {parent}" if by else "",
            chain=[_step(a) for a in lst]))


def _coverage(report: CheckReport, final: dict[str, Any], root: Slot) -> None:
    def walk(node: dict[str, Any] | None, slot: Slot | None, path: str) -> None:
        if slot is not None and node is None:
            if slot.stateful:
                report.missing.append(path)
        if node is not None and slot is None:
            report.unconsumed.extend(p for p, _ in _iter_paths(node, path))
            return
        if slot is None:
            return
        names = list(slot.children)
        if node is not None:
            names += [k for k, c in node.items() if type(c) is dict and TYPE_KEY in c
                      and k not in slot.children]
        for n in names:
            c = node.get(n) if node is not None else None
            walk(c if type(c) is dict and TYPE_KEY in c else None, slot.children.get(n),
                 _join(path, n))

    walk(final, root, "/")
    report.missing.sort()
    report.unconsumed.sort()
