"""The stash beside a stream whose format has no room for it (docs/filters.md 2.18).

A migtree stream carries each node's stash (what a filter towards an older
destination dropped) inside the node. A foreign format -- a QEMU stream
written by ``migtree convert --target`` -- has nowhere to put it, and the
destination that loads it (a real QEMU) knows nothing of it. So ``convert``
writes the stash to a *stash file* beside the output, and the conversion
back (``convert B_STREAM --stash-from FILE``) puts it back on the nodes of
the stream B saved, before filtering, so the restoring filters find it.

Each entry remembers, besides the stash, *where* it belongs and *what the
object's own state was* when it was written: an anchor (its path, or what
the format says identifies the object across builds -- a QEMU section's
``idstr`` and instance id) and a SHA-256 of its own fields. The rule is the
one a migtree build follows (2.17): the stash goes back only onto an object
whose own state is exactly what was written; an object that B changed gets
the defaults on the way up, and the conversion says which entries it
dropped and why.

The file is CBOR (``{"format": "migtree-stash", "version": 1, "stream_format",
"target", "entries": [{"anchor", "path", "state", "stash"}]}``), private
(0600) and written atomically; reading it validates every part before
anything uses it (it is input like any stream: bounded size, no CBOR tags,
each stash at most :data:`migtree.tree.MAX_KEPT_STASH` bytes).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import attrs
import cbor2

from .errors import MigtreeError
from .tree import MAX_KEPT_STASH, STASH_KEY, iter_object_nodes, own_fields

MAGIC = "migtree-stash"
VERSION = 1
#: a stash file larger than this is refused before decoding (the stash is for
#: a few fields per object, never bulk state)
MAX_FILE_SIZE = 16 << 20
#: nesting of a stash file (the document, the entries, a stash's pairs,
#: fields and their values)
MAX_DEPTH = 32


class StashFileError(MigtreeError):
    """A stash file that cannot be read or does not have the expected shape."""


def anchor_of(fmt: Any, path: str, node: dict[str, Any]) -> str:
    """What identifies the object at *path* across builds: the format's
    ``stash_anchor(path, node)`` when it has one, else the path."""
    anchor = getattr(fmt, "stash_anchor", None)
    return anchor(path, node) if anchor is not None else path


def state_digest(fmt: Any, node: dict[str, Any]) -> bytes:
    """SHA-256 of the node's own state (its fields, not its children, type,
    version or stash; the format's ``stash_state(node)`` when it has one --
    QEMU leaves out its section framing), in canonical CBOR."""
    state = getattr(fmt, "stash_state", None)
    own = state(node) if state is not None else own_fields(node)
    return hashlib.sha256(cbor2.dumps(own, canonical=True)).digest()


def _anchored(tree: dict[str, Any], fmt: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """``(anchor, path, node)`` for every object node; an anchor the format
    gives more than one node is not one: those nodes are anchored by path."""
    nodes = [(anchor_of(fmt, path, node), path, node) for path, node in iter_object_nodes(tree)]
    seen: dict[str, int] = {}
    for anchor, _, _ in nodes:
        seen[anchor] = seen.get(anchor, 0) + 1
    return [(a if seen[a] == 1 else p, p, n) for a, p, n in nodes]


def collect(tree: dict[str, Any], fmt: Any) -> list[dict[str, Any]]:
    """The stash entries of every object node of *tree* that carries one,
    anchored and fingerprinted for the format *fmt* the tree is written in."""
    entries = []
    for anchor, path, node in _anchored(tree, fmt):
        stash = node.get(STASH_KEY)
        if stash:
            entries.append({"anchor": anchor, "path": path,
                            "state": state_digest(fmt, node), "stash": stash})
    return entries


def entry_keys(stash: dict[str, Any]) -> list[str]:
    """``PAIR.FIELD`` for each entry of a stash (for messages)."""
    return [f"{pair}.{name}" for pair, fields in stash.items()
            for name in (fields if isinstance(fields, dict) else {"?": None})]


def encode(entries: list[dict[str, Any]], *, stream_format: str,
           target: str | None) -> bytes:
    """A stash file's bytes, checked by :func:`decode`'s own rules first, so
    that a stash the reader would refuse (an integer beyond 64 bits, a
    stash above the bound) is an error now, before anything is written."""
    doc = {"format": MAGIC, "version": VERSION, "stream_format": stream_format,
           "target": target, "entries": entries}
    try:
        data = cbor2.dumps(doc)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as e:
        raise StashFileError(f"the stash cannot be kept in a stash file: {e}") from None
    decode(data, "the stash file to write")
    return data


def write(path: str, data: bytes) -> None:
    """Write a stash file's bytes (private, atomically: a failed write
    leaves the old file)."""
    from .files import atomic_output

    with atomic_output(path) as fp:
        fp.write(data)


def read(path: str) -> dict[str, Any]:
    """Read and validate a stash file; raises :class:`StashFileError`
    naming the file and the part that is wrong."""
    try:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            if size > MAX_FILE_SIZE:
                raise StashFileError(f"{path}: {size} bytes, above the {MAX_FILE_SIZE} a "
                                     "stash file may have")
            data = fp.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise StashFileError(f"{path}: cannot read the stash file: {e.strerror or e}") from None
    return decode(data, path)


def decode(data: bytes, name: str) -> dict[str, Any]:
    """Decode and validate a stash file's bytes (*name* for messages)."""
    import io

    from .stream import _SEMANTIC_REJECT, _reject_tag_hook, _TagRejected

    if len(data) > MAX_FILE_SIZE:
        raise StashFileError(f"{name}: {len(data)} bytes, above the {MAX_FILE_SIZE} a stash "
                             "file may have")
    try:
        fp = io.BytesIO(data)
        dec = cbor2.CBORDecoder(fp, max_depth=MAX_DEPTH, allow_indefinite=False,
                                allow_duplicate_keys=False, semantic_decoders=_SEMANTIC_REJECT,
                                tag_hook=_reject_tag_hook, str_errors="strict")
        doc = dec.decode()
        extra = len(data) - fp.tell()
    except (_TagRejected, cbor2.CBORDecodeError, ValueError, RecursionError, EOFError) as e:
        tag = next((x for x in (e, e.__cause__, e.__context__) if isinstance(x, _TagRejected)),
                   None)
        if tag is not None:  # cbor2 wraps what the tag hook raised
            raise StashFileError(f"{name}: not a stash file: CBOR tag {tag.tag} (a stash file "
                                 "has none: integers are at most 64 bits)") from None
        raise StashFileError(f"{name}: not a stash file (bad CBOR: {e})") from None
    if extra:
        raise StashFileError(f"{name}: not a stash file ({extra} bytes after the document)")
    _check(name, doc)
    return doc


