"""The core's own types, registered through the same hook as any plugin's
(entry point ``core`` in the ``migtree`` distribution)."""

from __future__ import annotations

from .hookspecs import hookimpl
from .memory import GuestMemoryObject
from .qom import Container, Device, Machine, Object


@hookimpl
def migtree_register_types(register):
    for cls in (Object, Device, Container, Machine, GuestMemoryObject):
        register(cls)
