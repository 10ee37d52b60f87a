"""The one file policy for everything migtree writes (docs/security.md).

A VM's state -- guest RAM included -- is in every stream, frame and state
file migtree writes, so:

* every file it creates is **private**: mode :data:`FILE_MODE` (0600), every
  directory it creates :data:`DIR_MODE` (0700), whatever the umask;
* every file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under a fresh
  temporary name in the destination's own directory, so a symlink or a file
  planted there is never followed or overwritten;
* every output is **atomic**: written in full to that temporary file, flushed,
  then renamed over the destination; a failed write removes the temporary
  file and leaves the old file (if any) as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import MigtreeError

FILE_MODE = 0o600
DIR_MODE = 0o700
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class UnsafePath(MigtreeError):
    """A path migtree refuses to write through (a symlink, or a directory
    others can write to or read from)."""


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, sync: bool = False) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content to; renamed over ``path``
    when the block ends without an exception, removed otherwise."""
    path = Path(path)
    if path.is_symlink():
        raise UnsafePath(f"{path}: is a symbolic link; migtree does not write through one")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        # a device or a pipe (-o /dev/null, a FIFO): written in place -- renaming
        # a file over it would replace the device node itself
        with open(path, "wb", opener=lambda n, f: os.open(n, os.O_WRONLY | os.O_NOFOLLOW)
                  ) as fp:
            yield fp
        return
    tmp = _temp_name(path)

    def opener(name: str, _flags: int) -> int:
        fd = os.open(name, _CREATE, FILE_MODE)
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        return fd

    # opened by name (fp.name is the temporary path: a writer may read back
    # what it wrote, as the QEMU format does)
    fp = open(tmp, "wb", opener=opener)
    try:
        with fp:
            yield fp
            fp.flush()
            if sync:
                os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """``path`` gets exactly ``data`` (private, atomic, no symlink followed)."""
    with atomic_output(path) as fp:
        fp.write(data)


def private_dir(path: str | os.PathLike[str], *, create: bool = True) -> Path:
    """``path`` as a private directory: created with mode 0700, or, when it
    exists, checked to be a real directory (not a symlink) owned by this user
    that nobody else can enter or write to."""
    path = Path(path)
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, DIR_MODE)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UnsafePath(f"{path}: no such directory") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path}: not a directory (or a symbolic link to one)")
    if st.st_uid != os.getuid():
        raise UnsafePath(f"{path}: owned by uid {st.st_uid}, not by this user")
    if st.st_mode & 0o077:
        raise UnsafePath(f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets others in; "
                         "migtree needs a private directory (chmod 700)")
    return path


def open_nofollow(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open an existing file in a rendezvous directory for reading, refusing
    a symbolic link there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePath(f"{path}: is a symbolic link; migtree does not follow one "
                             "there") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{path}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def mode_of(path: Any) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)
