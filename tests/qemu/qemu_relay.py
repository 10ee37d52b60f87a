"""Live migrations between real QEMUs through ``migtree relay`` (and natively,
for comparison): used by test_qemu_relay.py and benchmarks/bench_relay.py.

A source QEMU runs a guest; a destination QEMU waits on ``-incoming
unix:DST`` (no ``-S``: it starts the guest once loaded); ``migtree relay``
runs as its own process (the real CLI) between ``unix:RELAY`` and
``unix:DST``; the source is told ``migrate unix:RELAY``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu_streams import QemuVM, StreamConfig, _build_of

MIGTREE = [sys.executable, "-m", "migtree"]


def short_dir() -> Path:
    """A short directory for unix sockets (paths are limited to 107 bytes),
    removed when the test process ends."""
    d = Path(tempfile.mkdtemp(prefix="rly"))
    atexit.register(shutil.rmtree, d, True)
    return d


def control_args(path: Path) -> list[str]:
    """A second QMP monitor for the relay (a QMP socket takes one client at
    a time, and the test holds the first)."""
    return ["-chardev", f"socket,id=relayqmp,path={path},server=on,wait=off",
            "-mon", "chardev=relayqmp,mode=control"]


def destination_args(cfg: StreamConfig, disk: Path | None, serial: Path | None,
                     incoming: str) -> list[str]:
    return cfg.args(disk, serial) + ["-incoming", incoming]


def start_relay(listen: str, to: str, target: Path, workdir: Path, *extra: str,
                ) -> tuple[subprocess.Popen, Path, Path]:
    """``migtree relay`` as a process; returns it once it listens (it
    connects to the destination first), with its stdout and stderr files."""
    out, err = workdir / "relay.out", workdir / "relay.err"
    proc = subprocess.Popen([*MIGTREE, "relay", "--listen", listen, "--to", to,
                             "--target", str(target), "--json", *extra],
                            stdout=open(out, "wb"), stderr=open(err, "wb"),
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while "listening on" not in err.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"migtree relay exited: {err.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("migtree relay did not start listening")
        time.sleep(0.05)
    return proc, out, err


class RecordingProxy:
    """A unix-socket pass-through that counts and hashes what goes one way:
    an observer of the bytes independent of the relay."""

    def __init__(self, listen_path: str, to_path: str) -> None:
        self.listen_path, self.to_path = listen_path, to_path
        self.digest = hashlib.sha256()
        self.size = 0
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(listen_path)
        self.sock.listen(1)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.sock.accept()
        out = socket.socket(socket.AF_UNIX)
        out.connect(self.to_path)
        try:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    break
                self.digest.update(data)
                self.size += len(data)
                out.sendall(data)
        except OSError:
            pass
        finally:
            out.close()
            conn.close()
            self.sock.close()

    def join(self, timeout: float = 120) -> None:
        self.thread.join(timeout)


def events(vm: QemuVM, name: str) -> list[dict[str, Any]]:
    """The QMP events *name* the VM has sent so far (read by a command)."""
    assert vm.qmp is not None
    vm.qmp.execute("query-status")
    return [e for e in vm.qmp.events if e.get("event") == name]


def event_time(e: dict[str, Any]) -> float:
    ts = e["timestamp"]
    return ts["seconds"] + ts["microseconds"] / 1e6


def wait_running(vm: QemuVM, timeout: float = 120) -> dict[str, Any]:
    assert vm.qmp is not None
    return vm.qmp.wait_until("query-status", lambda r: r.get("status") == "running",
                             timeout=timeout)


def wait_migration_end(vm: QemuVM, timeout: float = 300) -> dict[str, Any]:
    assert vm.qmp is not None
    return vm.qmp.wait_until("query-migrate",
                             lambda r: r.get("status") in ("completed", "failed", "cancelled"),
                             timeout=timeout, interval=0.05)


@dataclass
class Migration:
    """One live migration's measurements."""

    status: str
    downtime_ms: float  # destination RESUME - source STOP (QMP event timestamps)
    total_s: float  # source's query-migrate total-time
    transferred: int  # source's bytes sent
    relay: dict[str, Any] = field(default_factory=dict)
    relay_stderr: str = ""

    @property
    def throughput(self) -> float:
        return self.transferred / self.total_s if self.total_s else 0.0


def migrate(src: QemuVM, dst: QemuVM, uri: str, timeout: float = 600) -> tuple[dict, float]:
    """``migrate`` *uri* on the source; wait until it ends and the
    destination runs. Returns query-migrate and the downtime (ms)."""
    assert src.qmp is not None
    src.qmp.execute("migrate", uri=uri)
    info = wait_migration_end(src, timeout)
    if info["status"] != "completed":
        return info, float("nan")
    wait_running(dst)
    stop = events(src, "STOP")
    resume = events(dst, "RESUME")
    down = (event_time(resume[-1]) - event_time(stop[-1])) * 1e3 if stop and resume else 0.0
    return info, down


def qemu_vm(cfg: StreamConfig, args: list[str], workdir: Path, name: str) -> QemuVM:
    return QemuVM(args, workdir, name, build=_build_of(cfg.qemu))


def env_with_pythonpath() -> dict[str, str]:
    return dict(os.environ)


def parse_relay_json(out: Path) -> dict[str, Any]:
    text = out.read_text(errors="replace").strip()
    return json.loads(text) if text else {}


def filled_ram_args(size_mib: int, workdir: Path, fill: bool) -> list[str]:
    """Guest RAM as a memory backend named ``pc.ram`` (the RAM block the
    stream names): on the source (*fill*) a private mapping of a file of
    random bytes, so every page goes over the wire as data, not as a zero
    page; on the destination plain RAM of the same size."""
    if not fill:
        return ["-object", f"memory-backend-ram,id=pc.ram,size={size_mib}M",
                "-machine", "memory-backend=pc.ram"]
    path = workdir / f"ram-{size_mib}M.bin"
    if not path.exists() or path.stat().st_size != size_mib << 20:
        with open(path, "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(1 << 20))
    return ["-object", f"memory-backend-file,id=pc.ram,size={size_mib}M,mem-path={path},"
            "share=off", "-machine", "memory-backend=pc.ram"]
