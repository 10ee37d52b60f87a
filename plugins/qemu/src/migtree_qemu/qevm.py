"""Read and write QEMU migration streams (``QEVM`` file format version 3).

Layout (QEMU 7.2, ``migration/savevm.c``; all integers big-endian)::

    u32 magic 0x5145564d ("QEVM")   u32 version 3
    [0x07 configuration: VMState "configuration" (u32 len, machine name, subsections)]
    sections, each one of
      0x01 START / 0x04 FULL: u32 section_id, u8 len, idstr, u32 instance_id,
                              u32 version_id, body, [0x7e u32 section_id]
      0x02 PART  / 0x03 END : u32 section_id, body, [0x7e u32 section_id]
      0x08 COMMAND          : u16 command, u16 len, data
    0x00 EOF
    0x06 VMDESCRIPTION: u32 len, JSON describing every FULL section

Section bodies carry no length.  Iterable sections (RAM) are
self-delimiting (their records end with an EOS flag); the others can only
be walked with the JSON description, which is why :func:`load` reads the
description at the end of the stream first.

>>> s = load("vm.qevm")                        # doctest: +SKIP
>>> s.device("apic")["tpr"]                    # doctest: +SKIP
>>> dump(s, open("out.qevm", "wb"))            # doctest: +SKIP

RAM pages are never held as one value: by default a page is a
:class:`PageRef` (an offset into the source, read again when writing);
``ram="skip"`` drops them and ``ram=callback`` streams them.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import attrs

from .errors import (
    QemuBadMagicError,
    QemuEncodeError,
    QemuFooterError,
    QemuStreamError,
    QemuTruncatedError,
    QemuUnknownSectionTypeError,
    QemuUnknownSubsectionError,
    QemuUnsupportedError,
    QemuVersionError,
    QemuVmdescMismatchError,
)
from .vmstate import (
    QEMU_VM_SUBSECTION,
    Cursor,
    Field,
    VMStateObject,
    decode_object,
    describe_object,
    encode_object,
    qemu_json,
    vmdesc_style_of,
)

QEVM_MAGIC = 0x5145564D
QEVM_VERSION = 3
QEVM_VERSION_COMPAT = 2  # QEMU <= 0.x; not readable here

EOF = 0x00
SECTION_START = 0x01
SECTION_PART = 0x02
SECTION_END = 0x03
SECTION_FULL = 0x04
SUBSECTION = QEMU_VM_SUBSECTION
VMDESCRIPTION = 0x06
CONFIGURATION = 0x07
COMMAND = 0x08
SECTION_FOOTER = 0x7E

SECTION_TYPE_NAMES = {
    SECTION_START: "START",
    SECTION_PART: "PART",
    SECTION_END: "END",
    SECTION_FULL: "FULL",
}

# MIG_CMD_* (migration/savevm.c); PACKAGED embeds a whole stream
MIG_CMD_PACKAGED = 7
MIG_CMD_SWITCHOVER_START = 0x0B

#: migration commands a plain precopy stream may carry: name, the first QEMU
#: version that knows it, and what it means to the loader
MIG_COMMANDS: dict[int, tuple[str, tuple[int, int], str]] = {
    MIG_CMD_SWITCHOVER_START: (
        "switchover-start", (10, 0),
        "tells devices with a switchover_start handler (VFIO's multifd device state) "
        "that the source is about to stop; QEMU 10.0 sends it unless the machine type's "
        "migration.send-switchover-start is off (machine types <= 9.2)"),
}

# RAM_SAVE_FLAG_* (migration/ram.c)
RAM_FULL = 0x01  # obsolete, never written
RAM_ZERO = 0x02
RAM_MEM_SIZE = 0x04
RAM_PAGE = 0x08
RAM_EOS = 0x10
RAM_CONTINUE = 0x20
RAM_XBZRLE = 0x40
RAM_HOOK = 0x80
RAM_COMPRESS_PAGE = 0x100
_RAM_HAS_BLOCK = RAM_ZERO | RAM_PAGE | RAM_XBZRLE | RAM_COMPRESS_PAGE
RAM_SECTION_VERSION = 4


# ---------------------------------------------------------------------------
# model


@attrs.define
class Configuration:
    """The configuration record after the header.  ``state`` holds the
    ``configuration`` VMState: fields ``len`` and ``name`` (the machine type)
    and the subsections QEMU sent (``configuration/target-page-bits``,
    ``configuration/capabilities``, ``configuration/uuid``)."""

    state: VMStateObject
    offset: int = 0

    @property
    def machine(self) -> str:
        return self.state["name"].decode("latin-1")

    @property
    def capabilities(self) -> list[str]:
        for s in self.state.subsections:
            if s.vmsd_name == "configuration/capabilities":
                return list(s["capabilities"])
        return []


@attrs.define(slots=True)
class PageRef:
    """A guest page left in the source stream: *offset* of its bytes."""

    offset: int


@attrs.define(slots=True)
class RamBlockInfo:
    """One RAM block announced by the MEM_SIZE record."""

    name: str
    length: int
    mr_addr: int | None = None  # only with the x-ignore-shared capability


@attrs.define(slots=True)
class RamRecord:
    """One record of a RAM section, in stream order.

    :ivar flags: the RAM_SAVE_FLAG_* bits as written (including CONTINUE)
    :ivar addr: the page offset in its block; for MEM_SIZE the total size
    :ivar block: the RAM block (resolved also for CONTINUE records)
    :ivar data: ZERO: the fill byte (int); PAGE: :class:`PageRef` or bytes;
        XBZRLE / COMPRESS_PAGE: the encoded bytes after the header;
        MEM_SIZE: ``list[RamBlockInfo]``; EOS: None
    """

    flags: int
    addr: int = 0
    block: str | None = None
    data: Any = None


@attrs.define
class RamSection:
    """The body of one START/PART/END section of the ``ram`` iterable."""

    records: list[RamRecord] = attrs.field(factory=list)
    #: pages not kept (``ram="skip"`` or a callback); the section cannot
    #: be written back when this is non-zero
    dropped_pages: int = 0
    zero_pages: int = 0
    full_pages: int = 0


@attrs.define
class Section:
    """One section.  PART and END sections repeat the START's ``idstr``,
    ``instance_id`` and ``version_id`` for convenience; only START and FULL
    write them.

    :ivar body: :class:`VMStateObject` (FULL sections described by the
        vmdesc), :class:`RamSection` (RAM), or the raw body: ``bytes`` or an
        object with ``iter_chunks()`` (a :class:`migtree.blob.Blob`)
    :ivar desc_keys: key order of the section's vmdesc entry (FULL only)
    """

    kind: int
    section_id: int
    idstr: str
    instance_id: int
    version_id: int
    body: Any
    footer: bool = True
    desc_keys: tuple[str, ...] | None = None
    offset: int = 0
    #: where the body starts and ends (the footer's offset) in the source
    body_offset: int = 0
    body_end: int = 0

    @property
    def kind_name(self) -> str:
        return SECTION_TYPE_NAMES.get(self.kind, hex(self.kind))

    @property
    def state(self) -> VMStateObject:
        if not isinstance(self.body, VMStateObject):
            raise TypeError(f"section {self.idstr!r} has no VMState body")
        return self.body


@attrs.define
class Command:
    """A QEMU_VM_COMMAND record (postcopy / COLO control)."""

    command: int
    data: bytes
    offset: int = 0


Item = Section | Command


class _Source:
    """The bytes a stream was read from (an mmap of a file, or a buffer)."""

    def __init__(self, buf: Any, fileobj: BinaryIO | None = None) -> None:
        self.buf = buf
        self.fileobj = fileobj

    def read(self, offset: int, n: int) -> bytes:
        if self.buf is None:
            raise QemuEncodeError("the stream's source was closed; RAM pages are gone")
        return bytes(self.buf[offset : offset + n])

    def close(self) -> None:
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()
        self.buf = None
        if self.fileobj is not None:
            self.fileobj.close()
            self.fileobj = None


@attrs.define
class QemuStream:
    """A decoded QEVM stream; :func:`dump` writes it back."""

    version: int = QEVM_VERSION
    configuration: Configuration | None = None
    items: list[Item] = attrs.field(factory=list)
    page_size: int = 4096
    #: write the vmdesc at the end (as the source had one)
    vmdesc: bool = True
    vmdesc_keys: tuple[str, ...] = ("page_size", "devices")
    #: the vmdesc's JSON style (QEMU 5.2 wrote it differently from 7.2/10.0)
    vmdesc_style: str = "json-writer"
    size: int = 0
    source: _Source | None = attrs.field(default=None, repr=False, eq=False)

    # -- lookup ----------------------------------------------------------
    @property
    def sections(self) -> list[Section]:
        return [i for i in self.items if isinstance(i, Section)]

    def devices(self) -> Iterator[Section]:
        """The FULL sections (device state), in stream order."""
        return (s for s in self.sections if s.kind == SECTION_FULL)

    def section(self, idstr: str, instance_id: int = 0) -> Section:
        for s in self.devices():
            if s.idstr == idstr and s.instance_id == instance_id:
                return s
        for s in self.devices():
            if s.idstr.rsplit("/", 1)[-1] == idstr and s.instance_id == instance_id:
                return s
        raise KeyError(f"{idstr} instance {instance_id}")

    def device(self, idstr: str, instance_id: int = 0) -> VMStateObject:
        """The VMState of the FULL section *idstr* (a full idstr like
        ``0000:00:02.0/virtio-blk`` or its last part ``virtio-blk``)."""
        return self.section(idstr, instance_id).state

    def raw_body(self, sec: Section, chunk: int = 1 << 20) -> Iterator[bytes]:
        """The bytes of *sec*'s body as they are in the source, in chunks."""
        if self.source is None or self.source.buf is None:
            raise QemuEncodeError("the stream's source is closed", section=sec.idstr)
        for off in range(sec.body_offset, sec.body_end, chunk):
            yield self.source.read(off, min(chunk, sec.body_end - off))

    def ram_records(self) -> Iterator[RamRecord]:
        for s in self.sections:
            if isinstance(s.body, RamSection):
                yield from s.body.records

    def vmdesc_object(self) -> dict[str, Any]:
        """The JSON description :func:`dump` appends, as a dict."""
        out: dict[str, Any] = {}
        for k in self.vmdesc_keys:
            if k == "page_size":
                out[k] = self.page_size
            elif k == "configuration":
                # QEMU >= 9.1 describes the configuration section too
                if self.configuration is not None:
                    out[k] = describe_object(self.configuration.state)
            elif k == "devices":
                out[k] = [_describe_section(s) for s in self.devices()]
        return out

    # -- resources ---------------------------------------------------------
    def close(self) -> None:
        if self.source is not None:
            self.source.close()

    def __enter__(self) -> QemuStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe_section(s: Section) -> dict[str, Any]:
    body = s.state
    inner = describe_object(body)
    d: dict[str, Any] = {}
    keys = list(s.desc_keys or ("name", "instance_id", "vmsd_name", "version", "fields"))
    if "vmsd_name" in keys and "subsections" not in keys:
        keys.append("subsections")  # QEMU writes it only when there are some
    for k in keys:
        if k == "name":
            d[k] = s.idstr
        elif k == "instance_id":
            d[k] = s.instance_id
        elif k == "size":  # old-style (non-VMState) section
            buf = bytearray()
            encode_object(buf, body)
            d[k] = len(buf)
        elif k in inner:
            d[k] = inner[k]
    return d


