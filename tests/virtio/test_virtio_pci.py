"""The virtio-pci function as the guest sees it: configuration space,
capabilities, BARs, the common configuration's rules, the ISR, MSI-X, the
PCI configuration access capability, and loading a foreign config."""

from __future__ import annotations

import pytest
from virtio_helpers import make_build, make_image, migrate

from migtree import tree
from migtree.errors import LoadError
from migtree_virtio.constants import (
    COMMON_DF,
    COMMON_DFSELECT,
    COMMON_GF,
    COMMON_GFSELECT,
    COMMON_MSIX,
    COMMON_NUMQ,
    COMMON_Q_DESCHI,
    COMMON_Q_DESCLO,
    COMMON_Q_ENABLE,
    COMMON_Q_MSIX,
    COMMON_Q_NOFF,
    COMMON_Q_SELECT,
    COMMON_Q_SIZE,
    COMMON_STATUS,
    F_VERSION_1,
    NO_VECTOR,
)
from migtree_virtio.pci import CAP_PCI_CFG, MODERN_BAR
from migtree_virtio.testdriver import VirtioBlkDriver


def caps(t):
    out = []
    ptr = t.config_read(0x34, 1)
    while ptr:
        cid = t.config_read(ptr, 1)
        out.append((ptr, cid, t.config_read(ptr + 3, 1) if cid == 9 else None))
        ptr = t.config_read(ptr + 1, 1)
    return out


def test_identity_and_capabilities(build):
    _root, _m, dev = build
    t = dev.transport
    assert t.config_read(0, 2) == 0x1AF4
    assert t.config_read(2, 2) == 0x1042            # modern virtio-blk
    assert t.config_read(8, 1) == 1                 # revision 1: modern only
    assert t.config_read(0x0A, 2) == 0x0100         # mass storage / SCSI, as QEMU
    assert t.config_read(0x2E, 2) == 2
    assert t.config_read(0x3D, 1) == 1              # INTx pin A
    assert caps(t) == [(0x98, 0x11, None), (0x84, 9, 5), (0x70, 9, 2), (0x60, 9, 4),
                       (0x50, 9, 3), (0x40, 9, 1)]
    assert t.config_read(0x70 + 16, 4) == 4         # notify_off_multiplier
    assert t.config_read(0x98 + 2, 2) & 0x7FF == 1  # 2 MSI-X vectors: config + 1 queue


def test_bar_sizing_and_read_only_bits(build):
    _root, _m, dev = build
    t = dev.transport
    for reg, mask in ((0x14, 0xFFFFF000), (0x20, 0xFFFFC00C), (0x24, 0xFFFFFFFF),
                      (0x10, 0), (0x18, 0)):
        t.config_write(reg, 4, 0xFFFFFFFF)
        assert t.config_read(reg, 4) == mask
    t.config_write(0, 4, 0)                         # IDs are read-only
    assert t.config_read(0, 2) == 0x1AF4
    assert t.mmio_read(0xFFFFF000, 4) is None       # memory space off: nothing decoded


