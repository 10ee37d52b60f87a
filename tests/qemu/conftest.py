"""Fixtures that make real QEMU migration streams, once per test session.

Streams, disks and ``-dump-vmstate`` dumps are written under the session's
pytest temporary directory and reused by every test that asks for them.
Tests that need QEMU skip (saying so) only when ``qemu-system-x86_64`` is
not installed; KVM configurations skip when ``/dev/kvm`` is not usable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import qemu_streams
from qemu_streams import MATRIX, QEMU, StreamConfig, kvm_usable, linux_config, need_qemu  # noqa: F401


class StreamFactory:
    """Makes (once) and returns the stream for a :class:`StreamConfig`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[StreamConfig, Path] = {}

    def __call__(self, cfg: StreamConfig) -> Path:
        need_qemu(cfg)
        if cfg not in self.cache:
            self.cache[cfg] = qemu_streams.make_stream(cfg, self.root)
        return self.cache[cfg]

    def dump_vmstate(self, machine: str = "pc", qemu: str | None = None) -> Path:
        need_qemu()
        return qemu_streams.dump_vmstate(self.root, machine, qemu)


@pytest.fixture(scope="session")
def streams(tmp_path_factory: pytest.TempPathFactory) -> StreamFactory:
    return StreamFactory(tmp_path_factory.mktemp("qemu-streams"))


@pytest.fixture(scope="session")
def base_stream(streams: StreamFactory) -> Path:
    """The simplest stream: pc, TCG, one vCPU, virtio-blk disk, paused."""
    return streams(StreamConfig())


def matrix_ids() -> list[str]:
    return [c.name for c in MATRIX]


@pytest.fixture(scope="session")
def guest_artifacts() -> tuple[str, str]:
    """(kernel, initramfs) of the tiny Linux guest, built once and cached
    under /tmp (MIGTREE_QEMU_GUEST_CACHE overrides)."""
    need_qemu()
    import guest_builder

    try:
        kernel, initrd = guest_builder.build_guest()
    except guest_builder.GuestBuildError as exc:
        pytest.fail(f"cannot build the Linux guest: {exc}")
    return str(kernel), str(initrd)


