"""Declarative building blocks for filter functions.

Each helper returns a step ``step(node, ctx) -> node``; :func:`chain` runs
steps in order. Most vendor filters are then a declaration, not code::

    Filter(name="apic-v2-to-v3", match="apic@2", produces="apic@3",
           func=ops.chain(ops.rename_field("timer", "timer_expiry"),
                          ops.add_field("count_shift", 0),
                          ops.set_version(3)))

Field names may be dotted (``"sipi.vector"``) to reach into plain struct
dicts (and into child object nodes). Every failure is an :class:`OpError`
naming the node's path, the step and the field.

Stash: :func:`drop_field` keeps what it drops in
``node["__stash__"][ctx.stash_key][name]`` and :func:`add_field` takes it
back from there (else it uses its default), so a :class:`FilterPair` built
from the two is the identity both ways. ``ctx.stash_key`` is the pair's
name, shared by its two directions. See docs/filters.md.

The steps are small frozen attrs classes: they compare equal when their
arguments do (so a dynamic filter declared again by every instance of a
device is recognised as the same filter) and their ``repr`` reads as the
call that made them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from .errors import FilterError
from .filters import TypeVersion

TYPE_KEY = "__type__"
VERSION_KEY = "__version__"
STASH_KEY = "__stash__"
_RESERVED = (TYPE_KEY, VERSION_KEY, STASH_KEY)

Step = Callable[[dict[str, Any], Any], dict[str, Any]]


class OpError(FilterError):
    """A building block could not do its job on this node.

    ``str()`` reads ``/machine/peripheral/vblk0: rename_field('a', 'b'):
    field 'a': no such field (fields: x, y)``.
    """

    def __init__(self, path: str, op: str, field: str | None, message: str):
        self.path, self.op, self.field, self.reason = path, op, field, message
        where = f"{path}: {op}" + (f": field {field!r}" if field is not None else "")
        super().__init__(f"{where}: {message}")


def _path(ctx: Any) -> str:
    return getattr(ctx, "path", "?")


def _fields_list(d: Mapping[str, Any]) -> str:
    names = [k for k in d if k not in _RESERVED]
    return ", ".join(sorted(map(str, names))) or "none"


def _parts(dotted: str) -> list[str]:
    if not isinstance(dotted, str) or not dotted or any(not p for p in dotted.split(".")):
        raise ValueError(f"expected a field name or dotted path, got {dotted!r}")
    parts = dotted.split(".")
    for p in parts:
        if p in _RESERVED:
            raise ValueError(f"{dotted!r}: {p} is reserved for the engine")
    return parts


def _container(node: dict[str, Any], parts: list[str], ctx: Any, op: str, field: str,
               create: bool = False) -> dict[str, Any]:
    """The dict holding ``parts[-1]``; with ``create``, missing plain dicts on
    the way are made."""
    cur = node
    for i, p in enumerate(parts[:-1]):
        nxt = cur.get(p)
        if nxt is None and create and p not in cur:
            nxt = cur[p] = {}
        if type(nxt) is not dict:
            at = ".".join(parts[: i + 1])
            what = "missing" if p not in cur else f"a {type(nxt).__name__}, not a struct"
            raise OpError(_path(ctx), op, field, f"{at} is {what}")
        cur = nxt
    return cur


def _get(node: dict[str, Any], dotted: str, ctx: Any, op: str) -> tuple[dict[str, Any], str]:
    parts = _parts(dotted)
    holder = _container(node, parts, ctx, op, dotted)
    if parts[-1] not in holder:
        raise OpError(_path(ctx), op, dotted, f"no such field (fields: {_fields_list(holder)})")
    return holder, parts[-1]


def _prune(node: dict[str, Any], parts: list[str]) -> None:
    """Remove plain (non-object) dicts along ``parts[:-1]`` left empty."""
    chain = [node]
    for p in parts[:-1]:
        nxt = chain[-1].get(p)
        if type(nxt) is not dict:
            return
        chain.append(nxt)
    for i in range(len(chain) - 1, 0, -1):
        d = chain[i]
        if d or TYPE_KEY in d:
            return
        del chain[i - 1][parts[i - 1]]


def _stash_of(node: dict[str, Any], key: str, create: bool) -> dict[str, Any] | None:
    stash = node.get(STASH_KEY)
    if stash is None:
        if not create:
            return None
        stash = node[STASH_KEY] = {}
    if type(stash) is not dict:
        raise TypeError(f"{STASH_KEY} is a {type(stash).__name__}, not a map")
    entry = stash.get(key)
    if entry is None:
        if not create:
            return None
        entry = stash[key] = {}
    return entry


def _unstash(node: dict[str, Any], key: str, name: str) -> tuple[bool, Any]:
    """Take ``name`` out of ``node``'s stash under ``key``, removing emptied
    stash dicts. ``(False, None)`` when nothing is stashed under that name."""
    entry = _stash_of(node, key, create=False)
    if entry is None or name not in entry:
        return False, None
    value = entry.pop(name)
    if not entry:
        del node[STASH_KEY][key]
        if not node[STASH_KEY]:
            del node[STASH_KEY]
    return True, value


def _note_default(ctx: Any, field: str, value: Any) -> None:
    note = getattr(ctx, "note_default", None)
    if note is not None:
        note(field, copy.deepcopy(value))


def _names(fields: Iterable[str] | Mapping[str, str] | None) -> dict[str, str] | None:
    if fields is None:
        return None
    if isinstance(fields, str):
        raise ValueError("give a list of field names (or a mapping), not a string")
    if isinstance(fields, Mapping):
        out = dict(fields)
    else:
        out = {f: f for f in fields}
    for a, b in out.items():
        for n in (a, b):
            if not isinstance(n, str) or not n or n in _RESERVED:
                raise ValueError(f"invalid field name {n!r}")
    return out


def _freeze_names(fields: Any) -> tuple[tuple[str, str], ...] | None:
    names = _names(fields)
    return None if names is None else tuple(names.items())


def _tv_or_none(x: Any) -> TypeVersion | None:
    return None if x is None else TypeVersion.parse(x)


# -- the steps ---------------------------------------------------------------


@attrs.frozen(init=False)
class chain:  # lower case: reads as the function it stands for
    """Run ``steps`` in order, each on what the previous one returned."""

    steps: tuple[Step, ...]

    def __init__(self, *steps: Step):
        for s in steps:
            if not callable(s):
                raise TypeError(f"chain(): {s!r} is not callable")
        self.__attrs_init__(tuple(steps))

    def __call__(self, node: dict[str, Any], ctx: Any) -> dict[str, Any]:
        for step in self.steps:
            node = step(node, ctx)
        return node


@attrs.frozen
class rename_type:
    """Set ``__type__`` to ``new`` (the proposal's kvm-apic -> apic)."""

    new: str

    def __call__(self, node, ctx):
        node[TYPE_KEY] = self.new
        return node


@attrs.frozen
class set_version:
    """Set ``__version__`` to ``version``."""

    version: int = attrs.field(validator=attrs.validators.instance_of(int))

    def __call__(self, node, ctx):
        node[VERSION_KEY] = self.version
        return node


@attrs.frozen
class rename_field:
    """Rename ``old`` (may be dotted) to ``new``, a bare name in the same
    struct: ``rename_field("sipi.vector", "vec")``."""

    old: str
    new: str

    def __attrs_post_init__(self):
        _parts(self.old)
        if "." in self.new:
            raise ValueError(f"rename_field: new name {self.new!r} must be a bare name; "
                             "use move_field to move a field elsewhere")
        _parts(self.new)

    def __call__(self, node, ctx):
        op = f"rename_field({self.old!r}, {self.new!r})"
        holder, last = _get(node, self.old, ctx, op)
        if self.new in holder:
            raise OpError(_path(ctx), op, self.new, "already exists")
        # keep the key's position: rebuild the holder in order
        items = [(self.new if k == last else k, v) for k, v in holder.items()]
        holder.clear()
        holder.update(items)
        return node


@attrs.frozen
class move_field:
    """Move ``src`` to ``dst`` (both may be dotted). Missing plain dicts on
    the way to ``dst`` are created; plain dicts that ``src`` leaves empty are
    removed, so ``move_field(a, b)`` then ``move_field(b, a)`` is the
    identity."""

    src: str
    dst: str

    def __attrs_post_init__(self):
        _parts(self.src)
        _parts(self.dst)

    def __call__(self, node, ctx):
        op = f"move_field({self.src!r}, {self.dst!r})"
        holder, last = _get(node, self.src, ctx, op)
        dparts = _parts(self.dst)
        value = holder[last]
        target = _container(node, dparts, ctx, op, self.dst, create=True)
        if dparts[-1] in target:
            raise OpError(_path(ctx), op, self.dst, "already exists")
        del holder[last]
        target[dparts[-1]] = value
        _prune(node, _parts(self.src))
        return node


_NO_DEFAULT: Any = attrs.make_class("NoDefault", {}, repr=False)()


@attrs.frozen
class drop_field:
    """Remove ``name`` (may be dotted), keeping its value in
    ``node["__stash__"][ctx.stash_key][name]`` for the way back. With
    ``missing_ok``, an absent field is not an error (and nothing is stashed).

    ``default``: a value *equal* to it is not stashed, because the
    :class:`add_field` undoing this drop makes that value by default anyway.
    Give it the default of that ``add_field``: then a field a forward filter
    added by default does not come back as a stash entry (A -> B -> A is the
    identity, stash included), and B -> A -> B still restores any other value.
    """

    name: str
    missing_ok: bool = False
    default: Any = attrs.field(default=_NO_DEFAULT, kw_only=True)

    def __attrs_post_init__(self):
        _parts(self.name)

    def __call__(self, node, ctx):
        op = f"drop_field({self.name!r})"
        parts = _parts(self.name)
        try:
            holder, last = _get(node, self.name, ctx, op)
        except OpError:
            if self.missing_ok:
                return node
            raise
        if self.default is not _NO_DEFAULT:
            value = holder[last]
            if type(value) is type(self.default) and value == self.default:
                del holder[last]
                _prune(node, parts)
                return node
        try:
            entry = _stash_of(node, ctx.stash_key, create=True)
        except TypeError as e:
            raise OpError(_path(ctx), op, self.name, str(e)) from None
        if self.name in entry:
            raise OpError(_path(ctx), op, self.name,
                          f"the stash {ctx.stash_key!r} already holds a value for it")
        entry[self.name] = holder.pop(last)
        _prune(node, parts)
        return node


@attrs.frozen
class add_field:
    """Add ``name`` (may be dotted): the value :func:`drop_field` stashed
    under this filter's stash key if there is one (the entry and emptied
    stash dicts are removed), else a copy of ``default`` (or
    ``factory()``), recorded as *defaulted* for ``explain``."""

    name: str
    default: Any = None
    factory: Callable[[], Any] | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self):
        _parts(self.name)

    def __call__(self, node, ctx):
        op = f"add_field({self.name!r})"
        parts = _parts(self.name)
        holder = _container(node, parts, ctx, op, self.name, create=True)
        if parts[-1] in holder:
            raise OpError(_path(ctx), op, self.name, "already exists")
        try:
            found, value = _unstash(node, ctx.stash_key, self.name)
        except TypeError as e:
            raise OpError(_path(ctx), op, self.name, str(e)) from None
        if not found:
            value = self.factory() if self.factory is not None else copy.deepcopy(self.default)
            _note_default(ctx, self.name, value)
        holder[parts[-1]] = value
        return node


