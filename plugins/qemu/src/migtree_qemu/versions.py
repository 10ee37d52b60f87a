"""Other QEMU versions than the host's, from Debian's own packages.

QEMU only promises migration forward, so moving state between versions has
to be proven against the versions themselves.  Debian ships three that
matter to a fleet: 5.2 (Debian 11 "bullseye"), 7.2 (Debian 12 "bookworm")
and 10.0 (Debian 13 "trixie").  The host's package is used when its version
matches; the others are installed with ``mmdebstrap`` into a directory per
suite under a cache outside the work tree, and run *without* entering the
chroot: the chroot's own dynamic loader is started with the chroot's
library path, its firmware directories are passed with ``-L`` and its
module directory with ``QEMU_MODULE_DIR``.  So a QEMU 10.0 reads and writes
the caller's paths (sockets, disks, streams) exactly as the host's would,
and no mount or privilege is needed to run it.

Command line::

    python -m migtree_qemu.versions ensure 5.2 10.0   # build what is missing
    python -m migtree_qemu.versions list               # what is there

The cache directory is ``$MIGTREE_QEMU_CHROOTS``, else
``$XDG_CACHE_HOME/migtree/qemu-chroots`` (``~/.cache/...``).  Building a
chroot takes about 20 s and 350 MB per suite; it needs root (``mmdebstrap``
in its default mode) and Debian's package registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: QEMU version -> the Debian suite that ships it
SUITES: dict[str, str] = {"5.2": "bullseye", "7.2": "bookworm", "10.0": "trixie"}
VERSIONS: tuple[str, ...] = tuple(SUITES)
MIRROR = "http://deb.debian.org/debian"
#: what the chroot holds: the emulator (its Depends bring SeaBIOS, iPXE ROMs
#: and the data files); disks are made with the host's qemu-img (qcow2 v3
#: images are read by every version here)
PACKAGES = ("qemu-system-x86",)


class QemuVersionUnavailable(RuntimeError):
    """The QEMU version cannot be had here; the message says why."""


@dataclass(frozen=True)
class QemuBuild:
    """How to run one QEMU version: ``argv`` replaces ``qemu-system-x86_64``
    (and already carries the ``-L`` firmware options), ``env`` is added to
    the caller's environment."""

    version: str
    full_version: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    root: Path | None = None  # the chroot, None for the host's package

    def command(self, *args: str) -> list[str]:
        return [*self.argv, *args]

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}


def cache_dir() -> Path:
    explicit = os.environ.get("MIGTREE_QEMU_CHROOTS")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "migtree" / "qemu-chroots"