def test_common_config_rules(build):
    _root, m, dev = build
    drv = VirtioBlkDriver.init(dev, m.memory)
    c = drv.common_read
    w = drv.common_write
    assert c(COMMON_NUMQ, 2) == 1
    w(COMMON_DFSELECT, 4, 1)
    assert c(COMMON_DF, 4) == 1 << (F_VERSION_1 - 32)
    w(COMMON_DFSELECT, 4, 7)
    assert c(COMMON_DF, 4) == 0
    before = dev.vdev.state.driver_features
    w(COMMON_GFSELECT, 4, 0)
    w(COMMON_GF, 4, 0)                              # after FEATURES_OK: ignored
    assert dev.vdev.state.driver_features == before
    w(COMMON_MSIX, 2, 9)                            # no such vector
    assert c(COMMON_MSIX, 2) == NO_VECTOR
    w(COMMON_Q_SELECT, 2, 0)
    assert c(COMMON_Q_NOFF, 2) == 0
    w(COMMON_Q_SIZE, 2, 16)                         # enabled queue: ignored
    assert c(COMMON_Q_SIZE, 2) == 64
    w(COMMON_Q_DESCLO, 4, 0x1234)                   # enabled queue: ignored
    assert c(COMMON_Q_DESCLO, 4) == drv.lay.desc & 0xFFFFFFFF
    w(COMMON_Q_SELECT, 2, 5)                        # no such queue: reads as absent
    assert c(COMMON_Q_SIZE, 2) == 0 and c(COMMON_Q_ENABLE, 2) == 0
    # reset clears the device and the selectors
    w(COMMON_STATUS, 1, 0)
    assert c(COMMON_STATUS, 1) == 0
    w(COMMON_Q_SELECT, 2, 0)
    assert c(COMMON_Q_ENABLE, 2) == 0 and c(COMMON_Q_MSIX, 2) == NO_VECTOR
    assert c(COMMON_Q_SIZE, 2) == 256
    w(COMMON_Q_SIZE, 2, 100)                        # not a power of 2: ignored
    assert c(COMMON_Q_SIZE, 2) == 256
    w(COMMON_Q_DESCLO, 4, 0x1000)
    w(COMMON_Q_DESCHI, 4, 0x2)
    assert dev.vdev.state.queues[0].desc == 0x2_0000_1000


def test_pci_cfg_access_window(build):
    """VIRTIO_PCI_CAP_PCI_CFG: BAR access through configuration space."""
    _root, m, dev = build
    VirtioBlkDriver.init(dev, m.memory)
    t = dev.transport
    t.config_write(CAP_PCI_CFG + 4, 1, MODERN_BAR)
    t.config_write(CAP_PCI_CFG + 8, 4, 0x2000)      # device configuration: capacity
    t.config_write(CAP_PCI_CFG + 12, 4, 4)
    assert t.config_read(CAP_PCI_CFG + 16, 4) == dev.vdev.state.capacity
    t.config_write(CAP_PCI_CFG + 8, 4, COMMON_Q_SELECT)
    t.config_write(CAP_PCI_CFG + 12, 4, 2)
    t.config_write(CAP_PCI_CFG + 16, 4, 3)
    assert dev.transport.state.queue_select == 3


def test_isr_read_clears(build):
    _root, m, dev = build
    drv = VirtioBlkDriver.init(dev, m.memory, msix=False)
    dev.vdev.state.isr = 3
    dev.transport.update_interrupts()
    assert drv.rd(3, 0, 1) == 3
    assert drv.rd(3, 0, 1) == 0


def test_foreign_pci_config_is_refused(tmp_path, registry):
    img = make_image(str(tmp_path / "d.img"))
    src_root, _m, src = make_build("split", img)
    t = tree.save_tree(src_root)
    node = t["machine"]["peripheral"]["vblk0"]
    cfg = bytearray(node["pci_config"])
    cfg[2] = 0x41                                   # virtio-net's device ID
    node["pci_config"] = bytes(cfg)
    dst_root, _dm, dst = make_build("split", img)
    t["machine"].pop("ram")  # RAM is not what this test is about
    with pytest.raises(LoadError, match="PCI config mismatch at 0x02"):
        tree.load_tree(t, dst_root, allow_missing=True)
    src.vdev.close()
    dst.vdev.close()


def test_programmed_bars_and_msix_migrate(tmp_path, registry):
    img = make_image(str(tmp_path / "d.img"))
    src_root, sm, src = make_build("combined", img)
    drv = VirtioBlkDriver.init(src, sm.memory, mmio_base=0xD000_0000)
    dst_root, dm, dst = make_build("split", img)
    migrate(src_root, dst_root, registry)
    assert dst.transport.bar_address(4) == src.transport.bar_address(4)
    assert dst.transport.msix_enabled
    d2 = VirtioBlkDriver.attach(dst, dm.memory)
    assert d2.bars == {k: v for k, v in drv.bars.items() if k == 4}
    s = d2.read(0, 512)
    d2.poll()
    assert d2.result(s).status == 0
    src.vdev.close()
    dst.vdev.close()
