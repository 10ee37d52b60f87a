"""The test kit for plugin vendors: a pytest plugin (entry point
``pytest11: migtree``, so it is active in every pytest run where migtree is
installed) and one-line assertions.

Fixtures:

``migtree_registry``
    a fresh :class:`~migtree.registry.Registry` holding only the core's types,
    loaded through the ``migtree`` entry point like in production.
``migtree_registry_factory``
    ``factory(*plugins) -> Registry``: the core plus the plugins you name. A
    string is an *installed* distribution, loaded through its entry points
    (this is how a smoke test proves the entry point works); anything else is
    a plugin object (a module or an instance with ``@hookimpl`` methods)
    registered in-process, optionally as ``(name, obj)``.

Assertions (plain functions, usable outside pytest too):

* :func:`assert_round_trips` — a filter pair takes every state of a
  type@version forward and back unchanged (hypothesis-generated from the
  state declaration).
* :func:`assert_stream_loads` — a stream loads into a build.
* :func:`assert_explain` — a dry run applies exactly the filters you expect.

This module is imported by every pytest run that has migtree installed, so it
imports nothing heavy at import time (hypothesis, the engine and the stream
code are imported when an assertion needs them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import pytest

#: default QOM path at which assert_round_trips applies filters
DEFAULT_PATH = "/machine/peripheral/dut"


# -- registries ------------------------------------------------------------------

def make_registry(*plugins: Any) -> Any:
    """The core's types plus ``plugins`` (see ``migtree_registry_factory``).
    A plugin that fails to load raises :class:`~migtree.errors.PluginError`
    naming it: a test should never silently run without its plugin."""
    from .errors import PluginError
    from .plugins import load_registry, normalize, register_plugin

    installed = [p for p in plugins if isinstance(p, str)]
    registry = load_registry(allow=installed, deny=[])
    loaded = {normalize(name): rec for name, rec in registry.plugins.items()}
    for name in installed:
        rec = loaded.get(normalize(name))
        if rec is None:
            raise PluginError(f"{name}: not installed (no distribution of that name has a "
                              "'migtree' entry point; did you pip install -e . ?)")
        if rec.error is not None:
            raise PluginError(rec.error)
    for plugin in plugins:
        if isinstance(plugin, str):
            continue
        if isinstance(plugin, tuple):
            name, obj = plugin
        else:
            obj = plugin
            name = getattr(plugin, "__name__", None) or type(plugin).__qualname__
        register_plugin(registry, obj, name)
    return registry


@pytest.fixture
def migtree_registry() -> Any:
    """A fresh registry holding only the core's own types."""
    return make_registry()


@pytest.fixture
def migtree_registry_factory() -> Any:
    """``factory(*plugins) -> Registry``: the core plus the given plugins;
    strings are installed distributions (through their entry points), other
    objects are registered in-process (``(name, obj)`` to name them)."""
    return make_registry


# -- tree helpers ------------------------------------------------------------------

def _copy(value: Any) -> Any:
    """A copy of a tree deep enough that a filter mutating it cannot touch
    the original (dicts and lists are copied; leaves are immutable or, like
    blobs, never mutated by filters)."""
    if type(value) is dict:
        return {k: _copy(v) for k, v in value.items()}
    if type(value) is list:
        return [_copy(v) for v in value]
    return value


def tree_diff(a: Any, b: Any, where: str = "") -> list[str]:
    """Human-readable differences between two trees (empty when equal)."""
    if type(a) is dict and type(b) is dict:
        out = []
        for k in sorted(set(a) | set(b), key=str):
            here = f"{where}.{k}" if where else str(k)
            if k not in b:
                out.append(f"{here}: only before ({_short(a[k])})")
            elif k not in a:
                out.append(f"{here}: only after ({_short(b[k])})")
            else:
                out.extend(tree_diff(a[k], b[k], here))
        return out
    if type(a) is list and type(b) is list and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out.extend(tree_diff(x, y, f"{where}[{i}]"))
        return out
    if type(a) is not type(b) or a != b:
        return [f"{where or '<node>'}: {_short(a)} -> {_short(b)}"]
    return []


def _short(v: Any, limit: int = 80) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _state_class(registry: Any, tv: Any) -> type | None:
    info = registry.types.get(tv.type)
    if info is None:
        raise AssertionError(f"type {tv.type!r} is not registered (registered: "
                             f"{', '.join(t.name for t in registry.types)})")
    versions = info.versions()
    if info.cls.STATE is None and not versions:
        return None
    if tv.version not in versions:
        raise AssertionError(f"{tv}: {tv.type} has no state declaration for version "
                             f"{tv.version} (known: {sorted(versions)}); declare older "
                             "layouts in HISTORY")
    return versions[tv.version]


