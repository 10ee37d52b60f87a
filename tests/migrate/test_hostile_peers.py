"""A hostile peer and a hostile local user (issue 18): malformed protocol
messages in every phase, replayed sessions, planted files in the file:
rendezvous, outputs that must be private and atomic."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from migtree import files, migration, protocol
from migtree import transport as tp
from migtree.build import close_objects, load_build
from migtree.transport import Address

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "userspace-split.toml"


@pytest.fixture
def build(tmp_path):
    p = tmp_path / "b.toml"
    p.write_text(EXAMPLE.read_text())
    (tmp_path / "disk.img").write_bytes(bytes(1 << 20))
    b = load_build(p)
    yield b
    close_objects(b.root)


def _pair() -> tuple[tp.SocketChannel, tp.SocketChannel]:
    a, b = socket.socketpair()
    ca, cb = tp.SocketChannel(a, "source"), tp.SocketChannel(b, "destination")
    th = threading.Thread(target=cb.start, args=(10,))
    th.start()
    ca.start(10)
    th.join()
    return ca, cb


def _fake_destination(chan, build, *, hello=None, loaded=None, replay_session=None):
    """Speaks the destination's side by hand, with the given messages."""
    nonce = protocol.new_nonce()
    chan.send_msg(tp.HELLO, hello if hello is not None
                  else {**migration.describe_destination(build), "session": nonce})
    try:
        kind, offer = chan.recv_msg(10)
    except tp.TransportError:
        return
    if kind != tp.OFFER:
        return
    total = 0
    while True:
        kind, payload = chan.recv(10)
        if kind != tp.DATA:
            break
        total += len(payload)
    msg = loaded if loaded is not None else {
        "filters": {"destination": "d", "nodes": 1, "applications": [], "chains": {}},
        "load": {}, "stream_bytes": total, "timings": {},
        "session": replay_session or offer["source_session"]}
    chan.send_msg(tp.LOADED, msg)
    try:
        kind, _ = chan.recv_msg(10)
    except tp.TransportError:
        return
    if kind == tp.COMMIT:
        chan.send_msg(tp.DONE, {"session": offer["source_session"]})


def _send_against(build, **fake):
    src, dst = _pair()
    th = threading.Thread(target=_fake_destination, args=(dst, build), kwargs=fake)
    th.start()
    paused, resumed = [], []
    try:
        res = migration.send(build, src, timeout=10, progress=False,
                             pause=lambda: paused.append(1), resume=lambda: resumed.append(1))
    finally:
        th.join(20)
        src.close()
        dst.close()
    return res, paused, resumed


def _good_loaded(**over):
    d = {"filters": {"destination": "d", "nodes": 1, "applications": [], "chains": {}},
         "load": {}, "stream_bytes": 1, "timings": {}, "session": "0" * 32}
    d.update(over)
    return d


@pytest.mark.parametrize("loaded, why", [
    (_good_loaded(filters={"destination": "d", "nodes": 1, "chains": {},
                           "applications": [{"path": 1}]}), r"LOADED\.filters\.applications"),
    (_good_loaded(filters=[]), r"LOADED\.filters must be a map"),
    (_good_loaded(timings={"x": "slow"}), r"LOADED\.timings"),
    (_good_loaded(stream_bytes=-1), r"LOADED\.stream_bytes"),
    (_good_loaded(extra=1), "unknown keys"),
], ids=["application-path-int", "filters-list", "timing-text", "negative-bytes", "extra-key"])
def test_a_malformed_loaded_resumes_the_source_before_commit(build, loaded, why):
    res, paused, resumed = _send_against(build, loaded=loaded)
    assert res.outcome == "resumed", res
    assert paused == [1] and resumed == [1]
    assert "malformed" in res.error and __import__("re").search(why, res.error), res.error


def test_a_loaded_from_another_session_is_refused(build):
    res, _, resumed = _send_against(build, replay_session="f" * 32)
    assert res.outcome == "resumed" and resumed == [1]
    assert "another session" in res.error


