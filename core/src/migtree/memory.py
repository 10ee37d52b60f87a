"""Guest memory: the machine's RAM, as devices see it by guest-physical address.

:class:`GuestMemory` is an anonymous ``mmap`` of the guest's RAM size. Every
access is bounds-checked against that size, so a guest that points a device
at an address outside its RAM gets a :class:`GuestMemoryError` (which the
device turns into its own error behaviour, e.g. virtio's ``NEEDS_RESET``),
never a read of host memory and never a Python ``IndexError`` from deep
inside a device model.

:class:`GuestMemoryObject` (type ``guest-memory``) is the object that carries
the contents through a migration: its state is a :func:`migtree.fields.blob`
written straight from the mapping in chunks and loaded back chunk by chunk,
so neither side ever holds the RAM as one Python ``bytes``.

A build installs both with :func:`install`::

    mem = install(machine, parse_size("16M"))    # machine.memory is mem
    mem.write(0x1000, b"hello"); mem.read_u32(0x1000)
"""

from __future__ import annotations

import mmap
import re
import struct
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from .blob import CHUNK_SIZE
from .errors import MigtreeError
from .fields import blob, u64
from .qom import Object

PAGE_SIZE = 4096
PAGE_SHIFT = 12
_DIRTY_RUN = re.compile(rb"[^\x00]+")

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestMemoryError(MigtreeError):
    """An access outside guest RAM, or RAM that does not fit a load."""

    def __init__(self, message: str, *, gpa: int | None = None, length: int | None = None):
        self.gpa = gpa
        self.length = length
        super().__init__(message)


def parse_size(text: str | int) -> int:
    """``"16M"``, ``"1G"``, ``"4096"``, ``"64KiB"`` -> bytes (binary units)."""
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"memory size must be positive, got {text}")
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse memory size {text!r} (use e.g. 16M, 1G, 65536)")
    n = int(m[1]) << (10 * " KMGT".index(m[2].upper() or " "))
    if n <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return n


