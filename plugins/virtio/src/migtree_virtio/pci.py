"""``virtio-pci``: a modern (virtio 1.x, non-transitional) virtio PCI
function, generic over the virtio device plugged into it as its child
``virtio-backend`` (virtio 1.2 §4.1).

What the guest sees, laid out as QEMU 7.2 lays out a modern-only proxy:

* PCI configuration space: vendor 0x1af4, device 0x1040 + virtio device ID,
  revision 1; BAR1 (32-bit memory, 4 KiB) holds the MSI-X table (0x000) and
  PBA (0x800); BAR4/5 (64-bit prefetchable memory, 16 KiB) hold the common
  configuration (0x0000), ISR (0x1000), device configuration (0x2000) and
  notifications (0x3000, ``notify_off_multiplier`` 4). Capability list:
  MSI-X at 0x98 -> PCI configuration access at 0x84 -> notify 0x70 ->
  device 0x60 -> ISR 0x50 -> common 0x40.
* Interrupts: MSI-X when the driver enabled it (a message is a 32-bit
  memory write of ``data`` to ``addr``: it lands in guest RAM when ``addr``
  is RAM, as libqos arranges, and is always appended to :attr:`msi_log`);
  otherwise INTx pin A, whose level is :attr:`intx_level`, asserted while the
  ISR has a bit set; reading the ISR clears it.

Accesses: :meth:`config_read` / :meth:`config_write` (configuration
space), :meth:`mmio_read` / :meth:`mmio_write` (guest-physical addresses
decoded through the BARs the driver programmed, when memory space is
enabled), or :meth:`bar_read` / :meth:`bar_write` directly.
"""

from __future__ import annotations

import struct
from typing import Any

from migtree.errors import MigtreeError
from migtree.memory import as_guest_memory
from migtree.qom import Device

from .constants import (
    COMMON_DFSELECT,
    COMMON_GF,
    COMMON_GFSELECT,
    COMMON_MSIX,
    COMMON_Q_AVAILHI,
    COMMON_Q_AVAILLO,
    COMMON_Q_DESCHI,
    COMMON_Q_DESCLO,
    COMMON_Q_ENABLE,
    COMMON_Q_MSIX,
    COMMON_Q_SELECT,
    COMMON_Q_SIZE,
    COMMON_Q_USEDHI,
    COMMON_Q_USEDLO,
    COMMON_STATUS,
    ISR_CONFIG,
    ISR_QUEUE,
    NO_VECTOR,
    PCI_BASE_ADDRESS_0,
    PCI_CAP_ID_MSIX,
    PCI_CAP_ID_VNDR,
    PCI_CAPABILITY_LIST,
    PCI_CLASS_DEVICE,
    PCI_COMMAND,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_MEMORY,
    PCI_DEVICE_ID,
    PCI_DEVICE_ID_MODERN_BASE,
    PCI_INTERRUPT_LINE,
    PCI_INTERRUPT_PIN,
    PCI_MSIX_ENTRY_CTRL_MASKBIT,
    PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_MASKALL,
    PCI_REVISION_ID,
    PCI_STATUS,
    PCI_STATUS_CAP_LIST,
    PCI_STATUS_INTERRUPT,
    PCI_SUBSYSTEM_ID,
    PCI_SUBSYSTEM_VENDOR_ID,
    PCI_VENDOR_ID,
    PCI_VENDOR_ID_REDHAT_QUMRANET,
    VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_CAP_PCI_CFG,
)
from .device import VirtioConfigError, VirtioDevice, find_machine
from .state import MAX_VECTORS, VirtioPciState

# -- the layout ------------------------------------------------------------------------
MSIX_BAR = 1
MSIX_BAR_SIZE = 0x1000
MSIX_TABLE_OFFSET = 0x000
MSIX_PBA_OFFSET = 0x800
MODERN_BAR = 4
MODERN_BAR_SIZE = 0x4000
COMMON_OFFSET = 0x0000
ISR_OFFSET = 0x1000
DEVICE_OFFSET = 0x2000
NOTIFY_OFFSET = 0x3000
REGION_SIZE = 0x1000
NOTIFY_OFF_MULTIPLIER = 4