@attrs.frozen
class convert:
    """Replace the value of ``field`` (may be dotted) with ``fn(value)``."""

    field: str
    fn: Callable[[Any], Any]

    def __attrs_post_init__(self):
        _parts(self.field)
        if not callable(self.fn):
            raise TypeError(f"convert({self.field!r}): fn is not callable")

    def __call__(self, node, ctx):
        name = getattr(self.fn, "__name__", repr(self.fn))
        op = f"convert({self.field!r}, {name})"
        holder, last = _get(node, self.field, ctx, op)
        try:
            holder[last] = self.fn(holder[last])
        except Exception as e:
            raise OpError(_path(ctx), op, self.field,
                          f"{e.__class__.__name__}: {e}") from e
        return node


@attrs.frozen(init=False)
class default_missing:
    """Give each absent field its default: ``default_missing(esr=0,
    timer_expiry=-1)`` or, for dotted names, ``default_missing({"sipi.vector":
    0})``. Present fields are left alone; filled ones are recorded as
    *defaulted*."""

    defaults: tuple[tuple[str, Any], ...]

    def __init__(self, mapping: Mapping[str, Any] | None = None, /, **fields: Any):
        merged = dict(mapping or {})
        merged.update(fields)
        for k in merged:
            _parts(k)
        self.__attrs_init__(tuple(merged.items()))

    def __call__(self, node, ctx):
        for name, default in self.defaults:
            parts = _parts(name)
            holder = _container(node, parts, ctx, f"default_missing({name}=...)", name,
                                create=True)
            if parts[-1] not in holder:
                value = copy.deepcopy(default)
                holder[parts[-1]] = value
                _note_default(ctx, name, value)
        return node


