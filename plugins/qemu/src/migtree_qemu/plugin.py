"""migtree hook implementations for QEMU migration streams.

Phase 1 of issue 8 provides only the QEVM codec (:mod:`migtree_qemu.qevm`)
and a QMP client (:mod:`migtree_qemu.qmp`); the hooks that register the
QEMU stream format with the migtree core are added once the core's device
API is documented.
"""
