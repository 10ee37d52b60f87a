"""QEMU's own scripts, from the ``qemu`` source package Debian publishes.

``scripts/vmstate-static-checker.py`` compares two ``-dump-vmstate`` dumps;
the tests run it beside ``migtree check`` on the same pairs.  It is not
committed here: :func:`static_checker` downloads the source package of a
Debian suite with ``apt-get source --download-only`` (a temporary sources
list naming ``deb-src`` for that suite, temporary lists and cache: the
host's apt configuration is neither used nor changed), takes the script out
of the upstream tarball and keeps it in a cache outside the work tree::

    $MIGTREE_QEMU_SOURCE_CACHE, else $XDG_CACHE_HOME/migtree/qemu-source
    (~/.cache/...)/<suite>/vmstate-static-checker.py  (+ .source: the package)

By hand::

    python tests/qemu/qemu_source.py [bookworm|trixie]   # prints the path

It needs ``apt-get`` and Debian's package registry; without them it raises
:class:`SourceUnavailable` saying why (the tests skip with that reason).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
#: Debian suite -> the QEMU version its ``qemu`` source package has
SUITES = {"bullseye": "5.2", "bookworm": "7.2", "trixie": "10.0"}
CHECKER = "scripts/vmstate-static-checker.py"


class SourceUnavailable(RuntimeError):
    """The source package cannot be had here; the message says why."""


def cache_dir() -> Path:
    explicit = os.environ.get("MIGTREE_QEMU_SOURCE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "migtree" / "qemu-source"


def _apt(args: list[str], tmp: Path, cwd: Path | None = None) -> None:
    opts = ["-o", f"Dir::Etc::SourceList={tmp / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={tmp / 'lists'}",
            "-o", f"Dir::Cache={tmp / 'cache'}",
            # the temporary directories belong to us, not to the _apt user
            "-o", "APT::Sandbox::User=root",
            "-qq"]
    proc = subprocess.run(["apt-get", *opts, *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SourceUnavailable(f"apt-get {' '.join(args)} failed (exit {proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-600:]}")


def _download(suite: str, tmp: Path) -> Path:
    """``apt-get source --download-only qemu`` of *suite* into ``tmp/dl``."""
    if shutil.which("apt-get") is None:
        raise SourceUnavailable("apt-get is not installed (a Debian host is needed to fetch "
                                "QEMU's source package)")
    for d in ("lists/partial", "cache/archives/partial", "dl"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    signed = f" [signed-by={KEYRING}]" if KEYRING.exists() else ""
    (tmp / "sources.list").write_text(f"deb-src{signed} {MIRROR} {suite} main\n")
    _apt(["update"], tmp)
    _apt(["source", "--download-only", "qemu"], tmp, cwd=tmp / "dl")
    return tmp / "dl"


def _extract(dl: Path, member_suffix: str) -> tuple[bytes, str]:
    """The bytes of the upstream tarball's member ending in
    *member_suffix*, and the package version (from the ``.dsc`` name)."""
    dscs = sorted(dl.glob("qemu_*.dsc"))
    origs = sorted(dl.glob("qemu_*.orig.tar.*"))
    if not dscs or not origs:
        raise SourceUnavailable(f"no qemu .dsc / .orig tarball in {dl}: "
                                f"{sorted(p.name for p in dl.iterdir())}")
    version = dscs[0].name[len("qemu_"):-len(".dsc")]
    with tarfile.open(origs[0], "r|*") as tar:
        for info in tar:
            if info.isfile() and info.name.endswith("/" + member_suffix):
                f = tar.extractfile(info)
                assert f is not None
                data = f.read()
                break
        else:
            raise SourceUnavailable(f"{origs[0].name} has no {member_suffix}")
    # Debian patches the upstream tree; the script must be as QEMU ships it
    # in that package, so refuse if a patch touches it rather than guess.
    for deb in dl.glob("qemu_*.debian.tar.*"):
        with tarfile.open(deb, "r|*") as tar:
            for info in tar:
                if info.isfile() and info.name.startswith("debian/patches/"):
                    f = tar.extractfile(info)
                    if f is not None and member_suffix.encode() in f.read():
                        raise SourceUnavailable(f"{deb.name}: {info.name} patches "
                                                f"{member_suffix}; not handled")
    return data, version


def static_checker(suite: str = "bookworm") -> Path:
    """The path of QEMU's ``vmstate-static-checker.py`` from Debian *suite*'s
    ``qemu`` source package, downloaded once into :func:`cache_dir`."""
    if suite not in SUITES:
        raise SourceUnavailable(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    out = cache_dir() / suite / "vmstate-static-checker.py"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():  # another process fetched it meanwhile
            return out
        with tempfile.TemporaryDirectory(prefix="migtree-qemu-source-") as tmp:
            data, version = _extract(_download(suite, Path(tmp)), CHECKER)
        part = out.with_suffix(".part")
        part.write_bytes(data)
        out.with_suffix(".source").write_text(
            f"Debian {suite} source package qemu {version}: {CHECKER}\n")
        part.rename(out)
    return out


def package_version(suite: str) -> str:
    """The Debian package version the cached script of *suite* came from."""
    text = (cache_dir() / suite / "vmstate-static-checker.source").read_text()
    m = re.search(r"source package qemu (\S+):", text)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    for name in sys.argv[1:] or ["bookworm"]:
        print(static_checker(name))