@attrs.frozen
class hoist:
    """Move ``fields`` of the child ``child`` up into the node. ``fields`` is
    a list of names, or a mapping ``{child_field: node_field}`` to rename on
    the way. With ``remove_empty`` (the default) the child is removed when
    nothing but ``__type__``/``__version__`` is left in it -- the inverse of
    :class:`plunge`; a filter that may remove it declares it in ``consumes``."""

    child: str
    fields: tuple[tuple[str, str], ...] = attrs.field(converter=_freeze_names)
    remove_empty: bool = True

    def __call__(self, node, ctx):
        op = f"hoist({self.child!r})"
        sub = node.get(self.child)
        if type(sub) is not dict:
            what = "missing" if self.child not in node else f"a {type(sub).__name__}"
            raise OpError(_path(ctx), op, self.child, f"the child is {what}")
        for src, dst in self.fields:
            if src not in sub:
                raise OpError(_path(ctx), op, f"{self.child}.{src}",
                              f"no such field (fields: {_fields_list(sub)})")
            if dst in node:
                raise OpError(_path(ctx), op, dst, "already exists in the node")
        for src, dst in self.fields:
            node[dst] = sub.pop(src)
        if self.remove_empty and not any(k not in (TYPE_KEY, VERSION_KEY) for k in sub):
            del node[self.child]
        return node


