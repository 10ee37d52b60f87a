"""A live QEMU migration relayed from one QEMU to another, converted in flight.

The source QEMU ``migrate``s into us; we write to the destination QEMU's
``-incoming`` address as the bytes arrive.  What goes through:

* the header, as it is;
* the configuration section, converted when it arrives (it names the
  machine type, which the target may map): the conversion is the one
  ``convert --target`` runs, on a stream of the configuration alone;
* RAM (``START``/``PART``/``END`` sections of every pre-copy iteration):
  passed through unchanged, record by record, as it arrives -- QEMU 5.2,
  7.2 and 10.0 frame RAM alike, so nothing is re-framed.  RAM records are
  scanned only to find where a section ends; no page is kept, so memory
  stays bounded by one receive buffer whatever the guest's size;
* migration commands: passed when the target's QEMU knows them, held back
  otherwise (QEMU 10.0's ``switchover-start`` for an older target; the
  conversion at the end decides whether dropping it was right);
* the device sections, the ``EOF`` and the vmdesc that QEMU sends after it
  stopped the guest: buffered (they cannot be walked before the vmdesc, at
  their end, arrives), converted with ``convert --target``'s own code on a
  *skeleton* stream (header, configuration, the RAM set-up section, the
  commands, an empty RAM ``END`` and the device sections), and sent.  The
  converted skeleton's beginning must be byte for byte what was already
  sent, else the relay refuses.

Refused, as soon as the stream shows them (during set-up, before the source
stops its guest): postcopy (``POSTCOPY_ADVISE``), the return path
(``OPEN_RETURN_PATH``), multifd (a second connection, or its flush flag),
compression and XBZRLE pages, RDMA hooks, iterable sections other than RAM
(block migration, dirty bitmaps).

Failure is safe: the relay closes both connections, so a source still
sending sees its ``migrate`` fail and keeps its guest running, and the
destination's incoming migration fails (QEMU then exits).  A source that had
already sent everything (its migration "completed", the guest paused) is
resumed with ``cont`` when the relay has its QMP socket (``source_control``).
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import attrs

from . import placement, qevm
from .errors import QemuStreamError
from .qmp import QMPClient, QMPError
from .tree import stream_to_tree, tree_to_stream

#: migration commands by number (migration/savevm.c ``enum qemu_vm_cmd``)
#: that mean a capability the relay does not carry
REFUSED_COMMANDS = {
    1: "the return path (capability return-path, or postcopy)",
    2: "a ping on the return path",
    3: "postcopy (capability postcopy-ram: POSTCOPY_ADVISE)",
    4: "postcopy (POSTCOPY_LISTEN)",
    5: "postcopy (POSTCOPY_RUN)",
    6: "postcopy (POSTCOPY_RAM_DISCARD)",
    7: "postcopy (a PACKAGED sub-stream)",
}
_REFUSED_RAM_FLAGS = {
    qevm.RAM_XBZRLE: "XBZRLE pages (capability xbzrle)",
    qevm.RAM_COMPRESS_PAGE: "compressed pages (capability compress)",
    qevm.RAM_HOOK: "RDMA hooks (an rdma: migration)",
    0x200: "multifd (RAM_SAVE_FLAG_MULTIFD_FLUSH, capability multifd)",
}
_KNOWN_RAM_KINDS = qevm.RAM_ZERO | qevm.RAM_PAGE | qevm.RAM_EOS | qevm.RAM_MEM_SIZE
#: byte -> its low nibble (the flag bits 8-11 of a RAM record header's
#: second-to-last byte; the high nibble is address)
_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))
#: the first word of a multifd channel (migration/multifd.c)
MULTIFD_MAGIC = 0x11223344
#: the most bytes of device state (after RAM) buffered before refusing
MAX_DEVICE_STATE = 256 << 20
#: the receive buffer's size (it grows only for the device state)
BUFFER_SIZE = 2 << 20


class QemuRelayError(QemuStreamError):
    """The relay stopped: a side failed, a capability is refused, or the
    conversion refused.  After :func:`relay` it has ``result`` (what had
    gone through) and ``recovery`` (what was done to the source)."""


@attrs.define
class RelayResult:
    """What the relay did: bytes, RAM records, the conversion and times
    (``time.monotonic()``)."""

    bytes_in: int = 0
    bytes_out: int = 0
    ram_sections: int = 0  # START + PART + END sections: pre-copy iterations
    pages: int = 0
    zero_pages: int = 0
    device_bytes_in: int = 0
    device_bytes_out: int = 0
    commands_held: list[str] = attrs.field(factory=list)
    report: Any = None  # the conversion's FilterReport
    notes: list[str] = attrs.field(factory=list)
    t_start: float = 0.0
    t_source_done: float = 0.0  # the source's last byte
    t_sent: float = 0.0  # our last byte to the destination
    t_running: float | None = None  # the destination said "running"
    destination_status: str | None = None
    buffer_peak: int = 0

    @property
    def conversion_ms(self) -> float:
        return (self.t_sent - self.t_source_done) * 1e3

    @property
    def added_pause_ms(self) -> float | None:
        """The source's last byte to the destination's ``running``."""
        if self.t_running is None:
            return None
        return (self.t_running - self.t_source_done) * 1e3

    def as_dict(self) -> dict[str, Any]:
        return {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "ram_sections": self.ram_sections, "pages": self.pages,
                "zero_pages": self.zero_pages, "device_bytes_in": self.device_bytes_in,
                "device_bytes_out": self.device_bytes_out,
                "commands_held": self.commands_held,
                "seconds": round(self.t_source_done - self.t_start, 6),
                "conversion_ms": round(self.conversion_ms, 3),
                "added_pause_ms": (None if self.added_pause_ms is None
                                   else round(self.added_pause_ms, 3)),
                "destination_status": self.destination_status,
                "buffer_peak": self.buffer_peak}


class _Source:
    """The incoming bytes: a receive buffer of fixed size that the socket
    reads straight into (no copy in between), a parse position and how far
    the bytes have been forwarded.  Forwarded bytes are dropped by moving
    what is left (less than a RAM record) to the front, so the buffer holds
    at most its size; it grows only for the device state, which must be
    whole before it can be converted."""

    def __init__(self, recv_into: Callable[[memoryview], int],
                 forward: Callable[[Any], None], tee: Any = None,
                 poll: Callable[[], None] | None = None) -> None:
        self.recv_into = recv_into
        self.forward_fn = forward
        self.tee = tee
        self.poll = poll
        self.buf = bytearray(BUFFER_SIZE)
        self.end = 0  # buf[:end] holds received bytes
        self.pos = 0  # parse position in buf
        self.sent = 0  # buf[:sent] is forwarded (or deliberately held)
        self.base = 0  # stream offset of buf[0]
        self.eof = False
        self.peak = len(self.buf)
        self.where: dict[str, Any] = {}

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def more(self, what: str) -> None:
        """Receive at least one more byte, or raise naming *what* was cut."""
        if self.poll is not None:
            self.poll()
        if len(self.buf) - self.end < BUFFER_SIZE // 8:
            if self.sent:  # move the unsent rest to the front
                keep = self.end - self.sent
                self.buf[:keep] = self.buf[self.sent:self.end]
                self.base += self.sent
                self.pos -= self.sent
                self.end, self.sent = keep, 0
            if len(self.buf) - self.end < BUFFER_SIZE // 8:
                self.buf.extend(bytes(len(self.buf)))
                self.peak = max(self.peak, len(self.buf))
        view = memoryview(self.buf)[self.end:]
        try:
            n = self.recv_into(view)
        finally:
            view.release()
        if not n:
            self.eof = True
            raise QemuRelayError(f"the source closed the stream in the middle of {what}",
                                 offset=self.base + self.end, **self.where)
        if self.tee is not None:
            self.tee.write(self.buf[self.end:self.end + n])
        self.end += n

    def need(self, n: int, what: str) -> None:
        while self.end - self.pos < n:
            self.more(what)

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def forward(self) -> int:
        """Send what was parsed since the last call; return its length."""
        n = self.pos - self.sent
        if n:
            view = memoryview(self.buf)[self.sent:self.pos]
            try:
                self.forward_fn(view)
            finally:
                view.release()
        self.skip()
        return n

    def skip(self) -> None:
        """Drop what was parsed without sending it."""
        self.sent = self.pos
        if self.sent == self.end:
            self.base += self.sent
            self.pos = self.end = self.sent = 0

    def parsed_since(self, start: int) -> bytes:
        """The bytes from stream offset *start* to the parse position (not
        yet forwarded or dropped)."""
        return bytes(self.buf[start - self.base:self.pos])


class Relay:
    """One relayed migration (see the module docstring).  *convert* is the
    core's conversion (``tree -> (FilterReport, notes)``, raising
    ``FilterError`` when it refuses); *target* the destination
    (:class:`migtree_qemu.target.QemuTarget`)."""

    def __init__(self, target: Any, convert: Callable[[dict[str, Any]], tuple[Any, list[str]]],
                 *, decoders: Any = None, tee_in: Any = None, tee_out: Any = None) -> None:
        self.target = target
        self.convert = convert
        self.decoders = decoders or {}
        self.tee_in = tee_in
        self.tee_out = tee_out
        self.result = RelayResult()
        self._notes: Any = []

    def warm_up(self) -> None:
        """Run the conversion once on a configuration of the target's machine
        type before the source connects: the first conversion in a process
        pays for imports and caches (60-100 ms here), which would otherwise
        hold up the source's first bytes."""
        name = str(getattr(self.target, "machine", "pc")).encode("latin-1")
        config = bytes([qevm.CONFIGURATION]) + struct.pack(">I", len(name)) + name
        header = struct.pack(">II", qevm.QEVM_MAGIC, qevm.QEVM_VERSION)
        try:
            self._convert(header + config + bytes([qevm.EOF]), "warm-up")
        except Exception:  # only a warm-up: the real stream decides
            pass
        self.result.report, self.result.notes = None, []

    # -- the stream ---------------------------------------------------------
    def run(self, recv: Callable[[memoryview], int], send: Callable[[Any], None],
            poll: Callable[[], None] | None = None) -> RelayResult:
        res = self.result
        res.t_start = time.monotonic()

        def forward(data: Any) -> None:
            send(data)
            res.bytes_out += len(data)
            if self.tee_out is not None:
                self.tee_out.write(data)

        src = _Source(recv, forward, self.tee_in, poll)
        try:
            self._run(src, forward)
        finally:
            res.buffer_peak = src.peak
        return res

    def _run(self, src: _Source, forward: Callable[[Any], None]) -> None:
        res = self.result
        header = src.take(8, "the QEVM header")
        magic, version = struct.unpack(">II", header)
        if magic == MULTIFD_MAGIC:
            raise QemuRelayError("the source opened a multifd channel: multifd (capability "
                                 "multifd) is not relayed", offset=0)
        if magic != qevm.QEVM_MAGIC or version != qevm.QEVM_VERSION:
            raise QemuRelayError(f"not a QEVM version 3 stream: magic 0x{magic:08x}, "
                                 f"version {version}", offset=0)
        skeleton = bytearray(header)  # what the conversion at the end reads
        sent_prefix = bytearray(header)  # what that conversion must give back first
        src.need(1, "the first section")
        config = b""
        if src.buf[src.pos] == qevm.CONFIGURATION:
            start = src.offset
            self._skip_configuration(src)
            config = src.parsed_since(start)
            src.skip()  # held: sent converted
            converted = self._convert_configuration(header, config)
            forward(header + converted)
            sent_prefix += converted
            skeleton += config
        else:
            src.forward()
        self.page_size = 1 << getattr(self, "_page_bits", 12)
        footers: bool | None = None
        started: dict[int, str] = {}
        while True:
            src.where = {}
            start = src.offset
            kind = src.uint(1, "a section header")
            if kind in (qevm.SECTION_START, qevm.SECTION_PART, qevm.SECTION_END):
                sid = src.uint(4, "a section id")
                if kind == qevm.SECTION_START:
                    idstr = src.take(src.uint(1, "an idstr length"), "an idstr").decode(
                        "latin-1")
                    src.take(8, "a section's instance and version")
                    src.where = {"section": idstr, "section_id": sid}
                    if idstr != "ram":
                        raise QemuRelayError(
                            f"iterable section {idstr!r} (block migration or dirty bitmaps) "
                            "is not relayed", offset=start, **src.where)
                    started[sid] = idstr
                elif sid not in started:
                    raise QemuRelayError(f"section id {sid} continues no START section",
                                         offset=start)
                src.where = {"section": "ram", "section_id": sid}
                head = src.parsed_since(start)
                body_start = src.offset
                if kind == qevm.SECTION_START:
                    self._scan_ram(src, keep=True)
                    body = src.parsed_since(body_start)
                else:
                    self._scan_ram(src, keep=False)
                    body = b""
                if footers is None:
                    src.need(1, "a section footer")
                    footers = src.buf[src.pos] == qevm.SECTION_FOOTER
                if footers:
                    foot = src.take(5, "a section footer")
                    if foot[0] != qevm.SECTION_FOOTER or foot[1:] != sid.to_bytes(4, "big"):
                        raise QemuRelayError(f"bad section footer {foot.hex()}",
                                             offset=src.offset - 5, **src.where)
                else:
                    foot = b""
                res.ram_sections += 1
                src.forward()
                if kind == qevm.SECTION_START:
                    skeleton += head + body + foot
                    sent_prefix += head + body + foot
                elif kind == qevm.SECTION_END:
                    # the pages went by; the conversion sees an empty END
                    self._ram_end = head + struct.pack(">Q", qevm.RAM_EOS) + foot
                    skeleton += self._ram_end
                    break
            elif kind == qevm.COMMAND:
                cmd = src.uint(2, "a command")
                data = src.take(src.uint(2, "a command length"), "command data")
                whole = src.parsed_since(start)
                if cmd in REFUSED_COMMANDS or cmd not in qevm.MIG_COMMANDS:
                    why = REFUSED_COMMANDS.get(cmd, f"migration command {cmd}")
                    raise QemuRelayError(f"the source uses {why}; the relay carries plain "
                                         "pre-copy only (turn that capability off)",
                                         offset=start, field=f"command {cmd}")
                skeleton += whole
                if self.target.knows_command(cmd):
                    src.forward()
                    sent_prefix += whole
                else:  # held back; the conversion decides at the end
                    src.skip()
                    res.commands_held.append(qevm.MIG_COMMANDS[cmd][0])
                del data
            elif kind in (qevm.SECTION_FULL, qevm.EOF):
                src.pos -= 1
                break
            else:
                raise QemuRelayError(f"unexpected section type 0x{kind:02x} during pre-copy",
                                     offset=start)
        # -- the source has stopped its guest: the device state ----------------
        tail_start = src.offset
        src.skip()
        src.where = {"section": "device state"}
        try:
            while not self._complete(src):
                if src.end - src.sent > MAX_DEVICE_STATE:
                    raise QemuRelayError(f"more than {MAX_DEVICE_STATE} bytes of device "
                                         "state after RAM", offset=tail_start)
                src.pos = src.end
                src.more("the device state")
        except QemuRelayError:
            if not src.eof:
                raise
        self.result.t_source_done = time.monotonic()
        tail = bytes(src.buf[src.sent:src.end])
        res.bytes_in = src.base + src.end
        res.device_bytes_in = len(tail)
        skeleton += tail
        out_tail = self._convert_device_state(bytes(skeleton), bytes(sent_prefix), tail_start)
        forward(out_tail)
        res.device_bytes_out = len(out_tail)
        res.t_sent = time.monotonic()
        if callable(self._notes):
            res.notes = list(self._notes())

    @staticmethod
    def _complete(src: _Source) -> bool:
        """Whether the stream is complete: it ends with the vmdesc (QEMU
        sends nothing after it in pre-copy). Not waiting for the source to
        close its socket saves that time from the guest's pause; a stream
        without a vmdesc is complete when the source closes."""
        if src.end <= src.sent or src.buf[src.end - 1] != 0x7D:  # '}' ends the JSON
            return False
        return qevm.find_vmdesc(bytes(src.buf[src.sent:src.end])) is not None

    def _skip_configuration(self, src: _Source) -> None:
        """Walk the configuration section (its layout is fixed: length,
        machine name, subsections) without a description."""
        src.where = {"section": "configuration"}
        src.take(1, "the configuration section")
        src.take(src.uint(4, "the machine name length"), "the machine name")
        while True:
            src.need(1, "the section after the configuration")
            if src.buf[src.pos] != qevm.SUBSECTION:
                return
            src.take(1, "a subsection")
            name = src.take(src.uint(1, "a subsection name length"), "a subsection name")
            src.take(4, "a subsection version")
            if name == b"configuration/target-page-bits":
                self._page_bits = src.uint(4, "target-page-bits")
            elif name == b"configuration/uuid":
                src.take(16, "the uuid")
            elif name == b"configuration/capabilities":
                for _ in range(src.uint(4, "the capability count")):
                    cap = src.take(src.uint(1, "a capability length"), "a capability")
                    if cap == b"x-ignore-shared":
                        raise QemuRelayError("the source uses capability x-ignore-shared "
                                             "(RAM not in the stream); not relayed",
                                             field="configuration/capabilities",
                                             offset=src.offset, section="configuration")
            else:
                raise QemuRelayError(f"unknown configuration subsection {name!r}",
                                     offset=src.offset, section="configuration")

    def _scan_ram(self, src: _Source, keep: bool) -> None:
        """Walk RAM records up to the section's EOS, forwarding as it goes
        (unless *keep*: the set-up section, which the skeleton needs)."""
        res = self.result
        mask = self.page_size - 1
        page = self.page_size
        unpack = struct.Struct(">Q").unpack_from
        zero, pagek, eos, memsize = qevm.RAM_ZERO, qevm.RAM_PAGE, qevm.RAM_EOS, qevm.RAM_MEM_SIZE
        cont, has_block = qevm.RAM_CONTINUE, qevm._RAM_HAS_BLOCK
        pages = zeros = 0
        # the run fast path reads the flags from the header's last two
        # bytes: with 4 KiB pages they are bits 0-11
        fast = page == 4096
        page_run, zero_run = qevm.RAM_PAGE | cont, qevm.RAM_ZERO | cont
        try:
            while True:
                buf = src.buf
                pos = src.pos
                end = src.end
                done = False
                while pos + 8 <= end:
                    word = unpack(buf, pos)[0]
                    flags = word & mask
                    if fast and (flags == page_run or flags == zero_run):
                        # a run of records of one kind in one block (most of
                        # RAM): count it with slices and strips (C loops)
                        # instead of one Python iteration per page
                        stride = page + 8 if flags == page_run else 9
                        n = (end - pos) // stride
                        low = buf[pos + 7:pos + 7 + n * stride:stride]
                        k = n - len(low.lstrip(bytes([flags & 0xFF])))
                        high = buf[pos + 6:pos + 6 + k * stride:stride].translate(_LOW_NIBBLE)
                        k -= len(high.lstrip(b"\0"))
                        if k:
                            pos += k * stride
                            if flags == page_run:
                                pages += k
                            else:
                                zeros += k
                            continue
                    p = pos + 8
                    if flags & has_block and not flags & cont:
                        if p >= end:
                            break
                        p += 1 + buf[p]
                    kind = flags & ~cont
                    if kind == pagek:
                        p += page
                        pages += 1
                    elif kind == zero:
                        p += 1
                        zeros += 1
                    elif kind == eos:
                        pos = p
                        done = True
                        break
                    elif kind == memsize:
                        q = self._block_list_end(buf, p, end, word & ~mask)
                        if q is None:
                            break
                        p = q
                    else:
                        for flag, why in _REFUSED_RAM_FLAGS.items():
                            if kind & flag:
                                raise QemuRelayError(
                                    f"the source sends {why}; the relay carries plain pages "
                                    "only (turn that capability off)",
                                    offset=src.base + pos, field="ram record", **src.where)
                        raise QemuRelayError(f"unknown RAM record flags 0x{flags:x}",
                                             offset=src.base + pos, field="ram record",
                                             **src.where)
                    if p > end:
                        break
                    pos = p
                src.pos = pos
                if done:
                    return
                if not keep:
                    src.forward()
                src.more("a RAM record")
        finally:
            res.pages += pages
            res.zero_pages += zeros

    @staticmethod
    def _block_list_end(buf: Any, p: int, end: int, total: int) -> int | None:
        """Where the RAM block list of a MEM_SIZE record ends (None: not
        all received yet)."""
        while total > 0:
            if p >= end:
                return None
            p += 1 + buf[p]
            if p + 8 > end:
                return None
            total -= int.from_bytes(buf[p:p + 8], "big")
            p += 8
        return p

    # -- conversion ---------------------------------------------------------
    def _tree_of(self, data: bytes, stage: str) -> dict[str, Any]:
        with qevm.loads(data) as stream:
            return stream_to_tree(stream, paths=placement.static_paths(stream),
                                  decoders=self.decoders)

    def _convert(self, data: bytes, stage: str) -> qevm.QemuStream:
        """*data* (a whole small stream) through ``convert --target``'s code:
        the converted stream."""
        tree = self._tree_of(data, stage)
        report, notes = self.convert(tree)
        # notes may come as a callable: asked for after the state is sent
        self.result.report, self._notes = report, notes
        self.result.notes = [] if callable(notes) else list(notes)
        return tree_to_stream(tree, decoders=self.decoders)

    def _convert_configuration(self, header: bytes, config: bytes) -> bytes:
        out = qevm.dumps(self._convert(header + config + bytes([qevm.EOF]), "configuration"))
        walk = _Source(_no_more, _no_more)
        walk.buf, walk.end = bytearray(out), len(out)
        walk.take(8, "the header")
        if not out.startswith(header) or out[8] != qevm.CONFIGURATION:
            raise QemuRelayError("the converted configuration stream does not start with "
                                 "the header and a configuration", section="configuration")
        self._skip_configuration(walk)
        return out[8:walk.pos]

    def _convert_device_state(self, skeleton: bytes, sent_prefix: bytes,
                              tail_start: int) -> bytes:
        """The converted skeleton after its RAM END section, once its part
        up to that section is checked to be what was already sent (encoded
        once: this runs inside the guest's pause)."""
        conv = self._convert(skeleton, "device state")
        full = qevm.dumps(conv)
        n = len(sent_prefix)
        if full[:n] != sent_prefix:
            pairs = zip(full, sent_prefix, strict=False)
            at = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(full), n))
            raise QemuRelayError(
                "the conversion changed what was already sent to the destination (byte "
                f"{at} of the set-up part: configuration, RAM set-up, commands)",
                offset=at)
        end = getattr(self, "_ram_end", None)
        if end is None or full[n:n + len(end)] != end:
            raise QemuRelayError("the converted stream does not go on with the RAM END "
                                 "section the source sent", offset=tail_start)
        return full[n + len(end):]


