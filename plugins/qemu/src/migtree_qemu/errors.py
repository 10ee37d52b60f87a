"""Exceptions raised while reading or writing QEMU migration streams.

Every error says *where*: the section (QEMU idstr, section id, instance
id), the field path inside it, and the byte offset in the stream.
"""

from __future__ import annotations

try:  # with the migtree core installed, the CLI reports these like its own
    from migtree.errors import StreamError as _Base
except ImportError:  # the codec works without the core
    _Base = Exception  # type: ignore[misc, assignment]


class QemuStreamError(_Base):
    """A QEMU stream could not be read or written.

    A :class:`migtree.errors.StreamError` when the migtree core is
    installed, so ``migtree`` commands report it without a traceback.

    :ivar offset: byte offset in the stream where the problem was found
    :ivar section: the section's idstr (``"apic"``, ``"0000:00:02.0/virtio-blk"``,
        ``"ram"``), or None outside a section
    :ivar field: the field path inside the section (``"env.regs[3]"``,
        ``"apic/timer.timer_expiry"``), or None
    """

    def __init__(
        self,
        message: str,
        *,
        offset: int | None = None,
        section: str | None = None,
        section_id: int | None = None,
        instance_id: int | None = None,
        field: str | None = None,
        path: str | None = None,
    ) -> None:
        self.reason = message
        self.path = path
        self.offset = offset
        self.section = section
        self.section_id = section_id
        self.instance_id = instance_id
        self.field = field
        Exception.__init__(self, self._format())

    def _format(self) -> str:
        where = []
        if self.section is not None:
            s = f"section {self.section!r}"
            extra = []
            if self.section_id is not None:
                extra.append(f"section_id {self.section_id}")
            if self.instance_id is not None:
                extra.append(f"instance {self.instance_id}")
            if extra:
                s += f" ({', '.join(extra)})"
            where.append(s)
        if self.field is not None:
            where.append(f"field {self.field!r}")
        if self.offset is not None:
            where.append(f"byte offset {self.offset} (0x{self.offset:x})")
        if not where:
            return self.reason
        return f"{self.reason} [{', '.join(where)}]"


class QemuTruncatedError(QemuStreamError):
    """The stream ends before the structure it announces is complete."""


class QemuBadMagicError(QemuStreamError):
    """The stream does not start with the ``QEVM`` magic."""


class QemuVersionError(QemuStreamError):
    """A version the reader (or the destination QEMU's schema) does not
    accept: the file format version, a RAM section version, or a section /
    subsection version outside ``[minimum_version_id, version_id]``."""


class QemuUnknownSectionTypeError(QemuStreamError):
    """A section type byte that QEMU does not define."""


class QemuFooterError(QemuStreamError):
    """A section footer (``0x7e`` + section id) is missing or names another
    section."""


class QemuVmdescMismatchError(QemuStreamError):
    """The JSON description at the end of the stream disagrees with the
    bytes (a section, field size, subsection, or version that does not
    match what is there)."""


class QemuUnknownSubsectionError(QemuStreamError):
    """A subsection that the description (or the destination schema) does
    not know."""


class QemuUnsupportedError(QemuStreamError):
    """A valid stream feature this reader does not implement (compressed
    pages, RDMA hooks, iterable sections other than RAM...)."""


class QemuEncodeError(QemuStreamError):
    """A decoded stream (possibly edited) cannot be written back: a value
    out of range for its field, a wrong type, a skipped RAM section."""
