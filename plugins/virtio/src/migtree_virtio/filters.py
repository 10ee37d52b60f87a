"""The proposal's second example: "match on the __type__ of virtio-blk-pci,
and then split apart the state into an appropriate virtio-pci dictionary and
a virtio-blk dictionary" — and the merge back.

``virtio-blk-pci@1`` (flat, QEMU-style names) <-> ``virtio-pci@1`` with child
``virtio-backend`` = ``virtio-blk@1`` (spec names). Every field has exactly one
place on each side, so the pair is a bijection: nothing needs the stash, and
``merge(split(n)) == n`` for every valid node (property-tested). A node the
functions do not understand (an unknown field, a child that is not a
virtio-blk) is a :class:`migtree.errors.FilterError`, never a silent drop.
"""

from __future__ import annotations

from typing import Any

from migtree.errors import FilterError
from migtree.filters import Filter, FilterPair

BACKEND = "virtio-backend"
STASH = "__stash__"

#: combined field -> virtio-pci field
PCI_FIELDS = {
    "pci_config": "pci_config",
    "msix_table": "msix_table",
    "msix_pba": "msix_pba",
    "dfselect": "device_feature_select",
    "gfselect": "driver_feature_select",
    "queue_sel": "queue_select",
}
#: combined field -> virtio-blk field (scalars)
BLK_FIELDS = {
    "status": "device_status",
    "isr": "isr",
    "guest_features": "driver_features",
    "config_vector": "msix_config",
    "generation": "config_generation",
    "broken": "broken",
    "capacity": "capacity",
    "blk_size": "blk_size",
    "seg_max": "seg_max",
    "size_max": "size_max",
}
#: combined vq[] field -> virtio-blk queues[] field
QUEUE_FIELDS = {
    "num": "size",
    "enabled": "enable",
    "vector": "msix_vector",
    "desc": "desc",
    "avail": "driver",
    "used": "device",
    "last_avail_idx": "last_avail_idx",
    "used_idx": "used_idx",
}
_RESERVED = ("__type__", "__version__", STASH)


def _is_object(v: Any) -> bool:
    return type(v) is dict and "__type__" in v


def _take(node: dict, key: str, path: str) -> Any:
    try:
        return node.pop(key)
    except KeyError:
        raise FilterError(f"{path}: {node.get('__type__', 'node')} has no field {key!r}") from None


def _rename(d: Any, mapping: dict[str, str], path: str, what: str) -> dict:
    if type(d) is not dict:
        raise FilterError(f"{path}: {what} is not a map")
    extra = set(d) - set(mapping)
    if extra:
        raise FilterError(f"{path}: {what} has unknown fields {sorted(extra)}")
    missing = set(mapping) - set(d)
    if missing:
        raise FilterError(f"{path}: {what} lacks fields {sorted(missing)}")
    return {new: d[old] for old, new in mapping.items()}


def _list(v: Any, path: str, what: str) -> list:
    if type(v) is not list:
        raise FilterError(f"{path}: {what} is not an array")
    return v


def _leftover(node: dict, path: str) -> None:
    extra = [k for k, v in node.items() if k not in _RESERVED and not _is_object(v)]
    if extra:
        raise FilterError(f"{path}: {node.get('__type__')} has fields this filter does not "
                          f"know: {sorted(extra)}")