@pytest.mark.parametrize("hello", [
    {"protocol": migration.PROTOCOL},
    {"protocol": migration.PROTOCOL, "build": ["x"], "backend": "b", "plugins": {},
     "destination": {}, "filters": [], "session": "0" * 32},
    {"protocol": "2"},
], ids=["missing-keys", "build-list", "protocol-text"])
def test_a_malformed_hello_is_refused_before_pausing(build, hello):
    res, paused, _ = _send_against(build, hello=hello)
    assert res.outcome == "refused" and paused == []
    assert "HELLO" in res.error or "protocol" in res.error


def test_a_replayed_source_session_is_refused_by_the_destination(build, tmp_path):
    """The source's frames of one session, recorded and played to a new
    destination: its OFFER names the old destination's nonce."""
    src, dst = _pair()
    out: dict = {}

    def destination():
        out["res"] = migration.receive(build, dst, timeout=10, progress=False)

    th = threading.Thread(target=destination)
    th.start()
    kind, hello = src.recv_msg(10)
    assert kind == tp.HELLO and protocol.NONCE_RE.fullmatch(hello["session"])
    src.send_msg(tp.OFFER, {"protocol": migration.PROTOCOL, "build": "x", "backend": "y",
                            "plugins": {}, "session": "a" * 32, "source_session": "b" * 32,
                            "filtered_by": "destination"})
    th.join(20)
    src.close()
    dst.close()
    res = out["res"]
    assert res.outcome == "failed" and "another session" in res.error


def test_every_message_kind_is_declared():
    assert set(protocol.MESSAGES) == {n for k, n in tp.KIND_NAMES.items() if k != tp.DATA}


# -- files ---------------------------------------------------------------------------------------

def test_the_rendezvous_directory_and_frames_are_private(tmp_path):
    old = os.umask(0)
    try:
        rv = tmp_path / "rv"
        lst = tp.Listener(Address("file", path=str(rv)))
        assert files.mode_of(rv) == 0o700
        chan = lst.accept()
        chan.send_msg(tp.HELLO, {"x": 1})
        modes = {p.name: files.mode_of(p) for p in rv.iterdir()}
        assert modes and set(modes.values()) == {0o600}, modes
        chan.close()
    finally:
        os.umask(old)


def test_a_shared_rendezvous_directory_is_refused(tmp_path):
    rv = tmp_path / "rv"
    rv.mkdir()
    rv.chmod(0o777)
    with pytest.raises(tp.TransportError, match="lets others in"):
        tp.Listener(Address("file", path=str(rv)))


def test_a_symlink_planted_as_a_frame_is_not_followed(tmp_path):
    rv = tmp_path / "rv"
    lst = tp.Listener(Address("file", path=str(rv)))
    dchan = lst.accept()
    secret = tmp_path / "secret"
    secret.write_bytes(b"\x01\x00\x00\x00\x02{}")
    (rv / "s2d-00000001").symlink_to(secret)
    with pytest.raises(tp.ProtocolError, match="not a regular file|symbolic|Too many"):
        dchan.recv_msg(timeout=5)
    dchan.close()


def test_a_symlink_planted_where_a_frame_will_be_written_is_not_followed(tmp_path):
    rv = tmp_path / "rv"
    lst = tp.Listener(Address("file", path=str(rv)))
    dchan = lst.accept()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (rv / "d2s-00000001").symlink_to(victim)
    with pytest.raises((tp.TransportError, files.UnsafePath)):
        dchan.send_msg(tp.HELLO, {"x": 1})
    assert victim.read_text() == "keep"
    dchan.close()


def test_a_failed_output_leaves_the_old_file(tmp_path):
    out = tmp_path / "state.mt"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), files.atomic_output(out) as fp:
        fp.write(b"partial")
        raise RuntimeError("disk full")
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.mt"]


def test_outputs_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        files.write_atomic(tmp_path / "x", b"1")
    finally:
        os.umask(old)
    assert files.mode_of(tmp_path / "x") == 0o600


