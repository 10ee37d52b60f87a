"""The state tree: saving a composition tree to nested nodes and loading nodes
back into a build, all-or-nothing.

A node is a ``dict``. ``__type__`` (str) and ``__version__`` (int) make it an
object node; its other keys are the object's state fields (from the output
visitor) and its children, each an object node under its child name, so the
tree mirrors the QOM composition tree and a path is the keys from the root.
``__stash__`` holds what a forward filter dropped (see docs/filters.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from .errors import LoadError, MigtreeError, StateError
from .qom import Object, canonical_path, split_path
from .visitor import node_to_state, state_to_node

TYPE_KEY = "__type__"
VERSION_KEY = "__version__"
STASH_KEY = "__stash__"


def is_object_node(value: Any) -> bool:
    return type(value) is dict and TYPE_KEY in value


def object_node(obj: Object, path: str | None = None) -> dict[str, Any]:
    """One object's own node (no children)."""
    from .pins import to_wire

    node: dict[str, Any] = {TYPE_KEY: obj.TYPE, VERSION_KEY: obj.VERSION}
    where = path if path is not None else canonical_path(obj)
    if obj.STATE is not None:
        obj.pre_save()
        node.update(state_to_node(obj.STATE, obj.state, obj.VERSION, where))
        _write_back_stash(obj, node, where)
    return to_wire(obj, node, where)  # a pinned build writes its pinned version


#: where a loaded object keeps the stash its node carried (opaque to it)
STASH_ATTR = "_migtree_stash"
#: the most stash a loaded object keeps, CBOR-encoded: the stash is for the
#: few fields a build has no room for, never for bulk state
MAX_KEPT_STASH = 64 << 10


@attrs.frozen
class KeptStash:
    """A loaded object's stash, and its state's fields as loaded (at its
    running version): the stash is written back only while they are the
    same (docs/filters.md 2.17)."""

    stash: dict[str, Any]
    fields: dict[str, Any]


def kept_stash(obj: Object) -> dict[str, Any] | None:
    """The stash ``obj``'s next save writes back, or None."""
    kept = obj.__dict__.get(STASH_ATTR)
    return kept.stash if kept is not None else None


def _write_back_stash(obj: Object, node: dict[str, Any], path: str) -> None:
    import copy
    import logging

    kept = obj.__dict__.get(STASH_ATTR)
    if kept is None:
        return
    fields = {k: v for k, v in node.items() if k not in (TYPE_KEY, VERSION_KEY)}
    if fields != kept.fields:
        # The device changed its state since the load: what the stash
        # remembers of the other build may no longer fit it. Dropped, said.
        del obj.__dict__[STASH_ATTR]
        logging.getLogger("migtree.tree").warning(
            "%s: the device's state changed since it was loaded, so the stash it carried "
            "(%s) is dropped, not written back", path, ", ".join(_stash_keys(kept.stash)))
        return
    node[STASH_KEY] = copy.deepcopy(kept.stash)


def _stash_keys(stash: Any) -> list[str]:
    if not isinstance(stash, dict):
        return ["?"]
    return [f"{k}.{f}" for k, v in stash.items()
            for f in (v if isinstance(v, dict) else {"?": None})]


def _keep(obj: Object, own: dict[str, Any], new_state: Any, path: str) -> KeptStash | None:
    """What ``obj`` keeps of ``own``'s stash once loaded (None: nothing).
    Raises StateError when the stash is above the bound."""
    import copy

    import cbor2

    stash = own.get(STASH_KEY)
    if not stash:
        return None
    size = len(cbor2.dumps(stash))
    if size > MAX_KEPT_STASH:
        raise StateError(path, STASH_KEY, f"the stash is {size} bytes, above the "
                         f"{MAX_KEPT_STASH} bytes a loaded object keeps")
    return KeptStash(copy.deepcopy(stash), state_to_node(obj.STATE, new_state, obj.VERSION,
                                                         path))


def save_tree(root: Object) -> dict[str, Any]:
    """The whole composition under ``root`` as one nested node."""

    def walk(obj: Object, path: str) -> dict[str, Any]:
        node = object_node(obj, path)
        for name, child in obj._children.items():
            node[name] = walk(child, _join(path, name))
        return node

    return walk(root, canonical_path(root))


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path != "/" else f"/{name}"


def iter_object_nodes(tree: dict[str, Any],
                      path: str = "/") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object node with its path, parents first, children in key order."""
    yield path, tree
    for key, value in tree.items():
        if type(value) is dict and TYPE_KEY in value:
            yield from iter_object_nodes(value, _join(path, key))


def get_node(tree: dict[str, Any], path: str) -> dict[str, Any] | None:
    node = tree
    for part in split_path(path):
        node = node.get(part)
        if not is_object_node(node):
            return None
    return node


def own_fields(node: dict[str, Any]) -> dict[str, Any]:
    """A node's own state: everything but reserved keys and child objects."""
    return {k: v for k, v in node.items()
            if k not in (TYPE_KEY, VERSION_KEY, STASH_KEY) and not is_object_node(v)}


