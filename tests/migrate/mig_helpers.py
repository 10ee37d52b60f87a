"""Helpers for the migration tests: build files, a destination process, a
fault-injecting proxy, and state comparisons.

Every wait here is bounded, and only as a guard against a hang: no test
asserts on how long anything took.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from migtree import stream
from migtree.migration import dump_toml

HERE = Path(__file__).parent
CHILD = HERE / "mig_child.py"
GUARD = 120  # seconds: a failure guard, never a measurement


def write_build(directory: Path, name: str, *, backend: str, cpus: int = 2,
                fallback: str | None = "userspace", memory: str | None = None,
                devices: list[dict[str, Any]] | None = None) -> Path:
    machine: dict[str, Any] = {"backend": backend, "cpus": cpus}
    if fallback and backend != fallback:
        machine["fallback"] = fallback
    if memory:
        machine["memory"] = memory
    config: dict[str, Any] = {"name": name, "machine": machine}
    if devices:
        config["device"] = devices
    path = directory / f"{name}.toml"
    path.write_text(dump_toml(config))
    return path


def migtree_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "migtree", *args]


def child_cmd(*args: str) -> list[str]:
    return [sys.executable, str(CHILD), *args]


class Proc:
    """A child process whose stdout/stderr go to files (no pipe can fill up)."""

    def __init__(self, cmd: list[str], workdir: Path, name: str,
                 env: dict[str, str] | None = None) -> None:
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        full_env = dict(os.environ)
        full_env.pop("MIGTREE_LOAD_PLUGINS", None)
        full_env.setdefault("MIGTREE_PROGRESS", "0")
        if env:
            full_env.update(env)
        with open(self.out, "wb") as o, open(self.err, "wb") as e:
            self.p = subprocess.Popen(cmd, stdout=o, stderr=e, env=full_env,
                                      cwd=str(workdir))

    def wait(self) -> int:
        try:
            return self.p.wait(GUARD)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError(f"process hung; stderr:\n{self.stderr}") from None

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def json(self) -> dict[str, Any]:
        text = self.stdout
        try:
            return json.loads(text)
        except ValueError:
            raise AssertionError(f"no JSON report on stdout:\n{text}\nstderr:\n{self.stderr}"
                                 ) from None

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def wait_for_file(path: Path, proc: Proc | None = None) -> str:
    deadline = time.monotonic() + GUARD
    while not path.exists():
        if proc is not None and proc.p.poll() is not None:
            raise AssertionError(f"process exited ({proc.p.returncode}) before {path} "
                                 f"appeared; stderr:\n{proc.stderr}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.01)
    return path.read_text().strip()


def wait_for_text(proc: Proc, text: str) -> bool:
    """Until ``text`` shows in the process's stderr (True) or the process
    exits without it (False); a bounded wait."""
    deadline = time.monotonic() + GUARD
    while text not in proc.stderr:
        if proc.p.poll() is not None:
            return text in proc.stderr
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared in stderr:\n{proc.stderr}")
        time.sleep(0.01)
    return True


def start_serve(build: Path, workdir: Path, listen: str, *extra: str, name: str = "dst",
                env: dict[str, str] | None = None,
                child: list[str] | None = None) -> tuple[Proc, str]:
    """A destination process (``child``: options for mig_child.py, which then
    runs it); returns it and the address it listens on. Its final state goes
    to ``NAME.final.mt``."""
    ready = workdir / f"{name}.ready"
    dump = workdir / f"{name}.final.mt"
    args = ["serve", str(build), "--listen", listen, "--ready-file", str(ready), "--json",
            "--dump-state", str(dump), "--timeout", "60", *extra]
    cmd = child_cmd(*child, "--", *args) if child is not None else migtree_cmd(*args)
    proc = Proc(cmd, workdir, name, env)
    return proc, wait_for_file(ready, proc)


def state_bytes(build: Any) -> bytes:
    return stream.save(build.root, registry=build.registry, build_name=build.name)


def tree_of(data_or_path: Any) -> dict[str, Any]:
    return stream.read_tree(data_or_path)[1]


def plain(tree: Any) -> Any:
    """A tree with blobs replaced by their digest, for ==."""
    if isinstance(tree, dict):
        return {k: plain(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [plain(v) for v in tree]
    if hasattr(tree, "sha256") and hasattr(tree, "iter_chunks"):
        return ("blob", len(tree), tree.sha256())
    return tree


# -- a proxy that breaks things -------------------------------------------------------------

class FaultProxy:
    """A unix-socket proxy between one source and one destination.

    ``cut_s2d=N``: forward the first N bytes from the source; when more
    arrive, drop them and close both connections (so a peer's write of byte
    N+1 succeeds, as when a link dies with data in flight). ``cut_d2s=N``:
    the same for the destination's bytes.
    ``flip_s2d=K``: flip the low bit of the source's byte K. Records every
    byte it forwarded (``s2d``, ``d2s``) so a clean run can locate frames.
    """

    def __init__(self, listen_path: Path, target_path: str, *, cut_s2d: int | None = None,
                 cut_d2s: int | None = None, flip_s2d: int | None = None,
                 drop_frame: tuple[str, int] | None = None) -> None:
        self.path = str(listen_path)
        self.target = target_path
        self.cut = {"s2d": cut_s2d, "d2s": cut_d2s}
        #: (direction, kind): cut just before the first frame of that kind,
        #: wherever it falls (frame sizes vary from run to run)
        self.drop_frame = drop_frame
        self._scan = {"s2d": 8, "d2s": 8}
        self.flip = flip_s2d
        self.data = {"s2d": bytearray(), "d2s": bytearray()}
        self.cut_happened = threading.Event()
        self._lsock = socket.socket(socket.AF_UNIX)
        self._lsock.bind(self.path)
        self._lsock.listen(1)
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"unix:{self.path}"

    def _run(self) -> None:
        self._lsock.settimeout(GUARD)
        try:
            src, _ = self._lsock.accept()
        except OSError:
            return
        dst = socket.socket(socket.AF_UNIX)
        dst.connect(self.target)
        self._socks = [src, dst]
        pumps = [threading.Thread(target=self._pump, args=(src, dst, "s2d"), daemon=True),
                 threading.Thread(target=self._pump, args=(dst, src, "d2s"), daemon=True)]
        for t in pumps:
            t.start()
        for t in pumps:
            t.join(GUARD)

    def _pump(self, a: socket.socket, b: socket.socket, direction: str) -> None:
        buf = self.data[direction]
        limit = self.cut[direction]
        try:
            while True:
                chunk = a.recv(65536)
                if not chunk:
                    with contextlib.suppress(OSError):
                        b.shutdown(socket.SHUT_WR)
                    return
                if self.drop_frame and self.drop_frame[0] == direction and limit is None:
                    limit = self._find_frame(bytes(buf) + chunk, direction)
                over = limit is not None and len(buf) + len(chunk) > limit
                if over:  # byte N+1 arrived: forward up to N, drop the rest, cut
                    chunk = chunk[: limit - len(buf)]
                if direction == "s2d" and self.flip is not None and \
                        len(buf) <= self.flip < len(buf) + len(chunk):
                    k = self.flip - len(buf)
                    chunk = chunk[:k] + bytes([chunk[k] ^ 0x01]) + chunk[k + 1:]
                with self._lock:
                    buf += chunk
                if chunk:
                    try:
                        b.sendall(chunk)
                    except OSError:
                        # b's end closed: so does a's writing side, as on a direct
                        # connection; the other direction goes on until it ends
                        with contextlib.suppress(OSError):
                            a.shutdown(socket.SHUT_RD)
                        return
                if over:
                    self._close_all()
                    return
        except OSError:
            self._close_all()

    def _find_frame(self, data: bytes, direction: str) -> int | None:
        import struct

        pos = self._scan[direction]
        while pos + 5 <= len(data):
            kind, length = struct.unpack(">BI", data[pos:pos + 5])
            if kind == self.drop_frame[1]:  # type: ignore[index]
                return pos
            pos += 5 + length
        self._scan[direction] = pos
        return None

    def _close_all(self) -> None:
        self.cut_happened.set()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._close_all()
        with contextlib.suppress(OSError):
            self._lsock.close()
        self._thread.join(GUARD)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def frames(data: bytes) -> list[tuple[int, int, int]]:
    """``(kind, start, end)`` of every frame in one direction's bytes (after
    the 8-byte preamble); ``end`` is exclusive and covers the payload."""
    import struct

    out = []
    pos = 8
    while pos + 5 <= len(data):
        kind, length = struct.unpack(">BI", data[pos:pos + 5])
        out.append((kind, pos, pos + 5 + length))
        pos += 5 + length
    return out


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
