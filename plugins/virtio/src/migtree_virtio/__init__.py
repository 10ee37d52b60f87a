"""migtree virtio plugin: ``virtio-pci``, ``virtio-blk``, ``virtio-blk-pci``
and the filters that split the combined type into the pair and merge it back.

See ``plugins/virtio/README.md`` for what of the virtio 1.2 specification is
implemented.
"""

from __future__ import annotations

from .blk import VirtioBlk
from .combined import VirtioBlkPci
from .device import VirtioDevice
from .filters import MERGE, PAIR, SPLIT
from .pci import VirtioPci, register_backend_class

register_backend_class(VirtioBlk)

__all__ = ["MERGE", "PAIR", "SPLIT", "VirtioBlk", "VirtioBlkPci", "VirtioDevice", "VirtioPci",
           "register_backend_class"]