def _check(path: str, doc: Any) -> None:
    def bad(where: str, why: str) -> StashFileError:
        return StashFileError(f"{path}: {where}: {why}")

    if not isinstance(doc, dict) or doc.get("format") != MAGIC:
        raise bad("format", f"not a stash file (no \"format\": \"{MAGIC}\")")
    if doc.get("version") != VERSION:
        raise bad("version", f"{doc.get('version')!r}: this migtree reads version {VERSION}")
    unknown = set(doc) - {"format", "version", "stream_format", "target", "entries"}
    if unknown:
        raise bad(", ".join(sorted(map(str, unknown))), "unknown key")
    if not isinstance(doc.get("stream_format"), str):
        raise bad("stream_format", "must be a string")
    if doc.get("target") is not None and not isinstance(doc["target"], str):
        raise bad("target", "must be a string or null")
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise bad("entries", "must be an array")
    anchors: set[str] = set()
    for i, e in enumerate(entries):
        where = f"entries[{i}]"
        if not isinstance(e, dict) or set(e) != {"anchor", "path", "state", "stash"}:
            raise bad(where, "must be a map of anchor, path, state and stash")
        if not isinstance(e["anchor"], str) or not isinstance(e["path"], str):
            raise bad(where, "anchor and path must be strings")
        if e["anchor"] in anchors:
            raise bad(where, f"anchor {e['anchor']!r} appears twice")
        anchors.add(e["anchor"])
        if not isinstance(e["state"], bytes) or len(e["state"]) != 32:
            raise bad(f"{where}.state", "must be a 32-byte SHA-256")
        stash = e["stash"]
        if not isinstance(stash, dict) or not stash or not all(
                isinstance(k, str) and isinstance(v, dict) and v
                and all(isinstance(f, str) for f in v) for k, v in stash.items()):
            raise bad(f"{where}.stash", "must map each pair's name to a map of its fields")
        size = len(cbor2.dumps(stash))
        if size > MAX_KEPT_STASH:
            raise bad(f"{where}.stash", f"{size} bytes, above the {MAX_KEPT_STASH} an object "
                      "keeps")


@attrs.define
class Applied:
    """What :func:`apply` did: each list holds ``(path, ["PAIR.FIELD", ...])``."""

    #: put back: the object's own state is what the stash file was written for
    restored: list[tuple[str, list[str]]] = attrs.Factory(list)
    #: not put back: the object's own state changed since (the way up takes
    #: the defaults)
    changed: list[tuple[str, list[str]]] = attrs.Factory(list)
    #: not put back: no object with the entry's anchor in this stream
    absent: list[tuple[str, list[str]]] = attrs.Factory(list)

    def lines(self, source: str) -> list[str]:
        out = []
        for path, keys in self.restored:
            out.append(f"stash from {source}: {path}: put back {', '.join(keys)}")
        for path, keys in self.changed:
            out.append(f"stash from {source}: {path}: the object's state changed since the "
                       f"stash was written, so {', '.join(keys)} is dropped (the defaults "
                       "are taken)")
        for anchor, keys in self.absent:
            out.append(f"stash from {source}: {anchor}: no such object in this stream, so "
                       f"{', '.join(keys)} is dropped")
        return out


def apply(tree: dict[str, Any], doc: dict[str, Any], fmt: Any) -> Applied:
    """Put each entry of a (validated) stash file *doc* back onto the node of
    *tree* (read in the format *fmt*) with the same anchor, when that node's
    own state is the one the entry was written for; a node's own stash, if it
    has one, is kept and the file's entries are added to it."""
    entries = {e["anchor"]: e for e in doc["entries"]}
    done = Applied()
    for anchor, path, node in _anchored(tree, fmt):
        if not entries:
            break
        e = entries.pop(anchor, None)
        if e is None:
            continue
        keys = entry_keys(e["stash"])
        if state_digest(fmt, node) != e["state"]:
            done.changed.append((path, keys))
            continue
        stash = node.setdefault(STASH_KEY, {})
        for pair, fields in e["stash"].items():
            stash.setdefault(pair, {}).update(fields)
        done.restored.append((path, keys))
    done.absent = [(a, entry_keys(e["stash"])) for a, e in entries.items()]
    return done
