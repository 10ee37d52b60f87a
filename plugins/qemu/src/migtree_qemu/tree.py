"""A QEMU stream as a migtree state tree, and back.

Shape (see README.md "The tree")::

    /                                   container
    /machine                            qemu-machine   __qemu__: stream-level facts
    /machine/qemu/cpu[N]                cpu            (QEMU's CPU N; [N] for N > 0)
    /machine/qemu/cpu[N]/lapic          apic
    /machine/qemu/cpu[N]/cpu_common     cpu_common
    /machine/qemu/ram                   qemu-ram       raw RAM section bodies, chunked
    /machine/qemu/<idstr parts>[N]      <vmsd name>    every other section

With a QOM walk saved beside the stream, sections sit at QOM paths instead
(``/machine/unattached/device[0]/lapic``, ``/machine/peripheral/vblk0``).

Every section node is ``{"__type__": vmsd name, "__version__": section
version, "__qemu__": {...}, field: value, ...}``: the fields with plain
values (ints, bools, bytes, lists; structs as plain dicts; subsections as
plain dicts under their short name, absent when QEMU did not send them).
``__qemu__`` keeps the section's idstr, instance id, section id and layout
(its vmdesc entry as JSON text: wire types, arrays, struct and subsection
versions), so
:func:`tree_to_stream` writes the same bytes back.  A ``paths`` mapping
(``{(idstr, instance_id): QOM path}``, e.g. from :mod:`migtree_qemu.qompaths`)
puts sections at their QOM paths instead.

Opaque fields (``virtio``, ``buffer``...) stay ``bytes`` unless a decoder is
given for the section's vmsd name (:class:`OpaqueCodec`): its ``decode``
result replaces the bytes in the tree and its ``encode`` turns it back.
"""

from __future__ import annotations

import copy
import json
import logging
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from .errors import QemuEncodeError
from .qevm import (
    SECTION_END,
    SECTION_FULL,
    SECTION_PART,
    SECTION_START,
    Command,
    Configuration,
    QemuStream,
    Section,
)
from .vmstate import NULLPTR, OPAQUE_TYPES, Field, VMStateObject, qemu_json

TYPE_KEY = "__type__"
VERSION_KEY = "__version__"
QEMU_KEY = "__qemu__"

ROOT_TYPE = "container"
MACHINE_TYPE = "qemu-machine"
RAM_TYPE = "qemu-ram"

_KIND_NAMES = {SECTION_START: "START", SECTION_PART: "PART", SECTION_END: "END",
               SECTION_FULL: "FULL"}
_KIND_CODES = {v: k for k, v in _KIND_NAMES.items()}


class OpaqueCodec(Protocol):
    """Turns an opaque field of one kind of section into tree values and
    back; ``encode(decode(b, ctx), ctx) == b``.  *ctx* has ``idstr``,
    ``instance_id``, ``vmsd_name``, ``version``, ``field`` and ``node``."""

    def decode(self, data: bytes, context: dict[str, Any]) -> Any: ...

    def encode(self, value: Any, context: dict[str, Any]) -> bytes: ...


Decoders = Mapping[str, OpaqueCodec]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# placement


def default_path(idstr: str, instance_id: int) -> str:
    """Where a section goes when no QOM path is known for it: under
    ``/machine/qemu`` at its idstr's parts (``0000:00:02.0/virtio-blk``),
    with ``[N]`` for instance N > 0.  The local APIC and ``cpu_common`` of
    CPU N go under that CPU's node (``/machine/qemu/cpu[1]/lapic``), as QEMU
    composes them (the APIC is the CPU's ``lapic`` child).  With a QOM walk
    (:mod:`migtree_qemu.qompaths`) sections get their real QOM paths.
    """
    suffix = f"[{instance_id}]" if instance_id else ""
    if idstr == "apic":
        return f"/machine/qemu/cpu{suffix}/lapic"
    if idstr == "cpu_common":
        return f"/machine/qemu/cpu{suffix}/cpu_common"
    return "/machine/qemu/" + "/".join(idstr.split("/")) + suffix