# ---------------------------------------------------------------------------
# reading

RamMode = str | Callable[[str, int, Any], None]


def find_vmdesc(buf: Any) -> tuple[int, dict[str, Any]] | None:
    """Locate the VMDESCRIPTION record at the end of *buf*; return
    ``(offset of its 0x06 byte, parsed JSON)`` or None.

    The JSON contains no byte 0x06, so the record is found by scanning back
    for a 0x06 preceded by EOF whose be32 length reaches exactly the end.
    """
    n = len(buf)
    end = n
    tries = 0
    while tries < 16:
        p = buf.rfind(b"\x06", 0, end)
        if p < 1:
            return None
        tries += 1
        end = p
        if p + 5 > n or buf[p - 1] != EOF:
            continue
        length = int.from_bytes(buf[p + 1 : p + 5], "big")
        if p + 5 + length != n or length == 0 or buf[p + 5] != ord("{"):
            continue
        try:
            desc = json.loads(bytes(buf[p + 5 : n]))
        except (ValueError, RecursionError):
            return None
        return p, desc
    return None


_FIELD_KEYS = {"name", "type", "size", "index", "array_len", "struct", "vmsd_name",
               "version", "fields", "subsections"}
MAX_VMDESC_DEPTH = 32


def check_vmdesc(desc: Any, offset: int | None = None) -> None:
    """Check that a vmdesc has the shape QEMU writes (so decoding cannot
    trip over a missing key or a wrong type); raise
    :class:`QemuVmdescMismatchError` naming the device and entry."""

    def bad(msg: str, where: str) -> QemuVmdescMismatchError:
        return QemuVmdescMismatchError(f"malformed vmdesc: {msg}", offset=offset,
                                       field=where or None)

    def is_int(v: Any, lo: int = 0) -> bool:
        return type(v) is int and v >= lo

    def check_obj(d: Any, where: str, depth: int) -> None:
        if depth > MAX_VMDESC_DEPTH:
            raise bad(f"nested deeper than {MAX_VMDESC_DEPTH}", where)
        if not isinstance(d, dict):
            raise bad("an object description is not a JSON object", where)
        if "vmsd_name" in d and not isinstance(d["vmsd_name"], str):
            raise bad("vmsd_name is not a string", where)
        if "version" in d and not is_int(d["version"]):
            raise bad("version is not an unsigned integer", where)
        fields = d.get("fields", [])
        if not isinstance(fields, list):
            raise bad("fields is not a list", where)
        for i, f in enumerate(fields):
            fw = f"{where}.fields[{i}]"
            if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                raise bad("a field entry has no name", fw)
            fw = f"{where}.{f['name']}"
            if set(f) - _FIELD_KEYS:
                raise bad(f"unknown keys {sorted(set(f) - _FIELD_KEYS)}", fw)
            if not is_int(f.get("size")):
                raise bad("size is not an unsigned integer", fw)
            if "type" in f and not isinstance(f["type"], str):
                raise bad("type is not a string", fw)
            for k in ("index", "array_len"):
                if k in f and not is_int(f[k]):
                    raise bad(f"{k} is not an unsigned integer", fw)
            if "struct" in f:
                if f["struct"]:
                    check_obj(f["struct"], fw, depth + 1)
                elif not isinstance(f["struct"], dict):
                    raise bad("struct is not an object", fw)
            if "fields" in f:
                check_obj(f, fw, depth + 1)
        subs = d.get("subsections", [])
        if not isinstance(subs, list):
            raise bad("subsections is not a list", where)
        for i, sd in enumerate(subs):
            if not isinstance(sd, dict) or not isinstance(sd.get("vmsd_name"), str):
                raise bad("a subsection has no vmsd_name", f"{where}.subsections[{i}]")
            if not is_int(sd.get("version")):
                raise bad("a subsection has no version", f"{where}.{sd['vmsd_name']}")
            check_obj(sd, f"{where}.{sd['vmsd_name']}", depth + 1)

    if not isinstance(desc, dict) or not isinstance(desc.get("devices", []), list):
        raise bad("not an object with a devices list", "")
    if "page_size" in desc and not (is_int(desc["page_size"], 1)
                                    and desc["page_size"] & (desc["page_size"] - 1) == 0):
        raise bad("page_size is not a power of two", "page_size")
    for i, dev in enumerate(desc.get("devices", [])):
        if not isinstance(dev, dict) or not isinstance(dev.get("name"), str) \
                or not is_int(dev.get("instance_id")):
            raise bad("a device entry has no name or instance_id", f"devices[{i}]")
        check_obj(dev, dev["name"], 0)