def _run_version(argv: list[str], env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(
            [*argv, "--version"], capture_output=True, text=True, timeout=60,
            env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QemuVersionUnavailable(f"{argv[0]} --version failed: {exc}") from exc
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", out.stdout)
    if out.returncode != 0 or not match:
        raise QemuVersionUnavailable(
            f"{' '.join(argv)} --version: exit {out.returncode}: {out.stderr.strip()[:300]}"
        )
    return ".".join(match.groups())


def _major_minor(full: str) -> str:
    return ".".join(full.split(".")[:2])


def host_build() -> QemuBuild | None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return None
    full = _run_version([qemu])
    return QemuBuild(_major_minor(full), full, (qemu,))


def _firmware_dirs(root: Path, loader: list[str], env: dict[str, str]) -> list[str]:
    """The chroot QEMU's compiled-in firmware path (``-L help``), each
    directory re-rooted in the chroot."""
    out = subprocess.run(
        [*loader, "-L", "help"], capture_output=True, text=True, timeout=60,
        env={**os.environ, **env}, stdin=subprocess.DEVNULL,
    )
    dirs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("/"):
            inside = root / line.lstrip("/")
            if inside.is_dir():
                dirs.append(str(inside))
    if not dirs:
        raise QemuVersionUnavailable(f"no firmware directory in {root}: {out.stdout!r}")
    return dirs


def _absolutise_links(directory: Path, root: Path) -> None:
    """Firmware directories hold absolute symlinks (``bios-256k.bin ->
    /usr/share/seabios/bios-256k.bin``) that would resolve to the host's
    files; point them into the chroot instead."""
    for path in directory.iterdir():
        if path.is_symlink():
            target = os.readlink(path)
            if target.startswith("/") and not target.startswith(str(root)):
                path.unlink()
                path.symlink_to(root / target.lstrip("/"))


#: where Debian's QEMU looks for its modules (compiled in, tried after
#: QEMU_MODULE_DIR)
HOST_MODULE_DIR = Path("/usr/lib/x86_64-linux-gnu/qemu")


def _isolate_modules(root: Path) -> list[str]:
    """A command prefix that hides the host's QEMU modules from the chroot's
    QEMU.  QEMU tries ``QEMU_MODULE_DIR`` first and then its compiled-in
    directory, so a module the chroot lacks (``ui-opengl.so`` when only the
    host has the OpenGL modules) is taken from the host's QEMU build, which
    QEMU refuses and ``-dump-vmstate`` aborts on.  A private mount namespace
    with the chroot's module directory bound over the host's fixes that;
    without the privilege for it, ``QEMU_MODULE_DIR`` alone is used (enough
    for every device that is not a module)."""
    chroot_modules = root / HOST_MODULE_DIR.relative_to("/")
    unshare = shutil.which("unshare")
    if not HOST_MODULE_DIR.is_dir() or not chroot_modules.is_dir() or unshare is None:
        return []
    prefix = [unshare, "--mount", "--", "sh", "-c",
              'mount --bind "$1" "$2" || exit 125; shift 2; exec "$@"',
              "migtree-qemu", str(chroot_modules), str(HOST_MODULE_DIR)]
    probe = subprocess.run([*prefix, "true"], capture_output=True, stdin=subprocess.DEVNULL)
    return prefix if probe.returncode == 0 else []


def chroot_build(version: str, root: Path) -> QemuBuild:
    lib = [root / "usr/lib/x86_64-linux-gnu", root / "lib/x86_64-linux-gnu"]
    ld = (root / "lib64/ld-linux-x86-64.so.2")
    ld_target = os.readlink(ld)
    ld_real = root / ld_target.lstrip("/") if ld_target.startswith("/") else (ld.parent / ld_target)
    loader = [str(ld_real.resolve()), "--library-path", ":".join(map(str, lib))]
    env = {"QEMU_MODULE_DIR": str(root / "usr/lib/x86_64-linux-gnu/qemu")}
    qemu = [*loader, str(root / "usr/bin/qemu-system-x86_64")]
    full = _run_version(qemu, env)
    if _major_minor(full) != version:
        raise QemuVersionUnavailable(f"{root} holds QEMU {full}, not {version}")
    firmware = _firmware_dirs(root, qemu, env)
    for d in firmware:
        _absolutise_links(Path(d), root)
    argv = _isolate_modules(root) + qemu
    for d in firmware:
        argv += ["-L", d]
    return QemuBuild(version, full, tuple(argv), env, root)


def _build_chroot(suite: str, root: Path) -> None:
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise QemuVersionUnavailable("mmdebstrap is not installed (Debian package mmdebstrap)")
    tmp = root.with_name(root.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run(
        [mmdebstrap, "--variant=apt", "--components=main",
         "--include=" + ",".join(PACKAGES), suite, str(tmp), MIRROR],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise QemuVersionUnavailable(
            f"mmdebstrap {suite} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
        )
    tmp.rename(root)


def find(version: str, build: bool = False) -> QemuBuild:
    """The QEMU of *version* ("5.2", "7.2", "10.0"): the host's package when
    it matches, else the cached chroot (built first when *build*).  Raises
    :class:`QemuVersionUnavailable` saying why it cannot be had."""
    if version not in SUITES:
        raise QemuVersionUnavailable(
            f"unknown QEMU version {version!r}; known: {', '.join(VERSIONS)}")
    host = host_build()
    if host is not None and host.version == version:
        return host
    root = cache_dir() / SUITES[version]
    if not root.is_dir():
        if not build:
            raise QemuVersionUnavailable(
                f"QEMU {version} is not built: run "
                f"`python -m migtree_qemu.versions ensure {version}` "
                f"(a Debian {SUITES[version]} chroot under {cache_dir()})"
            )
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.parent / f".{SUITES[version]}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not root.is_dir():
                _build_chroot(SUITES[version], root)
    return chroot_build(version, root)


@contextlib.contextmanager
def qmp_session(version: str) -> Iterator[Any]:
    """A QMP client of QEMU *version* started with no machine (``-machine
    none -S``), for asking it about itself; the process ends afterwards."""
    from .qmp import QMPClient

    build = find(version, build=True)
    sock = Path(tempfile.mkdtemp(prefix="qmp")) / "qmp.sock"
    proc = subprocess.Popen(
        [*build.argv, "-nodefaults", "-display", "none", "-machine", "none", "-S",
         "-qmp", f"unix:{sock},server=on,wait=off"],
        env=build.environ(), stdin=subprocess.DEVNULL)
    qmp = None
    try:
        qmp = QMPClient.connect(str(sock), timeout=60, process=proc)
        yield qmp
        qmp.execute("quit")
    finally:
        if qmp is not None:
            qmp.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(sock.parent, ignore_errors=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("ensure", "list"):
        print("usage: python -m migtree_qemu.versions ensure|list [VERSION ...]", file=sys.stderr)
        return 2
    wanted = argv[1:] or list(VERSIONS)
    status = 0
    for version in wanted:
        try:
            b = find(version, build=argv[0] == "ensure")
        except QemuVersionUnavailable as exc:
            print(f"{version}: unavailable: {exc}")
            status = 1
            continue
        where = b.root or "host package"
        print(f"{version}: QEMU {b.full_version} ({where})")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
