"""Stream formats: ours, and the foreign ones plugins register.

A plugin teaches migtree another emulator's stream (QEMU's ``QEVM``) with a
:class:`StreamFormat` through the ``migtree_register_stream_formats`` hook,
and the state that format keeps as an opaque blob (QEMU's virtio sections)
with an :class:`OpaqueDecoder` through ``migtree_register_opaque_decoders``.
:func:`open_stream` reads any of them: it sniffs the first bytes, the
migtree format first, then the registered formats in name order (never in
registration order).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import IO, Any

import attrs

from .errors import MigtreeError, PluginError, StreamError
from .stream import DEFAULT_LIMITS, MAGIC_PREFIX, Limits, read_tree, write_tree

#: how many bytes ``sniff`` is given (fewer when the stream is shorter)
SNIFF_SIZE = 64


@attrs.define
class StreamFormat:
    """A stream format ``inspect``, ``convert`` and ``restore`` can read.

    :ivar name: short and unique (``"qemu"``); ``open_stream`` returns it
    :ivar sniff: ``sniff(head: bytes) -> bool``: is this your format? ``head``
        is the first :data:`SNIFF_SIZE` bytes (fewer if the stream is shorter)
    :ivar read: ``read(fp) -> (header, tree)``: ``fp`` is a binary file
        positioned at the stream's start; ``tree`` is a migtree state tree
        (plain values, ``__type__``/``__version__`` object nodes) and
        ``header`` a JSON-able dict describing the stream
    :ivar write: ``write(fp, header, tree)``, or None if the format is read-only
    :ivar description: one line for listings
    :ivar plugin: the distribution that registered it (set by the registry)
    :ivar read_description: optional, with ``check``: ``read_description(data:
        bytes) -> object | None``: is this file (its whole content) a
        *description* of what a destination of your format accepts (QEMU's
        ``-dump-vmstate``)? Return the description (any object ``check``
        takes), None when it is not one of yours; raise a
        :class:`~migtree.errors.MigtreeError` naming the bad entry when it is
        one but malformed. ``migtree check`` asks every format, in name
        order, for a file that is not a build, a schema dump or a stream.
    :ivar check: optional, with ``read_description``: ``check(src_desc,
        dst_desc, filters) -> report``: what a destination described by
        ``dst_desc`` cannot load of what the source described by ``src_desc``
        sends, and which of ``filters`` (the engine's :class:`Filter` s,
        judged by their declarations only -- never run) bridge it. The
        report has ``.compatible`` (bool: the destination loads what the
        source sends, through those filters), ``.as_dict()`` (JSON-able;
        ``migtree check --json`` prints it) and ``.format_text()`` (what
        ``migtree check`` prints).
    :ivar carries_stash: optional, default False: the format writes each
        node's ``__stash__`` and reads it back. When it does not (QEMU's),
        ``migtree convert`` keeps the stash in a stash file beside the output
        (:mod:`migtree.stashfile`), and these two optional methods say how to
        find each object again in the stream a destination saves back:
        ``stash_anchor(path, node) -> str`` (default: the path) and
        ``stash_state(node) -> object`` (what must be unchanged for the stash
        to go back, CBOR-encodable; default: the node's own fields). Plugins
        whose format object is their own class (not this one) give it these
        optional attributes the same way; the core reads them with ``getattr``.
    """

    name: str
    sniff: Callable[[bytes], bool]
    read: Callable[[IO[bytes]], tuple[dict[str, Any], dict[str, Any]]]
    write: Callable[[IO[bytes], dict[str, Any], dict[str, Any]], None] | None = None
    description: str = ""
    plugin: str | None = None
    read_description: Callable[[bytes], Any] | None = None
    check: Callable[[Any, Any, list[Any]], Any] | None = None
    carries_stash: bool = False
    stash_anchor: Callable[[str, dict[str, Any]], str] | None = None
    stash_state: Callable[[dict[str, Any]], Any] | None = None


@attrs.define
class OpaqueDecoder:
    """Turns state another format keeps as opaque bytes into nodes and back.

    :ivar format: the :class:`StreamFormat` name it serves (``"qemu"``)
    :ivar key: what it claims within that format (a QEMU vmsd name such as
        ``"virtio-blk"``)
    :ivar decode: ``decode(data: bytes, context) -> dict``
    :ivar encode: ``encode(node: dict, context) -> bytes``, with
        ``encode(decode(b)) == b``
    :ivar description: one line for listings
    :ivar plugin: the distribution that registered it (set by the registry)
    """

    format: str
    key: str
    decode: Callable[[bytes, Any], dict[str, Any]]
    encode: Callable[[dict[str, Any], Any], bytes]
    description: str = ""
    plugin: str | None = None


def sniff_migtree(head: bytes) -> bool:
    """A migtree stream starts with a definite-length map head whose first
    entry is ``"magic": "MIGTREE"`` (docs/wire-format.md)."""
    return len(head) >= 15 and 0xA1 <= head[0] <= 0xB7 and head[1:15] == MAGIC_PREFIX


def _write_migtree(fp: IO[bytes], header: dict[str, Any], tree: dict[str, Any]) -> None:
    extra = header.get("extra") if isinstance(header, dict) else None
    build = (header.get("producer") or {}).get("build") if isinstance(header, dict) else None
    write_tree(fp, extra, tree, None, build_name=build,
               schemas=header.get("schemas") if isinstance(header, dict) else None)


#: our own format, always known (it needs no plugin)
MIGTREE = StreamFormat("migtree", sniff=sniff_migtree, read=lambda fp: read_tree(fp),
                       write=_write_migtree, carries_stash=True,
                       description="migtree CBOR sequence (docs/wire-format.md)",
                       plugin="migtree")


def formats(registry: Any = None) -> dict[str, StreamFormat]:
    """Every readable format by name: ``migtree`` and the registered ones."""
    if registry is None:
        from .plugins import get_registry
        registry = get_registry()
    out: dict[str, Any] = {"migtree": MIGTREE}
    for name in sorted(getattr(registry, "formats", {})):
        out.setdefault(name, registry.formats[name])
    return out


class _Prefixed(io.RawIOBase):
    """A non-seekable file with the bytes already read put back in front."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buf))
        buf[:len(data)] = data
        return len(data)


def _peek(fp: IO[bytes]) -> tuple[bytes, IO[bytes]]:
    try:
        seekable = fp.seekable()
    except (AttributeError, OSError, ValueError):
        seekable = False
    if seekable:
        pos = fp.tell()
        head = fp.read(SNIFF_SIZE)
        fp.seek(pos)
        return head, fp
    head = b""
    while len(head) < SNIFF_SIZE:
        more = fp.read(SNIFF_SIZE - len(head))
        if not more:
            break
        head += more
    return head, io.BufferedReader(_Prefixed(head, fp))


def open_stream(path_or_fp: Any, registry: Any = None, *,
                limits: Limits = DEFAULT_LIMITS,
                offsets: dict[str, int] | None = None) -> tuple[str, dict[str, Any],
                                                                dict[str, Any]]:
    """Read a stream of any known format: ``(format_name, header, tree)``.

    ``path_or_fp`` is a path, a binary file or the stream's bytes. The
    migtree format is tried first (with ``limits``), then every registered
    format in name order; the first whose ``sniff`` accepts the head reads
    the stream. A foreign reader's own exception becomes a
    :class:`StreamError` naming the format and its plugin. ``offsets`` (a
    migtree stream only) gets each object path's section offset.
    """
    if isinstance(path_or_fp, (str, os.PathLike)):
        with open(path_or_fp, "rb") as fp:
            return open_stream(fp, registry, limits=limits, offsets=offsets)
    if isinstance(path_or_fp, (bytes, bytearray, memoryview)):
        return open_stream(io.BytesIO(bytes(path_or_fp)), registry, limits=limits,
                           offsets=offsets)
    head, fp = _peek(path_or_fp)
    if sniff_migtree(head):
        header, tree = read_tree(fp, limits=limits, offsets=offsets)
        return "migtree", header, tree
    known = formats(registry)
    for name, fmt in known.items():
        if fmt is MIGTREE:
            continue
        who = f"stream format {name!r} (plugin {fmt.plugin})"
        try:
            ok = fmt.sniff(head)
        except Exception as e:
            raise PluginError(f"{who}: sniff failed: {e.__class__.__name__}: {e}") from e
        if not ok:
            continue
        try:
            header, tree = fmt.read(fp)
        except MigtreeError:
            raise
        except Exception as e:
            raise StreamError(f"{name} stream: {e}") from e
        if not isinstance(header, dict) or not isinstance(tree, dict):
            raise PluginError(f"{who}: read() must return (header dict, tree dict)")
        return name, header, tree
    if not head:
        raise StreamError("the stream is empty", offset=0)
    raise StreamError(
        f"unknown stream format (first bytes: {head[:8].hex(' ')}): not a migtree stream, and "
        f"no installed format recognises it (installed: {', '.join(known)})", offset=0)
