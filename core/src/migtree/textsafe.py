"""Terminal-safe rendering of text that comes from a stream or a peer.

Build names, paths, error texts and every other string a stream or a
migration peer chooses reach human output through :func:`safe`: control
characters (C0, DEL, C1 -- escape sequences included) and the Unicode
direction overrides become visible escapes (``\\x1b``, ``\\n``,
``\\u202e``), so no input can clear the screen, move the cursor or forge a
line of a report. ``--json`` output is left exact (JSON escapes what it must).
"""

from __future__ import annotations

import re
from typing import Any

# C0 (including newline and tab), DEL, C1, and bidi overrides/isolates
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    if c == "\n":
        return "\\n"
    if c == "\t":
        return "\\t"
    if c == "\r":
        return "\\r"
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def safe(text: Any) -> str:
    """``text`` (made a string) with every control character escaped."""
    s = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_escape, s)


def safe_lines(text: Any, indent: str = "    ") -> str:
    """Like :func:`safe`, but a newline stays a line break, each following
    line indented by ``indent`` (a multi-line error stays readable and cannot
    pass for a top-level line)."""
    s = text if isinstance(text, str) else str(text)
    return ("\n" + indent).join(safe(line) for line in s.split("\n"))


def safe_tree(value: Any) -> Any:
    """A copy of a JSON-like report with every string (keys included)
    passed through :func:`safe`, for rendering as text."""
    if isinstance(value, str):
        return safe(value)
    if isinstance(value, dict):
        return {safe(k) if isinstance(k, str) else k: safe_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe_tree(v) for v in value]
    return value


def safe_block(text: Any) -> str:
    """A rendered multi-line text with each line's control characters
    escaped (its own line breaks kept)."""
    s = text if isinstance(text, str) else str(text)
    return "\n".join(safe(line) for line in s.split("\n"))


class SafeWriter:
    """A text stream's ``write`` through :func:`safe_block`: for a command
    that composes its report line by line from what a stream or a peer
    named (each line's control characters escaped, its own breaks kept)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(safe_block(text))
