"""A progress bar for streams larger than a few MB, on a terminal only.

We use tqdm: one small pure-Python dependency with nothing below it, and it
writes to stderr, which is where a CLI's progress belongs (stdout stays
clean for ``--json``). The bar appears only when stderr is a terminal and
the stream has passed :data:`THRESHOLD` bytes (or is known to be larger);
otherwise every call is a no-op, so scripts, pipes and tests see nothing.
``MIGTREE_PROGRESS=0`` turns it off, ``=1`` forces it on (for a demo in a
pager, or tests of the bar itself).
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

#: streams smaller than this never show a bar
THRESHOLD = 4 << 20


def wanted(stream: TextIO | None = None) -> bool:
    """Whether a bar may be shown on ``stream`` (default stderr)."""
    env = os.environ.get("MIGTREE_PROGRESS", "").strip().lower()
    if env in ("0", "no", "false", "off"):
        return False
    if env in ("1", "yes", "true", "on"):
        return True
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Counts bytes; draws a tqdm bar once there are enough of them.

    ``total`` may be ``None`` (unknown: the bar shows bytes and a rate).
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, desc: str, total: int | None = None, *,
                 stream: TextIO | None = None, threshold: int = THRESHOLD) -> None:
        self.desc = desc
        self.total = total
        self.count = 0
        self.stream = stream if stream is not None else sys.stderr
        self.threshold = threshold
        self.enabled = wanted(self.stream)
        self._bar: Any = None

    def update(self, n: int) -> None:
        self.count += n
        if not self.enabled:
            return
        if self._bar is None:
            big = self.count >= self.threshold or (self.total or 0) >= self.threshold
            if not big:
                return
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit="B", unit_scale=True,
                             unit_divisor=1024, file=self.stream, leave=False,
                             dynamic_ncols=True)
            self._bar.update(self.count)
            return
        self._bar.update(n)

    def status(self, text: str) -> None:
        """A few words after the bar (pre-copy: pass, dirty rate, bandwidth)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)  # passes are rare: draw now

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CountingReader:
    """Wraps a binary file object; reports every read to a :class:`Progress`."""

    def __init__(self, fp: Any, progress: Progress) -> None:
        self.fp = fp
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.fp.read(n)
        self.progress.update(len(data))
        return data

    def readinto(self, b: Any) -> int:
        k = self.fp.readinto(b)
        self.progress.update(k or 0)
        return k

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fp, name)


class CountingWriter:
    """Wraps a binary file object; reports every write to a :class:`Progress`."""

    def __init__(self, fp: Any, progress: Progress) -> None:
        self.fp = fp
        self.progress = progress
        self.count = 0

    def write(self, data: Any) -> int:
        k = self.fp.write(data)
        n = len(data) if k is None else k
        self.count += n
        self.progress.update(n)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fp, name)
