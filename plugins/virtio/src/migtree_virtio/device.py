"""The transport-independent part of every virtio device (QEMU's
``VirtIODevice``): status, feature negotiation, ISR, virtqueue registers,
reset, and ``virtio_error`` — the device's answer to a guest that breaks the
rules (virtio 1.2 §2.1.2: set ``DEVICE_NEEDS_RESET`` and notify a
configuration change; QEMU also marks the device ``broken`` so it processes
nothing until the driver resets it).

A device talks to its transport (``self.bus``, a :class:`migtree_virtio.pci.VirtioPci`)
only through ``bus.raise_interrupt(vector)``, so any transport can carry any
virtio device.
"""

from __future__ import annotations

from typing import Any, ClassVar

from migtree.errors import MigtreeError
from migtree.memory import GuestMemory, as_guest_memory
from migtree.qom import Device, Machine

from .constants import (
    F_RING_INDIRECT_DESC,
    F_VERSION_1,
    ISR_CONFIG,
    ISR_QUEUE,
    NO_VECTOR,
    QUEUE_MAX,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET,
)
from .state import MAX_QUEUES, VirtqueueState
from .virtqueue import is_power_of_2, wants_interrupt


class VirtioConfigError(MigtreeError):
    """A device was configured (props) or loaded (state) inconsistently."""


def find_machine(obj: Any) -> Machine | None:
    """The machine ``obj`` belongs to, also through the ``_host`` link of the
    objects a combined device keeps inside itself."""
    while obj is not None:
        if isinstance(obj, Machine):
            return obj
        obj = obj.parent if obj.parent is not None else getattr(obj, "_host", None)
    return None