@attrs.define
class LoadReport:
    """What a load did: every path loaded, and the coverage gaps both ways."""

    loaded: list[str] = attrs.Factory(list)
    #: destination objects with state that the tree gave nothing
    missing: list[str] = attrs.Factory(list)
    #: tree object nodes that no destination object consumed
    unconsumed: list[str] = attrs.Factory(list)
    #: paths whose node carried a stash (dropped by a forward filter)
    stashed: list[str] = attrs.Factory(list)
    #: path -> the stash the loaded object keeps and its next save writes back
    kept: dict[str, Any] = attrs.Factory(dict)

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def load_tree(tree: dict[str, Any], root: Object, *, allow_missing: bool = False,
              allow_unconsumed: bool = False) -> LoadReport:
    """Hand ``tree`` to the objects under ``root`` through the input visitor.

    All-or-nothing: every object's new state is built and validated first;
    only when all succeed are they assigned, then each object's ``post_load``
    runs. If a ``post_load`` fails, every object gets its old state back (and
    ``post_load`` again, to resync derived state) before the error is raised.
    """
    from .pins import from_wire, wire_range

    report = LoadReport()
    staged: list[tuple[Object, Any]] = []
    keeps: list[tuple[Object, KeptStash | None]] = []
    errors: list[str] = []

    def walk(obj: Object, node: dict[str, Any] | None, path: str) -> None:
        if node is None:
            if obj.STATE is not None:
                report.missing.append(path)
        else:
            ntype, nver = node.get(TYPE_KEY), node.get(VERSION_KEY)
            lo, hi = wire_range(obj)
            if ntype != obj.TYPE:
                errors.append(f"{path}: the tree holds {ntype}@{nver} but the build has "
                              f"{obj.TYPE}@{hi} here, and no filter made them meet")
            elif type(nver) is not int or not lo <= nver <= hi:
                errors.append(f"{path}: {ntype} version {nver!r} is outside the range this "
                              f"build loads ({lo}..{hi})")
            else:
                if obj.STATE is not None:
                    try:
                        own = from_wire(obj, node, path)  # a pinned object's version up
                        new_state = node_to_state(obj.STATE, own, own[VERSION_KEY], path)
                        obj.check_load(new_state)
                        kept = _keep(obj, own, new_state, path)
                        staged.append((obj, new_state))
                        keeps.append((obj, kept))
                        if kept is not None:
                            report.kept[path] = kept.stash
                    except StateError as e:
                        errors.append(str(e))
                    except MigtreeError as e:
                        errors.append(f"{path}: {e}")
                report.loaded.append(path)
                if STASH_KEY in node:
                    report.stashed.append(path)
            for key, value in node.items():
                if is_object_node(value) and key not in obj._children:
                    below = iter_object_nodes(value, _join(path, key))
                    report.unconsumed.extend(p for p, _ in below)
        for name, child in obj._children.items():
            sub = node.get(name) if node is not None else None
            walk(child, sub if is_object_node(sub) else None, _join(path, name))

    walk(root, tree, canonical_path(root))
    report.missing.sort()
    report.unconsumed.sort()
    if report.missing and not allow_missing:
        errors.extend(f"{p}: the build has an object with state here but the tree has no node "
                      "for it" for p in report.missing)
    if report.unconsumed and not allow_unconsumed:
        errors.extend(f"{p}: the tree has a node here that no object in the build consumes"
                      for p in report.unconsumed)
    if errors:
        raise LoadError(_summarise(errors))

    old = [(obj, obj.state) for obj, _ in staged]
    for obj, state in staged:
        obj.state = state
    order = sorted(range(len(staged)), key=lambda i: (staged[i][0].POST_LOAD_ORDER, i))
    done: list[Object] = []
    for i in order:
        current = staged[i][0]
        try:
            current.post_load()
        except Exception as e:
            for obj, state in old:
                obj.state = state
            for obj in done:
                try:
                    obj.post_load()
                except Exception:  # best effort resync: the original error is what counts
                    pass
            what = str(e) if isinstance(e, MigtreeError) else f"{e.__class__.__name__}: {e}"
            raise LoadError(f"{canonical_path(current)}: post_load failed, every object was "
                            f"given its previous state back: {what}") from e
        done.append(current)
    for obj, kept in keeps:  # the load happened: each object keeps its node's stash
        if kept is None:
            obj.__dict__.pop(STASH_ATTR, None)
        else:
            obj.__dict__[STASH_ATTR] = kept
    return report


def _summarise(errors: list[str], limit: int = 20) -> str:
    head = errors[:limit]
    more = f"\n... and {len(errors) - limit} more" if len(errors) > limit else ""
    noun = "error" if len(errors) == 1 else "errors"
    return f"load refused ({len(errors)} {noun}), nothing was changed:\n  " + \
        "\n  ".join(head) + more
