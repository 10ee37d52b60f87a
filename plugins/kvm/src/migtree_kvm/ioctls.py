"""Thin, typed wrappers over the KVM ioctls of ``<linux/kvm.h>``, from Python.

Three classes own one file descriptor each:

- :class:`Kvm` -- the system fd from opening ``/dev/kvm``;
- :class:`Vm` -- a VM fd from ``KVM_CREATE_VM``;
- :class:`Vcpu` -- a vCPU fd from ``KVM_CREATE_VCPU``.

Each is a context manager, and ``close()`` is idempotent. A parent remembers
what it created and closes it first: closing a :class:`Vm` closes its vCPUs,
closing a :class:`Kvm` closes its VMs. Nothing waits for the garbage
collector; an object that is collected while still open closes its fd and
emits a :class:`ResourceWarning`, as Python's own files do.

A failed ioctl raises :class:`KvmError`, whose message names the ioctl and
the errno: ``KVM_SET_LAPIC failed: [Errno 22] Invalid argument``. After
``close()`` the object holds fd ``-1``, so a later ioctl fails with
``EBADF`` instead of reaching whatever file reused the number.

When ``/dev/kvm`` cannot be opened, :class:`Kvm` raises
:class:`KvmUnavailable` with the message
``KVM is not available: /dev/kvm: Permission denied`` (path, then strerror).

Request numbers are computed from ``<asm-generic/ioctl.h>``'s ``_IO``/
``_IOR``/``_IOW``/``_IOWR`` encoding with ``KVMIO = 0xAE`` and the sizes of
the ctypes structures below, each laid out like the header struct it names.
Only x86-64 is supported (``struct kvm_lapic_state`` and the MSR ioctls are
x86 only).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import warnings
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Self, TypeVar

from migtree.errors import MigtreeError

__all__ = [
    "KVM_PATH",
    "KVM_API_VERSION",
    "KVM_APIC_REG_SIZE",
    "MSR_IA32_APICBASE",
    "KvmError",
    "KvmUnavailable",
    "KvmLapicState",
    "KvmMsrEntry",
    "KvmMsi",
    "KvmMpState",
    "MP_STATE_NAMES",
    "Kvm",
    "Vm",
    "Vcpu",
    "kvm_available",
]

#: where the KVM device lives
KVM_PATH = "/dev/kvm"
#: the only stable KVM API version (``KVM_API_VERSION`` in <linux/kvm.h>)
KVM_API_VERSION = 12
#: ``KVM_APIC_REG_SIZE`` in <asm/kvm.h>: the size of the LAPIC register page
KVM_APIC_REG_SIZE = 0x400
#: the IA32_APIC_BASE MSR index (``MSR_IA32_APICBASE`` in <asm/msr-index.h>)
MSR_IA32_APICBASE = 0x1B

# --- <asm-generic/ioctl.h> request encoding --------------------------------

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    if size >= 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument size {size} does not fit {_IOC_SIZEBITS} bits")
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, struct: type[ctypes.Structure]) -> int:
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(struct))


def _IOW(type_: int, nr: int, struct: type[ctypes.Structure]) -> int:
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(struct))


def _IOWR(type_: int, nr: int, struct: type[ctypes.Structure]) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(struct))


KVMIO = 0xAE

# --- structures --------------------------------------------------------------


class KvmLapicState(ctypes.Structure):
    """``struct kvm_lapic_state`` (<asm/kvm.h>): ``char regs[KVM_APIC_REG_SIZE]``.

    ``regs`` is declared as unsigned bytes, not ``c_char``, because ctypes
    cuts a ``c_char`` array at its first NUL when read.
    """

    _fields_ = [("regs", ctypes.c_uint8 * KVM_APIC_REG_SIZE)]


class KvmMsrEntry(ctypes.Structure):
    """``struct kvm_msr_entry`` (<asm/kvm.h>): ``__u32 index, reserved; __u64 data``."""

    _fields_ = [
        ("index", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("data", ctypes.c_uint64),
    ]


class KvmMsrs(ctypes.Structure):
    """``struct kvm_msrs`` (<asm/kvm.h>) without its flexible ``entries[]``.

    Its size (8) is the one the ``KVM_GET_MSRS``/``KVM_SET_MSRS`` request
    numbers encode; :func:`_msrs_buffer` builds the header followed by ``n``
    entries for an actual call.
    """

    _fields_ = [("nmsrs", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


def _msrs_buffer(n: int) -> ctypes.Structure:
    class _KvmMsrsN(ctypes.Structure):
        # struct kvm_msrs followed by n struct kvm_msr_entry
        _fields_ = [
            ("nmsrs", ctypes.c_uint32),
            ("pad", ctypes.c_uint32),
            ("entries", KvmMsrEntry * n),
        ]

    buf = _KvmMsrsN()
    buf.nmsrs = n
    return buf


class KvmMsi(ctypes.Structure):
    """``struct kvm_msi`` (<linux/kvm.h>): an MSI message for ``KVM_SIGNAL_MSI``."""

    _fields_ = [
        ("address_lo", ctypes.c_uint32),
        ("address_hi", ctypes.c_uint32),
        ("data", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("devid", ctypes.c_uint32),
        ("pad", ctypes.c_uint8 * 12),
    ]


class KvmMpState(ctypes.Structure):
    """``struct kvm_mp_state`` (<linux/kvm.h>): ``__u32 mp_state``."""

    _fields_ = [("mp_state", ctypes.c_uint32)]


# ``mp_state`` values (<linux/kvm.h>, "for KVM_SET_MP_STATE"); the x86 ones
# are RUNNABLE, UNINITIALIZED, INIT_RECEIVED, HALTED, SIPI_RECEIVED and
# AP_RESET_HOLD, the others belong to s390 and RISC-V
KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4
KVM_MP_STATE_STOPPED = 5
KVM_MP_STATE_CHECK_STOP = 6
KVM_MP_STATE_OPERATING = 7
KVM_MP_STATE_LOAD = 8
KVM_MP_STATE_AP_RESET_HOLD = 9
KVM_MP_STATE_SUSPENDED = 10

#: ``mp_state`` value -> its name without the ``KVM_MP_STATE_`` prefix
MP_STATE_NAMES = {
    value: name.removeprefix("KVM_MP_STATE_")
    for name, value in dict(globals()).items()
    if name.startswith("KVM_MP_STATE_")
}


# --- request numbers (<linux/kvm.h>) ------------------------------------------

# system ioctls (on the /dev/kvm fd)
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)  # also a VM ioctl
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
# VM ioctls
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_SIGNAL_MSI = _IOW(KVMIO, 0xA5, KvmMsi)
# vCPU ioctls
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, KvmMsrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, KvmMsrs)
KVM_GET_LAPIC = _IOR(KVMIO, 0x8E, KvmLapicState)
KVM_SET_LAPIC = _IOW(KVMIO, 0x8F, KvmLapicState)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, KvmMpState)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, KvmMpState)

# capabilities for KVM_CHECK_EXTENSION (<linux/kvm.h>)
KVM_CAP_IRQCHIP = 0
KVM_CAP_NR_VCPUS = 9
KVM_CAP_MP_STATE = 14
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_TSC_DEADLINE_TIMER = 72
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_X2APIC_API = 129

# --- errors ------------------------------------------------------------------


class KvmUnavailable(MigtreeError):
    """``/dev/kvm`` is missing, not accessible, or speaks another API version.

    ``str()`` is ``KVM is not available: /dev/kvm: Permission denied``.
    """

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"KVM is not available: {path}: {reason}")


class KvmError(MigtreeError, OSError):
    """A KVM ioctl failed.

    ``ioctl`` is the ioctl's name, ``errno``/``strerror`` the kernel's answer.
    ``str()`` is ``KVM_SET_LAPIC failed: [Errno 22] Invalid argument``.

    ``KVM_GET_MSRS``/``KVM_SET_MSRS`` report a rejected MSR by returning how
    many entries they processed, not with an errno: then ``errno`` is
    ``None`` and the message names the MSR the kernel stopped at.
    """

    def __init__(self, ioctl: str, errno: int | None, detail: str | None = None):
        strerror = os.strerror(errno) if errno is not None else None
        super().__init__(errno, strerror)
        self.ioctl = ioctl
        self.detail = detail

    def __str__(self) -> str:
        if self.errno is None:
            return f"{self.ioctl} failed: {self.detail}"
        text = f"{self.ioctl} failed: [Errno {self.errno}] {self.strerror}"
        return f"{text} ({self.detail})" if self.detail else text

    def __reduce__(self):  # keep pickling (e.g. pytest-xdist) faithful
        return (type(self), (self.ioctl, self.errno, self.detail))


# --- fd ownership ------------------------------------------------------------


def _ioctl(
    fd: int, name: str, request: int, arg: int | ctypes.Structure = 0, *,
    detail: str | None = None,
) -> int:
    """Run one ioctl and return its non-negative result; raise :class:`KvmError`.

    A closed object's fd is -1; the kernel would answer ``EBADF`` for it, so
    that is raised here without the call (Python refuses negative fds).
    """
    if fd < 0:
        raise KvmError(name, errno.EBADF, detail)
    try:
        if isinstance(arg, int):
            return fcntl.ioctl(fd, request, arg)
        return fcntl.ioctl(fd, request, arg, True)
    except OSError as exc:
        raise KvmError(name, exc.errno, detail) from None


class _Fd:
    """Owns one file descriptor and the children created through it."""

    _kind = "fd"

    def __init__(self, fd: int):
        self._fd = fd
        self._children: list[_Fd] = []

    def fileno(self) -> int:
        """The file descriptor, or -1 once closed."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the children this object created, then its own fd. Idempotent."""
        children, self._children = self._children, []
        for child in reversed(children):
            child.close()
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def _adopt(self, child: _F) -> _F:
        self._children = [c for c in self._children if not c.closed]
        self._children.append(child)
        return child

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1)
            try:
                os.close(self._fd)
            finally:
                self._fd = -1

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<{type(self).__name__} {state}>"


