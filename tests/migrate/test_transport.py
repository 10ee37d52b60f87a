"""Transports on real sockets: addresses, the security rules, framing, and
TLS refusing clients without a certificate the destination trusts."""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from migtree import transport as t
from migtree.transport import Address, InsecureTransport, TlsConfig


def tls_pair(certs):
    server = TlsConfig(certs.server.cert, certs.server.key, certs.ca)
    client = TlsConfig(certs.client.cert, certs.client.key, certs.ca, server_name="localhost")
    return server, client


# -- addresses -----------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("unix:/run/m.sock", Address("unix", path="/run/m.sock")),
    ("/run/m.sock", Address("unix", path="/run/m.sock")),
    ("tcp:127.0.0.1:4444", Address("tcp", host="127.0.0.1", port=4444)),
    ("tls:host.example:1", Address("tls", host="host.example", port=1)),
    ("tls:[::1]:4444", Address("tls", host="::1", port=4444)),
    ("file:/srv/mig", Address("file", path="/srv/mig")),
])
def test_address_parse(text, expected):
    assert Address.parse(text) == expected
    assert Address.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["", "tcp:nohostport", "tcp:h:99999", "gopher:x", "tls::1"])
def test_address_parse_errors(text):
    with pytest.raises(t.TransportError, match="address|empty"):
        Address.parse(text)


# -- the security rules ------------------------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "2001:db8::1"])
def test_plaintext_tcp_off_loopback_refused_even_with_flag(host):
    addr = Address("tcp", host=host, port=4444)
    with pytest.raises(InsecureTransport, match="non-loopback.*mutual TLS"):
        t.Listener(addr, allow_plaintext=True)
    with pytest.raises(InsecureTransport, match="non-loopback.*mutual TLS"):
        t.connect(addr, allow_plaintext=True)


def test_plaintext_tcp_on_loopback_needs_the_flag():
    addr = Address("tcp", host="127.0.0.1", port=0)
    with pytest.raises(InsecureTransport, match="--allow-plaintext"):
        t.Listener(addr)
    with pytest.raises(InsecureTransport, match="--allow-plaintext"):
        t.connect(addr)


def test_tls_without_certificates_refused():
    with pytest.raises(InsecureTransport, match="--cert"):
        t.Listener(Address("tls", host="127.0.0.1", port=0))


def test_missing_certificate_file_named(tmp_path, certs):
    cfg = TlsConfig(str(tmp_path / "nope.crt"), certs.server.key, certs.ca)
    with pytest.raises(t.TransportError, match="nope.crt"):
        t.Listener(Address("tls", host="127.0.0.1", port=0), tls=cfg)


# -- framing over every transport ------------------------------------------------------

def _serve_one(listener, out, frames=3):
    try:
        with listener.accept(timeout=30) as chan:
            chan.send_msg(t.HELLO, {"hi": 1})
            for _ in range(frames):
                out.append(chan.recv(timeout=30))
            chan.send_msg(t.DONE, {"n": len(out)})
    except Exception as e:  # reported to the test thread
        out.append(e)


def _roundtrip(listener, connect):
    got: list = []
    th = threading.Thread(target=_serve_one, args=(listener, got))
    th.start()
    try:
        with connect() as chan:
            assert chan.recv_msg(timeout=30) == (t.HELLO, {"hi": 1})
            big = bytes(range(256)) * 4096
            chan.send(t.DATA, big)
            chan.send(t.DATA, b"")
            chan.send_msg(t.END, {"bytes": len(big)})
            assert chan.recv_msg(timeout=30) == (t.DONE, {"n": 3})
            assert chan.data_sent == len(big)
    finally:
        th.join(30)
    assert not any(isinstance(g, Exception) for g in got), got
    assert got[0] == (t.DATA, bytes(range(256)) * 4096)
    assert got[1] == (t.DATA, b"")
    assert got[2][0] == t.END


def test_unix_roundtrip(short_tmp):
    addr = Address.parse(f"unix:{short_tmp}/s.sock")
    with t.Listener(addr) as lst:
        assert (Path(short_tmp) / "s.sock").stat().st_mode & 0o077 == 0
        _roundtrip(lst, lambda: t.connect(addr))
    assert not (Path(short_tmp) / "s.sock").exists()


def test_unix_stale_socket_replaced_live_one_refused(short_tmp):
    path = short_tmp / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    with t.Listener(Address("unix", path=str(path))):
        with pytest.raises(t.TransportError, match="another process is listening"):
            t.Listener(Address("unix", path=str(path)))


def test_tcp_loopback_roundtrip():
    with t.Listener(Address.parse("tcp:127.0.0.1:0"), allow_plaintext=True) as lst:
        addr = lst.address
        assert addr.port != 0
        _roundtrip(lst, lambda: t.connect(addr, allow_plaintext=True))


def test_tls_roundtrip(certs):
    server, client = tls_pair(certs)
    with t.Listener(Address.parse("tls:127.0.0.1:0"), tls=server) as lst:
        addr = lst.address
        _roundtrip(lst, lambda: t.connect(addr, tls=client))


def test_file_roundtrip(tmp_path):
    addr = Address("file", path=str(tmp_path / "rv"))
    lst = t.Listener(addr)
    _roundtrip(lst, lambda: t.connect(addr, timeout=30))


def test_file_rendezvous_must_be_fresh(tmp_path):
    (tmp_path / "old").write_text("x")
    with pytest.raises(t.TransportError, match="not empty"):
        t.Listener(Address("file", path=str(tmp_path)))