# ---------------------------------------------------------------------------
# endpoints


def parse_address(addr: str) -> tuple[str, Any]:
    """``unix:PATH``, ``tcp:HOST:PORT`` (QEMU's spelling) or ``-``."""
    if addr == "-":
        return "stdio", None
    kind, _, rest = addr.partition(":")
    if kind == "unix" and rest:
        return "unix", rest
    if kind == "tcp" and ":" in rest:
        host, _, port = rest.rpartition(":")
        return "tcp", (host.strip("[]") or "0.0.0.0", int(port))
    raise ValueError(f"{addr!r}: not unix:PATH, tcp:HOST:PORT or -")


#: socket buffers of the relay's two connections: every byte of guest RAM
#: passes through the relay, and the default ~200 KiB buffers of a unix
#: socket make each side wait for the other several times per megabyte
SOCKET_BUFFER = 4 << 20


def _big_buffers(s: socket.socket) -> None:
    # SO_*BUF is capped by net.core.{r,w}mem_max (often 208 KiB); the FORCE
    # variants are not, but need CAP_NET_ADMIN
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
        for opt in (force, plain):
            if opt is None:
                continue
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
                break
            except OSError:  # not allowed: the next, or the default (slower)
                continue


def listen(addr: str) -> socket.socket:
    kind, where = parse_address(addr)
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            import os

            os.unlink(where)
        except OSError:
            pass
        s.bind(where)
    elif kind == "tcp":
        s = socket.socket(socket.AF_INET6 if ":" in where[0] else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(where)
    else:
        raise ValueError("a listening address is unix:PATH or tcp:HOST:PORT")
    s.listen(4)
    return s


def connect(addr: str, timeout: float = 30.0) -> socket.socket:
    """Connect to the destination's ``-incoming`` address (retrying while
    it is not listening yet, up to *timeout*)."""
    kind, where = parse_address(addr)
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX if kind == "unix" else
                          (socket.AF_INET6 if ":" in where[0] else socket.AF_INET))
        try:
            s.connect(where)
            _big_buffers(s)
            return s
        except OSError as e:
            s.close()
            if time.monotonic() > deadline:
                raise QemuRelayError(f"cannot connect to the destination {addr}: {e}") from None
            time.sleep(0.05)