_F = TypeVar("_F", bound=_Fd)


class Kvm(_Fd):
    """The KVM system fd: ``open("/dev/kvm", O_RDWR | O_CLOEXEC)``.

    :raises KvmUnavailable: the device is missing or not accessible, or its
        API version is not 12.
    """

    def __init__(self, path: str = KVM_PATH):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise KvmUnavailable(path, exc.strerror or os.strerror(exc.errno)) from None
        super().__init__(fd)
        self.path = path
        try:
            version = self.api_version()
        except KvmError as exc:
            self.close()
            raise KvmUnavailable(path, str(exc)) from None
        if version != KVM_API_VERSION:
            self.close()
            raise KvmUnavailable(path, f"KVM API version {version}, expected {KVM_API_VERSION}")

    def api_version(self) -> int:
        """``KVM_GET_API_VERSION``: 12 on every kernel since 2.6.22."""
        return _ioctl(self._fd, "KVM_GET_API_VERSION", KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on the system fd: 0 if unsupported, else a cap-specific value."""
        return _ioctl(self._fd, "KVM_CHECK_EXTENSION", KVM_CHECK_EXTENSION, cap)

    def vcpu_mmap_size(self) -> int:
        """``KVM_GET_VCPU_MMAP_SIZE``: the size of a vCPU's shared ``kvm_run`` area."""
        return _ioctl(self._fd, "KVM_GET_VCPU_MMAP_SIZE", KVM_GET_VCPU_MMAP_SIZE)

    def create_vm(self, machine_type: int = 0) -> Vm:
        """``KVM_CREATE_VM``: a new, empty VM (no memory, no vCPUs, no irqchip)."""
        fd = _ioctl(self._fd, "KVM_CREATE_VM", KVM_CREATE_VM, machine_type)
        return self._adopt(Vm(fd))


class Vm(_Fd):
    """A VM fd from ``KVM_CREATE_VM``. Create it with :meth:`Kvm.create_vm`."""

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on the VM fd (answers for this VM's type)."""
        return _ioctl(self._fd, "KVM_CHECK_EXTENSION", KVM_CHECK_EXTENSION, cap)

    def create_irqchip(self) -> None:
        """``KVM_CREATE_IRQCHIP``: in-kernel PIC, IOAPIC and a LAPIC per vCPU.

        Must come before the first :meth:`create_vcpu` (after it the kernel
        answers ``EINVAL``): a vCPU created without it has no in-kernel LAPIC
        and ``KVM_GET_LAPIC`` on it fails.
        """
        _ioctl(self._fd, "KVM_CREATE_IRQCHIP", KVM_CREATE_IRQCHIP)

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        """``KVM_CREATE_VCPU``: vCPU ``vcpu_id`` (its initial APIC ID in xAPIC mode)."""
        fd = _ioctl(self._fd, "KVM_CREATE_VCPU", KVM_CREATE_VCPU, vcpu_id)
        return self._adopt(Vcpu(fd, vcpu_id))

    def signal_msi(self, address: int, data: int) -> int:
        """``KVM_SIGNAL_MSI``: deliver an MSI through the in-kernel irqchip.

        :return: ``> 0`` delivered to that many LAPICs, ``0`` blocked by the
            guest (e.g. a software-disabled LAPIC).
        """
        msi = KvmMsi(address_lo=address & 0xFFFFFFFF, address_hi=address >> 32, data=data)
        return _ioctl(self._fd, "KVM_SIGNAL_MSI", KVM_SIGNAL_MSI, msi)


class Vcpu(_Fd):
    """A vCPU fd from ``KVM_CREATE_VCPU``. Create it with :meth:`Vm.create_vcpu`."""

    def __init__(self, fd: int, vcpu_id: int):
        super().__init__(fd)
        self.vcpu_id = vcpu_id

    def get_lapic(self) -> bytes:
        """``KVM_GET_LAPIC``: the in-kernel LAPIC's 1 KiB register page.

        The kernel fills the current-count register (offset 0x390) with the
        count it computes at the time of the call.
        """
        state = KvmLapicState()
        _ioctl(self._fd, "KVM_GET_LAPIC", KVM_GET_LAPIC, state)
        return bytes(state.regs)

    def set_lapic(self, page: bytes) -> None:
        """``KVM_SET_LAPIC``: load a 1 KiB register page into the in-kernel LAPIC.

        The kernel recomputes the registers it owns (see
        :func:`migtree_kvm.lapic_map.kernel_computed`) and restarts the timer
        from its initial count.
        """
        if len(page) != KVM_APIC_REG_SIZE:
            raise ValueError(f"a LAPIC page is {KVM_APIC_REG_SIZE} bytes, not {len(page)}")
        state = KvmLapicState()
        ctypes.memmove(state.regs, bytes(page), KVM_APIC_REG_SIZE)
        _ioctl(self._fd, "KVM_SET_LAPIC", KVM_SET_LAPIC, state)

    def get_mp_state(self) -> int:
        """``KVM_GET_MP_STATE``: the vCPU's multiprocessing state.

        With the in-kernel irqchip a new vCPU is ``KVM_MP_STATE_RUNNABLE``
        if it is the BSP, else ``KVM_MP_STATE_UNINITIALIZED`` (waiting for
        INIT/SIPI); an INIT makes an AP ``KVM_MP_STATE_INIT_RECEIVED``. The
        kernel first processes the INIT/SIPI events pending for the vCPU.
        """
        state = KvmMpState()
        _ioctl(self._fd, "KVM_GET_MP_STATE", KVM_GET_MP_STATE, state)
        return state.mp_state

    def set_mp_state(self, mp_state: int) -> None:
        """``KVM_SET_MP_STATE``: set the vCPU's multiprocessing state.

        :raises KvmError: the kernel refused the value (``EINVAL``: not an x86
            state, or one it does not allow now).
        """
        if type(mp_state) is not int or not 0 <= mp_state <= 0xFFFFFFFF:
            raise ValueError(f"mp_state must be a u32, not {mp_state!r}")
        state = KvmMpState(mp_state=mp_state)
        _ioctl(self._fd, "KVM_SET_MP_STATE", KVM_SET_MP_STATE, state,
               detail=f"mp_state {MP_STATE_NAMES.get(mp_state, mp_state)}")

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """``KVM_GET_MSRS``: read MSRs by index.

        :raises KvmError: the kernel stopped at an MSR it does not know
            (``errno`` is ``None``; the message names the MSR).
        """
        wanted = list(indices)
        buf = _msrs_buffer(len(wanted))
        for entry, index in zip(buf.entries, wanted, strict=True):
            entry.index = index
        done = _ioctl(self._fd, "KVM_GET_MSRS", KVM_GET_MSRS, buf)
        if done != len(wanted):
            raise KvmError(
                "KVM_GET_MSRS",
                None,
                f"MSR {wanted[done]:#x} rejected, {done} of {len(wanted)} read",
            )
        return {entry.index: entry.data for entry in buf.entries}

    def set_msrs(self, values: Mapping[int, int]) -> None:
        """``KVM_SET_MSRS``: write MSRs (as the host: ``host_initiated``).

        :raises KvmError: the kernel rejected an MSR or value (``errno`` is
            ``None``; the message names the MSR and value).
        """
        items = list(values.items())
        buf = _msrs_buffer(len(items))
        for entry, (index, data) in zip(buf.entries, items, strict=True):
            entry.index = index
            entry.data = data
        done = _ioctl(self._fd, "KVM_SET_MSRS", KVM_SET_MSRS, buf)
        if done != len(items):
            index, data = items[done]
            raise KvmError(
                "KVM_SET_MSRS",
                None,
                f"MSR {index:#x} = {data:#x} rejected, {done} of {len(items)} written",
            )

    def get_apic_base(self) -> int:
        """IA32_APIC_BASE (MSR 0x1b): base, enable (bit 11), x2APIC (bit 10), BSP (bit 8)."""
        return self.get_msrs([MSR_IA32_APICBASE])[MSR_IA32_APICBASE]

    def set_apic_base(self, value: int) -> None:
        """Write IA32_APIC_BASE; the kernel rejects reserved bits and invalid mode changes."""
        self.set_msrs({MSR_IA32_APICBASE: value})


def kvm_available(path: str = KVM_PATH) -> tuple[bool, str]:
    """Whether :class:`Kvm` can be opened here, and if not the exact reason.

    :return: ``(True, "")``, or ``(False, str(KvmUnavailable(...)))`` -- the
        reason tests give when they skip.
    """
    try:
        with Kvm(path):
            return True, ""
    except KvmUnavailable as exc:
        return False, str(exc)