def _place(root: dict[str, Any], path: str, node: dict[str, Any]) -> None:
    parts = [p for p in path.split("/") if p]
    parent = root
    for p in parts[:-1]:
        child = parent.get(p)
        if child is None:
            child = parent[p] = {TYPE_KEY: "container", VERSION_KEY: 1}
        elif not (isinstance(child, dict) and TYPE_KEY in child):
            raise QemuEncodeError(f"cannot place a node at {path}: {p!r} is a field")
        parent = child
    last = parts[-1]
    existing = parent.get(last)
    if existing is not None:
        if existing.get(TYPE_KEY) == "container" and QEMU_KEY not in existing:
            # a container made for a child placed earlier: the node takes it over
            for k, v in existing.items():
                if k not in (TYPE_KEY, VERSION_KEY):
                    node[k] = v
        else:
            raise QemuEncodeError(f"two sections map to the same path {path}")
    parent[last] = node


def layout_of(node: Mapping[str, Any]) -> dict[str, Any]:
    """The QEMU layout (vmdesc entry) a section node was decoded with.  It
    is kept as compact JSON text in ``__qemu__["layout"]``: an encoding
    hint, not state, and one line in ``migtree inspect``."""
    layout = node[QEMU_KEY]["layout"]
    if isinstance(layout, str):
        return json.loads(layout)
    return dict(layout)


def iter_section_nodes(tree: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict]]:
    """``(path, node)`` for every node that came from a QEMU section."""
    for key, value in tree.items():
        if isinstance(value, dict) and TYPE_KEY in value:
            p = f"{path}/{key}"
            if QEMU_KEY in value and "idstr" in value[QEMU_KEY]:
                yield p, value
            yield from iter_section_nodes(value, p)


# ---------------------------------------------------------------------------
# values: VMStateObject <-> plain dict


def _plain_value(v: Any, f: Field, ctx: dict[str, Any]) -> Any:
    if isinstance(v, VMStateObject):
        return object_to_plain(v, ctx)
    if v is NULLPTR:
        return None
    if isinstance(v, float):  # the tree has no floats: keep the IEEE bits
        return int.from_bytes(struct.pack(">d", v), "big")
    return v