class Control:
    """A QEMU's QMP socket, to resume a source or watch a destination."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.qmp: QMPClient | None = None
        if path:
            kind, where = parse_address(path) if ":" in path else ("unix", path)
            if kind != "unix":
                raise QemuRelayError(f"control socket {path}: only a unix socket (a QMP "
                                     "socket of a QEMU on this host) is supported")
            self.qmp = QMPClient.connect(where, timeout=10)

    def close(self) -> None:
        if self.qmp is not None:
            self.qmp.close()


def resume_source(control: Control, timeout: float = 30.0) -> str:
    """After a failure: wait until the source's migration is over, then
    make sure its guest runs. Returns what was done."""
    if control.qmp is None:
        return ("the source's QMP socket was not given: if its migration completed, "
                "resume its guest with QMP 'cont'")
    qmp = control.qmp
    try:
        mig = qmp.wait_until("query-migrate",
                             lambda r: r.get("status") not in ("active", "setup", "device",
                                                               "pre-switchover",
                                                               "wait-unplug"),
                             timeout=timeout, interval=0.01)
        status = qmp.execute("query-status")
        if status.get("running"):
            return f"source: migration {mig.get('status')}, guest still running"
        qmp.execute("cont")
        qmp.wait_until("query-status", lambda r: r.get("running") is True, timeout=timeout)
        return (f"source: migration {mig.get('status')}, guest was "
                f"{status.get('status')}, resumed with 'cont'")
    except (QMPError, OSError) as e:
        return f"source: could not be resumed: {e}"


def wait_destination(control: Control, timeout: float = 60.0) -> tuple[str, float | None]:
    """Poll the destination until it runs (or stops answering)."""
    if control.qmp is None:
        return "not watched", None
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status = control.qmp.execute("query-status")
        except (QMPError, OSError) as e:
            return f"gone ({e})", None
        if status.get("running"):
            return "running", time.monotonic()
        if status.get("status") not in ("inmigrate", "prelaunch", "restore-vm"):
            if status.get("status") == "paused":
                return "paused (loaded; started with -S?)", time.monotonic()
            return str(status.get("status")), None
        time.sleep(0.001)
    return f"not running after {timeout}s ({status.get('status')})", None


def relay(source: str, destination: str, target: Any, convert: Any, *,
          decoders: Any = None, source_control: str | None = None,
          destination_control: str | None = None, tee_in: Any = None,
          tee_out: Any = None, log: Callable[[str], None] | None = None) -> RelayResult:
    """Listen on *source* (or read stdin for ``-``), accept the source
    QEMU's migration, connect to *destination*, relay; see the module
    docstring.  Raises :class:`QemuRelayError` after making both sides safe."""
    import sys

    say = log or (lambda _msg: None)
    src_ctl = Control(source_control)
    dst_ctl = Control(destination_control)
    listener = None
    conn: Any = None
    dst: Any = None
    r = Relay(target, convert, decoders=decoders, tee_in=tee_in, tee_out=tee_out)
    try:
        r.warm_up()
        if source != "-":
            listener = listen(source)
        if destination == "-":
            out = sys.stdout.buffer
            send: Callable[[Any], None] = out.write
        else:
            dst = connect(destination)
            send = dst.sendall
        if source == "-":
            stdin = sys.stdin.buffer
            recv: Callable[[memoryview], int] = stdin.readinto1
            poll = None
        else:
            assert listener is not None
            say(f"migtree relay: connected to {destination}; listening on {source}: "
                f"on the source, migrate {source}")
            conn, _ = listener.accept()
            _big_buffers(conn)
            listener.setblocking(False)
            recv = conn.recv_into

            def poll() -> None:
                # multifd opens more channels to the same address
                if select.select([listener], [], [], 0)[0]:
                    raise QemuRelayError("the source opened a second connection: multifd "
                                         "(capability multifd) is not relayed")
        r.run(recv, send, poll)
        if dst is not None:
            dst.shutdown(socket.SHUT_WR)
        status, t = wait_destination(dst_ctl)
        r.result.destination_status, r.result.t_running = status, t
        if dst_ctl.qmp is not None and status != "running" and not status.startswith("paused"):
            raise QemuRelayError(f"the destination did not start: {status}")
        return r.result
    except BaseException as e:
        for s in (conn, dst):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        conn = dst = None
        if not isinstance(e, QemuRelayError):
            if isinstance(e, (QemuStreamError, OSError)) or _is_filter_error(e):
                err = QemuRelayError(f"{type(e).__name__}: {e}")
                err.__cause__ = e
            else:
                raise
        else:
            err = e
        err.result = r.result  # type: ignore[attr-defined]
        err.recovery = resume_source(src_ctl)  # type: ignore[attr-defined]
        raise err from e
    finally:
        for s in (conn, dst, listener):
            if s is not None:
                s.close()
        src_ctl.close()
        dst_ctl.close()


def _is_filter_error(e: BaseException) -> bool:
    try:
        from migtree.errors import FilterError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, FilterError)


def _no_more(*_args: Any) -> int:
    return 0