class VirtioDevice(Device):
    """Abstract base of virtio devices (QOM ``virtio-device``)."""

    TYPE = "virtio-device"
    PARENT = "device"
    ABSTRACT = True
    STATE: ClassVar[type | None] = None
    #: the virtio device ID (§5): 2 for block
    DEVICE_ID: ClassVar[int] = 0
    #: PCI class code a PCI transport shows for this device
    PCI_CLASS: ClassVar[int] = 0xFF00

    def __init__(self, *, num_queues: int = 1, queue_size: int = 256) -> None:
        if not 1 <= num_queues <= MAX_QUEUES:
            raise VirtioConfigError(f"num_queues must be 1..{MAX_QUEUES}, got {num_queues}")
        if not (is_power_of_2(queue_size) and queue_size <= QUEUE_MAX):
            raise VirtioConfigError(f"queue_size must be a power of 2 up to {QUEUE_MAX}, "
                                    f"got {queue_size}")
        super().__init__()
        self.num_queues = num_queues
        self.queue_max_size = queue_size
        #: the transport, set when a transport plugs this device
        self.bus: Any = None
        #: every virtio_error message, oldest first (host-side, not migrated)
        self.errors: list[str] = []
        #: what a driver's notification does: "process" (take and complete
        #: every available request at once), "take" (take them, complete later
        #: as an asynchronous backend would) or "none" (the test steps the device)
        self.on_kick = "process"
        self.reset()

    # -- what a subclass provides ----------
    def host_features(self) -> int:
        return 1 << F_VERSION_1

    def config_bytes(self) -> bytes:
        """The device-specific configuration space as the driver reads it."""
        return b""

    def config_write(self, offset: int, data: bytes) -> None:
        """A driver write to the device configuration (read-only by default)."""

    def handle_kick(self, queue: int) -> None:
        """The driver notified ``queue``."""

    def device_reset(self) -> None:
        """Drop device-specific runtime state on reset."""

    @property
    def where(self) -> str:
        """The path to name in messages: the combined device's for its insides."""
        top = self
        while top.parent is not None:
            top = top.parent
        host = getattr(top, "_host", None)
        return host.path if host is not None else self.path

    # -- guest memory ----------
    @property
    def memory(self) -> GuestMemory:
        machine = find_machine(self)
        mem = as_guest_memory(machine.memory) if machine is not None else None
        if mem is None:
            raise MigtreeError(f"{self.where}: {self.TYPE} has no guest memory: the build "
                               "must give the machine guest RAM before a virtio device runs")
        return mem

    # -- feature negotiation and status (§2.1, §2.2, §3.1.1) --------------------------------
    def has_feature(self, bit: int) -> bool:
        return bool(self.state.driver_features >> bit & 1)

    def set_driver_features(self, select: int, value: int) -> None:
        """The driver writes 32 feature bits at window ``select`` (0 or 1).
        Bits the device did not offer are dropped; writes after FEATURES_OK
        are ignored (QEMU's virtio_set_features refuses them)."""
        if self.state.device_status & STATUS_FEATURES_OK or select > 1:
            return
        shift = 32 * select
        mask = 0xFFFFFFFF << shift
        feats = (self.state.driver_features & ~mask) | ((value & 0xFFFFFFFF) << shift)
        self.state.driver_features = feats & self.host_features()

    def set_status(self, value: int) -> None:
        st = self.state
        value &= 0xFF
        if value == 0:
            self.reset()
            return
        if value & STATUS_FEATURES_OK and not st.device_status & STATUS_FEATURES_OK:
            if not self.has_feature(F_VERSION_1):
                value &= ~STATUS_FEATURES_OK  # a modern-only device needs VERSION_1
        if st.broken:
            value |= STATUS_NEEDS_RESET
        st.device_status = value

    @property
    def ready(self) -> bool:
        """DRIVER_OK set and not broken: the device may process queues."""
        return bool(self.state.device_status & STATUS_DRIVER_OK) and not self.state.broken

    def reset(self) -> None:
        """Device reset (the driver wrote 0 to device_status)."""
        st = self.state
        st.device_status = 0
        st.isr = 0
        st.driver_features = 0
        st.msix_config = NO_VECTOR
        st.broken = False
        st.queues = [VirtqueueState(size=self.queue_max_size) for _ in range(self.num_queues)]
        self.device_reset()
        if self.bus is not None:
            self.bus.update_interrupts()

    # -- errors and interrupts ----------
    def virtio_error(self, message: str) -> None:
        """The guest broke the rules: stop processing until reset, tell the
        driver through DEVICE_NEEDS_RESET and a configuration interrupt."""
        self.errors.append(message)
        self.state.broken = True
        if self.has_feature(F_VERSION_1):
            self.state.device_status |= STATUS_NEEDS_RESET
            self.notify_config()

    def notify_config(self) -> None:
        if not self.state.device_status & STATUS_DRIVER_OK:
            return
        self.state.isr |= ISR_CONFIG
        self.state.config_generation = (self.state.config_generation + 1) & 0xFF
        if self.bus is not None:
            self.bus.raise_interrupt(self.state.msix_config)

    def notify_queue(self, index: int) -> None:
        vq = self.state.queues[index]
        if not wants_interrupt(self.memory, vq):
            return
        self.state.isr |= ISR_QUEUE
        if self.bus is not None:
            self.bus.raise_interrupt(vq.msix_vector)

    # -- queue registers, as a transport writes them ------------------------------------------
    def queue(self, index: int) -> VirtqueueState | None:
        return self.state.queues[index] if 0 <= index < len(self.state.queues) else None

    def set_queue_size(self, index: int, size: int) -> None:
        vq = self.queue(index)
        if vq is None or vq.enable:
            return
        if is_power_of_2(size) and size <= self.queue_max_size:
            vq.size = size

    def set_queue_enable(self, index: int, value: int) -> None:
        vq = self.queue(index)
        if vq is None or not value:
            return  # writing 0 is not allowed (§4.1.4.3.2); reset disables
        vq.enable = True

    def set_queue_addr(self, index: int, which: str, value: int, half: int | None = None) -> None:
        vq = self.queue(index)
        if vq is None or vq.enable:
            return
        old = getattr(vq, which)
        if half is None:
            new = value & 0xFFFFFFFFFFFFFFFF
        else:
            shift = 32 * half
            new = (old & ~(0xFFFFFFFF << shift)) | ((value & 0xFFFFFFFF) << shift)
        setattr(vq, which, new)

    @property
    def indirect(self) -> bool:
        return self.has_feature(F_RING_INDIRECT_DESC)

    # -- migration ----------
    def check_loaded_state(self) -> None:
        """Refuse a state this build cannot run (raises; the core then gives
        every object its previous state back)."""
        st = self.state
        if len(st.queues) != self.num_queues:
            raise VirtioConfigError(
                f"{self.where}: the source device has {len(st.queues)} queues, this build's "
                f"has {self.num_queues}")
        extra = st.driver_features & ~self.host_features()
        if extra:
            raise VirtioConfigError(
                f"{self.where}: the driver negotiated features {extra:#x} that this build's "
                "device does not offer")
        for i, vq in enumerate(st.queues):
            if not (is_power_of_2(vq.size) and vq.size <= self.queue_max_size):
                raise VirtioConfigError(f"{self.where}: queue {i} has size {vq.size}, this "
                                        f"build allows powers of 2 up to {self.queue_max_size}")
