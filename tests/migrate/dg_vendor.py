"""A third-party device in two releases, for the downgrade tests: release 2
of the vendor's plugin has ``dg-device`` at version 2 (a renamed field, a new
one) and the filter pair between versions 1 and 2; release 1 has the device
at version 1 and knows nothing of version 2 or the filters. Each release is
a registry of the real installed plugins plus the vendor's registrations,
as two environments would have."""

from __future__ import annotations

from typing import Any

import attrs

from migtree import ops
from migtree.fields import u8, u16, u32
from migtree.filters import Filter, FilterPair
from migtree.plugins import load_registry
from migtree.qom import Device

VENDOR = "dg-vendor"


@attrs.define
class DgStateV1:
    ctrl: int = u32()
    counter: int = u16()


@attrs.define
class DgStateV2:
    ctrl: int = u32()
    count: int = u16()
    irq_mask: int = u8()


class DgDeviceV2(Device):
    TYPE = "dg-device"
    ABSTRACT = False
    STATE = DgStateV2
    VERSION = 2
    MIN_VERSION = 2
    HISTORY = {1: DgStateV1}


class DgDeviceV1(Device):
    TYPE = "dg-device"
    ABSTRACT = False
    STATE = DgStateV1
    VERSION = 1
    MIN_VERSION = 1


UP = Filter(name="dg-device-v1-to-v2", match="dg-device@1", produces="dg-device@2",
            func=ops.chain(ops.rename_field("counter", "count"), ops.add_field("irq_mask", 0),
                           ops.set_version(2)))
DOWN = Filter(name="dg-device-v2-to-v1", match="dg-device@2", produces="dg-device@1",
              func=ops.chain(ops.drop_field("irq_mask", default=0),
                             ops.rename_field("count", "counter"), ops.set_version(1)))
PAIR = FilterPair("dg-device-v1-v2", UP, DOWN)


def release(version: int, *, with_filters: bool | None = None) -> Any:
    """The registry of an environment with release ``version`` installed;
    release 2 carries the filter pair, release 1 does not (unless
    ``with_filters`` says otherwise: a later 1.x that backported it)."""
    reg = load_registry()
    reg.register_type(DgDeviceV2 if version == 2 else DgDeviceV1, plugin=VENDOR)
    if with_filters if with_filters is not None else version == 2:
        reg.register_filter(PAIR, plugin=VENDOR)
    return reg
