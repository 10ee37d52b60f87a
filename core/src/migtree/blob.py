"""Large binary values (guest RAM, disk buffers) kept out of the CBOR items.

On the wire a blob is a run of chunk sections (see docs/wire-format.md); in
the state tree it is a :class:`Blob`, whose bytes live in a spooled temporary
file once they pass :data:`SPOOL_LIMIT`, so reading a stream with 256 MiB of
guest RAM does not hold 256 MiB of Python bytes.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator

#: bytes kept in memory before a blob spills to a temporary file
SPOOL_LIMIT = 8 << 20
#: default chunk size on the wire
CHUNK_SIZE = 1 << 20


class Blob:
    """An append-only byte container that reads back in chunks."""

    def __init__(self, data: bytes = b"") -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_LIMIT)
        self._size = 0
        if data:
            self.append(data)

    @classmethod
    def from_chunks(cls, chunks: Iterator[bytes] | list[bytes]) -> Blob:
        blob = cls()
        for c in chunks:
            blob.append(c)
        return blob

    def append(self, data: bytes) -> None:
        self._file.seek(0, 2)
        self._file.write(data)
        self._size += len(data)

    def __len__(self) -> int:
        return self._size

    def iter_chunks(self, size: int = CHUNK_SIZE) -> Iterator[bytes]:
        offset = 0
        while offset < self._size:
            self._file.seek(offset)
            chunk = self._file.read(min(size, self._size - offset))
            offset += len(chunk)
            yield chunk

    def read(self) -> bytes:
        """All bytes at once: for small blobs and tests only."""
        return b"".join(self.iter_chunks())

    def sha256(self) -> str:
        h = hashlib.sha256()
        for c in self.iter_chunks():
            h.update(c)
        return h.hexdigest()

    def __eq__(self, other: object) -> bool:
        if not hasattr(other, "iter_chunks") or not hasattr(other, "__len__"):
            return NotImplemented
        if len(self) != len(other):  # type: ignore[arg-type]
            return False
        return self.sha256() == _sha256_of(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Blob {self._size} bytes>"

    def close(self) -> None:
        self._file.close()


def _sha256_of(source: object) -> str:
    h = hashlib.sha256()
    for c in source.iter_chunks():  # type: ignore[attr-defined]
        h.update(c)
    return h.hexdigest()
