"""Transports for a live migration: where the bytes go, and how they are framed.

An address names the transport::

    unix:/run/migtree/vm0.sock   a unix socket (the default: a bare path means this)
    tcp:127.0.0.1:4444           plaintext TCP -- loopback only, and only with
                                 ``allow_plaintext=True`` (``--allow-plaintext``)
    tls:vmhost2.example:4444     TCP with mutual TLS: the destination verifies the
                                 source's client certificate against its CA, the
                                 source verifies the destination's server certificate
    file:/shared/mig0            a rendezvous directory on a filesystem both sides
                                 see: every frame is a file, renamed into place

The rules are enforced here, on both sides, not by the CLI: a plaintext
``tcp:`` address that is not loopback is refused before any socket is made
(so is one that is loopback when the caller did not say ``allow_plaintext``),
a listener on anything but loopback needs TLS, and a TLS listener always
requires a client certificate (``ssl.CERT_REQUIRED``): a client without one
is refused during the handshake, the refusal is logged, and no byte of its
is ever read by the migration.

Framing (the same for every transport). Each side first sends the 8-byte
preamble :data:`PREAMBLE`; then frames, each ``kind:u8 length:u32be
payload``. Control frames carry a JSON object (:meth:`Channel.send_msg`),
``DATA`` frames carry raw bytes of the migtree stream. A frame longer than
its kind allows is a :class:`ProtocolError`, never an allocation. The
protocol above the frames (hello, data, loaded, commit...) is in
:mod:`migtree.migration`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import select
import socket
import ssl
import stat
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from . import files
from .errors import MigtreeError

log = logging.getLogger("migtree.transport")

#: sent by each side first: a peer that is not migtree (an HTTP client, a
#: port scanner) is told apart before any frame is parsed
PREAMBLE = b"MTMIG\r\n\x01"
_HEADER = struct.Struct(">BI")

#: frame kinds (see :mod:`migtree.migration` for what each carries)
HELLO, OFFER, DATA, END, LOADED, FAILED, COMMIT, DONE, ABORT, PASS = range(1, 11)
KIND_NAMES = {HELLO: "HELLO", OFFER: "OFFER", DATA: "DATA", END: "END", LOADED: "LOADED",
              FAILED: "FAILED", COMMIT: "COMMIT", DONE: "DONE", ABORT: "ABORT",
              PASS: "PASS"}
#: largest DATA payload a sender produces, and the largest a receiver accepts
DATA_CHUNK = 1 << 20
MAX_DATA_FRAME = 4 << 20
#: largest control frame (the destination's HELLO lists every type and filter)
MAX_CONTROL_FRAME = 16 << 20
#: how long a listener waits for a TLS handshake before dropping the peer
HANDSHAKE_TIMEOUT = 30.0
#: handshakes a listener runs at once; more connections are closed at once
MAX_PENDING_HANDSHAKES = 32


class TransportError(MigtreeError):
    """The connection could not be made, was refused, or broke."""


class PeerClosed(TransportError):
    """The peer closed the connection (or died) where a frame was expected."""


class ProtocolError(TransportError):
    """The peer sent something that is not the migtree migration protocol."""


class InsecureTransport(TransportError):
    """An address the security rules refuse (plaintext off loopback, no flag, no TLS)."""


# -- addresses -------------------------------------------------------------------

SCHEMES = ("unix", "tcp", "tls", "file")


@attrs.frozen
class Address:
    scheme: str
    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str | Address) -> Address:
        """``unix:PATH`` (or a bare PATH), ``tcp:HOST:PORT``, ``tls:HOST:PORT``,
        ``file:DIR``. IPv6 hosts go in brackets: ``tls:[::1]:4444``."""
        if isinstance(text, Address):
            return text
        if not isinstance(text, str) or not text:
            raise TransportError(f"empty address {text!r}")
        scheme, sep, rest = text.partition(":")
        if not sep or scheme not in SCHEMES:
            if "/" in text or text.endswith(".sock"):
                return cls("unix", path=text)
            raise TransportError(f"address {text!r}: expected unix:PATH, tcp:HOST:PORT, "
                                 "tls:HOST:PORT or file:DIR")
        if scheme in ("unix", "file"):
            if not rest:
                raise TransportError(f"address {text!r}: {scheme}: needs a path")
            return cls(scheme, path=rest)
        host, port = _split_host_port(text, rest)
        return cls(scheme, host=host, port=port)

    @property
    def is_loopback(self) -> bool:
        return self.scheme in ("unix", "file") or is_loopback_host(self.host or "")

    def with_port(self, port: int) -> Address:
        return attrs.evolve(self, port=port)

    def __str__(self) -> str:
        if self.scheme in ("unix", "file"):
            return f"{self.scheme}:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{self.scheme}:{host}:{self.port}"


def _split_host_port(text: str, rest: str) -> tuple[str, int]:
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
    else:
        host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise TransportError(f"address {text!r}: expected HOST:PORT (IPv6 as [ADDR]:PORT)")
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address. A name is
    resolved (``localhost``); one that resolves to any non-loopback address,
    or does not resolve, is not loopback."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


# -- TLS -------------------------------------------------------------------------

@attrs.frozen
class TlsConfig:
    """Certificates for mutual TLS. Both sides need all three: their own
    certificate and key, and the CA that signed the peer's certificate.

    :param server_name: the name the source checks the destination's
        certificate against (default: the host of the address)."""

    cert: str
    key: str
    ca: str
    server_name: str | None = None

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED  # a client certificate is mandatory
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its name
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(ctx)
        return ctx

    def _load(self, ctx: ssl.SSLContext) -> None:
        for what, path in (("certificate", self.cert), ("key", self.key), ("CA", self.ca)):
            if not Path(path).is_file():
                raise TransportError(f"TLS {what} file {path!r} does not exist")
        try:
            ctx.load_cert_chain(self.cert, self.key)
            ctx.load_verify_locations(cafile=self.ca)
        except (ssl.SSLError, OSError) as e:
            raise TransportError(f"cannot load TLS certificates ({self.cert}, {self.key}, "
                                 f"CA {self.ca}): {e}") from None


def check_policy(addr: Address, *, tls: TlsConfig | None, allow_plaintext: bool,
                 listening: bool) -> None:
    """Raise :class:`InsecureTransport` unless ``addr`` may be used as asked."""
    if addr.scheme == "tls":
        if tls is None:
            raise InsecureTransport(f"{addr}: TLS needs a certificate, a key and a CA "
                                    "(--cert, --key, --ca)")
        return
    if addr.scheme != "tcp":
        return
    if not is_loopback_host(addr.host or ""):
        side = "listen on" if listening else "connect to"
        raise InsecureTransport(
            f"{addr}: refusing to {side} a non-loopback address in plaintext; device state "
            f"crosses the network only over mutual TLS: use tls:{addr.host}:{addr.port} with "
            "--cert, --key and --ca")
    if not allow_plaintext:
        raise InsecureTransport(
            f"{addr}: plaintext TCP is allowed on loopback only with an explicit "
            "--allow-plaintext (or use unix: or tls:)")


# -- channels ----------------------------------------------------------------------

class Channel(ABC):
    """A framed, bidirectional connection. Subclasses move bytes; this class
    frames them and counts them."""

    peer: str = "?"

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.bytes_received = 0
        self.data_sent = 0
        self.data_received = 0
        self._preamble_checked = False
        #: checks every decoded control message (migtree.protocol.validate
        #: once a migration runs over this channel); None: any JSON object
        self.validator: Any = None

    # raw bytes (subclasses)
    @abstractmethod
    def _send_frame(self, kind: int, payload: bytes | memoryview) -> None:
        raise NotImplementedError

    @abstractmethod
    def _recv_frame(self, timeout: float | None) -> tuple[int, bytes]:
        raise NotImplementedError

    @abstractmethod
    def close(self) -> None:
        raise NotImplementedError

    def incoming_ready(self) -> bool:
        """Whether a frame (or the end of the connection) can be read now
        without waiting: the sender looks between DATA frames, so a
        destination that gave up is heard at once."""
        return False

    # frames
    def send(self, kind: int, payload: bytes | memoryview = b"") -> None:
        limit = MAX_DATA_FRAME if kind == DATA else MAX_CONTROL_FRAME
        if len(payload) > limit:
            raise ProtocolError(f"{KIND_NAMES.get(kind, kind)} frame of {len(payload)} bytes "
                                f"exceeds {limit}")
        self._send_frame(kind, payload)
        self.bytes_sent += _HEADER.size + len(payload)
        if kind == DATA:
            self.data_sent += len(payload)

    def recv(self, timeout: float | None = None) -> tuple[int, bytes]:
        kind, payload = self._recv_frame(timeout)
        self.bytes_received += _HEADER.size + len(payload)
        if kind == DATA:
            self.data_received += len(payload)
        return kind, payload

    def send_msg(self, kind: int, msg: dict[str, Any] | None = None) -> None:
        self.send(kind, json.dumps(msg or {}, separators=(",", ":"),
                                   default=_json_default).encode())

    def recv_msg(self, timeout: float | None = None) -> tuple[int, Any]:
        """The next frame; control frames decoded from JSON, DATA as bytes."""
        kind, payload = self.recv(timeout)
        if kind == DATA:
            return kind, payload
        return kind, self.decode(kind, payload)

    def decode(self, kind: int, payload: bytes) -> Any:
        """A control frame's JSON, checked by :attr:`validator` if set."""
        msg = decode_msg(kind, payload)
        if self.validator is not None:
            self.validator(kind, msg)
        return msg

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes | bytearray | memoryview):
        return bytes(o).hex()
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    return str(o)