def test_save_and_dump_state_are_atomic_and_private(build, tmp_path, monkeypatch):
    from migtree import stream
    from migtree.commands import _migargs

    out = tmp_path / "dump.mt"
    _migargs.dump_state(build, str(out))
    assert files.mode_of(out) == 0o600 and stream.read_tree(out.read_bytes())
    good = out.read_bytes()

    def broken(*a, **k):
        a[1].write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stream, "save", broken)
    with pytest.raises(OSError):
        _migargs.dump_state(build, str(out))
    assert out.read_bytes() == good


# -- concurrent handshakes ---------------------------------------------------------------------

def _silent(addr: Address, n: int) -> list[socket.socket]:
    """n connections that never say a word (they stay open)."""
    out = []
    for _ in range(n):
        if addr.scheme == "unix":
            s = socket.socket(socket.AF_UNIX)
            s.connect(addr.path)
        else:
            s = socket.create_connection((addr.host, addr.port))
        out.append(s)
    return out


def _real_source(addr, got, **kw):
    try:
        chan = tp.connect(addr, timeout=60, **kw)
        got["local"] = chan.sock.getsockname()
        got["chan"] = chan
    except Exception as e:  # reported to the test
        got["error"] = e


@pytest.mark.parametrize("scheme", ["tcp", "unix", "tls"])
def test_silent_intruders_do_not_delay_the_real_source(scheme, short_tmp, certs, monkeypatch):
    """Before, each silent peer held the listener for HANDSHAKE_TIMEOUT, one
    after the other; with that set to an hour this test could not finish."""
    from test_transport import tls_pair

    monkeypatch.setattr(tp, "HANDSHAKE_TIMEOUT", 3600.0)
    server, client = tls_pair(certs) if scheme == "tls" else (None, None)
    addr = {"tcp": Address.parse("tcp:127.0.0.1:0"), "tls": Address.parse("tls:127.0.0.1:0"),
            "unix": Address("unix", path=str(short_tmp / "s.sock"))}[scheme]
    with tp.Listener(addr, tls=server, allow_plaintext=True) as lst:
        intruders = _silent(lst.address, 4)
        got: dict = {}
        kw = {"tls": client} if scheme == "tls" else {"allow_plaintext": True}
        th = threading.Thread(target=_real_source, args=(lst.address, got), kwargs=kw)
        th.start()
        try:
            chan = lst.accept(timeout=120)
        finally:
            th.join(60)
        assert "error" not in got, got
        if scheme != "unix":  # the winner is the real source, not an intruder
            assert chan.sock.getpeername() == got["local"]
        chan.close()
        got["chan"].close()
        for s in intruders:
            s.close()


def test_the_accept_deadline_is_kept_with_a_silent_peer_connected(monkeypatch):
    monkeypatch.setattr(tp, "HANDSHAKE_TIMEOUT", 3600.0)
    with tp.Listener(Address.parse("tcp:127.0.0.1:0"), allow_plaintext=True) as lst:
        intruders = _silent(lst.address, 2)
        with pytest.raises(tp.TransportError, match="no source connected within 1s"):
            lst.accept(timeout=1)
        for s in intruders:
            s.close()


def test_too_many_pending_handshakes_are_shed(monkeypatch):
    monkeypatch.setattr(tp, "MAX_PENDING_HANDSHAKES", 2)
    with tp.Listener(Address.parse("tcp:127.0.0.1:0"), allow_plaintext=True) as lst:
        intruders = _silent(lst.address, 5)
        with pytest.raises(tp.TransportError, match="no source connected"):
            lst.accept(timeout=2)
        assert sum("too many handshakes" in r for r in lst.refused) >= 1, lst.refused
        for s in intruders:
            s.close()


def test_an_output_to_a_device_or_pipe_is_written_in_place(tmp_path):
    """-o /dev/null must not rename a file over the device node."""
    with files.atomic_output("/dev/null") as fp:
        fp.write(b"x")
    assert Path("/dev/null").is_char_device()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    th = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    th.start()
    with files.atomic_output(fifo) as fp:
        fp.write(b"state")
    th.join(10)
    assert got == [b"state"] and fifo.is_fifo()