class GuestMemory:
    """``size`` bytes of zero-filled guest RAM backed by an anonymous mapping.

    Only touched pages cost host memory. Addresses are guest-physical and
    start at 0; every method checks ``0 <= gpa`` and ``gpa + n <= size``.
    """

    def __init__(self, size: int) -> None:
        if type(size) is not int or size <= 0:
            raise ValueError(f"guest memory size must be a positive int, got {size!r}")
        if size % PAGE_SIZE:
            raise ValueError(f"guest memory size must be a multiple of {PAGE_SIZE}, got {size}")
        self._size = size
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        #: one byte per page while a pre-copy migration tracks writes, else
        #: None (no cost on the write path beyond one attribute test)
        self._dirty: bytearray | None = None
        self._dirty_lock = threading.Lock()

    # -- bounds ---------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return self._size

    def contains(self, gpa: int, n: int = 1) -> bool:
        """Whether ``[gpa, gpa + n)`` lies inside guest RAM."""
        return type(gpa) is int and type(n) is int and 0 <= gpa and 0 <= n \
            and gpa + n <= self._size

    def check(self, gpa: int, n: int) -> None:
        if type(gpa) is int and type(n) is int and 0 <= gpa and 0 <= n \
                and gpa + n <= self._size:
            return
        if type(gpa) is not int or type(n) is not int:
            raise TypeError(f"guest address and length must be ints, got {gpa!r}, {n!r}")
        raise GuestMemoryError(
            f"guest access of {n} bytes at {gpa:#x} is outside guest memory "
            f"(0x0..{self._size:#x})", gpa=gpa, length=n)

    # -- bytes ------------------------------------------------------------------
    def read(self, gpa: int, n: int) -> bytes:
        self.check(gpa, n)
        return self._map[gpa:gpa + n]

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        self.check(gpa, n)
        self._map[gpa:gpa + n] = data
        if self._dirty is not None:
            self.mark_dirty(gpa, n)

    def fill(self, gpa: int, n: int, byte: int = 0) -> None:
        self.check(gpa, n)
        pos = gpa
        end = gpa + n
        block = bytes([byte]) * min(n, CHUNK_SIZE)
        while pos < end:
            k = min(len(block), end - pos)
            self._map[pos:pos + k] = block[:k]
            pos += k
        if self._dirty is not None:
            self.mark_dirty(gpa, n)

    def view(self, gpa: int, n: int) -> memoryview:
        """A zero-copy window on ``[gpa, gpa + n)`` for scatter/gather I/O
        (``os.preadv`` straight into guest RAM). Release it when done: an
        exported view keeps the mapping from being closed.

        A write through the view is DMA the dirty log cannot see: the range
        is marked dirty here, and a device that writes through the view must
        call :meth:`mark_dirty` again once the write is done (a pass may have
        copied the page between this call and the write)."""
        self.check(gpa, n)
        if self._dirty is not None:
            self.mark_dirty(gpa, n)
        return memoryview(self._map)[gpa:gpa + n]

    # -- little-endian integers ----------------------------------------------------
    def read_u8(self, gpa: int) -> int:
        self.check(gpa, 1)
        return self._map[gpa]

    def read_u16(self, gpa: int) -> int:
        self.check(gpa, 2)
        return _U16.unpack_from(self._map, gpa)[0]

    def read_u32(self, gpa: int) -> int:
        self.check(gpa, 4)
        return _U32.unpack_from(self._map, gpa)[0]

    def read_u64(self, gpa: int) -> int:
        self.check(gpa, 8)
        return _U64.unpack_from(self._map, gpa)[0]

    def write_u8(self, gpa: int, value: int) -> None:
        self.check(gpa, 1)
        if not 0 <= value <= 0xFF:
            raise ValueError(f"{value} does not fit u8")
        self._map[gpa] = value
        if self._dirty is not None:
            self.mark_dirty(gpa, 1)

    def write_u16(self, gpa: int, value: int) -> None:
        self.check(gpa, 2)
        _pack(_U16, self._map, gpa, value, "u16")
        if self._dirty is not None:
            self.mark_dirty(gpa, 2)

    def write_u32(self, gpa: int, value: int) -> None:
        self.check(gpa, 4)
        _pack(_U32, self._map, gpa, value, "u32")
        if self._dirty is not None:
            self.mark_dirty(gpa, 4)

    def write_u64(self, gpa: int, value: int) -> None:
        self.check(gpa, 8)
        _pack(_U64, self._map, gpa, value, "u64")
        if self._dirty is not None:
            self.mark_dirty(gpa, 8)

    def unpack(self, st: struct.Struct, gpa: int) -> tuple[Any, ...]:
        """``st.unpack_from`` at ``gpa``, bounds-checked (a descriptor, a ring entry)."""
        self.check(gpa, st.size)
        return st.unpack_from(self._map, gpa)

    def pack(self, st: struct.Struct, gpa: int, *values: Any) -> None:
        """``st.pack_into`` at ``gpa``, bounds-checked."""
        self.check(gpa, st.size)
        try:
            st.pack_into(self._map, gpa, *values)
        except struct.error as e:
            raise ValueError(f"cannot pack {values!r}: {e}") from None
        if self._dirty is not None:
            self.mark_dirty(gpa, st.size)

    # -- dirty log (pre-copy migration) ---------------------------------------------
    # Why here and not in the kernel: this kernel has no soft-dirty bits
    # (CONFIG_MEM_SOFT_DIRTY: /proc/PID/pagemap never shows bit 55), a
    # userfaultfd write-protect handler cannot run in Python while the
    # faulting thread holds the GIL, and KVM's dirty log sees only vCPU
    # writes to a memslot -- no build maps this RAM into a KVM VM; every
    # write to it is made by device models and workloads through this class.
    # So this class is the one write path, and it keeps the log itself, as
    # QEMU marks DMA writes with memory_region_set_dirty.

    @property
    def dirty_logging(self) -> bool:
        return self._dirty is not None

    def start_dirty_log(self) -> None:
        """Track writes from now on, starting with every page dirty (so the
        first pass of a pre-copy sends all of RAM)."""
        with self._dirty_lock:
            if self._dirty is not None:
                raise GuestMemoryError("guest memory is already being tracked by another "
                                       "migration")
            self._dirty = bytearray(b"\x01") * (self._size >> PAGE_SHIFT)

    def stop_dirty_log(self) -> None:
        self._dirty = None

    def mark_dirty(self, gpa: int, n: int) -> None:
        """Record that ``[gpa, gpa + n)`` was written (device DMA through a
        :meth:`view` calls this after the write). No-op when not tracking."""
        dirty = self._dirty
        if dirty is None or n <= 0:
            return
        first, last = gpa >> PAGE_SHIFT, (gpa + n - 1) >> PAGE_SHIFT
        if first == last:
            dirty[first] = 1
        else:
            dirty[first:last + 1] = b"\x01" * (last + 1 - first)

    def dirty_pages(self) -> int:
        """How many pages are dirty now (0 when not tracking)."""
        dirty = self._dirty
        return 0 if dirty is None else (len(dirty) - dirty.count(0))

    def dirty_runs(self, max_pages: int) -> list[tuple[int, int]]:
        """The dirty pages now, as ``(gpa, length)`` runs of at most
        ``max_pages`` pages each, ascending. Bits are not cleared: the
        caller clears each run just before it copies it
        (:meth:`take_dirty`)."""
        dirty = self._dirty
        if dirty is None:
            return []
        out = []
        for m in _DIRTY_RUN.finditer(bytes(dirty)):
            a, b = m.span()
            for start in range(a, b, max_pages):
                k = min(max_pages, b - start)
                out.append((start << PAGE_SHIFT, k << PAGE_SHIFT))
        return out

    def take_dirty(self, gpa: int, n: int) -> bytes:
        """Clear the dirty bits of ``[gpa, gpa + n)`` (page-aligned), then
        copy its contents. Clearing first is what makes this safe against a
        writer running meanwhile: writers mark *after* writing, so a write
        either landed before this copy or leaves its bit set for the next
        pass."""
        self.check(gpa, n)
        dirty = self._dirty
        if dirty is not None:
            first, count = gpa >> PAGE_SHIFT, n >> PAGE_SHIFT
            dirty[first:first + count] = bytes(count)
        return self._map[gpa:gpa + n]

    def write_pages(self, gpa: int, data: bytes | memoryview) -> None:
        """Pages received by a pre-copy pass (bounds- and alignment-checked)."""
        if gpa % PAGE_SIZE or len(data) % PAGE_SIZE:
            raise GuestMemoryError(f"a page run at {gpa:#x} of {len(data)} bytes is not "
                                   f"page-aligned", gpa=gpa, length=len(data))
        self.write(gpa, data)

    def adopt(self, other: GuestMemory) -> None:
        """Take ``other``'s contents by swapping mappings (O(1): what a
        pre-copied destination does at load instead of copying its RAM);
        ``other`` gets this one's old mapping."""
        if other._size != self._size:
            raise GuestMemoryError(f"cannot adopt {other._size} bytes into {self._size}")
        self._map, other._map = other._map, self._map

    # -- migration --------------------------------------------------------------------
    def iter_chunks(self, size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The whole RAM, ``size`` bytes at a time, straight from the mapping."""
        if size <= 0:
            raise ValueError("chunk size must be positive")
        for off in range(0, self._size, size):
            yield self._map[off:min(off + size, self._size)]

    def load_chunks(self, chunks: Iterable[bytes]) -> int:
        """Copy ``chunks`` into RAM from address 0 on, one chunk at a time.
        The total must equal :attr:`size`; the caller checks that first when it
        must not leave RAM half-written (see :meth:`GuestMemoryObject.post_load`)."""
        pos = 0
        for chunk in chunks:
            n = len(chunk)
            if pos + n > self._size:
                raise GuestMemoryError(
                    f"incoming guest memory is larger than this build's {self._size} bytes")
            self._map[pos:pos + n] = chunk
            pos += n
        if pos != self._size:
            raise GuestMemoryError(
                f"incoming guest memory has {pos} bytes, this build has {self._size}")
        return pos

    def close(self) -> None:
        self._map.close()

    @property
    def closed(self) -> bool:
        return self._map.closed

    def __repr__(self) -> str:
        return f"<GuestMemory {self._size:#x} bytes>"


def _pack(st: struct.Struct, buf: Any, gpa: int, value: int, kind: str) -> None:
    try:
        st.pack_into(buf, gpa, value)
    except struct.error:
        raise ValueError(f"{value!r} does not fit {kind}") from None


@attrs.define
class GuestMemoryState:
    size: int = u64(doc="guest RAM size in bytes; source and destination must agree")
    ram: Any = blob(doc="the RAM contents, written from the mapping in chunks")


class GuestMemoryObject(Object):
    """The machine's RAM as a migratable object (``/machine/ram`` by default).

    Its ``post_load`` validates the size before it writes a byte, then copies
    the incoming :class:`migtree.blob.Blob` into the mapping chunk by chunk.
    Guest RAM cannot be given back if a *later* ``post_load`` fails, so
    :func:`install` adds this object as the machine's last child: the core's
    load runs ``post_load`` in composition order, so RAM is written after
    every device accepted its state.
    """

    TYPE = "guest-memory"
    PARENT = "object"
    ABSTRACT = False
    STATE = GuestMemoryState
    VERSION = 1
    MIN_VERSION = 1
    DESCRIPTION = "guest RAM (mmap-backed), migrated in chunks"

    def __init__(self, size: int | str = 0, memory: GuestMemory | None = None) -> None:
        super().__init__()
        if memory is None:
            memory = GuestMemory(parse_size(size))
        self.memory = memory
        self.state.size = memory.size
        #: set by a pre-copy migration while it writes the final stream: the
        #: destination already holds the RAM (sent page by page), so the
        #: stream carries an empty ``ram`` (docs/wire-format.md, "Pre-copy")
        self.precopied = False

    # the object stands for its RAM: ``machine.memory.read(...)`` works whether
    # the build set ``machine.memory`` to this object or to its GuestMemory
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in _DELEGATED:
            raise AttributeError(name)
        return getattr(self.__dict__["memory"], name)

    def __len__(self) -> int:
        return self.memory.size

    def close(self) -> None:
        """Unmap the RAM when the build is torn down (idempotent)."""
        if not self.memory.closed:
            try:
                self.memory.close()
            except BufferError:
                pass  # a view is still exported; the mapping goes with the last reference

    def pre_save(self) -> None:
        from .blob import Blob

        self.state.size = self.memory.size
        self.state.ram = Blob() if self.precopied else self.memory

    # Writing RAM cannot be undone, so the size is checked before any object
    # changes and the copy runs after every other object's post_load succeeded.
    POST_LOAD_ORDER = 1000

    def check_load(self, state: GuestMemoryState) -> None:
        data = state.ram
        if data is self.memory:
            return
        if state.size != self.memory.size or len(data) != self.memory.size:
            raise GuestMemoryError(
                f"the source has {state.size} bytes of guest RAM ({len(data)} in the "
                f"stream), this build has {self.memory.size}: start it with the same size")

    def post_load(self) -> None:
        data = self.state.ram
        if data is None or data is self.memory:
            return  # nothing new (a rollback to the state we had): RAM is as it is
        self.check_load(self.state)
        if isinstance(data, GuestMemory):
            # pre-copied RAM staged on the side: take it without copying
            self.memory.adopt(data)
        else:
            self.memory.load_chunks(data.iter_chunks())
        self.state.ram = self.memory


_DELEGATED = frozenset(
    n for n in dir(GuestMemory) if not n.startswith("_") and n not in ("close", "closed"))


def as_guest_memory(memory: Any) -> GuestMemory | None:
    """``machine.memory`` as a :class:`GuestMemory` (the build may hold the
    ``guest-memory`` object or the mapping itself); None when there is none."""
    if memory is None or isinstance(memory, GuestMemory):
        return memory
    if isinstance(memory, GuestMemoryObject):
        return memory.memory
    raise TypeError(f"machine.memory is {memory!r}, not guest memory")


def install(machine: Any, size: int | str, *, name: str = "ram") -> GuestMemory:
    """Give ``machine`` guest RAM: a :class:`GuestMemoryObject` child ``name``
    and ``machine.memory`` set to its :class:`GuestMemory`. Devices live under
    the machine's ``peripheral``/``unattached`` containers, which come first
    in composition order whenever they are added; only objects added straight
    to the machine after this call would load after RAM."""
    if getattr(machine, "memory", None) is not None:
        raise ValueError(f"{machine!r} already has guest memory")
    obj = GuestMemoryObject(size)
    machine.add_child(name, obj)
    machine.memory = obj.memory
    return obj.memory
