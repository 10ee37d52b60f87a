"""The progress bar: on a terminal (a real pty here) for streams past the
threshold; silent otherwise."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import termios
import threading
import time

from migtree.progress import THRESHOLD, Progress


def _drive(p: Progress, total: int, step: int = 1 << 20) -> None:
    with p:
        for _ in range(0, total, step):
            p.update(step)


def test_silent_when_not_a_terminal(monkeypatch):
    monkeypatch.delenv("MIGTREE_PROGRESS", raising=False)
    out = io.StringIO()
    p = Progress("migrating", stream=out)
    _drive(p, 4 * THRESHOLD)
    assert out.getvalue() == "" and not p.enabled and p.count == 4 * THRESHOLD


class _Terminal:
    """A real pty; a thread reads what is written to it (so writes never
    block on a full buffer)."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        # a fresh pty is 0x0; a terminal a person looks at is not
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        self.tty = os.fdopen(self.slave, "w", closefd=False)
        self.chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)

    def close(self) -> str:
        """Everything written before; waits (bounded) until the reader has it."""
        self.tty.write("\n<end of test output>\n")
        self.tty.flush()
        deadline = time.monotonic() + 30
        while b"<end of test output>" not in b"".join(self.chunks):
            assert time.monotonic() < deadline, "the pty reader never saw the end mark"
            time.sleep(0.01)
        self.tty.close()
        os.close(self.slave)
        self._reader.join(30)
        os.close(self.master)
        text = b"".join(self.chunks).decode(errors="replace")
        return text.split("<end of test output>")[0].strip()


def test_bar_on_a_terminal_only_past_the_threshold(monkeypatch):
    monkeypatch.delenv("MIGTREE_PROGRESS", raising=False)
    term = _Terminal()
    small = Progress("small", stream=term.tty)
    _drive(small, THRESHOLD // 2, 1 << 16)
    assert small.enabled and not small.shown
    big = Progress("migrating", stream=term.tty)
    seen = False
    with big:
        for _ in range(0, 2 * THRESHOLD, 1 << 20):
            big.update(1 << 20)
            seen = seen or big.shown
    text = term.close()
    assert seen
    assert "migrating" in text and "small" not in text


def test_env_turns_it_off_even_on_a_terminal(monkeypatch):
    monkeypatch.setenv("MIGTREE_PROGRESS", "0")
    term = _Terminal()
    p = Progress("migrating", stream=term.tty)
    _drive(p, 2 * THRESHOLD)
    assert not p.enabled and not p.shown
    assert term.close() == ""


def test_precopy_status_is_drawn_after_the_bar(monkeypatch):
    monkeypatch.delenv("MIGTREE_PROGRESS", raising=False)
    term = _Terminal()
    p = Progress("pre-copy", stream=term.tty)
    with p:
        for _ in range(0, 2 * THRESHOLD, 1 << 20):
            p.update(1 << 20)
        assert p.shown
        p.status("pass 3, dirty 1.2 MB at 4.0 MB/s, link 90 MB/s")
    text = term.close()
    assert "pass 3, dirty 1.2 MB at 4.0 MB/s, link 90 MB/s" in text


def test_status_is_silent_without_a_bar(monkeypatch):
    monkeypatch.setenv("MIGTREE_PROGRESS", "0")
    term = _Terminal()
    p = Progress("pre-copy", stream=term.tty)
    p.status("pass 1")
    p.close()
    assert term.close() == ""
