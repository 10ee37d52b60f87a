"""A source/destination pair of builds on disk, the source run in this
process, and the reference outcome a build that never migrated produces.

The pair is the README's demo in small: a KVM source (userspace where
/dev/kvm cannot be opened) with a combined ``virtio-blk-pci``, a userspace
destination with ``virtio-pci`` + ``virtio-blk``, both on one disk image
(shared storage), 2 vCPUs, 4 MiB of guest RAM.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import attrs
from mig_helpers import state_bytes, write_build

from migtree import migration as M
from migtree.build import load_build
from migtree.plugins import get_registry
from migtree.transport import TransportError, connect

DISK_SIZE = 2 << 20
MEMORY = "4M"


def kvm_ok() -> bool:
    reg = get_registry()
    b = reg.backends.get("kvm")
    return b is not None and b.available()[0]


@attrs.define
class Pair:
    dir: Path
    src: Path
    dst: Path
    disk: Path
    ref_src: Path  # the source build on its own copy of the initial disk
    ref_dst: Path  # the destination build on its own copy of the initial disk
    workloads: str

    def disk_sha(self) -> str:
        return sha256(self.disk)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_pair(d: Path, *, src_backend: str = "kvm", cpus: int = 2) -> Pair:
    disk = d / "disk.img"
    M.pattern_image(disk, DISK_SIZE)
    combined = [{"type": "virtio-blk-pci", "id": "vblk0", "drive": "disk.img",
                 "serial": "t"}]
    split = [{"type": "virtio-pci", "id": "vblk0", "backend": "virtio-blk",
              "drive": "disk.img", "serial": "t"}]
    src = write_build(d, "src", backend=src_backend, cpus=cpus, memory=MEMORY,
                      devices=combined)
    dst = write_build(d, "dst", backend="userspace", cpus=cpus, memory=MEMORY, devices=split)
    refs = {}
    for name in ("ref-src", "ref-dst"):
        rd = d / name
        rd.mkdir()
        shutil.copyfile(disk, rd / "disk.img")
        shutil.copyfile(src if name == "ref-src" else dst, rd / "build.toml")
        refs[name] = rd / "build.toml"
    reg = get_registry()
    names = None
    for path in (src, dst):
        b = load_build(path, reg)
        got = {w.name for w in M.select_workloads(b, "auto")}
        names = got if names is None else names & got
        close(b)
    return Pair(d, src, dst, disk, refs["ref-src"], refs["ref-dst"],
                ",".join(sorted(names or ())) or "none")


def close(build: Any) -> None:
    """Give back a build's KVM file descriptors now (not at collection)."""
    try:
        from migtree_kvm.backend import accel_of
    except ImportError:
        return
    accel = accel_of(build.machine)
    if accel is not None:
        accel.close()


def norm(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


def reference(path: Path, workloads: str, seed: int, *, finish: bool = True) -> dict[str, Any]:
    """A build that never migrated: start (and finish) the workloads; its
    checks and disk digest."""
    b = load_build(path, get_registry())
    try:
        wls = M.select_workloads(b, workloads)
        M.run_workloads("start", b, wls, seed)
        if finish:
            M.run_workloads("finish", b, wls)
            return {"checks": norm(M.run_workloads("check", b, wls)),
                    "disk": sha256(path.parent / "disk.img")}
        return {"disk": sha256(path.parent / "disk.img"), "state": state_bytes(b)}
    finally:
        close(b)


class Source:
    """The source, run in this process so the test can look at it: the
    state it had when the migration began and after, and what the disk held
    when it paused and when it resumed."""

    def __init__(self, pair: Pair, seed: int = 3) -> None:
        self.pair = pair
        self.seed = seed
        self.build = load_build(pair.src, get_registry())
        self.workloads = M.select_workloads(self.build, pair.workloads)
        M.run_workloads("start", self.build, self.workloads, seed)
        self.before = state_bytes(self.build)
        self.paused = self.resumed = 0
        self.disk_at_pause: str | None = None
        self.disk_at_resume: str | None = None
        self.events: list[str] = []

    def _pause(self) -> None:
        self.paused += 1
        self.disk_at_pause = self.pair.disk_sha()

    def _resume(self) -> None:
        self.resumed += 1
        self.disk_at_resume = self.pair.disk_sha()

    def migrate(self, address: str, *, tls: Any = None, allow_plaintext: bool = False,
                timeout: float = 60, filter_side: str = "auto",
                precopy: M.PrecopyOptions | None = None) -> M.SourceResult:
        try:
            chan = connect(address, tls=tls, allow_plaintext=allow_plaintext, timeout=timeout)
        except TransportError as e:
            return M.SourceResult(outcome="refused", error=f"could not connect: {e}")
        with chan:
            return M.send(self.build, chan, timeout=timeout, pause=self._pause,
                          resume=self._resume, events=lambda n, **_: self.events.append(n),
                          progress=False, keep_dir=str(self.pair.dir),
                          filter_side=filter_side, precopy=precopy)

    def state(self) -> bytes:
        return state_bytes(self.build)

    def finish_here(self) -> dict[str, Any]:
        """The source runs on after a failed migration: finish the work."""
        M.run_workloads("finish", self.build, self.workloads)
        return {"checks": norm(M.run_workloads("check", self.build, self.workloads)),
                "disk": self.pair.disk_sha()}

    def close(self) -> None:
        close(self.build)