def load(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO,
    *,
    ram: RamMode = "reference",
    vmdesc: dict[str, Any] | bytes | None = None,
    footers: bool | None = None,
    max_size: int | None = None,
) -> QemuStream:
    """Decode a QEVM stream.

    :param source: a path, the stream's bytes, or a binary file (a pipe or
        in-memory file is first copied to a temporary file)
    :param ram: ``"reference"`` (pages become :class:`PageRef` into the
        source, which stays open until :meth:`QemuStream.close`), ``"copy"``
        (pages become ``bytes``), ``"skip"`` (pages are dropped; the stream
        can be inspected but not written), or a callable
        ``f(block, addr, data)`` receiving each page (data: a memoryview of
        the page, or the fill byte of a zero page) which is then dropped
    :param vmdesc: a description to use instead of the stream's own (for a
        stream cut before its end); JSON bytes or the parsed dict
    :param footers: whether sections end with footers; None detects it from
        the first section
    :param max_size: the largest stream accepted (default
        :data:`MAX_STREAM_SIZE`); a pipe is spooled to a temporary file only
        up to it
    :raises QemuStreamError: (a subclass) naming section, field and offset
    """
    limit = MAX_STREAM_SIZE if max_size is None else max_size
    fileobj: BinaryIO | None = None
    if isinstance(source, (bytes, bytearray, memoryview)):
        buf: Any = bytes(source) if isinstance(source, memoryview) else source
        if len(buf) > limit:
            raise QemuStreamError(f"the stream is {len(buf)} bytes, above the limit of "
                                  f"{limit}", offset=0)
    else:
        fileobj, owned = _regular_file(source, limit)
        size = os.fstat(fileobj.fileno()).st_size
        if size > limit:
            if owned:
                fileobj.close()
            raise QemuStreamError(f"the stream is {size} bytes, above the limit of {limit}",
                                  offset=0)
        buf = mmap.mmap(fileobj.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        if not owned:
            fileobj = None  # the caller's file: not ours to close
    src = _Source(buf, fileobj)
    try:
        stream = _Reader(buf, ram, vmdesc, footers).read()
    except BaseException:
        src.close()
        raise
    stream.source = src
    if ram != "reference":
        src.close()
        stream.source = None
    return stream


#: the reader's memory bound (docs/wire-format.md, "Cost"): Python objects
#: kept while decoding, per input byte (RAM pages with ram="copy" are their
#: own size on top; "reference" and "skip" keep none). Measured worst case,
#: many one-byte device sections: about 22
READ_BYTES_PER_INPUT_BYTE = 64
READ_BYTES_BASE = 1 << 20

#: the largest QEMU stream read (the same bound as the migtree format's
#: Limits.max_total_size): a file above it is refused, and a pipe is spooled
#: to a temporary file only up to it
MAX_STREAM_SIZE = 64 << 30


def _regular_file(source: Any, limit: int = MAX_STREAM_SIZE) -> tuple[BinaryIO, bool]:
    """An open regular file for *source* (a path or a binary file) and
    whether we opened it.  A pipe, socket or in-memory file (or a file not
    at its start: the stream begins where it is) is first copied to a
    temporary file: the description sits at the end of the stream, so
    reading needs a seekable whole."""
    if not hasattr(source, "read"):
        return open(source, "rb"), True
    try:
        fd = source.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode) and source.tell() == 0:
            return source, False
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    tmp = tempfile.TemporaryFile()  # private (0600) and already unlinked
    total = 0
    try:
        while chunk := source.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise QemuStreamError(f"the stream is longer than the limit of {limit} bytes "
                                      f"(stopped spooling it at {total})", offset=limit)
            tmp.write(chunk)
    except BaseException:
        tmp.close()
        raise
    tmp.flush()
    return tmp, True