@attrs.frozen
class plunge:
    """Move ``fields`` of the node down into a new child ``child`` of type
    ``child_type_version`` (``"virtio-blk@1"``; ``None`` makes a plain
    struct). ``fields``: names, or a mapping ``{node_field: child_field}``.
    A filter using it declares the child in ``creates``."""

    child: str
    child_type_version: TypeVersion | None = attrs.field(converter=_tv_or_none)
    fields: tuple[tuple[str, str], ...] = attrs.field(converter=_freeze_names)

    def __call__(self, node, ctx):
        op = f"plunge({self.child!r})"
        if self.child in node:
            raise OpError(_path(ctx), op, self.child, "the node already has it")
        for src, _ in self.fields:
            if src not in node:
                raise OpError(_path(ctx), op, src,
                              f"no such field (fields: {_fields_list(node)})")
        sub: dict[str, Any] = {}
        if self.child_type_version is not None:
            sub[TYPE_KEY] = self.child_type_version.type
            sub[VERSION_KEY] = self.child_type_version.version
        for src, dst in self.fields:
            sub[dst] = node.pop(src)
        node[self.child] = sub
        return node


def _child_stash_name(child: str) -> str:
    return f"{child}.{STASH_KEY}"


@attrs.frozen
class merge_child:
    """Fold the child ``child`` into the node and remove it (declare it in
    ``consumes``). Every key of the child moves up (``fields=None``), renamed
    to ``prefix + name``; or only ``fields`` (names or ``{child: node}``
    mapping), and then anything left in the child is an error rather than a
    silent loss. The child's own stash is kept in the node's stash, so
    :class:`split_child` gives it back."""

    child: str
    fields: tuple[tuple[str, str], ...] | None = attrs.field(default=None,
                                                            converter=_freeze_names)
    prefix: str = ""

    def __call__(self, node, ctx):
        op = f"merge_child({self.child!r})"
        sub = node.get(self.child)
        if type(sub) is not dict:
            what = "missing" if self.child not in node else f"a {type(sub).__name__}"
            raise OpError(_path(ctx), op, self.child, f"the child is {what}")
        if self.fields is None:
            pairs = [(k, self.prefix + k) for k in sub if k not in _RESERVED]
        else:
            pairs = [(s, self.prefix + d) for s, d in self.fields]
            left = [k for k in sub if k not in _RESERVED and k not in dict(self.fields)]
            if left:
                raise OpError(_path(ctx), op, self.child,
                              f"would lose fields {', '.join(sorted(left))}: list them, "
                              "or drop_field them first")
        for src, dst in pairs:
            if src not in sub:
                raise OpError(_path(ctx), op, f"{self.child}.{src}",
                              f"no such field (fields: {_fields_list(sub)})")
            if dst in node:
                raise OpError(_path(ctx), op, dst, "already exists in the node "
                              "(use prefix= or a mapping to rename)")
        if STASH_KEY in sub:
            entry = _stash_of(node, ctx.stash_key, create=True)
            entry[_child_stash_name(self.child)] = sub[STASH_KEY]
        for src, dst in pairs:
            node[dst] = sub[src]
        del node[self.child]
        return node


