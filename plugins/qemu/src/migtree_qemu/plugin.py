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
