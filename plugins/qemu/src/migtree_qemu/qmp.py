"""A small synchronous QMP client (QEMU Machine Protocol over a unix socket).

QMP is line-delimited JSON: the server greets with ``{"QMP": {...}}``, the
client negotiates with ``qmp_capabilities`` and then sends
``{"execute": NAME, "arguments": {...}}``; the server answers each command
with ``{"return": ...}`` or ``{"error": {"class": ..., "desc": ...}}`` and may
interleave asynchronous ``{"event": ...}`` messages, which are kept in
:attr:`QMPClient.events`.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any


class QMPError(Exception):
    """QEMU answered a command with an error, or the connection failed."""

    def __init__(self, message: str, error_class: str | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class


class QMPClient:
    """One QMP connection.  Use :meth:`connect` (which retries while QEMU
    creates the socket) or as a context manager."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self.greeting: dict[str, Any] | None = None
        self._sock: socket.socket | None = None
        self._buf = b""
        self._next_id = 0

    # -- connection -------------------------------------------------------
    @classmethod
    def connect(
        cls, path: str, timeout: float = 30.0, process: Any | None = None
    ) -> QMPClient:
        """Connect to QEMU's QMP socket at *path*, retrying until *timeout*.

        If *process* (a :class:`subprocess.Popen`) is given and exits before
        the socket answers, fail at once with its exit status.
        """
        client = cls(path, timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client._open()
                return client
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if process is not None and process.poll() is not None:
                    raise QMPError(
                        f"QEMU exited with status {process.returncode} before "
                        f"its QMP socket {path} answered"
                    ) from exc
                if time.monotonic() > deadline:
                    raise QMPError(f"no QMP socket at {path} after {timeout}s") from exc
                time.sleep(0.02)

    def _open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        greeting = self._read_message()
        # a QEMU still starting may emit an event (RESUME, as the guest
        # starts) on a monitor it accepted before it sends the greeting
        for _ in range(16):
            if "event" not in greeting or "QMP" in greeting:
                break
            self.events.append(greeting)
            greeting = self._read_message()
        if "QMP" not in greeting:
            raise QMPError(f"unexpected QMP greeting: {greeting!r}")
        self.greeting = greeting
        self.execute("qmp_capabilities")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> QMPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol ---------------------------------------------------------
    def _read_message(self) -> dict[str, Any]:
        assert self._sock is not None, "QMP connection is closed"
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QMPError("QMP connection closed by QEMU")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run *command* and return its ``return`` value; raise
        :class:`QMPError` if QEMU answers with an error."""
        assert self._sock is not None, "QMP connection is closed"
        self._next_id += 1
        msg_id = f"migtree-{self._next_id}"
        request: dict[str, Any] = {"execute": command, "id": msg_id}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\r\n")
        while True:
            reply = self._read_message()
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != msg_id:
                continue
            if "error" in reply:
                err = reply["error"]
                raise QMPError(
                    f"{command}: {err.get('desc')}", error_class=err.get("class")
                )
            return reply.get("return")

    def wait_until(
        self,
        command: str,
        predicate: Any,
        timeout: float = 60.0,
        interval: float = 0.02,
        **arguments: Any,
    ) -> Any:
        """Poll *command* until ``predicate(result)`` is true; return that
        result.  Raise :class:`QMPError` with the last result on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.execute(command, **arguments)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise QMPError(f"{command} did not reach the wanted state: {result!r}")
            time.sleep(interval)

    def wait_migration(self, timeout: float = 120.0) -> dict[str, Any]:
        """Poll ``query-migrate`` until the migration is over; return the
        final status, raising :class:`QMPError` if it failed."""
        result = self.wait_until(
            "query-migrate",
            lambda r: r.get("status") in ("completed", "failed", "cancelled"),
            timeout=timeout,
        )
        if result["status"] != "completed":
            raise QMPError(
                f"migration {result['status']}: {result.get('error-desc', result)}"
            )
        return result
