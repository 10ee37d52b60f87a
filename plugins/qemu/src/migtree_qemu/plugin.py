"""migtree hooks of the ``qemu`` plugin: QEMU's ``QEVM`` stream as a migtree
stream format (``inspect``, ``convert --from qemu`` / ``--to qemu``).

The codec itself (:mod:`migtree_qemu.qevm`) does not need the core; this
module is what the ``migtree`` entry point loads.
"""

from __future__ import annotations

from migtree import hookimpl

from .format import QemuStreamFormat


@hookimpl
def migtree_register_stream_formats(register):
    register(QemuStreamFormat())


@hookimpl
def migtree_register_filters(register):
    """What takes a QEMU stream to an older or newer QEMU: a drop/restore
    pair per subsection and migration command a target may not know
    (:mod:`migtree_qemu.compat`)."""
    from .compat import static_filters

    for pair in static_filters():
        register(pair)