def test_file_channel_notices_dead_peer(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    chan = t.DirChannel(tmp_path, "d")
    (tmp_path / "s.pid").write_text(f"{socket.gethostname()} {dead}\n")
    with pytest.raises(t.PeerClosed, match="gone"):
        chan.recv(timeout=60)


# -- TLS refusals ---------------------------------------------------------------------

def _accept_in_thread(lst, out):
    def run():
        try:
            chan = lst.accept(timeout=60)
            out.append(chan.recv(timeout=30))
            chan.close()
        except Exception as e:
            out.append(e)
    th = threading.Thread(target=run)
    th.start()
    return th


def _bare_client(addr, ctx):
    sock = socket.create_connection((addr.host, addr.port), timeout=30)
    return ctx.wrap_socket(sock, server_hostname="localhost")


def test_tls_client_without_certificate_refused_logged_nothing_read(certs, caplog):
    server, client = tls_pair(certs)
    caplog.set_level(logging.WARNING, logger="migtree.transport")
    with t.Listener(Address.parse("tls:127.0.0.1:0"), tls=server) as lst:
        got: list = []
        th = _accept_in_thread(lst, got)
        # a client that trusts the destination but presents no certificate
        ctx = ssl.create_default_context(cafile=certs.ca)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            s = _bare_client(lst.address, ctx)
            s.sendall(t.PREAMBLE + struct.pack(">BI", t.DATA, 5) + b"evil!")
            # TLS 1.3: the refusal arrives as an alert on the first read
            if not s.recv(1):
                raise ConnectionError("closed")
        # the listener kept waiting; a real source still gets through
        with t.connect(lst.address, tls=client) as chan:
            chan.send(t.DATA, b"good")
        th.join(60)
    assert got == [(t.DATA, b"good")]  # nothing of the refused client was read
    assert len(lst.refused) == 1 and "certificate" in lst.refused[0].lower()
    assert any("refused a connection" in r.getMessage() for r in caplog.records)


def test_tls_client_with_untrusted_certificate_refused(certs):
    server, _ = tls_pair(certs)
    rogue = TlsConfig(certs.rogue_client.cert, certs.rogue_client.key, certs.ca,
                      server_name="localhost")
    with t.Listener(Address.parse("tls:127.0.0.1:0"), tls=server) as lst:
        got: list = []
        th = _accept_in_thread(lst, got)
        with pytest.raises(t.TransportError):
            with t.connect(lst.address, tls=rogue, timeout=30) as chan:
                chan.send(t.DATA, b"evil")
                chan.recv(timeout=30)
        assert th.is_alive()  # still waiting for a trusted source
        good = TlsConfig(certs.client.cert, certs.client.key, certs.ca, server_name="localhost")
        with t.connect(lst.address, tls=good) as chan:
            chan.send(t.DATA, b"good")
        th.join(60)
    assert got == [(t.DATA, b"good")]
    assert "unknown ca" in lst.refused[0].lower() or "certificate" in lst.refused[0].lower()


def test_source_refuses_destination_with_untrusted_server_certificate(certs):
    # the destination presents a certificate the source's CA did not sign
    bad_server = TlsConfig(certs.rogue_client.cert, certs.rogue_client.key, certs.ca)
    _, client = tls_pair(certs)
    with t.Listener(Address.parse("tls:127.0.0.1:0"), tls=bad_server) as lst:
        got: list = []
        th = _accept_in_thread(lst, got)
        with pytest.raises(t.TransportError, match="TLS handshake failed"):
            t.connect(lst.address, tls=client, timeout=30)
        lst.close()  # wakes the accept() blocked in the thread
        th.join(60)
    assert not th.is_alive()
    assert isinstance(got[0], t.TransportError) and "listener was closed" in str(got[0])


def test_non_migtree_peer_refused(short_tmp, caplog):
    addr = Address("unix", path=str(short_tmp / "s.sock"))
    caplog.set_level(logging.WARNING, logger="migtree.transport")
    with t.Listener(addr) as lst:
        got: list = []
        th = _accept_in_thread(lst, got)
        s = socket.socket(socket.AF_UNIX)
        s.connect(addr.path)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        s.recv(64)
        s.close()
        with t.connect(addr) as chan:
            chan.send(t.DATA, b"ok")
        th.join(60)
    assert got == [(t.DATA, b"ok")]
    assert "does not speak the migtree migration protocol" in lst.refused[0]


def test_absurd_frame_length_refused_without_allocating(short_tmp):
    addr = Address("unix", path=str(short_tmp / "s.sock"))
    with t.Listener(addr) as lst:
        got: list = []
        th = _accept_in_thread(lst, got)
        s = socket.socket(socket.AF_UNIX)
        s.connect(addr.path)
        s.sendall(t.PREAMBLE + struct.pack(">BI", t.DATA, 0xFFFF_FFFF))
        th.join(60)
        s.close()
    assert isinstance(got[0], t.ProtocolError) and "more than" in str(got[0])


def test_unknown_frame_kind_refused(short_tmp):
    addr = Address("unix", path=str(short_tmp / "s.sock"))
    with t.Listener(addr) as lst:
        got: list = []
        th = _accept_in_thread(lst, got)
        s = socket.socket(socket.AF_UNIX)
        s.connect(addr.path)
        s.sendall(t.PREAMBLE + struct.pack(">BI", 200, 0))
        th.join(60)
        s.close()
    assert isinstance(got[0], t.ProtocolError) and "unknown frame kind 200" in str(got[0])