def loads(data: bytes, **kwargs: Any) -> QemuStream:
    return load(data, **kwargs)


class _Reader:
    def __init__(self, buf: Any, ram: RamMode, vmdesc: Any, footers: bool | None) -> None:
        self.buf = buf
        self.cur = Cursor(buf)
        if not (ram in ("reference", "copy", "skip") or callable(ram)):
            raise ValueError(f"ram must be 'reference', 'copy', 'skip' or a callable, not {ram!r}")
        self.ram = ram
        self.footers = footers
        self.vmdesc_at: int | None = None
        found = find_vmdesc(buf)
        self.vmdesc_at = found[0] if found else None
        if vmdesc is not None:
            try:
                self.desc = json.loads(vmdesc) if isinstance(vmdesc, (bytes, str)) else vmdesc
            except ValueError as exc:
                raise QemuVmdescMismatchError(f"the vmdesc given is not JSON: {exc}") from None
        else:
            self.desc = found[1] if found else None
        self.devices: list[dict[str, Any]] = []
        self.next_device = 0
        self.started: dict[int, Section] = {}
        self.capabilities: list[str] = []
        self.ram_block: str | None = None
        self.ram_blocks: dict[str, RamBlockInfo] = {}

    # -- helpers ----------------------------------------------------------
    def err(self, cls: type[QemuStreamError], msg: str, offset: int | None = None,
            **kw: Any) -> QemuStreamError:
        where = self.cur.where(offset)
        where.update(kw)
        return cls(msg, **where)

    # -- top level ----------------------------------------------------------
    def read(self) -> QemuStream:
        cur = self.cur
        cur.need(8, "QEVM header")
        magic = cur.uint(4)
        if magic != QEVM_MAGIC:
            raise self.err(
                QemuBadMagicError,
                f"not a QEMU migration stream: magic 0x{magic:08x}, expected "
                f"0x{QEVM_MAGIC:08x} ('QEVM')",
                0,
            )
        version = cur.uint(4)
        if version != QEVM_VERSION:
            what = "too old" if version < QEVM_VERSION else "too new"
            raise self.err(
                QemuVersionError,
                f"QEVM file version {version} is {what}: only version "
                f"{QEVM_VERSION} (QEMU >= 0.13) is supported",
                4,
            )
        if self.desc is not None:
            check_vmdesc(self.desc, self.vmdesc_at)
            self.devices = list(self.desc.get("devices", []))
        stream = QemuStream(version=version, size=len(self.buf))
        if self.desc is not None:
            stream.page_size = int(self.desc.get("page_size", 4096))
            stream.vmdesc_keys = tuple(self.desc)
            if self.vmdesc_at is not None:
                stream.vmdesc_style = vmdesc_style_of(bytes(self.buf[self.vmdesc_at + 5:
                                                                     self.vmdesc_at + 7]))
        self.page_size = stream.page_size
        if cur.pos < cur.end and cur.buf[cur.pos] == CONFIGURATION:
            stream.configuration = self.read_configuration()
        while True:
            off = cur.pos
            cur.ctx = {}
            cur.path = []
            t = cur.uint(1, "section type")
            if t == EOF:
                break
            if t in (SECTION_START, SECTION_FULL):
                stream.items.append(self.read_full_or_start(t, off))
            elif t in (SECTION_PART, SECTION_END):
                stream.items.append(self.read_part_or_end(t, off))
            elif t == COMMAND:
                stream.items.append(self.read_command(off))
            else:
                known = {VMDESCRIPTION: "VMDESCRIPTION", CONFIGURATION: "CONFIGURATION",
                         SUBSECTION: "SUBSECTION", SECTION_FOOTER: "FOOTER"}
                if t in known:
                    msg = (f"section type 0x{t:02x} ({known[t]}) where a section "
                           f"header is expected")
                else:
                    msg = f"unknown section type 0x{t:02x}"
                prev = stream.sections[-1].idstr if stream.sections else None
                if prev is not None:
                    msg += f" after section {prev!r}"
                raise self.err(QemuUnknownSectionTypeError, msg, off)
        cur.ctx = {}
        if self.next_device != len(self.devices):
            left = self.devices[self.next_device]
            raise self.err(
                QemuVmdescMismatchError,
                f"vmdesc describes {len(self.devices)} device sections, the "
                f"stream has {self.next_device}; first missing: "
                f"{left.get('name')!r} instance {left.get('instance_id')}",
            )
        if self.vmdesc_at is None:
            stream.vmdesc = False
            if cur.pos != cur.end:
                raise self.err(
                    QemuStreamError,
                    f"{cur.end - cur.pos} bytes after EOF that are not a VMDESCRIPTION",
                )
        elif cur.pos != self.vmdesc_at:
            raise self.err(
                QemuStreamError,
                f"{self.vmdesc_at - cur.pos} unexpected bytes between EOF and "
                f"the VMDESCRIPTION",
            )
        else:
            self.check_vmdesc_written_back(stream)
        return stream

    def check_vmdesc_written_back(self, stream: QemuStream) -> None:
        """The writer renders the vmdesc from the decoded sections in QEMU's
        own JSON style; a vmdesc it would not write back byte for byte was
        edited (or made by something other than QEMU) and is refused, so
        what the reader accepts is what the writer reproduces."""
        assert self.vmdesc_at is not None
        have = bytes(self.buf[self.vmdesc_at + 5:])
        try:
            want = qemu_json(stream.vmdesc_object(), stream.vmdesc_style).encode("utf-8")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise self.err(QemuVmdescMismatchError,
                           f"the VMDESCRIPTION does not describe the sections as QEMU "
                           f"would ({type(e).__name__}: {e})", self.vmdesc_at) from None
        if have != want:
            at = next((i for i, (x, y) in enumerate(zip(have, want, strict=False)) if x != y),
                      min(len(have), len(want)))
            raise self.err(
                QemuVmdescMismatchError,
                f"the VMDESCRIPTION is not the JSON QEMU writes for these sections (it "
                f"differs at its byte {at}: {have[max(at - 20, 0):at + 20]!r}); an edited "
                f"vmdesc is refused because it could not be written back unchanged",
                self.vmdesc_at + 5 + at)

    def read_configuration(self) -> Configuration:
        cur = self.cur
        off = cur.pos
        cur.ctx = {"section": "configuration"}
        cur.pos += 1
        n = cur.uint(4, "machine name length")
        cur.pos -= 4
        desc = {"vmsd_name": "configuration", "version": 1, "fields": [
            {"name": "len", "type": "uint32", "size": 4},
            {"name": "name", "type": "buffer", "size": n},
        ]}
        state = decode_object(cur, desc, check_unknown=False)
        while cur.pos < cur.end and cur.buf[cur.pos] == SUBSECTION:
            state.subsections.append(self.read_config_subsection())
        return Configuration(state, off)

    def read_config_subsection(self) -> VMStateObject:
        cur = self.cur
        start = cur.pos
        cur.pos += 1
        name = cur.take(cur.uint(1, "subsection name length"), "subsection name").decode("latin-1")
        cur.path = [name]
        version = cur.uint(4, "subsection version")
        if name not in ("configuration/target-page-bits", "configuration/capabilities",
                        "configuration/uuid"):
            raise self.err(
                QemuUnknownSubsectionError,
                f"unknown configuration subsection {name!r} (QEMU 7.2 knows "
                f"target-page-bits, capabilities, uuid)",
                start,
            )
        if version != 1:
            raise self.err(
                QemuVersionError,
                f"configuration subsection {name!r} version {version} is not 1",
                cur.pos - 4,
            )
        obj = VMStateObject(name, version)
        if name == "configuration/target-page-bits":
            obj.fields.append(Field("target_page_bits", "uint32", cur.uint(4)))
        elif name == "configuration/uuid":
            obj.fields.append(Field("uuid.data", "uint8", list(cur.take(16, "uuid")),
                                    array_len=16, keys=("name", "array_len", "type", "size"),
                                    size=1))
        else:
            count = cur.uint(4, "capability count")
            obj.fields.append(Field("caps_count", "uint32", count))
            caps = []
            for _ in range(count):
                n = cur.uint(1, "capability length")
                caps.append(cur.take(n, "capability").decode("latin-1"))
            self.capabilities = caps
            obj.fields.append(Field("capabilities", "capability", caps, array_len=count,
                                    keys=("name", "array_len", "type", "size")))
        cur.path = []
        return obj

    def read_full_or_start(self, kind: int, off: int) -> Section:
        cur = self.cur
        sid = cur.uint(4, "section id")
        cur.ctx = {"section_id": sid}
        idstr_at = cur.pos
        idstr = cur.take(cur.uint(1, "idstr length"), "idstr").decode("latin-1")
        if not idstr or any(c < " " or "\x7f" <= c <= "\xa0" for c in idstr):
            # QEMU's section names are printable ("0000:00:03.0/virtio-blk"); a
            # control character would become an object path the reader refuses
            # later, or reach a terminal
            raise self.err(QemuStreamError,
                           f"section name {idstr!r} is empty or holds control characters",
                           idstr_at)
        instance = cur.uint(4, "instance id")
        version = cur.uint(4, "version id")
        cur.ctx = {"section": idstr, "section_id": sid, "instance_id": instance}
        sec = Section(kind, sid, idstr, instance, version, None, offset=off,
                      body_offset=cur.pos)
        if kind == SECTION_START:
            self.started[sid] = sec
            sec.body = self.read_iterable(sec)
        else:
            sec.body, sec.desc_keys = self.read_device(sec)
        self.read_footer(sec)
        return sec

    def read_part_or_end(self, kind: int, off: int) -> Section:
        cur = self.cur
        sid = cur.uint(4, "section id")
        start = self.started.get(sid)
        if start is None:
            raise self.err(
                QemuStreamError,
                f"{SECTION_TYPE_NAMES[kind]} section for section id {sid} that "
                f"no START section opened",
                off, section_id=sid,
            )
        cur.ctx = {"section": start.idstr, "section_id": sid,
                   "instance_id": start.instance_id}
        sec = Section(kind, sid, start.idstr, start.instance_id, start.version_id,
                      None, offset=off, body_offset=cur.pos)
        sec.body = self.read_iterable(sec)
        self.read_footer(sec)
        return sec

    def read_command(self, off: int) -> Command:
        cur = self.cur
        cmd = cur.uint(2, "command")
        if cmd == MIG_CMD_PACKAGED:
            raise self.err(QemuUnsupportedError,
                           "packaged (postcopy) sub-streams are not supported", off)
        n = cur.uint(2, "command length")
        return Command(cmd, cur.take(n, "command data"), off)

    def read_footer(self, sec: Section) -> None:
        cur = self.cur
        off = sec.body_end = cur.pos
        if self.footers is None:
            self.footers = cur.pos < cur.end and cur.buf[cur.pos] == SECTION_FOOTER
        sec.footer = bool(self.footers)
        if not self.footers:
            return
        cur.need(1, "section footer")
        b = cur.buf[cur.pos]
        if b != SECTION_FOOTER:
            raise self.footer_error(sec, off, b)
        cur.pos += 1
        sid = cur.uint(4, "footer section id")
        if sid != sec.section_id:
            raise self.err(
                QemuFooterError,
                f"section footer names section id {sid}, expected {sec.section_id}",
                off,
            )

    def footer_error(self, sec: Section, off: int, found: int) -> QemuStreamError:
        """No footer where the body ends: tell a missing footer from a body
        whose vmdesc sizes disagree with the bytes, by looking for this
        section's footer nearby."""
        footer = bytes([SECTION_FOOTER]) + sec.section_id.to_bytes(4, "big")
        body_start = sec.offset
        ahead = self.buf.find(footer, off + 1, min(off + (1 << 20), len(self.buf)))
        behind = self.buf.rfind(footer, body_start, off + len(footer) - 1)
        near = [p for p in (ahead, behind) if p >= 0]
        real = min(near, key=lambda p: abs(p - off)) if near else -1
        if sec.kind == SECTION_FULL and real >= 0:
            delta = real - off
            return self.err(
                QemuVmdescMismatchError,
                f"vmdesc disagrees with the bytes: decoding the section as the "
                f"vmdesc describes it ends at byte {off}, but its footer is at "
                f"{real} ({delta:+d} bytes)",
                off,
            )
        return self.err(
            QemuFooterError,
            f"missing section footer: expected 0x7e + section id "
            f"{sec.section_id} after the {sec.kind_name} section's body, "
            f"found byte 0x{found:02x}",
            off,
        )

    # -- device sections --------------------------------------------------
    def read_device(self, sec: Section) -> tuple[Any, tuple[str, ...]]:
        cur = self.cur
        if self.desc is None:
            raise self.err(
                QemuTruncatedError,
                f"device section {sec.idstr!r} cannot be decoded: the stream has "
                f"no VMDESCRIPTION at its end (truncated at {len(self.buf)} "
                f"bytes, or written without one; pass vmdesc= to decode it)",
            )
        if self.next_device >= len(self.devices):
            raise self.err(
                QemuVmdescMismatchError,
                f"device section {sec.idstr!r} is not in the vmdesc (it describes "
                f"only {len(self.devices)} device sections)",
                sec.offset,
            )
        d = self.devices[self.next_device]
        self.next_device += 1
        if d.get("name") != sec.idstr or d.get("instance_id") != sec.instance_id:
            raise self.err(
                QemuVmdescMismatchError,
                f"vmdesc entry {self.next_device - 1} describes "
                f"{d.get('name')!r} instance {d.get('instance_id')}, the stream "
                f"has {sec.idstr!r} instance {sec.instance_id}",
                sec.offset,
            )
        if "vmsd_name" in d and d.get("version") != sec.version_id:
            raise self.err(
                QemuVmdescMismatchError,
                f"section header says version {sec.version_id}, vmdesc says "
                f"{d.get('version')}",
                sec.offset,
            )
        body = decode_object(cur, d)
        if "size" in d:  # old-style section: check its declared size
            used = sum(len(f.value) for f in body.fields if isinstance(f.value, bytes))
            if used != d["size"]:
                raise self.err(QemuVmdescMismatchError,
                               f"vmdesc size {d['size']} != fields {used}")
        return body, tuple(d)

    # -- iterable sections --------------------------------------------------
    def read_iterable(self, sec: Section) -> RamSection:
        if sec.idstr != "ram":
            raise self.err(
                QemuUnsupportedError,
                f"iterable section {sec.idstr!r} is not supported (only 'ram'); "
                f"block migration and dirty bitmaps are not decoded",
                sec.offset,
            )
        if sec.version_id != RAM_SECTION_VERSION:
            raise self.err(
                QemuVersionError,
                f"RAM section version {sec.version_id} is not supported (only "
                f"{RAM_SECTION_VERSION}, QEMU >= 2.x)",
                sec.offset,
            )
        return self.read_ram()

    def read_ram(self) -> RamSection:
        cur = self.cur
        buf = self.buf
        page = self.page_size
        mask = page - 1
        body = RamSection()
        records = body.records
        mode = self.ram
        keep_pages = mode in ("reference", "copy")
        while True:
            off = cur.pos
            if off + 8 > cur.end:
                cur.path = ["record"]
                cur.need(8, "RAM record header")
            word = int.from_bytes(buf[off : off + 8], "big")
            cur.pos = off + 8
            flags = word & mask
            addr = word & ~mask
            block = None
            if flags & _RAM_HAS_BLOCK:
                if flags & RAM_CONTINUE:
                    block = self.ram_block
                    if block is None:
                        raise self.err(QemuStreamError,
                                       "RAM page with CONTINUE flag but no block before it",
                                       off, field="ram page")
                else:
                    n = cur.uint(1, "RAM block name length")
                    block = cur.take(n, "RAM block name").decode("latin-1")
                    self.ram_block = block
            kind = flags & ~RAM_CONTINUE
            if kind == RAM_ZERO:
                cur.need(1, "zero page fill byte")
                fill = buf[cur.pos]
                cur.pos += 1
                body.zero_pages += 1
                if keep_pages:
                    records.append(RamRecord(flags, addr, block, fill))
                else:
                    body.dropped_pages += 1
                    if callable(mode):
                        mode(block, addr, fill)
            elif kind == RAM_PAGE:
                if cur.pos + page > cur.end:
                    cur.path = [f"{block}@0x{addr:x}"]
                    cur.need(page, "RAM page")
                body.full_pages += 1
                if mode == "reference":
                    records.append(RamRecord(flags, addr, block, PageRef(cur.pos)))
                elif mode == "copy":
                    data = bytes(buf[cur.pos : cur.pos + page])
                    records.append(RamRecord(flags, addr, block, data))
                else:
                    body.dropped_pages += 1
                    if callable(mode):
                        mode(block, addr, memoryview(buf)[cur.pos:cur.pos + page])
                cur.pos += page
            elif kind == RAM_EOS:
                records.append(RamRecord(flags, addr))
                return body
            elif kind == RAM_MEM_SIZE:
                records.append(RamRecord(flags, addr, None, self.read_ram_blocks(addr)))
            elif kind == RAM_XBZRLE:
                start = cur.pos
                enc = cur.uint(1, "XBZRLE encoding")
                if enc != 1:
                    raise self.err(
                        QemuStreamError, f"XBZRLE encoding flag {enc}, expected 1", start
                    )
                n = cur.uint(2, "XBZRLE length")
                cur.take(n, "XBZRLE data")
                records.append(RamRecord(flags, addr, block, bytes(buf[start:cur.pos])))
            elif kind == RAM_COMPRESS_PAGE:
                start = cur.pos
                n = cur.uint(4, "compressed page length")
                cur.take(n, "compressed page")
                records.append(RamRecord(flags, addr, block, bytes(buf[start:cur.pos])))
            elif flags & RAM_HOOK:
                raise self.err(QemuUnsupportedError, "RAM hook (RDMA) records are not supported",
                               off, field="ram record")
            else:
                raise self.err(QemuStreamError,
                               f"unknown combination of RAM flags 0x{flags:x}", off,
                               field="ram record")

    def read_ram_blocks(self, total: int) -> list[RamBlockInfo]:
        cur = self.cur
        blocks = []
        remaining = total
        ignore_shared = "x-ignore-shared" in self.capabilities
        while remaining > 0:
            start = cur.pos
            n = cur.uint(1, "RAM block name length")
            name = cur.take(n, "RAM block name").decode("latin-1")
            cur.path = [name]
            length = cur.uint(8, "RAM block length")
            info = RamBlockInfo(name, length)
            if ignore_shared:
                info.mr_addr = cur.uint(8, "RAM block address")
            cur.path = []
            if length > remaining:
                raise self.err(QemuStreamError,
                               f"RAM block {name!r} of {length} bytes exceeds the "
                               f"announced total ({remaining} left)", start)
            remaining -= length
            blocks.append(info)
            self.ram_blocks[name] = info
        return blocks


