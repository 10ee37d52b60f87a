"""The QEMU stream as a migtree stream format (``migtree_register_stream_formats``).

``read(fp)`` decodes a QEVM stream into ``(header, tree)``
(:func:`migtree_qemu.tree.stream_to_tree`); ``write(fp, header, tree)``
writes a tree made that way back to QEVM.  Opaque fields are handed to the
opaque decoders registered for format ``"qemu"`` (key: the section's vmsd
name, e.g. ``"virtio-blk"``).  Sections are placed at their QOM paths
where the stream and its machine type determine them
(:func:`migtree_qemu.placement.static_paths`: vCPUs, APICs, the board's own
devices); when a QOM walk was saved beside the stream (``STREAM.qom.json``,
see :mod:`migtree_qemu.qompaths`), its paths are used first and the static
ones fill in what it does not place.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from . import placement, qevm, qompaths
from .errors import QemuEncodeError, QemuStreamError
from .tree import QEMU_KEY, OpaqueCodec, stream_to_tree, tree_schemas, tree_to_stream

FORMAT_NAME = "qemu"
MAGIC_HEAD = b"QEVM"


def registered_decoders(registry: Any | None = None) -> dict[str, OpaqueCodec]:
    """The opaque decoders plugins registered for format ``"qemu"``, by key."""
    if registry is None:
        try:
            from migtree.plugins import get_registry
        except ImportError:  # pragma: no cover - the core is a dependency
            return {}
        registry = get_registry()
    decoders = getattr(registry, "decoders", {}) or {}
    return {key: dec for (fmt, key), dec in decoders.items() if fmt == FORMAT_NAME}


class QemuStreamFormat:
    """QEMU's ``QEVM`` version 3 stream, read into a migtree tree and back."""

    name = FORMAT_NAME
    description = "QEMU migration stream (QEVM version 3, QEMU >= 2.4 with vmdesc)"
    extensions = (".qevm",)

    def __init__(self, registry: Any | None = None) -> None:
        self._registry = registry

    def decoders(self) -> dict[str, OpaqueCodec]:
        return registered_decoders(self._registry)

    def describe(self, type_name: str, version: int) -> dict[str, Any] | None:
        """The schema entry of a type a decoder's nodes use (from the
        registry the decoders come from), for the header."""
        try:
            from migtree.stream import schema_entry
        except ImportError:  # pragma: no cover - the core is a dependency
            return None
        registry = self._registry
        if registry is None:
            from migtree.plugins import get_registry
            registry = get_registry()
        return schema_entry(type_name, version, registry)

    def sniff(self, head: bytes) -> bool:
        return bytes(head[:4]) == MAGIC_HEAD

    def read(self, fp: Any, *, paths: Mapping[tuple[str, int], str] | None = None,
             ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Decode *fp* (a path or a seekable binary file) into
        ``(header, tree)``.  The header carries ``format``, the QEMU machine
        type and ``schemas`` (``{"TYPE@V": entry}``) for every node, ready
        for :func:`migtree.stream.write_tree`."""
        if paths is None:
            paths = _paths_beside(fp)
        with qevm.load(fp) as stream:
            if paths is None:  # no walk beside the stream
                paths = placement.static_paths(stream)
            elif callable(paths):
                paths = paths(stream)
            tree = stream_to_tree(stream, paths=paths, decoders=self.decoders())
            machine = stream.configuration.machine if stream.configuration else None
            header = {"format": FORMAT_NAME, "qevm_version": stream.version,
                      "machine_type": machine, "size": stream.size,
                      # what `convert` puts in a migtree stream's header
                      "extra": {"source_format": FORMAT_NAME, "machine_type": machine},
                      "schemas": tree_schemas(tree, self.describe)}
        return header, tree

    def stash_anchor(self, path: str, node: Mapping[str, Any]) -> str:
        """What identifies an object across the QEMUs a stash file travels
        through (migtree.stashfile): its section's ``idstr`` and instance id,
        which a QEMU that loads and saves the stream keeps, unlike the path
        (placed from a QOM walk that may not be beside B's stream); nodes
        that are not sections (the machine, containers) by path."""
        meta = node.get(QEMU_KEY)
        if isinstance(meta, Mapping) and isinstance(meta.get("idstr"), str):
            return f"section {meta['idstr']} #{meta.get('instance_id')}"
        return path

    def stash_state(self, node: Mapping[str, Any]) -> list[Any]:
        """A node's own state for a stash file's fingerprint: its values in
        wire order, without the section framing (section ids, layout) and
        without names -- the QEMU that loads and saves a section numbers
        and describes it its own way, and may name a field differently
        (pckbd's ``pending_tmp`` is 5.2's ``pending``, the same byte)."""
        from migtree.tree import own_fields

        def values(v: Any) -> Any:
            if isinstance(v, Mapping):
                return [values(x) for x in v.values()]
            if isinstance(v, (list, tuple)):
                return [values(x) for x in v]
            return v

        return values({k: v for k, v in own_fields(dict(node)).items() if k != QEMU_KEY})

    def read_description(self, data: bytes) -> Any:
        """A ``-dump-vmstate`` dump for ``migtree check``
        (:class:`migtree_qemu.dumpcheck.VmstateDump`), None if not one."""
        from .dumpcheck import read_description

        return read_description(data)

    def check(self, src: Any, dst: Any, filters: list[Any]) -> Any:
        """``migtree check`` on two dumps (:func:`migtree_qemu.dumpcheck.check`)."""
        from .dumpcheck import check

        return check(src, dst, filters)

    def read_target(self, path: Any) -> Any:
        """A QEMU destination from its ``-dump-vmstate`` (``convert
        --target``, ``explain --target``); None for any other file."""
        import json

        from .target import QemuTarget

        try:
            data = Path(path).read_bytes()
        except OSError:
            return None
        if b'"vmschkmachine"' not in data:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        return QemuTarget.from_dump(doc, Path(path).name) if QemuTarget.sniff(doc) else None

    def relay(self, source: str, destination: str, *, target: Any, convert: Any,
              source_control: str | None = None, destination_control: str | None = None,
              log: Any = None) -> Any:
        """``migtree relay``: a live migration from *source* (``unix:PATH``,
        ``tcp:HOST:PORT``, ``-``) to *destination*, converted in flight for
        *target* (a :class:`migtree_qemu.target.QemuTarget`) with the core's
        *convert* (:func:`migtree_qemu.relay.relay`)."""
        from .relay import relay

        return relay(source, destination, target, convert, decoders=self.decoders(),
                     source_control=source_control,
                     destination_control=destination_control, log=log)

    def write(self, fp: IO[bytes], header: Mapping[str, Any] | None,
              tree: Mapping[str, Any]) -> int:
        """Write *tree* (from :meth:`read`, possibly filtered) as QEVM.

        What is written is read back by the QEMU reader before this returns
        (when *fp* can seek): output the reader would refuse -- a bad page
        size, a section name QEMU could not have written -- is an error
        here, not a file that fails later in QEMU."""
        stream = tree_to_stream(tree, decoders=self.decoders())
        start = fp.tell() if fp.seekable() else None
        try:
            n = qevm.dump(stream, fp)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError,
                RecursionError, UnicodeError) as e:
            if isinstance(e, QemuStreamError):
                raise
            raise QemuEncodeError(f"the tree cannot be written as a QEMU stream: "
                                  f"{type(e).__name__}: {e}") from None
        fp.flush()
        name = getattr(fp, "name", None)
        src: Any = None
        if isinstance(fp, io.BytesIO) and start is not None:
            src = fp.getvalue()[start:start + n]
        elif isinstance(name, str) and start == 0 and os.path.isfile(name):
            src = name  # read back from the file (mapped, not copied)
        if src is not None:
            try:
                qevm.load(src, ram="skip").close()
            except QemuStreamError as e:
                raise QemuEncodeError(f"the QEMU stream this tree gives would be refused by "
                                      f"the reader, so it is not written: {e}") from None
        return n


def _paths_beside(fp: Any) -> Any:
    """A loader of QOM paths from ``STREAM.qom.json`` (and a
    ``-dump-vmstate`` dump ``STREAM.vmstate.json``) when they exist."""
    name = fp if isinstance(fp, (str, os.PathLike)) else getattr(fp, "name", None)
    if not isinstance(name, (str, os.PathLike)):
        return None
    qom_file = Path(name).with_suffix(".qom.json")
    if not qom_file.exists():
        return None
    qom = qompaths.load(qom_file)
    dump_file = Path(name).with_suffix(".vmstate.json")
    dump = qompaths.load(dump_file) if dump_file.exists() else None
    return lambda stream: with_static_paths(qompaths.section_paths(stream, qom, dump), stream)


def with_static_paths(walked: Mapping[tuple[str, int], str],
                      stream: qevm.QemuStream) -> dict[tuple[str, int], str]:
    """The walk's paths, and the static ones
    (:func:`migtree_qemu.placement.static_paths`) for the sections the walk
    does not place, unless the walk put another section at that path: the
    walk wins."""
    out = dict(walked)
    taken = set(out.values())
    for key, path in placement.static_paths(stream).items():
        if key not in out and path not in taken:
            out[key] = path
            taken.add(path)
    return out


#: the instance the plugin registers
QEMU_FORMAT = QemuStreamFormat()
