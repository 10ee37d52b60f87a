"""The device type and its migratable state, declared once.

Version 2 of the state renamed ``counter`` to ``count`` and added
``irq_mask``; version 1's layout stays declared in ``HISTORY`` so that
schemas, ``migtree check`` and the test kit know it.
"""

from __future__ import annotations

import attrs

from migtree.fields import u8, u16, u32
from migtree.qom import Device


@attrs.define
class ExampleStateV1:
    ctrl: int = u32(doc="control register")
    counter: int = u16(doc="events counted")


@attrs.define
class ExampleState:
    ctrl: int = u32(doc="control register")
    count: int = u16(doc="events counted (was: counter)")
    irq_mask: int = u8(doc="interrupt mask, new in version 2")


class ExampleDevice(Device):
    TYPE = "example-device"   # unique across all plugins: prefix it with your name
    ABSTRACT = False
    STATE = ExampleState
    VERSION = 2               # the layout this build writes
    MIN_VERSION = 2           # the oldest layout it loads without a filter
    HISTORY = {1: ExampleStateV1}

    def realize(self) -> None:
        """Called once the device is placed in a build."""

    def post_load(self) -> None:
        """Called after a migration replaced ``self.state``."""