def split_virtio_blk_pci(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """``virtio-blk-pci@1`` -> ``virtio-pci@1`` + child ``virtio-backend`` ``virtio-blk@1``."""
    path = getattr(ctx, "path", "?")
    node = dict(node)
    if BACKEND in node:
        raise FilterError(f"{path}: virtio-blk-pci already has a child {BACKEND!r}")
    pci: dict[str, Any] = {"__type__": "virtio-pci", "__version__": 1}
    blk: dict[str, Any] = {"__type__": "virtio-blk", "__version__": 1}
    for old, new in PCI_FIELDS.items():
        pci[new] = _take(node, old, path)
    for old, new in BLK_FIELDS.items():
        blk[new] = _take(node, old, path)
    blk["queues"] = [_rename(q, QUEUE_FIELDS, path, f"vq[{i}]")
                     for i, q in enumerate(_list(_take(node, "vq", path), path, "vq"))]
    blk["inflight"] = [_split_request(r, path, i)
                       for i, r in enumerate(_list(_take(node, "rq", path), path, "rq"))]
    del node["__type__"], node["__version__"]
    stash = node.pop(STASH, None)
    _leftover(node, path)
    if stash is not None:
        stash = dict(stash)
        inner = stash.pop(f"{BACKEND}.{STASH}", None)
        if stash:
            pci[STASH] = stash
        if inner is not None:
            blk[STASH] = inner
    pci.update(node)  # other child objects stay with the PCI function
    pci[BACKEND] = blk
    return pci


def _split_request(r: Any, path: str, i: int) -> dict[str, Any]:
    what = f"rq[{i}]"
    if type(r) is not dict or set(r) != {"vq", "index", "in_addr", "in_len", "out_addr",
                                         "out_len"}:
        raise FilterError(f"{path}: {what} does not have the fields of a request in flight")
    out = {"queue": r["vq"], "head": r["index"]}
    for side in ("out", "in"):
        addrs = _list(r[f"{side}_addr"], path, f"{what}.{side}_addr")
        lens = _list(r[f"{side}_len"], path, f"{what}.{side}_len")
        if len(addrs) != len(lens):
            raise FilterError(f"{path}: {what} has {len(addrs)} {side} addresses but "
                              f"{len(lens)} lengths")
        out[f"{side}_sg"] = [{"addr": a, "len": n} for a, n in zip(addrs, lens, strict=True)]
    return out


def merge_virtio_pci(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """``virtio-pci@1`` with a ``virtio-blk@1`` backend -> ``virtio-blk-pci@1``."""
    path = getattr(ctx, "path", "?")
    node = dict(node)
    blk = node.pop(BACKEND, None)
    if not _is_object(blk) or blk.get("__type__") != "virtio-blk":
        kind = blk.get("__type__") if _is_object(blk) else "nothing"
        raise FilterError(f"{path}: only a virtio-pci whose {BACKEND} is a virtio-blk merges "
                          f"into virtio-blk-pci; this one has {kind}")
    if blk.get("__version__") != 1:
        raise FilterError(f"{path}/{BACKEND}: virtio-blk version {blk.get('__version__')!r}, "
                          "the merge needs 1")
    blk = dict(blk)
    out: dict[str, Any] = {"__type__": "virtio-blk-pci", "__version__": 1}
    for old, new in PCI_FIELDS.items():
        out[old] = _take(node, new, path)
    for old, new in BLK_FIELDS.items():
        out[old] = _take(blk, new, path)
    inverse_q = {v: k for k, v in QUEUE_FIELDS.items()}
    out["vq"] = [_rename(q, inverse_q, path, f"{BACKEND}.queues[{i}]")
                 for i, q in enumerate(_list(_take(blk, "queues", path), path, "queues"))]
    out["rq"] = [_merge_request(r, path, i)
                 for i, r in enumerate(_list(_take(blk, "inflight", path), path, "inflight"))]
    del node["__type__"], node["__version__"]
    del blk["__type__"], blk["__version__"]
    stash = dict(node.pop(STASH, None) or {})
    inner = blk.pop(STASH, None)
    if inner is not None:
        stash[f"{BACKEND}.{STASH}"] = inner
    _leftover(node, path)
    _leftover(blk, f"{path}/{BACKEND}")
    children = [k for k, v in blk.items() if _is_object(v)]
    if children:
        raise FilterError(f"{path}/{BACKEND}: a virtio-blk with children {children} cannot "
                          "be merged")
    out.update(node)
    if stash:
        out[STASH] = stash
    return out


def _merge_request(r: Any, path: str, i: int) -> dict[str, Any]:
    what = f"{BACKEND}.inflight[{i}]"
    if type(r) is not dict or set(r) != {"queue", "head", "out_sg", "in_sg"}:
        raise FilterError(f"{path}: {what} does not have the fields of a request in flight")
    out = {"vq": r["queue"], "index": r["head"]}
    for side in ("in", "out"):
        sg = _list(r[f"{side}_sg"], path, f"{what}.{side}_sg")
        for e in sg:
            if type(e) is not dict or set(e) != {"addr", "len"}:
                raise FilterError(f"{path}: {what}.{side}_sg has an entry that is not "
                                  "{addr, len}")
        out[f"{side}_addr"] = [e["addr"] for e in sg]
        out[f"{side}_len"] = [e["len"] for e in sg]
    return {k: out[k] for k in ("vq", "index", "in_addr", "in_len", "out_addr", "out_len")}


SPLIT = Filter(
    name="virtio-blk-pci-split",
    match="virtio-blk-pci@1",
    produces="virtio-pci@1",
    creates={BACKEND: "virtio-blk@1"},
    func=split_virtio_blk_pci,
    description="split the combined virtio-blk-pci into a virtio-pci transport and its "
                "virtio-blk backend child",
)
MERGE = Filter(
    name="virtio-blk-pci-merge",
    match="virtio-pci@1",
    produces="virtio-blk-pci@1",
    consumes={BACKEND: "virtio-blk@1..1"},
    func=merge_virtio_pci,
    description="fold a virtio-pci transport and its virtio-blk backend into one "
                "virtio-blk-pci",
)
PAIR = FilterPair(name="virtio-blk-pci-split-merge", forward=SPLIT, backward=MERGE)