def _node_strategy(registry: Any, tv: Any, children: dict[str, Any], path: str):
    """Hypothesis strategy of object nodes at ``tv``, with child object
    nodes for ``children`` (child name -> TypeRange or TypeVersion)."""
    from hypothesis import strategies as st

    from .visitor import state_to_node, strategy_for

    cls = _state_class(registry, tv)

    def own(state: Any) -> dict[str, Any]:
        node = {"__type__": tv.type, "__version__": tv.version}
        if cls is not None:
            node.update(state_to_node(cls, state, tv.version, path))
        return node

    base = strategy_for(cls, tv.version).map(own) if cls is not None else st.just(own(None))
    if not children:
        return base
    kids = {}
    for name, want in sorted(children.items()):
        kids[name] = _node_strategy(registry, _pick_version(registry, want), {},
                                    f"{path}/{name}")

    def attach(parts: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
        node, sub = parts
        node.update(sub)
        return node

    return st.tuples(base, st.fixed_dictionaries(kids)).map(attach)


def _pick_version(registry: Any, want: Any) -> Any:
    """The newest declared version of a type inside ``want`` (a TypeRange or
    TypeVersion)."""
    from .filters import TypeRange, TypeVersion

    if isinstance(want, TypeVersion):
        return want
    want = TypeRange.parse(want)
    info = registry.types.get(want.type)
    if info is None:
        raise AssertionError(f"a filter consumes a child of type {want.type!r}, "
                             "which is not registered")
    inside = [v for v in info.versions() if want.lo <= v <= want.hi] or \
        [v for v in range(info.min_version, info.version + 1) if want.lo <= v <= want.hi]
    if not inside:
        raise AssertionError(f"no declared version of {want.type} lies in {want}")
    return TypeVersion(want.type, max(inside))


def _filter(registry: Any, name: str, dynamic: Iterable[Any] = ()) -> Any:
    flt = registry.filters.get(name)
    if flt is None:
        flt = next((f for f in dynamic if f.name == name), None)
    if flt is None:
        raise AssertionError(f"no filter named {name!r} is registered (registered: "
                             f"{', '.join(sorted(registry.filters)) or 'none'})")
    return flt


def apply_filter(flt: Any, node: dict[str, Any], path: str = DEFAULT_PATH) -> dict[str, Any]:
    """Apply one filter to one node directly, and check it kept its word:
    the result is ``flt.produces`` and carries the children it declares it
    creates. Returns the new node (the input may have been mutated)."""
    from .filters import FilterContext

    if not flt.match.contains(_tv_of(node)):
        raise AssertionError(f"filter {flt.name} matches {flt.match}, "
                             f"not {_tv_of(node)}")
    for child, want in flt.consumes.items():
        got = node.get(child)
        if type(got) is not dict or not want.contains(_tv_of(got)):
            raise AssertionError(f"filter {flt.name} consumes child {child!r} as {want}, "
                                 f"but the node has {_short(got)}")
    try:
        out = flt.func(node, FilterContext(path, flt))
    except AssertionError:
        raise
    except Exception as e:
        raise AssertionError(f"filter {flt.name} ({flt.plugin}) raised at {path}: "
                             f"{e.__class__.__name__}: {e}") from e
    if type(out) is not dict:
        raise AssertionError(f"filter {flt.name} returned {_short(out)}, not a node")
    if _tv_of(out) != flt.produces:
        raise AssertionError(f"filter {flt.name} declares it produces {flt.produces} but "
                             f"returned {_tv_of(out)}")
    for child, tv in flt.creates.items():
        got = out.get(child)
        if type(got) is not dict or _tv_of(got) != tv:
            raise AssertionError(f"filter {flt.name} declares it creates {child!r} as {tv} "
                                 f"but returned {_short(got)}")
    return out


def _tv_of(node: Any) -> Any:
    from .filters import TypeVersion

    if type(node) is not dict:
        return None
    t, v = node.get("__type__"), node.get("__version__")
    return TypeVersion(t, v) if isinstance(t, str) and type(v) is int else (t, v)


def _check_loadable(registry: Any, node: dict[str, Any], path: str, why: str) -> None:
    """The node (and the object children it holds) passes the strict input
    visitor of its type@version, when that version is declared."""
    from .errors import StateError
    from .tree import is_object_node
    from .visitor import node_to_state

    tv = _tv_of(node)
    info = registry.types.get(tv.type) if not isinstance(tv, tuple) else None
    if info is not None:
        cls = info.versions().get(tv.version)
        if cls is not None:
            try:
                node_to_state(cls, node, tv.version, path)
            except StateError as e:
                raise AssertionError(f"{why}: {tv} does not load: {e}") from None
    for key, value in node.items():
        if is_object_node(value):
            _check_loadable(registry, value, f"{path}/{key}", why)


def load_and_save(registry: Any, node: dict[str, Any], path: str = DEFAULT_PATH
                  ) -> dict[str, Any]:
    """What a build that *loads* ``node`` and saves it again writes: every
    object node (children included) read by the strict input visitor of its
    declared ``type@version`` and written back by the output visitor, its
    stash kept beside the state and written back with it, as a loaded object
    does (docs/filters.md 2.17). A node whose version has no declaration
    is passed on as it is."""
    from .engine import STASH_KEY
    from .tree import is_object_node
    from .visitor import node_to_state, state_to_node

    tv = _tv_of(node)
    out: dict[str, Any] = {"__type__": node.get("__type__"),
                           "__version__": node.get("__version__")}
    info = registry.types.get(tv.type) if not isinstance(tv, tuple) else None
    cls = info.versions().get(tv.version) if info is not None else None
    if cls is not None:
        out.update(state_to_node(cls, node_to_state(cls, node, tv.version, path), tv.version,
                                 path))
    else:
        out.update({k: _copy(v) for k, v in node.items() if not is_object_node(v)})
    if node.get(STASH_KEY):
        out[STASH_KEY] = _copy(node[STASH_KEY])
    for key, value in node.items():
        if is_object_node(value):
            out[key] = load_and_save(registry, value, f"{path}/{key}")
    return out


# -- the assertions ------------------------------------------------------------------

def assert_round_trips(registry: Any, forward_name: str, backward_name: str,
                       type_at_version: str, *, path: str = DEFAULT_PATH,
                       max_examples: int | None = None, through_load: bool = False) -> None:
    """Every state of ``type_at_version`` goes through filter ``forward_name``
    and back through ``backward_name`` unchanged.

    States come from the type's state declaration at that version (its
    ``STATE`` or ``HISTORY`` class) through hypothesis
    (:func:`migtree.visitor.strategy_for`); a merge's consumed children are
    generated the same way. Each filter is applied directly (no engine) and
    must keep its declaration (``produces``, ``creates``); the intermediate
    node must pass the strict input visitor of the produced type@version
    when that version is declared, and the final node must equal the
    original exactly — no leftover ``__stash__``. A failure is an
    ``AssertionError`` with hypothesis' minimal example and a per-field diff.

    ``through_load=True`` puts a build in the middle that really loads the
    intermediate node and saves it again (:func:`load_and_save`): the state
    goes through the other version's declaration and the stash through a
    loaded object, as in A -> B -> A with B running the other version.
    """
    from hypothesis import HealthCheck, given, settings

    from .filters import TypeVersion

    tv = TypeVersion.parse(type_at_version)
    fwd = _filter(registry, forward_name)
    back = _filter(registry, backward_name)
    if not fwd.match.contains(tv):
        raise AssertionError(f"{forward_name} matches {fwd.match}, not {tv}")
    if not back.match.contains(fwd.produces):
        raise AssertionError(f"{forward_name} produces {fwd.produces}, which "
                             f"{backward_name} (matching {back.match}) does not take back")
    if back.produces != tv:
        raise AssertionError(f"{backward_name} produces {back.produces}, not {tv}: the pair "
                             "does not come back to where it started")
    strategy = _node_strategy(registry, tv, dict(fwd.consumes), path)
    current = settings()
    checks = [HealthCheck.too_slow, HealthCheck.data_too_large,
              HealthCheck.function_scoped_fixture]

    @settings(current, deadline=None, suppress_health_check=checks,
              max_examples=max_examples or current.max_examples)
    @given(strategy)
    def round_trip(node: dict[str, Any]) -> None:
        original = _copy(node)
        mid = apply_filter(fwd, _copy(node), path)
        _check_loadable(registry, mid, path, f"after {forward_name}")
        if through_load:
            mid = load_and_save(registry, mid, path)
        final = apply_filter(back, mid, path)
        diff = tree_diff(original, final)
        if diff:
            raise AssertionError(f"{forward_name} then {backward_name} changed "
                                 f"{tv} at {path}:\n  " + "\n  ".join(diff))

    # One database entry per pair and type@version, not one shared by every
    # vendor's round trip (hypothesis keys it by the test function, which is
    # this one); hypothesis' own stateful tests use the same hook.
    inner = getattr(getattr(round_trip, "hypothesis", None), "inner_test", None)
    if inner is not None:
        inner._hypothesis_internal_add_digest = \
            (f"{forward_name}|{backward_name}|{tv}|{path}"
             + ("|through-load" if through_load else "")).encode()
    round_trip()


@attrs.define
class StreamLoad:
    """What :func:`assert_stream_loads` did: the filter pass and the load."""

    filters: Any  #: :class:`migtree.engine.FilterReport`
    load: Any     #: :class:`migtree.tree.LoadReport`


def assert_stream_loads(stream_bytes: bytes, build_root: Any, registry: Any, *,
                        allow_missing: bool = False,
                        allow_unconsumed: bool = False) -> StreamLoad:
    """The stream reads, the filters take every node to what the build has at
    its path, and the result loads (all or nothing) into the build's objects.

    :param stream_bytes: a migtree stream (or a path or binary file).
    :param build_root: a :class:`migtree.build.Build` (its dynamic filters take
        part) or a QOM root from :func:`migtree.qom.new_root` (the filters its
        machine's devices registered take part).
    :param registry: whose static filters and types are used.
    :return: a :class:`StreamLoad` with the filter report and the load report.

    A failure is an ``AssertionError`` carrying migtree's own message (the
    path, the filter, the field)."""
    from .engine import Destination, apply_filters
    from .errors import MigtreeError
    from .stream import load, read_tree

    root, filters = _root_and_filters(build_root, registry)
    try:
        _, tree = read_tree(stream_bytes)
        report = apply_filters(tree, Destination.of_build(root, registry), filters)
        loaded = load(tree, root, registry=registry, allow_missing=allow_missing,
                      allow_unconsumed=allow_unconsumed)
    except MigtreeError as e:
        raise AssertionError(f"the stream does not load: {e}") from None
    return StreamLoad(report, loaded)


def assert_explain(stream_or_tree: Any, build_root: Any, registry: Any,
                   expected_applications: Sequence[Any]) -> list[Any]:
    """A dry run (``migtree explain``) of the filters on ``stream_or_tree``
    towards the build applies exactly ``expected_applications``, in order.

    :param stream_or_tree: stream bytes (or a path or binary file), or a state
        tree, which is copied, not rewritten.
    :param build_root: as for :func:`assert_stream_loads`.
    :param expected_applications: one entry per application, in the order the
        engine applies them: a filter name, a ``(filter, path)`` pair, or a
        dict whose items must all be in the application's ``as_dict()``
        (``filter``, ``plugin``, ``kind``, ``path``, ``before``, ``after``,
        ``reason``, ``diff``, ``stashed``, ``restored``, ``defaulted``).
    :return: the :class:`migtree.engine.Application` list, for further checks.
    """
    from .engine import Destination, apply_filters
    from .errors import MigtreeError
    from .stream import read_tree

    root, filters = _root_and_filters(build_root, registry)
    try:
        tree = _copy(stream_or_tree) if isinstance(stream_or_tree, dict) else \
            read_tree(stream_or_tree)[1]
        report = apply_filters(tree, Destination.of_build(root, registry), filters,
                               explain=True)
    except MigtreeError as e:
        raise AssertionError(f"the dry run failed: {e}") from None
    got = [a.as_dict() for a in report.applications]
    ok = len(got) == len(expected_applications) and all(
        _app_matches(want, app) for want, app in zip(expected_applications, got, strict=False))
    if not ok:
        want = "\n    ".join(map(repr, expected_applications)) or "(nothing)"
        applied = "\n    ".join(f"{a['filter']} at {a['path']}: {a['before']} -> {a['after']}"
                                for a in got) or "(nothing)"
        raise AssertionError(f"explain differs:\n  expected:\n    {want}\n"
                             f"  applied:\n    {applied}")
    return list(report.applications)


def _app_matches(want: Any, app: dict[str, Any]) -> bool:
    if isinstance(want, str):
        return app["filter"] == want
    if isinstance(want, tuple):
        return (app["filter"], app["path"]) == want
    return all(app.get(k) == v for k, v in dict(want).items())


def _root_and_filters(build_root: Any, registry: Any) -> tuple[Any, list[Any]]:
    """The QOM root and every filter of a migration into it: the registry's
    static ones and the dynamic ones the build's objects registered."""
    import types

    from .engine import gather_filters

    if hasattr(build_root, "root") and hasattr(build_root, "dynamic_filters"):
        root, dynamic = build_root.root, list(build_root.dynamic_filters)
    else:
        root = build_root
        machine = getattr(root, "_children", {}).get("machine")
        dynamic = list(getattr(machine, "dynamic_filters", []) or [])
    return root, gather_filters(types.SimpleNamespace(registry=registry,
                                                      dynamic_filters=dynamic))