@attrs.frozen
class split_child:
    """The inverse of :class:`merge_child`, taking the same arguments: move
    ``fields`` (the same names or ``{child_field: node_field}`` mapping the
    merge was given; or, with ``fields=None``, every field whose name starts
    with ``prefix``, which is then required) into a new child ``child`` of
    ``child_type_version``, stripping ``prefix``. A stash kept by
    ``merge_child`` goes back to the child. Declare the child in ``creates``."""

    child: str
    child_type_version: TypeVersion | None = attrs.field(converter=_tv_or_none)
    fields: tuple[tuple[str, str], ...] | None = attrs.field(default=None,
                                                            converter=_freeze_names)
    prefix: str = ""

    def __attrs_post_init__(self):
        if self.fields is None and not self.prefix:
            raise ValueError("split_child: give fields, or a prefix selecting them")

    def __call__(self, node, ctx):
        op = f"split_child({self.child!r})"
        if self.child in node:
            raise OpError(_path(ctx), op, self.child, "the node already has it")
        p = self.prefix
        if self.fields is None:
            pairs = [(k, k[len(p):]) for k in node
                     if isinstance(k, str) and k.startswith(p) and k not in _RESERVED]
        else:
            pairs = [(p + d, s) for s, d in self.fields]
        for src, _ in pairs:
            if src not in node:
                raise OpError(_path(ctx), op, src,
                              f"no such field (fields: {_fields_list(node)})")
        sub: dict[str, Any] = {}
        if self.child_type_version is not None:
            sub[TYPE_KEY] = self.child_type_version.type
            sub[VERSION_KEY] = self.child_type_version.version
        for src, dst in pairs:
            sub[dst] = node.pop(src)
        found, stash = _unstash(node, ctx.stash_key, _child_stash_name(self.child))
        if found:
            sub[STASH_KEY] = stash
        node[self.child] = sub
        return node


__all__ = [
    "OpError", "add_field", "chain", "convert", "default_missing", "drop_field", "hoist",
    "merge_child", "move_field", "plunge", "rename_field", "rename_type", "set_version",
    "split_child",
]