# ---------------------------------------------------------------------------
# writing


def dump(stream: QemuStream, out: BinaryIO, *, chunk: int = 1 << 20) -> int:
    """Write *stream* as QEVM to the binary file *out*; return the bytes
    written.  RAM pages are copied from the source in chunks of about
    *chunk* bytes, never assembled whole."""
    w = _Writer(out, stream, chunk)
    w.write_all()
    return w.total


def dumps(stream: QemuStream) -> bytes:
    b = io.BytesIO()
    dump(stream, b)
    return b.getvalue()


class _Writer:
    def __init__(self, out: BinaryIO, stream: QemuStream, chunk: int) -> None:
        self.out = out
        self.stream = stream
        self.buf = bytearray()
        self.chunk = chunk
        self.total = 0

    def flush(self) -> None:
        if self.buf:
            self.out.write(self.buf)
            self.total += len(self.buf)
            self.buf.clear()

    def maybe_flush(self) -> None:
        if len(self.buf) >= self.chunk:
            self.flush()

    def write_all(self) -> None:
        s = self.stream
        b = self.buf
        b += QEVM_MAGIC.to_bytes(4, "big") + s.version.to_bytes(4, "big")
        if s.configuration is not None:
            self.buf.append(CONFIGURATION)
            encode_object(self.buf, s.configuration.state, "configuration:")
        for item in s.items:
            if isinstance(item, Command):
                self.buf.append(COMMAND)
                self.buf += item.command.to_bytes(2, "big")
                self.buf += len(item.data).to_bytes(2, "big") + item.data
            else:
                self.write_section(item)
            self.maybe_flush()
        self.buf.append(EOF)
        if s.vmdesc:
            text = qemu_json(s.vmdesc_object(), s.vmdesc_style).encode("utf-8")
            self.buf.append(VMDESCRIPTION)
            self.buf += len(text).to_bytes(4, "big") + text
        self.flush()

    def write_section(self, sec: Section) -> None:
        b = self.buf
        b.append(sec.kind)
        b += sec.section_id.to_bytes(4, "big")
        if sec.kind in (SECTION_START, SECTION_FULL):
            name = sec.idstr.encode("latin-1")
            b.append(len(name))
            b += name
            b += sec.instance_id.to_bytes(4, "big") + sec.version_id.to_bytes(4, "big")
        try:
            if isinstance(sec.body, RamSection):
                self.write_ram(sec.body)
            elif isinstance(sec.body, VMStateObject):
                encode_object(self.buf, sec.body)
            elif hasattr(sec.body, "iter_chunks"):  # a chunked raw body (migtree Blob)
                for chunk in sec.body.iter_chunks():
                    self.buf += chunk
                    self.maybe_flush()
            else:
                self.buf += sec.body
        except QemuEncodeError as exc:
            if exc.section is None:
                raise type(exc)(exc.reason, section=sec.idstr, section_id=sec.section_id,
                                instance_id=sec.instance_id, field=exc.field) from None
            raise
        if sec.footer:
            self.buf.append(SECTION_FOOTER)
            self.buf += sec.section_id.to_bytes(4, "big")

    def write_ram(self, body: RamSection) -> None:
        if body.dropped_pages:
            raise QemuEncodeError(
                f"{body.dropped_pages} RAM pages were not kept (loaded with "
                f"ram='skip' or a callback); load with ram='reference' to write"
            )
        src = self.stream.source
        page = self.stream.page_size
        for r in body.records:
            b = self.buf
            b += (r.addr | r.flags).to_bytes(8, "big")
            kind = r.flags & ~RAM_CONTINUE
            if r.flags & _RAM_HAS_BLOCK and not r.flags & RAM_CONTINUE:
                name = (r.block or "").encode("latin-1")
                b.append(len(name))
                b += name
            if kind == RAM_ZERO:
                b.append(r.data)
            elif kind == RAM_PAGE:
                if isinstance(r.data, PageRef):
                    if src is None:
                        raise QemuEncodeError("RAM page refers to a closed source")
                    b += src.read(r.data.offset, page)
                else:
                    if len(r.data) != page:
                        raise QemuEncodeError(
                            f"RAM page {r.block}@0x{r.addr:x} has {len(r.data)} bytes, "
                            f"not {page}")
                    b += r.data
                self.maybe_flush()
            elif kind == RAM_MEM_SIZE:
                for blk in r.data:
                    name = blk.name.encode("latin-1")
                    b.append(len(name))
                    b += name
                    b += blk.length.to_bytes(8, "big")
                    if blk.mr_addr is not None:
                        b += blk.mr_addr.to_bytes(8, "big")
            elif kind in (RAM_XBZRLE, RAM_COMPRESS_PAGE):
                b += r.data
