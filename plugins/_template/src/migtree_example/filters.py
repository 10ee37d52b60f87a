"""The filters between version 1 and version 2 of the state, as a reversible
pair: what the way down drops (``irq_mask``) is stashed on the node, so the
way back up restores it; a value equal to the default the way up would give
it anyway is not stashed, so the round trip from version 1 leaves no stash."""

from __future__ import annotations

from migtree import ops
from migtree.filters import Filter, FilterPair

UPGRADE = Filter(
    name="example-device-v1-to-v2",
    match="example-device@1",
    produces="example-device@2",
    func=ops.chain(ops.rename_field("counter", "count"),
                   ops.add_field("irq_mask", 0),
                   ops.set_version(2)),
)

DOWNGRADE = Filter(
    name="example-device-v2-to-v1",
    match="example-device@2",
    produces="example-device@1",
    func=ops.chain(ops.drop_field("irq_mask", default=0),
                   ops.rename_field("count", "counter"),
                   ops.set_version(1)),
)

PAIR = FilterPair("example-device-v1-v2", UPGRADE, DOWNGRADE)