def object_to_plain(obj: VMStateObject, ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    """Field values by name; arrays described element by element become one
    list; subsections go under their short name."""
    ctx = ctx or {}
    out: dict[str, Any] = {}
    prev: Field | None = None
    for f in obj.fields:
        key = f.name
        if f.array_len is not None:
            val = [_plain_value(v, f, ctx) for v in f.value]
        else:
            val = _plain_value(f.value, f, ctx)
        if _last_element(prev, f.name, f.index):
            out[key].append(val)
            prev = Field(f.name, f.type, None, index=prev.index + 1)
            continue
        prev = f
        if f.index is not None:
            lst = out.setdefault(key, [])
            if not isinstance(lst, list) or len(lst) != f.index:
                raise QemuEncodeError(f"element {f.index} of {key!r} is out of order")
            lst.append(val)
            continue
        n = 2
        while key in out:
            key = f"{f.name}#{n}"
            n += 1
        out[key] = val
    for s in obj.subsections:
        out[_sub_key(obj.vmsd_name, s.vmsd_name, out)] = object_to_plain(s, ctx)
    return out


def _last_element(prev: Field | None, name: str, index: int | None) -> bool:
    """QEMU >= 9.1 describes the last element of an array of structs
    without ``index`` (it passes the elements *left* as the count, and
    writes ``index`` only while more than one is left): an index-less
    field right after element N of the same name is element N + 1."""
    return (index is None and prev is not None and prev.index is not None
            and prev.name == name)


def _sub_key(parent: str, name: str, taken: Mapping[str, Any]) -> str:
    """A subsection's key in its parent's node: its name without the
    parent's prefix (``apic/timer`` -> ``timer``, and QEMU's older
    underscore style ``apic_sipi`` -> ``sipi``), unless that collides with
    a field."""
    short = name
    for sep in ("/", "_"):
        if name.startswith(parent + sep) and len(name) > len(parent) + 1:
            short = name[len(parent) + 1 :]
            break
    return short if short not in taken or short == name else name


def plain_to_object(plain: Mapping[str, Any], layout: Mapping[str, Any],
                    path: str = "") -> VMStateObject:
    """Rebuild a :class:`VMStateObject` from plain values and the vmdesc
    *layout* they were decoded with.  Missing, extra or mistyped values are
    errors naming their path."""
    obj = VMStateObject(layout.get("vmsd_name", ""), layout.get("version", 0))
    used: set[str] = set()
    counts: dict[str, int] = {}
    field_keys: dict[str, None] = {}
    prev: Field | None = None
    for fdesc in layout.get("fields", []):
        name = fdesc["name"]
        key = name
        last = _last_element(prev, name, fdesc.get("index"))
        if last:
            fdesc = dict(fdesc, index=prev.index + 1)
        if "index" not in fdesc:
            n = counts.get(name, 0) + 1
            counts[name] = n
            key = name if n == 1 else f"{name}#{n}"
        fpath = f"{path}{key}"
        field_keys[key] = None
        if key not in plain:
            raise QemuEncodeError(f"field {fpath!r} is missing from the node", field=fpath)
        used.add(key)
        value = plain[key]
        if "index" in fdesc:
            i = fdesc["index"]
            if not isinstance(value, list) or i >= len(value):
                raise QemuEncodeError(f"{fpath!r} needs element {i}", field=fpath)
            value = value[i]
            fpath = f"{fpath}[{i}]"
        n = fdesc.get("array_len")
        if n is not None:
            if not isinstance(value, list):
                raise QemuEncodeError(f"{fpath!r} must be a list", field=fpath)
            value = [_from_plain(v, fdesc, f"{fpath}[{j}]") for j, v in enumerate(value)]
            n = len(value)
        else:
            value = _from_plain(value, fdesc, fpath)
        keys = tuple(k for k in fdesc if not (last and k == "index"))
        obj.fields.append(Field(name, fdesc.get("type"), value,
                                index=None if last else fdesc.get("index"),
                                array_len=n, keys=keys, size=fdesc.get("size")))
        prev = Field(name, None, None, index=fdesc.get("index"))
    for sdesc in layout.get("subsections", []):
        key = _sub_key(obj.vmsd_name, sdesc["vmsd_name"], field_keys)
        field_keys[key] = None
        used.add(key)
        value = plain.get(key)
        if value is None:
            continue  # optional part QEMU sends only when needed
        obj.subsections.append(plain_to_object(value, sdesc, f"{path}{key}."))
    extra = [k for k, v in plain.items()
             if k not in used and k not in (TYPE_KEY, VERSION_KEY, QEMU_KEY, "__stash__")
             and not (isinstance(v, Mapping) and TYPE_KEY in v)]  # child objects
    if extra:
        raise QemuEncodeError(
            f"no QEMU layout for {', '.join(repr(path + k) for k in extra)} "
            f"(the stream this node came from has no such field or subsection)",
            field=path + extra[0])
    return obj


def _from_plain(v: Any, fdesc: Mapping[str, Any], path: str) -> Any:
    if "struct" in fdesc:
        if v is None:
            return NULLPTR
        return plain_to_object(v, fdesc["struct"], path + ".")
    if "fields" in fdesc:  # tmp: inline vmsd
        return plain_to_object(v, fdesc, path + ".")
    if fdesc.get("type") == "float64" and isinstance(v, int) and not isinstance(v, bool):
        return v.to_bytes(8, "big")  # the IEEE bits, written as they are
    return v


# ---------------------------------------------------------------------------
# stream -> tree


def _layout(sec: Section) -> dict[str, Any]:
    from .qevm import _describe_section

    d = _describe_section(sec)
    d.pop("name", None)
    d.pop("instance_id", None)
    return d


def stream_to_tree(
    stream: QemuStream,
    *,
    paths: Mapping[tuple[str, int], str] | None = None,
    decoders: Decoders | None = None,
    blob_factory: Callable[[Iterator[bytes]], Any] | None = None,
) -> dict[str, Any]:
    """The state tree of *stream* (loaded with ``ram="reference"`` or
    ``"copy"`` to keep RAM).  RAM section bodies become chunked values made
    by *blob_factory* (default: :class:`migtree.blob.Blob`)."""
    paths = paths or {}
    decoders = decoders or {}
    if blob_factory is None:
        blob_factory = _default_blob
    root: dict[str, Any] = {TYPE_KEY: ROOT_TYPE, VERSION_KEY: 1}
    machine: dict[str, Any] = {TYPE_KEY: MACHINE_TYPE, VERSION_KEY: 1}
    root["machine"] = machine
    order: list[list[Any]] = []
    seen: dict[tuple[str, int], int] = {}
    ram_bodies: list[Any] = []
    ram_node: dict[str, Any] | None = None
    for item in stream.items:
        if isinstance(item, Command):
            order.append(["COMMAND", item.command, item.data])
            continue
        sec = item
        order.append([_KIND_NAMES[sec.kind], sec.section_id, sec.idstr, sec.instance_id,
                      sec.footer])
        if sec.kind != SECTION_FULL:
            if sec.idstr != "ram":  # pragma: no cover - the reader refuses others
                raise QemuEncodeError("only RAM iterable sections are supported",
                                      section=sec.idstr)
            body = sec.body
            if getattr(body, "dropped_pages", 0):
                raise QemuEncodeError("RAM was not kept (loaded with ram='skip'); load "
                                      "with ram='reference' to build a tree",
                                      section="ram")
            ram_bodies.append(blob_factory(stream.raw_body(sec)))
            if ram_node is None:
                ram_node = {TYPE_KEY: RAM_TYPE, VERSION_KEY: sec.version_id,
                            QEMU_KEY: {"idstr": sec.idstr, "instance_id": sec.instance_id,
                                       "section_id": sec.section_id}}
                first = body.records[0] if body.records else None
                if first is not None and isinstance(first.data, list):
                    ram_node["blocks"] = [{"name": b.name, "length": b.length}
                                          for b in first.data]
            continue
        node: dict[str, Any] = {TYPE_KEY: sec.state.vmsd_name or sec.idstr,
                                VERSION_KEY: sec.version_id}
        node[QEMU_KEY] = {"idstr": sec.idstr, "instance_id": sec.instance_id,
                          "section_id": sec.section_id,
                          "layout": qemu_json(_layout(sec))}
        ctx = {"idstr": sec.idstr, "instance_id": sec.instance_id,
               "vmsd_name": sec.state.vmsd_name, "version": sec.version_id}
        node.update(object_to_plain(sec.state, ctx))
        codec = decoders.get(sec.state.vmsd_name)
        if codec is not None:
            node = _decode_opaque(codec, sec, node, ctx)
        ident = (sec.idstr, sec.instance_id)
        again = seen[ident] = seen.get(ident, -1) + 1
        path = paths.get(ident) or default_path(*ident)
        if again:
            # QEMU <= 7.2 gives every slirp netdev instance 0: the loader
            # matches such sections in order, and so does the tree
            node[QEMU_KEY]["occurrence"] = again
            path = f"{default_path(*ident)}+{again}"
        _place(root, path, node)
    if ram_node is not None:
        ram_node["sections"] = ram_bodies
        _place(root, paths.get(("ram", 0)) or "/machine/qemu/ram", ram_node)
    machine[QEMU_KEY] = {
        "qevm_version": stream.version,
        "configuration": _config_to_plain(stream.configuration),
        "page_size": stream.page_size,
        "vmdesc": stream.vmdesc,
        "vmdesc_keys": list(stream.vmdesc_keys),
        "vmdesc_style": stream.vmdesc_style,
        "order": order,
    }
    return root


def _decode_opaque(codec: OpaqueCodec, sec: Section, node: dict[str, Any],
                   ctx: dict[str, Any]) -> dict[str, Any]:
    """Hand the section's opaque fields to *codec*.  A decoded value that
    is an object node (it has ``__type__``) of a section whose only content
    is that field *becomes* the section's node (the virtio plugin's
    ``qemu-virtio-pci`` at the proxy's path, its ``virtio-backend`` child
    split out of the blob); ``__qemu__`` then records the vmsd name, section
    version and field (``lifted``) the writer needs.  Any other value
    replaces the field's bytes.  A codec that raises leaves the bytes as
    they are; ``__qemu__["undecoded"]`` says why."""
    opaque = [f for f in sec.state.fields
              if f.type in OPAQUE_TYPES and isinstance(node.get(f.name), bytes)]
    for f in opaque:
        try:
            value = codec.decode(node[f.name], dict(ctx, field=f.name, node=node))
        except Exception as exc:  # a plugin's failure keeps the bytes opaque
            reason = f"{type(exc).__name__}: {exc}"
            node[QEMU_KEY].setdefault("undecoded", {})[f.name] = reason
            log.warning("section %r field %r stays opaque: %s", sec.idstr, f.name, reason)
            continue
        if (isinstance(value, dict) and TYPE_KEY in value and len(sec.state.fields) == 1
                and not sec.state.subsections):
            q = dict(node[QEMU_KEY], vmsd_name=sec.state.vmsd_name, version=sec.version_id,
                     lifted=f.name)
            value[QEMU_KEY] = q
            return value
        node[f.name] = value
        node[QEMU_KEY].setdefault("decoded", []).append(f.name)
    return node


class Chunks:
    """Chunked bytes (the stand-in for :class:`migtree.blob.Blob` when the
    core is not importable)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = [bytes(c) for c in chunks]

    def __len__(self) -> int:
        return sum(len(c) for c in self._chunks)

    def iter_chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        yield from self._chunks

    def read(self) -> bytes:
        return b"".join(self._chunks)


def _default_blob(chunks: Iterator[bytes]) -> Any:
    try:
        from migtree.blob import Blob
    except ImportError:
        return Chunks(chunks)
    return Blob.from_chunks(chunks)


def _config_to_plain(cfg: Configuration | None) -> dict[str, Any] | None:
    if cfg is None:
        return None
    subs = {s.vmsd_name: object_to_plain(s) for s in cfg.state.subsections}
    return {"machine": cfg.machine, "subsections": subs}


def _config_from_plain(d: Mapping[str, Any] | None) -> Configuration | None:
    if d is None:
        return None
    name = d["machine"].encode("latin-1")
    state = VMStateObject("configuration", 1, [
        Field("len", "uint32", len(name)),
        Field("name", "buffer", name, size=len(name)),
    ])
    for sname, plain in d.get("subsections", {}).items():
        sub = VMStateObject(sname, 1)
        for k, v in plain.items():
            if k == "capabilities":
                sub.fields.append(Field(k, "capability", list(v), array_len=len(v)))
            elif k == "uuid.data":
                sub.fields.append(Field(k, "uint8", list(v), array_len=len(v)))
            else:
                sub.fields.append(Field(k, "uint32", v))
        state.subsections.append(sub)
    return Configuration(state)


# ---------------------------------------------------------------------------
# tree -> stream


def tree_to_stream(tree: Mapping[str, Any], *, decoders: Decoders | None = None) -> QemuStream:
    """The QEMU stream of a tree made by :func:`stream_to_tree` (possibly
    edited or filtered).  Nodes are found by their ``__qemu__`` identity,
    wherever filters moved them.

    The ``__qemu__`` metadata comes from a stream (a migtree stream someone
    may have edited): its shape is checked first (:func:`_check_meta`), and
    whatever else is wrong in it ends as a :class:`QemuEncodeError`, never
    as a Python exception from the middle of the writer."""
    if isinstance(tree, Mapping) and isinstance(tree.get("machine"), Mapping) \
            and QEMU_KEY in tree["machine"]:
        _check_meta(tree["machine"][QEMU_KEY])
    try:
        return _tree_to_stream(tree, decoders)
    except QemuEncodeError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError,
            RecursionError, UnicodeError) as e:
        raise QemuEncodeError(f"the tree's QEMU metadata (__qemu__) is malformed: "
                              f"{type(e).__name__}: {e}") from None


_META_TYPES: dict[str, tuple[type, ...]] = {
    "qevm_version": (int,), "page_size": (int,), "vmdesc": (bool,),
    "vmdesc_keys": (list, tuple), "order": (list, tuple),
    "configuration": (dict, type(None)), "vmdesc_style": (str,)}


def _check_meta(meta: Any) -> None:
    """The /machine ``__qemu__`` map: every key the writer reads, its type
    and range, and every entry of ``order``."""
    def bad(msg: str) -> QemuEncodeError:
        return QemuEncodeError(f"/machine __qemu__: {msg}")

    if not isinstance(meta, Mapping):
        raise bad("not a map")
    for key, types in _META_TYPES.items():
        if key == "vmdesc_style" and key not in meta:
            continue
        if key not in meta or type(meta[key]) not in types:
            raise bad(f"{key} is missing or not a {'/'.join(t.__name__ for t in types)}")
    if not 0 <= meta["qevm_version"] < 1 << 32:
        raise bad("qevm_version is out of range")
    ps = meta["page_size"]
    if not (512 <= ps <= 1 << 30 and ps & (ps - 1) == 0):
        raise bad(f"page_size {ps} is not a power of two from 512 to 1 GiB")
    if not all(type(k) is str for k in meta["vmdesc_keys"]):
        raise bad("vmdesc_keys must be text")
    for i, e in enumerate(meta["order"]):
        if isinstance(e, (list, tuple)) and len(e) == 3 and e[0] == "COMMAND":
            if type(e[1]) is int and 0 <= e[1] < 1 << 16 and isinstance(e[2], (bytes, list)) \
                    and len(e[2]) < 1 << 16:
                continue
        elif isinstance(e, (list, tuple)) and len(e) == 5 and type(e[0]) is str \
            and e[0] in _KIND_CODES:
            _, sid, idstr, inst, footer = e
            if type(sid) is int and 0 <= sid < 1 << 32 and type(idstr) is str \
                    and 0 < len(idstr.encode("latin-1", "replace")) < 256 \
                    and type(inst) is int and 0 <= inst < 1 << 32 and type(footer) is bool:
                continue
        raise bad(f"order[{i}] is not [\"COMMAND\", number, data] or [kind, section id, "
                  f"name, instance, footer]")


def _tree_to_stream(tree: Mapping[str, Any], decoders: Decoders | None) -> QemuStream:
    decoders = decoders or {}
    machine = tree.get("machine")
    if not isinstance(machine, Mapping) or QEMU_KEY not in machine:
        raise QemuEncodeError("not a tree made from a QEMU stream: /machine has no __qemu__")
    meta = machine[QEMU_KEY]
    nodes: dict[tuple[str, int, int], tuple[str, Mapping[str, Any]]] = {}
    for path, node in iter_section_nodes(tree):
        q = node[QEMU_KEY]
        nodes[(q["idstr"], q["instance_id"], q.get("occurrence", 0))] = (path, node)
    seen: dict[tuple[str, int], int] = {}
    stream = QemuStream(version=meta["qevm_version"],
                        configuration=_config_from_plain(meta["configuration"]),
                        page_size=meta["page_size"], vmdesc=meta["vmdesc"],
                        vmdesc_keys=tuple(meta["vmdesc_keys"]),
                        vmdesc_style=meta.get("vmdesc_style", "json-writer"))
    ram_index = 0
    for entry in meta["order"]:
        if entry[0] == "COMMAND":
            stream.items.append(Command(entry[1], bytes(entry[2])))
            continue
        kind_name, sid, idstr, instance, footer = entry
        kind = _KIND_CODES[kind_name]
        again = 0
        if kind == SECTION_FULL:
            again = seen[(idstr, instance)] = seen.get((idstr, instance), -1) + 1
        found = nodes.get((idstr, instance, again))
        if found is None:
            raise QemuEncodeError(f"the tree has no node for QEMU section {idstr!r} "
                                  f"instance {instance}", section=idstr,
                                  instance_id=instance)
        path, node = found
        if kind != SECTION_FULL:
            bodies = node.get("sections", [])
            if ram_index >= len(bodies):
                raise QemuEncodeError(f"{path}: RAM section {ram_index} is missing",
                                      section=idstr)
            stream.items.append(Section(kind, sid, idstr, instance, node[VERSION_KEY],
                                        bodies[ram_index], footer=footer))
            ram_index += 1
            continue
        q = node[QEMU_KEY]
        layout = layout_of(node)
        lifted = q.get("lifted")
        vmsd_name = q["vmsd_name"] if lifted else node[TYPE_KEY]
        version = q["version"] if lifted else node[VERSION_KEY]
        plain = dict(node)
        ctx = {"idstr": idstr, "instance_id": instance, "vmsd_name": vmsd_name,
               "version": version}
        codec = decoders.get(vmsd_name)
        for fname in ([lifted] if lifted else q.get("decoded", [])):
            if codec is None:
                raise QemuEncodeError(f"{path}: field {fname!r} was decoded by a plugin "
                                      f"that is not loaded now", section=idstr, field=fname)
            value = node if lifted else plain[fname]
            plain[fname] = codec.encode(value, dict(ctx, field=fname, node=node))
        if lifted:  # the node is the decoder's; the section is that one field
            plain = {QEMU_KEY: q, lifted: plain[lifted]}
        if "vmsd_name" in layout:
            layout["vmsd_name"] = vmsd_name
            layout["version"] = version
        try:
            body = plain_to_object(plain, layout)
        except QemuEncodeError as exc:
            raise QemuEncodeError(f"{path}: {exc.reason}", section=idstr, section_id=sid,
                                  instance_id=instance, field=exc.field) from None
        desc_keys = ("name", "instance_id", *layout.keys())
        # a filter may renumber a section on the wire (QEMU < 8.2 numbers
        # every slirp 0); the node keeps the identity it is found by
        wire = q.get("wire_instance_id", instance)
        stream.items.append(Section(kind, sid, idstr, wire, version, body,
                                    footer=footer, desc_keys=desc_keys))
    return stream


# ---------------------------------------------------------------------------
# migtree schema entries (for the header of a migtree stream)

_BYTES_KIND = {"bool": {"kind": "bool"}, "float64": {"kind": "u64"},
               "pci irq state": {"kind": "array", "length": 4, "element": {"kind": "i32"}},
               "capability": {"kind": "str"}}


def _elem_desc(fdesc: Mapping[str, Any]) -> dict[str, Any]:
    from .vmstate import INT_TYPES

    if "struct" in fdesc:
        sd = fdesc["struct"]
        if not sd:
            return {"kind": "optional", "inner": {"kind": "struct", "struct": "",
                                                  "fields": []}}
        return {"kind": "struct", "struct": sd.get("vmsd_name", ""),
                "fields": layout_fields(sd)}
    if "fields" in fdesc:
        return {"kind": "struct", "struct": fdesc.get("vmsd_name", ""),
                "fields": layout_fields(fdesc)}
    t = fdesc.get("type")
    if t in INT_TYPES:
        width, signed = INT_TYPES[t]
        return {"kind": f"{'i' if signed else 'u'}{width * 8}"}
    if t in _BYTES_KIND:
        return dict(_BYTES_KIND[t])
    return {"kind": "bytes", "length": fdesc.get("size", 0)}


def layout_fields(layout: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A QEMU layout (vmdesc object) as migtree field descriptions
    (``{"name", "kind", ...}``, the shape of ``migtree.visitor.schema_of``)."""
    out: list[dict[str, Any]] = []
    index_of: dict[str, dict[str, Any]] = {}
    seen: dict[str, int] = {}
    for fdesc in layout.get("fields", []):
        name = fdesc["name"]
        if "index" in fdesc:
            if name in index_of:
                index_of[name]["length"] += 1
                continue
            d = {"name": name, "kind": "array", "length": 1, "element": _elem_desc(fdesc)}
            index_of[name] = d
            out.append(d)
            continue
        n = seen[name] = seen.get(name, 0) + 1
        key = name if n == 1 else f"{name}#{n}"
        if "array_len" in fdesc:
            out.append({"name": key, "kind": "array", "length": fdesc["array_len"],
                        "element": _elem_desc(fdesc)})
        else:
            out.append({"name": key, **_elem_desc(fdesc)})
    taken = {d["name"]: None for d in out}
    for sdesc in layout.get("subsections", []):
        key = _sub_key(layout.get("vmsd_name", ""), sdesc["vmsd_name"], taken)
        taken[key] = None
        out.append({"name": key, "kind": "optional",
                    "inner": {"kind": "struct", "struct": sdesc["vmsd_name"],
                              "fields": layout_fields(sdesc)}})
    return out


_QEMU_FIELD = {"name": QEMU_KEY, "kind": "struct", "struct": "qemu-section",
               "doc": "QEMU section identity (idstr, instance_id, section_id) and layout "
                      "(its vmdesc entry) that migtree-qemu writes the node back with",
               "fields": []}


def tree_schemas(tree: Mapping[str, Any],
                 describe: Callable[[str, int], dict[str, Any] | None] | None = None,
                 ) -> dict[str, dict[str, Any]]:
    """``{"TYPE@V": schema entry}`` for every node a QEMU tree holds, for
    the header of a migtree stream (``migtree.stream.write_tree(schemas=)``).
    Two sections of one type@version with different layouts (e.g. different
    subsections present) get the first one's description.  Nodes an opaque
    decoder made (a lifted section node and its children) are described by
    *describe(type, version)* (e.g. ``migtree.stream.schema_entry`` with the
    registry that has the decoder's types), or left to the writer's
    registry when it is None or does not know them."""
    out: dict[str, dict[str, Any]] = {}

    def add_described(node: Mapping[str, Any], with_qemu: bool) -> None:
        key = f"{node[TYPE_KEY]}@{node[VERSION_KEY]}"
        entry = describe(node[TYPE_KEY], node[VERSION_KEY]) if describe else None
        if entry is not None and key not in out:
            fields = list(entry.get("fields", []))
            out[key] = dict(entry, fields=[dict(_QEMU_FIELD), *fields] if with_qemu else fields)

    def add(node: Mapping[str, Any], fields: list[dict[str, Any]]) -> None:
        key = f"{node[TYPE_KEY]}@{node[VERSION_KEY]}"
        if key not in out:
            out[key] = {"type": node[TYPE_KEY], "version": node[VERSION_KEY], "parent": None,
                        "plugin": "migtree-qemu", "fields": fields}

    def walk(node: Mapping[str, Any]) -> None:
        t = node[TYPE_KEY]
        q = node.get(QEMU_KEY)
        if t == "container" and q is None:
            add(node, [])
        elif t == MACHINE_TYPE:
            add(node, [dict(_QEMU_FIELD, struct="qemu-stream", doc="QEMU stream facts")])
        elif t == RAM_TYPE:
            add(node, [dict(_QEMU_FIELD),
                       {"name": "blocks", "kind": "array", "element": {
                           "kind": "struct", "struct": "ram-block", "fields": [
                               {"name": "name", "kind": "str"},
                               {"name": "length", "kind": "u64"}]}},
                       {"name": "sections", "kind": "array", "element": {"kind": "blob"}}])
        elif q is not None and q.get("lifted"):
            add_described(node, True)
        elif q is not None:
            add(node, [dict(_QEMU_FIELD), *layout_fields(layout_of(node))])
        else:
            add_described(node, False)
        for v in node.values():
            if isinstance(v, Mapping) and TYPE_KEY in v:
                walk(v)

    walk(tree)
    return out


def copy_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy that shares chunked RAM values (they are never edited in
    place)."""
    memo: dict[int, Any] = {}
    for _, node in iter_section_nodes(dict(tree)):
        for b in node.get("sections", []) if node.get(TYPE_KEY) == RAM_TYPE else []:
            memo[id(b)] = b
    return copy.deepcopy(dict(tree), memo)
