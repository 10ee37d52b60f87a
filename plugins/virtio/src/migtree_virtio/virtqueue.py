"""Split virtqueues (virtio 1.2 §2.7): reading descriptor chains and the
available ring, writing the used ring — every guest-supplied index, length
and address checked. A violation raises :class:`VirtqueueError` (or
:class:`migtree.memory.GuestMemoryError` for an address outside RAM); the
device turns either into its error behaviour (``virtio_error``), so nothing
the guest writes can crash the build.

Layout (``size`` entries)::

    descriptor table  16 * size    {le64 addr, le32 len, le16 flags, le16 next}
    available ring    6 + 2 * size {le16 flags, le16 idx, le16 ring[size], le16 used_event}
    used ring         6 + 8 * size {le16 flags, le16 idx, {le32 id, le32 len}[size],
                                   le16 avail_event}
"""

from __future__ import annotations

import struct

from migtree.errors import MigtreeError
from migtree.memory import GuestMemory

from .constants import (
    AVAIL_F_NO_INTERRUPT,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    DESC_SIZE,
    QUEUE_MAX,
)
from .state import VirtqueueState

_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")

Sg = list[tuple[int, int]]


class VirtqueueError(MigtreeError):
    """The guest broke a virtqueue rule; the message says which."""


def is_power_of_2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def avail_idx(mem: GuestMemory, vq: VirtqueueState) -> int:
    return mem.read_u16(vq.driver + 2)


def pending(mem: GuestMemory, vq: VirtqueueState) -> int:
    """How many entries the driver made available that the device has not
    taken. More than the queue holds is a guest error."""
    n = (avail_idx(mem, vq) - vq.last_avail_idx) & 0xFFFF
    if n > vq.size:
        raise VirtqueueError(f"available ring idx moved {n} entries past last_avail_idx "
                             f"{vq.last_avail_idx}, more than the queue's {vq.size}")
    return n


def avail_head(mem: GuestMemory, vq: VirtqueueState, idx: int) -> int:
    """The head index in available-ring entry ``idx``, checked against the queue size."""
    head = mem.read_u16(vq.driver + 4 + 2 * (idx % vq.size))
    if head >= vq.size:
        raise VirtqueueError(f"available ring entry {idx} names descriptor {head}, "
                             f"but the queue has {vq.size}")
    return head


def _read_desc(mem: GuestMemory, table: int, i: int) -> tuple[int, int, int, int]:
    return mem.unpack(_DESC, table + i * DESC_SIZE)


def read_chain(mem: GuestMemory, vq: VirtqueueState, head: int, *,
               indirect: bool) -> tuple[Sg, Sg]:
    """Walk the chain starting at ``head``: ``(out_sg, in_sg)`` as lists of
    ``(addr, len)``, device-readable buffers then device-writable ones.

    Checked: a descriptor index inside its table; no loop; the chain no
    longer than the queue (spec §2.7.5.3.1, indirect entries counted); no
    zero-length buffer; no readable buffer after a writable one; every buffer
    inside guest memory; an indirect descriptor only when negotiated, not
    combined with NEXT, not inside an indirect table, with a length that is a
    non-zero multiple of 16 and a table inside guest memory.
    """
    out_sg: Sg = []
    in_sg: Sg = []
    table, max_i = vq.desc, vq.size
    i = head
    seen: set[int] = set()
    in_indirect = False
    count = 0
    while True:
        if i >= max_i:
            raise VirtqueueError(f"descriptor chain from head {head} points at descriptor {i}, "
                                 f"past the end of its {max_i}-entry table")
        if i in seen:
            raise VirtqueueError(f"descriptor loop: the chain from head {head} comes back "
                                 f"to descriptor {i}" + (" of its indirect table"
                                                         if in_indirect else ""))
        seen.add(i)
        addr, length, flags, nxt = _read_desc(mem, table, i)
        if flags & DESC_F_INDIRECT:
            if not indirect:
                raise VirtqueueError(f"descriptor {i} is INDIRECT but RING_INDIRECT_DESC "
                                     "was not negotiated")
            if in_indirect:
                raise VirtqueueError("nested indirect descriptor")
            if flags & DESC_F_NEXT:
                raise VirtqueueError(f"descriptor {i} sets both INDIRECT and NEXT")
            if length == 0 or length % DESC_SIZE:
                raise VirtqueueError(f"indirect descriptor {i} has length {length}, "
                                     "not a non-zero multiple of 16")
            mem.check(addr, length)
            table, max_i, i = addr, length // DESC_SIZE, 0
            seen = set()
            in_indirect = True
            continue
        count += 1
        if count > vq.size or count > QUEUE_MAX:
            raise VirtqueueError(f"descriptor chain from head {head} is longer than the "
                                 f"queue size {vq.size}")
        if length == 0:
            raise VirtqueueError(f"descriptor {i} has a zero-length buffer")
        mem.check(addr, length)
        if flags & DESC_F_WRITE:
            in_sg.append((addr, length))
        else:
            if in_sg:
                raise VirtqueueError(f"descriptor {i} is device-readable but follows a "
                                     "device-writable one")
            out_sg.append((addr, length))
        if not flags & DESC_F_NEXT:
            return out_sg, in_sg
        i = nxt


def check_used_ring(mem: GuestMemory, vq: VirtqueueState) -> None:
    mem.check(vq.device, 6 + 8 * vq.size)


def push_used(mem: GuestMemory, vq: VirtqueueState, head: int, length: int) -> None:
    """Write one used element and publish it by bumping the used ring's idx."""
    slot = vq.device + 4 + 8 * (vq.used_idx % vq.size)
    mem.pack(_USED_ELEM, slot, head, length)
    vq.used_idx = (vq.used_idx + 1) & 0xFFFF
    mem.write_u16(vq.device + 2, vq.used_idx)


def wants_interrupt(mem: GuestMemory, vq: VirtqueueState) -> bool:
    """False when the driver set VRING_AVAIL_F_NO_INTERRUPT."""
    return not mem.read_u16(vq.driver) & AVAIL_F_NO_INTERRUPT


def sg_total(sg: Sg) -> int:
    return sum(n for _, n in sg)


def sg_slice(sg: Sg, start: int, length: int) -> Sg:
    """The ``length`` bytes of ``sg`` from byte ``start`` on, as buffers."""
    out: Sg = []
    for addr, n in sg:
        if length <= 0:
            break
        if start >= n:
            start -= n
            continue
        k = min(n - start, length)
        out.append((addr + start, k))
        length -= k
        start = 0
    return out


def sg_read(mem: GuestMemory, sg: Sg) -> bytes:
    return b"".join(mem.read(a, n) for a, n in sg)


def sg_write(mem: GuestMemory, sg: Sg, data: bytes) -> None:
    pos = 0
    for a, n in sg:
        if pos >= len(data):
            break
        k = min(n, len(data) - pos)
        mem.write(a, data[pos:pos + k])
        pos += k