CAP_COMMON = 0x40
CAP_ISR = 0x50
CAP_DEVICE = 0x60
CAP_NOTIFY = 0x70
CAP_PCI_CFG = 0x84
CAP_MSIX = 0x98
PCI_CFG_DATA = CAP_PCI_CFG + 16

_COMMON = struct.Struct("<IIIIHHBBHHHHHQQQHH")

#: backends a ``virtio-pci`` can create by type name without a registry
BACKEND_CLASSES: dict[str, type[VirtioDevice]] = {}


def register_backend_class(cls: type[VirtioDevice]) -> type[VirtioDevice]:
    BACKEND_CLASSES[cls.TYPE] = cls
    return cls


class VirtioPciError(MigtreeError):
    """A transport misconfiguration or an incompatible loaded state."""


def _le(buf: bytes | bytearray, off: int, size: int) -> int:
    return int.from_bytes(buf[off:off + size], "little")


def _put(buf: bytearray, off: int, size: int, value: int) -> None:
    buf[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def build_config(vdev: VirtioDevice, nvectors: int) -> tuple[bytearray, bytearray, bytearray]:
    """``(config, wmask, cmask)``: the configuration space after PCI reset,
    which bits the driver may write, and which bits a loaded state must
    agree on (the read-only ones, as QEMU's ``pci_device_load`` checks)."""
    cfg = bytearray(256)
    wmask = bytearray(256)
    _put(cfg, PCI_VENDOR_ID, 2, PCI_VENDOR_ID_REDHAT_QUMRANET)
    _put(cfg, PCI_DEVICE_ID, 2, PCI_DEVICE_ID_MODERN_BASE + vdev.DEVICE_ID)
    _put(cfg, PCI_STATUS, 2, PCI_STATUS_CAP_LIST)
    cfg[PCI_REVISION_ID] = 1
    _put(cfg, PCI_CLASS_DEVICE, 2, vdev.PCI_CLASS)
    _put(cfg, PCI_SUBSYSTEM_VENDOR_ID, 2, PCI_VENDOR_ID_REDHAT_QUMRANET)
    _put(cfg, PCI_SUBSYSTEM_ID, 2, vdev.DEVICE_ID)
    cfg[PCI_CAPABILITY_LIST] = CAP_MSIX
    cfg[PCI_INTERRUPT_PIN] = 1
    _put(wmask, PCI_COMMAND, 2, 0x0547)
    _put(wmask, PCI_INTERRUPT_LINE, 1, 0xFF)
    # BAR1: 32-bit memory; BAR4/5: 64-bit prefetchable memory
    _put(wmask, PCI_BASE_ADDRESS_0 + 4 * MSIX_BAR, 4, ~(MSIX_BAR_SIZE - 1) & 0xFFFFFFFF)
    _put(cfg, PCI_BASE_ADDRESS_0 + 4 * MODERN_BAR, 4, 0x0C)
    _put(wmask, PCI_BASE_ADDRESS_0 + 4 * MODERN_BAR, 4, ~(MODERN_BAR_SIZE - 1) & 0xFFFFFFFF)
    _put(wmask, PCI_BASE_ADDRESS_0 + 4 * (MODERN_BAR + 1), 4, 0xFFFFFFFF)

    def vendor_cap(at: int, nxt: int, cfg_type: int, bar: int, offset: int, length: int,
                   cap_len: int = 16) -> None:
        cfg[at:at + 4] = bytes([PCI_CAP_ID_VNDR, nxt, cap_len, cfg_type])
        cfg[at + 4] = bar
        _put(cfg, at + 8, 4, offset)
        _put(cfg, at + 12, 4, length)

    vendor_cap(CAP_COMMON, 0, VIRTIO_PCI_CAP_COMMON_CFG, MODERN_BAR, COMMON_OFFSET, REGION_SIZE)
    vendor_cap(CAP_ISR, CAP_COMMON, VIRTIO_PCI_CAP_ISR_CFG, MODERN_BAR, ISR_OFFSET, REGION_SIZE)
    vendor_cap(CAP_DEVICE, CAP_ISR, VIRTIO_PCI_CAP_DEVICE_CFG, MODERN_BAR, DEVICE_OFFSET,
               REGION_SIZE)
    vendor_cap(CAP_NOTIFY, CAP_DEVICE, VIRTIO_PCI_CAP_NOTIFY_CFG, MODERN_BAR, NOTIFY_OFFSET,
               REGION_SIZE, cap_len=20)
    _put(cfg, CAP_NOTIFY + 16, 4, NOTIFY_OFF_MULTIPLIER)
    vendor_cap(CAP_PCI_CFG, CAP_NOTIFY, VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0, cap_len=20)
    wmask[CAP_PCI_CFG + 4] = 0xFF
    _put(wmask, CAP_PCI_CFG + 8, 4, 0xFFFFFFFF)
    _put(wmask, CAP_PCI_CFG + 12, 4, 0xFFFFFFFF)
    _put(wmask, PCI_CFG_DATA, 4, 0xFFFFFFFF)
    cfg[CAP_MSIX:CAP_MSIX + 2] = bytes([PCI_CAP_ID_MSIX, CAP_PCI_CFG])
    _put(cfg, CAP_MSIX + 2, 2, nvectors - 1)
    _put(cfg, CAP_MSIX + 4, 4, MSIX_TABLE_OFFSET | MSIX_BAR)
    _put(cfg, CAP_MSIX + 8, 4, MSIX_PBA_OFFSET | MSIX_BAR)
    _put(wmask, CAP_MSIX + 2, 2, PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)
    cmask = bytearray(~b & 0xFF for b in wmask)
    cmask[PCI_STATUS] = cmask[PCI_STATUS + 1] = 0  # interrupt status, error bits: dynamic
    return cfg, wmask, cmask


def msix_table_reset(nvectors: int) -> bytearray:
    table = bytearray(nvectors * PCI_MSIX_ENTRY_SIZE)
    for v in range(nvectors):
        table[v * PCI_MSIX_ENTRY_SIZE + 12] = PCI_MSIX_ENTRY_CTRL_MASKBIT  # masked at reset
    return table


def pba_size(nvectors: int) -> int:
    return (nvectors + 63) // 64 * 8


class VirtioPci(Device):
    """QOM ``virtio-pci``. ``backend`` is a virtio device object or a type
    name (``"virtio-blk"``) built from the remaining properties."""

    TYPE = "virtio-pci"
    PARENT = "device"
    ABSTRACT = False
    STATE = VirtioPciState
    VERSION = 1
    MIN_VERSION = 1
    PATH_PROPS = ("drive",)
    DESCRIPTION = "virtio 1.x PCI transport; the virtio device is its child virtio-backend"

    def __init__(self, backend: Any = "virtio-blk", *, vectors: int | None = None,
                 **backend_props: Any) -> None:
        if isinstance(backend, str):
            backend = _create_backend(backend, backend_props)
        elif backend_props:
            raise VirtioConfigError(f"properties {sorted(backend_props)} are for the backend, "
                                    "but the backend was given as an object")
        if not isinstance(backend, VirtioDevice):
            raise VirtioConfigError(f"virtio-pci needs a virtio device as backend, got {backend!r}")
        nvec = vectors if vectors is not None else backend.num_queues + 1
        if not 1 <= nvec <= MAX_VECTORS:
            raise VirtioConfigError(f"vectors must be 1..{MAX_VECTORS}, got {nvec}")
        super().__init__()
        self.nvectors = nvec
        self.vdev = backend
        self.add_child("virtio-backend", backend)
        backend.bus = self
        cfg, self._wmask, self._cmask = build_config(backend, nvec)
        st = self.state
        st.pci_config = cfg
        st.msix_table = msix_table_reset(nvec)
        st.msix_pba = bytearray(pba_size(nvec))
        #: every MSI-X message sent, as ``(addr, data)`` (host-side, not migrated)
        self.msi_log: list[tuple[int, int]] = []
        #: optional ``callback(addr, data)`` for each MSI-X message
        self.on_msi: Any = None
        #: how many times INTx went from low to high (host-side)
        self.intx_raised = 0
        self._intx = False

    @property
    def transport(self) -> VirtioPci:
        return self

    # -- PCI configuration space ----------
    def config_read(self, offset: int, size: int) -> int:
        _check_access(offset, size, 256)
        if PCI_CFG_DATA <= offset < PCI_CFG_DATA + 4:
            return self._pci_cfg_window(None)
        value = _le(self.state.pci_config, offset, size)
        if offset <= PCI_STATUS < offset + size and self._intx:
            value |= PCI_STATUS_INTERRUPT << (8 * (PCI_STATUS - offset))
        return value

    def config_write(self, offset: int, size: int, value: int) -> None:
        _check_access(offset, size, 256)
        cfg, wm = self.state.pci_config, self._wmask
        for i in range(size):
            b = (value >> (8 * i)) & 0xFF
            cfg[offset + i] = (cfg[offset + i] & ~wm[offset + i]) | (b & wm[offset + i])
        end = offset + size
        if offset < PCI_CFG_DATA + 4 and end > PCI_CFG_DATA:
            self._pci_cfg_window(value)
        if offset < CAP_MSIX + 4 and end > CAP_MSIX + 2:
            self._msix_deliver_pending()
            self.update_interrupts()
        if offset < PCI_COMMAND + 2 and end > PCI_COMMAND:
            self.update_interrupts()

    def _pci_cfg_window(self, value: int | None) -> int:
        """The VIRTIO_PCI_CAP_PCI_CFG window: a BAR access through config space."""
        cfg = self.state.pci_config
        bar, off, length = cfg[CAP_PCI_CFG + 4], _le(cfg, CAP_PCI_CFG + 8, 4), \
            _le(cfg, CAP_PCI_CFG + 12, 4)
        if length not in (1, 2, 4):
            return 0
        if value is None:
            return self.bar_read(bar, off, length)
        self.bar_write(bar, off, length, value)
        return 0

    def bar_address(self, bar: int) -> int:
        cfg = self.state.pci_config
        lo = _le(cfg, PCI_BASE_ADDRESS_0 + 4 * bar, 4) & ~0xF
        if bar == MODERN_BAR:
            return lo | _le(cfg, PCI_BASE_ADDRESS_0 + 4 * (bar + 1), 4) << 32
        return lo

    @property
    def memory_enabled(self) -> bool:
        return bool(_le(self.state.pci_config, PCI_COMMAND, 2) & PCI_COMMAND_MEMORY)

    def _decode(self, addr: int) -> tuple[int, int] | None:
        if not self.memory_enabled:
            return None
        for bar, size in ((MODERN_BAR, MODERN_BAR_SIZE), (MSIX_BAR, MSIX_BAR_SIZE)):
            base = self.bar_address(bar)
            if base and base <= addr < base + size:
                return bar, addr - base
        return None

    def claims(self, addr: int) -> bool:
        return self._decode(addr) is not None

    def mmio_read(self, addr: int, size: int) -> int | None:
        """A guest read at ``addr``; None when no BAR of this function decodes it."""
        hit = self._decode(addr)
        return None if hit is None else self.bar_read(hit[0], hit[1], size)

    def mmio_write(self, addr: int, size: int, value: int) -> bool:
        hit = self._decode(addr)
        if hit is None:
            return False
        self.bar_write(hit[0], hit[1], size, value)
        return True

    # -- BARs ----------
    def bar_read(self, bar: int, offset: int, size: int) -> int:
        if size not in (1, 2, 4, 8):
            return 0
        if bar == MODERN_BAR:
            region, off = divmod(offset, REGION_SIZE)
            if region == 0:
                return self._common_read(off, size)
            if region == 1:
                return self._isr_read() if off == 0 else 0
            if region == 2:
                data = self.vdev.config_bytes()
                return _le(data, off, size) if off + size <= len(data) else 0
            return 0
        if bar == MSIX_BAR:
            st = self.state
            if MSIX_TABLE_OFFSET <= offset and offset + size <= len(st.msix_table):
                return _le(st.msix_table, offset, size)
            if MSIX_PBA_OFFSET <= offset and offset + size <= MSIX_PBA_OFFSET + len(st.msix_pba):
                return _le(st.msix_pba, offset - MSIX_PBA_OFFSET, size)
        return 0

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4, 8):
            return
        if bar == MODERN_BAR:
            region, off = divmod(offset, REGION_SIZE)
            if region == 0:
                self._common_write(off, size, value)
            elif region == 2:
                self.vdev.config_write(off, value.to_bytes(size, "little"))
            elif region == 3:
                q, rem = divmod(off, NOTIFY_OFF_MULTIPLIER)
                if rem == 0 and q < self.vdev.num_queues:
                    self.notify(q)
        elif bar == MSIX_BAR:
            table = self.state.msix_table
            if MSIX_TABLE_OFFSET <= offset and offset + size <= len(table):
                _put(table, offset, size, value)
                self._msix_deliver_pending()

    # -- common configuration (§4.1.4.3) ---------------------------------------------------------
    def _common_bytes(self) -> bytes:
        st, vdev = self.state, self.vdev
        vst = vdev.state
        sel = st.queue_select
        vq = vdev.queue(sel)

        def window(value: int, select: int) -> int:
            return (value >> (32 * select)) & 0xFFFFFFFF if select < 2 else 0

        return _COMMON.pack(
            st.device_feature_select, window(vdev.host_features(), st.device_feature_select),
            st.driver_feature_select, window(vst.driver_features, st.driver_feature_select),
            vst.msix_config, vdev.num_queues, vst.device_status, vst.config_generation,
            sel,
            vq.size if vq else 0, vq.msix_vector if vq else NO_VECTOR,
            int(vq.enable) if vq else 0, sel if vq else 0,
            vq.desc if vq else 0, vq.driver if vq else 0, vq.device if vq else 0,
            0, 0)

    def _common_read(self, off: int, size: int) -> int:
        data = self._common_bytes()
        return _le(data, off, size) if off + size <= len(data) else 0

    def _common_write(self, off: int, size: int, value: int) -> None:
        st, vdev = self.state, self.vdev
        sel = st.queue_select
        if off == COMMON_DFSELECT and size == 4:
            st.device_feature_select = value
        elif off == COMMON_GFSELECT and size == 4:
            st.driver_feature_select = value
        elif off == COMMON_GF and size == 4:
            vdev.set_driver_features(st.driver_feature_select, value)
        elif off == COMMON_MSIX and size == 2:
            vdev.state.msix_config = self._vector(value)
        elif off == COMMON_STATUS and size == 1:
            vdev.set_status(value)
            if value == 0:
                st.device_feature_select = st.driver_feature_select = st.queue_select = 0
            self.update_interrupts()
        elif off == COMMON_Q_SELECT and size == 2:
            st.queue_select = value
        elif off == COMMON_Q_SIZE and size == 2:
            vdev.set_queue_size(sel, value)
        elif off == COMMON_Q_MSIX and size == 2:
            vq = vdev.queue(sel)
            if vq is not None:
                vq.msix_vector = self._vector(value)
        elif off == COMMON_Q_ENABLE and size == 2:
            vdev.set_queue_enable(sel, value)
        else:
            for lo, hi, which in ((COMMON_Q_DESCLO, COMMON_Q_DESCHI, "desc"),
                                  (COMMON_Q_AVAILLO, COMMON_Q_AVAILHI, "driver"),
                                  (COMMON_Q_USEDLO, COMMON_Q_USEDHI, "device")):
                if off == lo and size == 8:
                    vdev.set_queue_addr(sel, which, value)
                elif off in (lo, hi) and size == 4:
                    vdev.set_queue_addr(sel, which, value, half=int(off == hi))

    def _vector(self, value: int) -> int:
        """A vector the table has, else NO_VECTOR (what the driver reads back
        to learn the mapping failed)."""
        return value if value < self.nvectors else NO_VECTOR

    def _isr_read(self) -> int:
        vst = self.vdev.state
        value = vst.isr
        vst.isr = 0
        self.update_interrupts()
        return value

    def notify(self, queue: int) -> None:
        """The driver wrote to queue ``queue``'s notification address."""
        self.vdev.handle_kick(queue)

    # -- interrupts ----------
    @property
    def msix_enabled(self) -> bool:
        return bool(_le(self.state.pci_config, CAP_MSIX + 2, 2) & PCI_MSIX_FLAGS_ENABLE)

    def _msix_function_masked(self) -> bool:
        return bool(_le(self.state.pci_config, CAP_MSIX + 2, 2) & PCI_MSIX_FLAGS_MASKALL)

    def msix_masked(self, vector: int) -> bool:
        ctrl = self.state.msix_table[vector * PCI_MSIX_ENTRY_SIZE + 12]
        return self._msix_function_masked() or bool(ctrl & PCI_MSIX_ENTRY_CTRL_MASKBIT)

    def _pending(self, vector: int) -> bool:
        return bool(self.state.msix_pba[vector // 8] >> (vector % 8) & 1)

    def _set_pending(self, vector: int, on: bool) -> None:
        pba = self.state.msix_pba
        if on:
            pba[vector // 8] |= 1 << (vector % 8)
        else:
            pba[vector // 8] &= ~(1 << (vector % 8)) & 0xFF

    def raise_interrupt(self, vector: int) -> None:
        """What a virtio device calls after setting its ISR bits."""
        if self.msix_enabled:
            if vector != NO_VECTOR and vector < self.nvectors:
                self.msix_notify(vector)
        self.update_interrupts()

    def msix_notify(self, vector: int) -> None:
        if self.msix_masked(vector):
            self._set_pending(vector, True)
            return
        self._send_msi(vector)

    def _send_msi(self, vector: int) -> None:
        entry = self.state.msix_table[vector * PCI_MSIX_ENTRY_SIZE:
                                      (vector + 1) * PCI_MSIX_ENTRY_SIZE]
        addr = _le(entry, 0, 8)
        data = _le(entry, 8, 4)
        self.msi_log.append((addr, data))
        machine = find_machine(self)
        mem = as_guest_memory(machine.memory) if machine is not None else None
        if mem is not None and mem.contains(addr, 4):
            mem.write_u32(addr, data)  # a DMA write into guest RAM
        if self.on_msi is not None:
            self.on_msi(addr, data)

    def _msix_deliver_pending(self) -> None:
        if not self.msix_enabled:
            return
        for v in range(self.nvectors):
            if self._pending(v) and not self.msix_masked(v):
                self._set_pending(v, False)
                self._send_msi(v)

    def update_interrupts(self) -> None:
        """Recompute INTx: asserted while the ISR is set, MSI-X is off and the
        driver did not disable INTx in the command register."""
        level = bool(self.vdev.state.isr & (ISR_QUEUE | ISR_CONFIG)) and not self.msix_enabled \
            and not _le(self.state.pci_config, PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE
        if level and not self._intx:
            self.intx_raised += 1
        self._intx = level

    @property
    def intx_level(self) -> bool:
        return self._intx

    # -- migration ----------
    def post_load(self) -> None:
        st = self.state
        where = _where(self)
        if len(st.msix_table) != self.nvectors * PCI_MSIX_ENTRY_SIZE or \
                len(st.msix_pba) != pba_size(self.nvectors):
            raise VirtioPciError(
                f"{where}: the source has {len(st.msix_table) // PCI_MSIX_ENTRY_SIZE} MSI-X "
                f"vectors, this build has {self.nvectors}")
        fresh, _w, cmask = build_config(self.vdev, self.nvectors)
        for i in range(256):
            if (st.pci_config[i] ^ fresh[i]) & cmask[i]:
                raise VirtioPciError(
                    f"{where}: PCI config mismatch at {i:#04x}: the source has "
                    f"{st.pci_config[i]:#04x}, this build's {self.vdev.TYPE} behind virtio-pci "
                    f"has {fresh[i]:#04x} (read-only bits must agree)")
        st.pci_config = bytearray(st.pci_config)
        st.msix_table = bytearray(st.msix_table)
        st.msix_pba = bytearray(st.msix_pba)
        self._intx = bool(self.vdev.state.isr & (ISR_QUEUE | ISR_CONFIG)) \
            and not self.msix_enabled \
            and not _le(st.pci_config, PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE


def _where(obj: Any) -> str:
    host = getattr(obj, "_host", None)
    return host.path if host is not None else obj.path


def _check_access(offset: int, size: int, limit: int) -> None:
    if size not in (1, 2, 4) or not 0 <= offset <= limit - size:
        raise ValueError(f"bad configuration space access: {size} bytes at {offset:#x}")


def _create_backend(name: str, props: dict[str, Any]) -> VirtioDevice:
    cls = BACKEND_CLASSES.get(name)
    if cls is None:
        from migtree.plugins import get_registry

        registry = get_registry()
        info = registry.types.get(name)
        if info is None or not registry.types.is_a(name, VirtioDevice.TYPE):
            raise VirtioConfigError(f"backend {name!r} is not a registered virtio device type")
        return registry.types.create(name, **props)
    return cls(**props)