def decode_msg(kind: int, payload: bytes) -> Any:
    try:
        msg = json.loads(payload)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"{KIND_NAMES.get(kind, kind)} frame is not valid JSON: "
                            f"{e.__class__.__name__}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"{KIND_NAMES.get(kind, kind)} frame is not a JSON object")
    return msg


def _check_kind_and_length(kind: int, length: int) -> None:
    if kind not in KIND_NAMES:
        raise ProtocolError(f"unknown frame kind {kind}")
    limit = MAX_DATA_FRAME if kind == DATA else MAX_CONTROL_FRAME
    if length > limit:
        raise ProtocolError(f"{KIND_NAMES[kind]} frame announces {length} bytes, more than "
                            f"the {limit} allowed")


class SocketChannel(Channel):
    """Frames over a connected stream socket (unix, TCP or TLS)."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        super().__init__()
        self.sock = sock
        self.peer = peer
        self._closed = False

    def start(self, timeout: float | None) -> SocketChannel:
        """Exchange and check the preamble."""
        try:
            self.sock.sendall(PREAMBLE)
        except (OSError, ssl.SSLError) as e:
            raise PeerClosed(f"connection to {self.peer} broke while sending the protocol "
                             f"preamble: {_why(e)}") from None
        got = self._recv_exact(len(PREAMBLE), timeout, "the protocol preamble")
        if got != PREAMBLE:
            raise ProtocolError(f"{self.peer} does not speak the migtree migration protocol "
                                f"(got {got[:8]!r})")
        return self

    def incoming_ready(self) -> bool:
        if self._closed:
            return False
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True  # let the read report it
        return bool(readable)

    def _send_frame(self, kind: int, payload: bytes | memoryview) -> None:
        try:
            head = _HEADER.pack(kind, len(payload))
            if len(payload) <= 65536:  # a control frame leaves in one write, whole or not
                self.sock.sendall(head + bytes(payload))
            else:
                self.sock.sendall(head)
                self.sock.sendall(payload)
        except (OSError, ssl.SSLError) as e:
            raise PeerClosed(f"connection to {self.peer} broke while sending "
                             f"{KIND_NAMES.get(kind, kind)}: {_why(e)}") from None

    def _recv_frame(self, timeout: float | None) -> tuple[int, bytes]:
        kind, length = _HEADER.unpack(self._recv_exact(_HEADER.size, timeout, "a frame"))
        _check_kind_and_length(kind, length)
        return kind, self._recv_exact(length, timeout, f"a {KIND_NAMES[kind]} frame")

    def _recv_exact(self, n: int, timeout: float | None, what: str) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while got < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError(f"timed out after {timeout:.0f}s waiting for {what} "
                                         f"from {self.peer}")
                self.sock.settimeout(left)
            else:
                self.sock.settimeout(None)
            try:
                k = self.sock.recv_into(view[got:], n - got)
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError) as e:
                raise PeerClosed(f"connection to {self.peer} broke while waiting for {what}: "
                                 f"{_why(e)}") from None
            if k == 0:
                where = f" after {got} of {n} bytes" if got else ""
                raise PeerClosed(f"{self.peer} closed the connection while we waited for "
                                 f"{what}{where}")
            got += k
        return bytes(buf)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


def _why(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    if isinstance(e, OSError) and e.errno is not None:
        return f"{os.strerror(e.errno)}"
    return f"{e.__class__.__name__}: {e}"


class DirChannel(Channel):
    """Frames as files in a rendezvous directory both sides can see.

    Side ``d`` (the destination) writes ``d2s-NNNNNNNN``, side ``s`` writes
    ``s2d-NNNNNNNN``; each file is written under a temporary name and renamed
    into place, so a reader never sees half a frame. A reader deletes what it
    consumed. Each side writes its pid to ``d.pid`` / ``s.pid``: on the same
    host a reader waiting for a frame notices a peer that died (its pid is
    gone) instead of waiting for the timeout.
    """

    POLL_MIN, POLL_MAX = 0.001, 0.05

    def __init__(self, directory: Path, side: str) -> None:
        super().__init__()
        if side not in ("d", "s"):
            raise ValueError(side)
        self.dir = directory
        self.side, self.other = side, ("s" if side == "d" else "d")
        self.peer = f"file:{directory}"
        self._out = 0
        self._in = 0
        self._closed = False
        _atomic_write(self.dir / f"{side}.pid", f"{socket.gethostname()} {os.getpid()}\n".encode())

    def _name(self, direction: str, seq: int) -> Path:
        return self.dir / f"{direction}-{seq:08d}"

    def _send_frame(self, kind: int, payload: bytes | memoryview) -> None:
        self._out += 1
        try:
            _atomic_write(self._name(f"{self.side}2{self.other}", self._out),
                          _HEADER.pack(kind, len(payload)) + bytes(payload))
        except OSError as e:
            raise PeerClosed(f"cannot write a frame to {self.dir}: {_why(e)}") from None

    def incoming_ready(self) -> bool:
        return self._name(f"{self.other}2{self.side}", self._in + 1).exists()

    def _recv_frame(self, timeout: float | None) -> tuple[int, bytes]:
        path = self._name(f"{self.other}2{self.side}", self._in + 1)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = self.POLL_MIN
        while not path.exists():
            if self._closed:
                raise PeerClosed(f"{self.peer}: channel closed")
            if self._peer_gone():
                # one more look: the peer may have written its last frame and exited
                if path.exists():
                    break
                raise PeerClosed(f"{self.peer}: the other side (pid file {self.other}.pid) "
                                 "is gone")
            if deadline is not None and time.monotonic() > deadline:
                raise TransportError(f"timed out after {timeout:.0f}s waiting for a frame "
                                     f"in {self.dir}")
            time.sleep(delay)
            delay = min(delay * 2, self.POLL_MAX)
        try:
            with files.open_nofollow(path) as f:  # a planted symlink is refused
                head = f.read(_HEADER.size)
                if len(head) != _HEADER.size:
                    raise ProtocolError(f"{path}: truncated frame header")
                kind, length = _HEADER.unpack(head)
                _check_kind_and_length(kind, length)
                payload = f.read(length + 1)
            if len(payload) != length:
                raise ProtocolError(f"{path}: frame holds {len(payload)} bytes, its header "
                                    f"says {length}")
            path.unlink()
        except files.UnsafePath as e:
            raise ProtocolError(str(e)) from None
        except OSError as e:
            raise PeerClosed(f"cannot read {path}: {_why(e)}") from None
        self._in += 1
        return kind, payload

    def _peer_gone(self) -> bool:
        try:
            with files.open_nofollow(self.dir / f"{self.other}.pid") as f:
                host, pid = f.read(256).decode().split()
        except (OSError, ValueError, files.UnsafePath):
            return False  # not there yet (or another host's format): rely on the timeout
        if host != socket.gethostname():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
        return _is_zombie(int(pid))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            (self.dir / f"{self.side}.pid").unlink()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _atomic_write(path: Path, data: bytes) -> None:
    # private (0600), O_EXCL|O_NOFOLLOW under a fresh name, renamed into place
    files.write_atomic(path, data)


# -- listening and connecting -------------------------------------------------------------

class Listener:
    """A destination waiting for a source. :meth:`accept` returns a started
    :class:`Channel`; a peer refused by TLS or by the preamble is logged and
    the listener keeps waiting."""

    def __init__(self, addr: Address, *, tls: TlsConfig | None = None,
                 allow_plaintext: bool = False) -> None:
        check_policy(addr, tls=tls, allow_plaintext=allow_plaintext, listening=True)
        self.requested = addr
        self.tls = tls
        self._ctx = tls.server_context() if addr.scheme == "tls" and tls else None
        self.refused: list[str] = []
        self._sock: socket.socket | None = None
        self._unix_path: Path | None = None
        if addr.scheme == "file":
            d = Path(addr.path or "")
            d.parent.mkdir(parents=True, exist_ok=True)
            try:  # created 0700, or an existing one that is private to us
                files.private_dir(d)
            except files.UnsafePath as e:
                raise TransportError(f"{addr}: {e}") from None
            stale = [p.name for p in d.iterdir()]
            if stale:
                raise TransportError(f"{addr}: the rendezvous directory is not empty "
                                     f"({', '.join(sorted(stale)[:3])}...): use a fresh one")
            self.address = addr
        elif addr.scheme == "unix":
            self._sock = _listen_unix(Path(addr.path or ""))
            self._unix_path = Path(addr.path or "")
            self.address = addr
        else:
            self._sock = _listen_tcp(addr)
            self.address = addr.with_port(self._sock.getsockname()[1])

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock else -1

    def accept(self, timeout: float | None = None) -> Channel:
        """The first connection whose handshake (TLS, preamble) completes.

        Handshakes run concurrently, each in its own thread with its own
        deadline (HANDSHAKE_TIMEOUT, and never past this call's deadline): a
        silent or slow peer -- or many -- cannot hold the listener while a
        real source waits, and ``timeout`` is kept exactly. At most
        MAX_PENDING_HANDSHAKES are in flight; a connection beyond that is
        closed at once. Handshakes still running when one wins are cut off."""
        addr = self.address
        if addr.scheme == "file":
            return DirChannel(Path(addr.path or ""), "d")
        deadline = None if timeout is None else time.monotonic() + timeout
        won: list[Channel] = []
        pending: dict[socket.socket, threading.Thread] = {}
        lock = threading.Lock()
        state = {"open": True}
        wake_r, wake_w = os.pipe()

        def handshake(conn: socket.socket, raddr: Any) -> None:
            raw = conn  # the key in pending (conn becomes the TLS socket)
            peer = _peer_name(addr, raddr)
            until = time.monotonic() + HANDSHAKE_TIMEOUT
            if deadline is not None:
                until = min(until, deadline)
            try:
                conn.settimeout(max(0.001, until - time.monotonic()))
                if self._ctx is not None:
                    conn = self._ctx.wrap_socket(conn, server_side=True)
                    peer = f"{peer} ({_subject(conn)})"
                elif addr.scheme == "tcp" and not is_loopback_host(str(raddr[0])):
                    raise InsecureTransport(f"plaintext connection from non-loopback {peer}")
                chan = SocketChannel(conn, peer).start(max(0.001, until - time.monotonic()))
            except (ssl.SSLError, OSError, TransportError, ValueError) as e:
                reason = _why(e) if not isinstance(e, TransportError) else str(e)
                with lock:
                    if state["open"]:
                        self.refused.append(f"{peer}: {reason}")
                        log.warning("refused a connection from %s: %s", peer, reason)
                with contextlib.suppress(OSError):
                    conn.close()
                return
            finally:
                with lock:
                    pending.pop(raw, None)
            with lock:
                if state["open"] and not won:
                    won.append(chan)
                    with contextlib.suppress(OSError):
                        os.write(wake_w, b"!")
                    return
            chan.close()  # another source won, or accept() gave up

        try:
            while True:
                with lock:
                    if won:
                        log.info("accepted a source from %s", won[0].peer)
                        return won[0]
                sock = self._sock
                if sock is None:
                    raise TransportError(f"{addr}: the listener was closed")
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if left == 0.0:
                    raise TransportError(f"{addr}: no source connected within {timeout:.0f}s")
                try:
                    ready, _, _ = select.select([sock, wake_r], [], [], left)
                except (OSError, ValueError):
                    if self._sock is None:  # closed from another thread
                        raise TransportError(f"{addr}: the listener was closed") from None
                    raise
                if wake_r in ready:
                    os.read(wake_r, 64)
                    continue
                if sock not in ready:
                    continue
                try:
                    sock.setblocking(False)
                    conn, raddr = sock.accept()
                    conn.setblocking(True)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    if self._sock is None:  # closed from another thread
                        raise TransportError(f"{addr}: the listener was closed") from None
                    raise TransportError(f"{addr}: accept failed: {_why(e)}") from None
                with lock:
                    crowded = len(pending) >= MAX_PENDING_HANDSHAKES
                    if crowded:
                        self.refused.append(f"{_peer_name(addr, raddr)}: too many handshakes "
                                            "in progress")
                if crowded:
                    with contextlib.suppress(OSError):
                        conn.close()
                    continue
                th = threading.Thread(target=handshake, args=(conn, raddr), daemon=True,
                                      name=f"migtree-handshake-{_peer_name(addr, raddr)}")
                with lock:
                    pending[conn] = th
                th.start()
        finally:
            with lock:
                state["open"] = False
                losers = list(pending)
            for conn in losers:  # cut off handshakes still running
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            os.close(wake_r)
            os.close(wake_w)

    def close(self) -> None:
        """Stop listening; an :meth:`accept` blocked in another thread returns
        with a :class:`TransportError`."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() on Linux
            with contextlib.suppress(OSError):
                sock.close()
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                self._unix_path.unlink()
            self._unix_path = None

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _peer_name(addr: Address, raddr: Any) -> str:
    if addr.scheme == "unix":
        return f"unix:{addr.path}"
    host, port = raddr[0], raddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _subject(conn: ssl.SSLSocket) -> str:
    cert = conn.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return f"CN={value}"
    return "client certificate verified"


def _listen_unix(path: Path) -> socket.socket:
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise TransportError(f"unix:{path}: exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # stale: nobody listens there
        except OSError as e:
            raise TransportError(f"unix:{path}: cannot probe the existing socket: "
                                 f"{_why(e)}") from None
        else:
            raise TransportError(f"unix:{path}: another process is listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is the owner's only
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise TransportError(f"unix:{path}: cannot listen: {_why(e)}") from None
    finally:
        os.umask(old)
    sock.listen(4)
    return sock


def _listen_tcp(addr: Address) -> socket.socket:
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError as e:
        raise TransportError(f"{addr}: cannot resolve: {_why(e)}") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(4)
    except OSError as e:
        sock.close()
        raise TransportError(f"{addr}: cannot listen: {_why(e)}") from None
    return sock


def connect(addr: Address | str, *, tls: TlsConfig | None = None, allow_plaintext: bool = False,
            timeout: float = 30.0) -> Channel:
    """Connect a source to a destination's listener and exchange the preamble.

    ``timeout`` bounds the connection and the handshake; for ``file:`` it is
    how long to wait for the destination to appear in the directory."""
    addr = Address.parse(addr)
    check_policy(addr, tls=tls, allow_plaintext=allow_plaintext, listening=False)
    if addr.scheme == "file":
        d = Path(addr.path or "")
        deadline = time.monotonic() + timeout
        while not (d / "d.pid").exists():
            if time.monotonic() > deadline:
                raise TransportError(f"{addr}: no destination appeared there within "
                                     f"{timeout:.0f}s")
            time.sleep(0.01)
        try:  # the destination made it private; anything else is not its directory
            files.private_dir(d, create=False)
        except files.UnsafePath as e:
            raise TransportError(f"{addr}: {e}") from None
        return DirChannel(d, "s")
    try:
        if addr.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(addr.path or "")
        else:
            sock = socket.create_connection((addr.host, addr.port), timeout=timeout)
    except OSError as e:
        raise TransportError(f"cannot connect to {addr}: {_why(e)}") from None
    try:
        if addr.scheme == "tls":
            assert tls is not None
            sock = tls.client_context().wrap_socket(
                sock, server_hostname=tls.server_name or addr.host)
        return SocketChannel(sock, str(addr)).start(timeout)
    except (ssl.SSLError, OSError) as e:
        with contextlib.suppress(OSError):
            sock.close()
        what = "TLS handshake failed" if addr.scheme == "tls" else "connection broke"
        raise TransportError(f"{addr}: {what}: {_why(e)}") from None
    except TransportError:
        with contextlib.suppress(OSError):
            sock.close()
        raise


# -- helpers for the stream ------------------------------------------------------------------

class DataWriter:
    """A write-only file object that sends what is written as ``DATA`` frames
    of :data:`DATA_CHUNK` bytes; :func:`migtree.stream.save` writes into it."""

    def __init__(self, chan: Channel, on_bytes: Any = None) -> None:
        self.chan = chan
        self.buf = bytearray()
        self.total = 0
        self.on_bytes = on_bytes

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        self.buf += data
        while len(self.buf) >= DATA_CHUNK:
            self._emit(bytes(self.buf[:DATA_CHUNK]))
            del self.buf[:DATA_CHUNK]
        return n

    def flush(self) -> None:
        if self.buf:
            self._emit(bytes(self.buf))
            self.buf.clear()

    def _emit(self, chunk: bytes) -> None:
        self.chan.send(DATA, chunk)
        self.total += len(chunk)
        if self.on_bytes is not None:
            self.on_bytes(len(chunk))
        if self.chan.incoming_ready():  # the destination spoke mid-stream: it gave up
            raise_remote(self.chan)


def raise_remote(chan: Channel, timeout: float = 5.0) -> None:
    """Read the frame the peer sent unasked and raise what it says: a
    :class:`RemoteAbort` for FAILED/ABORT, :class:`PeerClosed` when it
    closed, :class:`ProtocolError` otherwise."""
    kind, payload = chan.recv(timeout)
    if kind in (FAILED, ABORT):
        msg = chan.decode(kind, payload)
        raise RemoteAbort(str(msg.get("error") or msg.get("reason") or "aborted"), msg)
    raise ProtocolError(f"unexpected {KIND_NAMES[kind]} frame while sending the stream")

    def writable(self) -> bool:
        return True


def iter_data(chan: Channel, timeout: float | None) -> Iterator[bytes]:
    """DATA payloads until the END frame (whose byte count is checked)."""
    got = 0
    while True:
        kind, payload = chan.recv(timeout)
        if kind == DATA:
            got += len(payload)
            yield payload
            continue
        if kind == END:
            msg = chan.decode(kind, payload)
            if msg.get("bytes") != got:
                raise ProtocolError(f"the source says it sent {msg.get('bytes')} bytes, "
                                    f"{got} arrived")
            return
        if kind in (ABORT, FAILED):
            msg = chan.decode(kind, payload)
            raise RemoteAbort(str(msg.get("error") or msg.get("reason") or "aborted"), msg)
        raise ProtocolError(f"expected DATA or END, got {KIND_NAMES[kind]}")


class RemoteAbort(TransportError):
    """The peer gave up and said why."""

    def __init__(self, message: str, msg: dict[str, Any] | None = None) -> None:
        self.msg = msg or {}
        super().__init__(message)

