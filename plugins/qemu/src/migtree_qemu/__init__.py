"""migtree-qemu: read and write QEMU migration streams (QEVM version 3)."""

__version__ = "0.1.0"
