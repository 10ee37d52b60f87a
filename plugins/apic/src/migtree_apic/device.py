"""A userspace local APIC (xAPIC mode) and the ``x86-cpu`` that holds it.

The model follows QEMU's ``hw/intc/apic.c`` / ``apic_common.c`` and the Intel
SDM vol. 3 ("Advanced Programmable Interrupt Controller"); where the two
differ, the docstrings say which one it follows and why. Everything a guest
or a CPU can observe is derived from :class:`~migtree_apic.state.ApicState`
(QEMU's ``apic`` VMState) and the machine's virtual clock, so a state loaded
on another build carries on exactly where the source stopped.

The test (or a CPU model) drives it the way QEMU's CPU and buses do:

* ``read(offset)`` / ``write(offset, value)``: 32-bit accesses to the
  register page at its MMIO offsets (``0x20`` ID ... ``0x3E0`` divide
  configuration);
* ``get_base()`` / ``set_base(value)``: RDMSR/WRMSR of IA32_APIC_BASE;
* ``set_irq(vector, level_triggered)``: a fixed interrupt message from an
  I/O APIC or an MSI (QEMU's ``apic_set_irq``); :func:`deliver_irq` routes a
  message by destination like QEMU's ``apic_deliver_irq``;
* ``raise_lint(pin)`` / ``lower_lint(pin)`` / ``local_interrupt(lvt)``: the
  local interrupt sources of the local vector table;
* ``interrupt_pending`` and ``get_interrupt()``: the CPU's INTR line and its
  interrupt acknowledge (QEMU's ``CPU_INTERRUPT_HARD`` and
  ``apic_get_interrupt``);
* listeners for what leaves the APIC: the INTR level, EOI broadcasts (to the
  I/O APIC) and NMI/SMI/INIT/SIPI/ExtINT signals to the CPU.

Listeners are notifications: they must not call back into the APIC; the
CPU acts after the call that raised them returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from migtree.qom import Device

from .state import (
    APIC_DEFAULT_ADDRESS,
    APIC_LVT_NB,
    APIC_VERSION,
    APICBASE_BASE_MASK,
    APICBASE_BSP,
    APICBASE_ENABLE,
    DM_EXTINT,
    DM_FIXED,
    DM_INIT,
    DM_LOWPRI,
    DM_NMI,
    DM_SIPI,
    DM_SMI,
    ESR_ILLEGAL_ADDRESS,
    ESR_RECV_ILLEGAL_VECTOR,
    ESR_SEND_ILLEGAL_VECTOR,
    LVT_DELIVERY_STATUS,
    LVT_ERROR,
    LVT_LEVEL_TRIGGER,
    LVT_LINT0,
    LVT_LINT1,
    LVT_MASKED,
    LVT_TIMER,
    LVT_TIMER_PERIODIC,
    LVT_WRITABLE,
    SVR_ENABLE,
    SVR_WRITABLE,
    ApicState,
    ApicStateV1,
    ApicStateV2,
    SipiState,
)

# register offsets in the 4 KiB page (SDM table "Local APIC Register Address Map")
REG_ID = 0x020
REG_VERSION = 0x030
REG_TPR = 0x080
REG_APR = 0x090
REG_PPR = 0x0A0
REG_EOI = 0x0B0
REG_RRD = 0x0C0
REG_LDR = 0x0D0
REG_DFR = 0x0E0
REG_SVR = 0x0F0
REG_ISR = 0x100  # .. 0x170
REG_TMR = 0x180  # .. 0x1F0
REG_IRR = 0x200  # .. 0x270
REG_ESR = 0x280
REG_ICR_LO = 0x300
REG_ICR_HI = 0x310
REG_LVT = 0x320  # .. 0x370: timer, thermal, perf, LINT0, LINT1, error
REG_TMICT = 0x380
REG_TMCCT = 0x390
REG_TDCR = 0x3E0

#: what an access to the page of a hardware-disabled APIC returns: the APIC no
#: longer decodes it, and the model answers like an unclaimed bus
UNCLAIMED_READ = 0xFFFF_FFFF
#: the highest virtual time the machine's clock (i64 ns) can reach
CLOCK_MAX = (1 << 63) - 1

#: CPU signals the APIC raises (listeners get one of these strings)
SIGNAL_NMI, SIGNAL_SMI, SIGNAL_INIT, SIGNAL_SIPI, SIGNAL_EXTINT = (
    "nmi", "smi", "init", "sipi", "extint")
_MODE_SIGNAL = {DM_SMI: SIGNAL_SMI, DM_NMI: SIGNAL_NMI, DM_EXTINT: SIGNAL_EXTINT}


class GeneralProtectionFault(Exception):
    """The access would raise #GP in the CPU (e.g. WRMSR IA32_APIC_BASE with a
    reserved bit set). The APIC state is unchanged."""


# -- 256-bit registers as eight u32 words (ISR, TMR, IRR) -----------------------

def _highest(words: list[int]) -> int:
    """The highest vector set, or -1 (QEMU's ``get_highest_priority_int``)."""
    for i in range(7, -1, -1):
        if words[i]:
            return i * 32 + words[i].bit_length() - 1
    return -1


def _get_bit(words: list[int], vector: int) -> bool:
    return bool(words[vector >> 5] >> (vector & 31) & 1)


def _set_bit(words: list[int], vector: int) -> None:
    words[vector >> 5] |= 1 << (vector & 31)


def _clear_bit(words: list[int], vector: int) -> None:
    words[vector >> 5] &= ~(1 << (vector & 31)) & 0xFFFF_FFFF


def divide_shift(divide_conf: int) -> int:
    """log2 of the timer divisor for a divide-configuration value (bits 0, 1, 3:
    divide by 2, 4, 8, 16, 32, 64, 128, 1), as QEMU and the SDM compute it."""
    v = (divide_conf & 3) | ((divide_conf >> 1) & 4)
    return (v + 1) & 7


class Apic(Device):
    """QEMU's ``apic``: a local APIC emulated in userspace, in xAPIC mode.

    :param id: the APIC ID (the CPU index in the ``userspace`` backend);
        0..254, 255 being the broadcast destination.
    :param bsp: this APIC belongs to the bootstrap processor (IA32_APIC_BASE
        bit 8 after reset; the other CPUs wait for a start-up IPI).
    """

    TYPE = "apic"
    PARENT = "device"
    ABSTRACT = False
    STATE = ApicState
    VERSION = 3
    MIN_VERSION = 3
    HISTORY = {1: ApicStateV1, 2: ApicStateV2}
    DESCRIPTION = "userspace local APIC (xAPIC), QEMU's apic VMState"

    def __init__(self, id: int = 0, bsp: bool = False) -> None:
        super().__init__()
        if type(id) is not int or not 0 <= id <= 254:
            raise ValueError(f"apic: id must be an integer from 0 to 254, got {id!r}")
        if type(bsp) is not bool:
            raise ValueError(f"apic: bsp must be true or false, got {bsp!r}")
        self._reset_id = id
        self._reset_bsp = bsp
        # runtime, derived from self.state (see post_load)
        self._esr_latched = 0
        self._irq_level = False
        self._clock_machine: Any = None
        self._in_error_delivery = False
        self._irq_listeners: list[Callable[[bool], None]] = []
        self._eoi_listeners: list[Callable[[int], None]] = []
        self._signal_listeners: list[Callable[[str], None]] = []
        self._timer_listeners: list[Callable[[int], None]] = []
        self.reset()

    # -- life cycle ----------------------------------------------------------
    def reset(self) -> None:
        """Power-up / RESET (QEMU's ``apic_reset_common``): the base MSR at
        0xFEE00000, enabled, BSP flag for the bootstrap processor; every
        register at its power-up value; application processors wait for a
        start-up IPI. The bootstrap processor's LINT0 is ExtINT (0x700), as
        QEMU's ``apic_reset_common`` and KVM set it on behalf of the BIOS, so
        the 8259 PIC reaches the CPU once the APIC is software-enabled."""
        st = ApicState()
        st.apicbase = APIC_DEFAULT_ADDRESS | APICBASE_ENABLE | (
            APICBASE_BSP if self._reset_bsp else 0)
        st.id = self._reset_id
        self.state = st
        self._init_reset()
        if self._reset_bsp:
            st.lvt[LVT_LINT0] = DM_EXTINT << 8
        st.sipi = None if self._reset_bsp else SipiState(sipi_vector=0, wait_for_sipi=1)
        self._update_irq()

    def _init_reset(self) -> None:
        """The registers an INIT resets (QEMU's ``apic_init_reset``; the SDM's
        power-up values): everything but the base MSR, ID and arbitration ID.
        Unlike QEMU (shift 0), the divide shift is that of divide_conf 0,
        divide by 2, as the SDM and KVM have it."""
        st = self.state
        st.tpr = 0
        st.spurious_vec = 0xFF
        st.log_dest = 0
        st.dest_mode = 0xF
        st.isr = [0] * 8
        st.tmr = [0] * 8
        st.irr = [0] * 8
        st.lvt = [LVT_MASKED] * APIC_LVT_NB
        st.esr = 0
        st.icr = [0, 0]
        st.divide_conf = 0
        st.count_shift = divide_shift(0)
        st.initial_count = 0
        st.initial_count_load_time = 0
        st.next_time = 0
        st.timer_expiry = -1
        self._esr_latched = 0

    def realize(self) -> None:
        self._attach_clock()

    def close(self) -> None:
        """Stop listening to the machine's clock (a build's teardown). Idempotent."""
        machine, self._clock_machine = self._clock_machine, None
        if machine is not None and self._on_clock in machine.clock_listeners:
            machine.clock_listeners.remove(self._on_clock)

    def post_load(self) -> None:
        """Derive the runtime from the loaded state: the timer deadline is
        ``timer_expiry`` (QEMU's ``apic_post_load``), the readable ESR is the
        loaded ``esr``, the INTR line follows IRR/ISR/TPR.

        A state no APIC can produce is refused (the load is then undone):
        a ``count_shift`` outside 0..7 or a ``sipi_vector`` outside 0..255.
        """
        st = self.state
        if not 0 <= st.count_shift <= 7:
            raise ValueError(f"count_shift {st.count_shift} is not a timer divide shift (0..7)")
        if st.sipi is not None and not 0 <= st.sipi.sipi_vector <= 0xFF:
            raise ValueError(f"sipi.sipi_vector {st.sipi.sipi_vector} is not a vector (0..255)")
        self._esr_latched = st.esr
        self._in_error_delivery = False
        self._attach_clock()
        self._update_irq()

    # -- what the CPU and the buses see ----------------------------------------
    @property
    def hw_enabled(self) -> bool:
        """IA32_APIC_BASE bit 11: the APIC is globally enabled."""
        return bool(self.state.apicbase & APICBASE_ENABLE)

    @property
    def sw_enabled(self) -> bool:
        """SVR bit 8: the APIC is software-enabled."""
        return bool(self.state.spurious_vec & SVR_ENABLE)

    @property
    def is_bsp(self) -> bool:
        return bool(self.state.apicbase & APICBASE_BSP)

    @property
    def mmio_base(self) -> int:
        """Physical address of the register page."""
        return self.state.apicbase & APICBASE_BASE_MASK

    @property
    def ppr(self) -> int:
        """Processor priority: TPR, or the class of the highest in-service
        vector when that is higher (SDM "Processor Priority Register")."""
        st = self.state
        isrv = max(_highest(st.isr), 0)
        if (st.tpr >> 4) >= (isrv >> 4):
            return st.tpr
        return isrv & 0xF0

    @property
    def interrupt_pending(self) -> bool:
        """The INTR line to the CPU: a requested vector has a higher priority
        class than PPR (and the APIC is enabled)."""
        return self._deliverable() is not None

    @property
    def timer_deadline(self) -> int | None:
        """Virtual time (ns) of the next timer expiry, or None."""
        expiry = self.state.timer_expiry
        return None if expiry == -1 else expiry

    def add_irq_listener(self, fn: Callable[[bool], None]) -> None:
        """``fn(level)`` whenever ``interrupt_pending`` changes."""
        self._irq_listeners.append(fn)

    def add_eoi_listener(self, fn: Callable[[int], None]) -> None:
        """``fn(vector)`` on an EOI of a level-triggered vector (the EOI
        broadcast an I/O APIC uses to re-arm its line)."""
        self._eoi_listeners.append(fn)

    def add_signal_listener(self, fn: Callable[[str], None]) -> None:
        """``fn(kind)`` for what bypasses IRR/ISR: ``"nmi"``, ``"smi"``,
        ``"init"``, ``"sipi"``, ``"extint"``."""
        self._signal_listeners.append(fn)

    def add_timer_listener(self, fn: Callable[[int], None]) -> None:
        """``fn(due_ns)`` when the timer expires: the virtual time it was due
        at, whatever step the clock moved in."""
        self._timer_listeners.append(fn)

    def get_interrupt(self) -> int | None:
        """Interrupt acknowledge (QEMU's ``apic_get_interrupt``): the highest
        requested vector moves from IRR to ISR and is returned; None when
        nothing is requested (or the APIC is disabled); the spurious vector
        when the request is no longer above PPR."""
        st = self.state
        if not (self.hw_enabled and self.sw_enabled):
            return None
        irrv = _highest(st.irr)
        if irrv < 0:
            return None
        if self._deliverable() is None:
            return st.spurious_vec & 0xFF
        _clear_bit(st.irr, irrv)
        _set_bit(st.isr, irrv)
        self._update_irq()
        return irrv

    def set_cr8(self, value: int) -> None:
        """MOV to CR8: TPR bits 7:4 (QEMU's ``apic_set_tpr``)."""
        self.state.tpr = (value & 0xF) << 4
        self._update_irq()

    def get_cr8(self) -> int:
        return self.state.tpr >> 4

    # -- IA32_APIC_BASE --------------------------------------------------------
    def get_base(self) -> int:
        """RDMSR IA32_APIC_BASE."""
        return self.state.apicbase

    def set_base(self, value: int) -> None:
        """WRMSR IA32_APIC_BASE.

        Bits 12..31 move the page, bit 11 enables or disables the APIC, the
        BSP flag (bit 8) is read-only. Every other bit is reserved here and
        raises :class:`GeneralProtectionFault`: bits 0..7 and 9, bit 10
        (x2APIC, which this model does not offer) and bits 32 and up (the
        model's physical address width for the page is 32 bits, the width of
        QEMU's ``apicbase``). Clearing bit 11 returns the APIC to its
        INIT state (SDM: "prior initialization ... may be lost") and stops
        it decoding its page; setting it again re-enables it in that state,
        software-disabled.
        """
        valid = APICBASE_BASE_MASK | APICBASE_ENABLE | APICBASE_BSP
        if type(value) is not int or value < 0 or value & ~valid:
            raise GeneralProtectionFault(
                f"WRMSR IA32_APIC_BASE {value!r}: reserved bits set "
                f"(writable: {valid & ~APICBASE_BSP:#x})")
        st = self.state
        was_enabled = self.hw_enabled
        st.apicbase = (value & (APICBASE_BASE_MASK | APICBASE_ENABLE)) | (
            st.apicbase & APICBASE_BSP)
        if was_enabled and not self.hw_enabled:
            self._init_reset()
        self._update_irq()

    # -- the register page -----------------------------------------------------
    @staticmethod
    def _check_offset(offset: int) -> None:
        if type(offset) is not int or not 0 <= offset <= 0xFF0 or offset & 0xF:
            raise ValueError(
                f"APIC register access at offset {offset!r}: registers are 32-bit at "
                "16-byte aligned offsets 0x000..0xff0 (other accesses are undefined)")

    def read(self, offset: int) -> int:
        """A 32-bit read of the register at ``offset`` in the page.

        Reserved offsets read 0 and set ESR's illegal-register-address bit.
        APR reads 0 (lowest-priority arbitration by APR is a P6-family
        feature; QEMU reads 0 too); the write-only EOI and the remote-read
        register read 0.
        """
        self._check_offset(offset)
        if not self.hw_enabled:
            return UNCLAIMED_READ
        st = self.state
        if offset == REG_ID:
            return st.id << 24
        if offset == REG_VERSION:
            return APIC_VERSION | ((APIC_LVT_NB - 1) << 16)
        if offset == REG_TPR:
            return st.tpr
        if offset in (REG_APR, REG_EOI, REG_RRD):
            return 0
        if offset == REG_PPR:
            return self.ppr
        if offset == REG_LDR:
            return st.log_dest << 24
        if offset == REG_DFR:
            return ((st.dest_mode << 28) | 0x0FFF_FFFF) & 0xFFFF_FFFF
        if offset == REG_SVR:
            return st.spurious_vec
        if REG_ISR <= offset < REG_ISR + 0x80:
            return st.isr[(offset - REG_ISR) >> 4]
        if REG_TMR <= offset < REG_TMR + 0x80:
            return st.tmr[(offset - REG_TMR) >> 4]
        if REG_IRR <= offset < REG_IRR + 0x80:
            return st.irr[(offset - REG_IRR) >> 4]
        if offset == REG_ESR:
            return self._esr_latched
        if offset in (REG_ICR_LO, REG_ICR_HI):
            return st.icr[(offset - REG_ICR_LO) >> 4]
        if REG_LVT <= offset < REG_LVT + 0x10 * APIC_LVT_NB:
            return st.lvt[(offset - REG_LVT) >> 4]
        if offset == REG_TMICT:
            return st.initial_count
        if offset == REG_TMCCT:
            return self.current_count()
        if offset == REG_TDCR:
            return st.divide_conf
        self._error(ESR_ILLEGAL_ADDRESS)
        return 0

    def write(self, offset: int, value: int) -> None:
        """A 32-bit write of ``value`` to the register at ``offset``.

        Read-only registers (version, APR, PPR, remote read, ISR, TMR, IRR,
        current count) ignore writes; reserved offsets set ESR's
        illegal-register-address bit. Reserved bits of writable registers are
        dropped.
        """
        self._check_offset(offset)
        if type(value) is not int or not 0 <= value <= 0xFFFF_FFFF:
            raise ValueError(f"APIC register write of {value!r}: not a 32-bit value")
        if not self.hw_enabled:
            return
        st = self.state
        if offset == REG_ID:
            st.id = value >> 24
        elif offset in (REG_VERSION, REG_APR, REG_PPR, REG_RRD, REG_TMCCT):
            pass
        elif REG_ISR <= offset < REG_IRR + 0x80:
            pass
        elif offset == REG_TPR:
            st.tpr = value & 0xFF
            self._update_irq()
        elif offset == REG_EOI:
            self._eoi()
        elif offset == REG_LDR:
            st.log_dest = value >> 24
        elif offset == REG_DFR:
            st.dest_mode = value >> 28
        elif offset == REG_SVR:
            self._write_svr(value)
        elif offset == REG_ESR:
            # the write latches the errors detected since the previous write
            self._esr_latched = st.esr
            st.esr = 0
        elif offset == REG_ICR_LO:
            st.icr[0] = value & ~LVT_DELIVERY_STATUS  # sent at once: always idle
            self._send_ipi()
        elif offset == REG_ICR_HI:
            st.icr[1] = value
        elif REG_LVT <= offset < REG_LVT + 0x10 * APIC_LVT_NB:
            self._write_lvt((offset - REG_LVT) >> 4, value)
        elif offset == REG_TMICT:
            st.initial_count = value
            st.initial_count_load_time = self._now()
            self._arm(st.initial_count_load_time)
        elif offset == REG_TDCR:
            # as QEMU: the new divisor applies from the next timer event on
            st.divide_conf = value & 0xB
            st.count_shift = divide_shift(st.divide_conf)
        else:
            self._error(ESR_ILLEGAL_ADDRESS)

    def _write_svr(self, value: int) -> None:
        st = self.state
        st.spurious_vec = value & SVR_WRITABLE
        if not self.sw_enabled:
            # SDM: software disable sets every LVT mask bit
            st.lvt = [lvt | LVT_MASKED for lvt in st.lvt]
            self._arm(self._now())
        self._update_irq()

    def _write_lvt(self, index: int, value: int) -> None:
        value &= LVT_WRITABLE[index]
        if not self.sw_enabled:
            value |= LVT_MASKED  # SDM: masks cannot be cleared while software-disabled
        self.state.lvt[index] = value
        if index == LVT_TIMER:
            self._arm(self._now())

    # -- errors ----------------------------------------------------------------
    def _error(self, bits: int) -> None:
        """Record an error in ESR and raise the error interrupt (LVT error).

        The SDM's ESR is a latch: a write copies the errors detected since the
        previous write into the readable register. QEMU's VMState has one
        field for it, ``esr``, which here holds the errors detected since the
        last write (what the next latching write will show); the latched
        value read back is derived from it on load.
        """
        self.state.esr |= bits
        if not self._in_error_delivery:
            self._in_error_delivery = True
            try:
                self._local_deliver(LVT_ERROR)
            finally:
                self._in_error_delivery = False

    # -- interrupt acceptance and delivery --------------------------------------
    def set_irq(self, vector: int, level_triggered: bool = False) -> None:
        """A fixed interrupt message for this APIC (QEMU's ``apic_set_irq``):
        sets the IRR bit, and the TMR bit for a level-triggered one."""
        if type(vector) is not int or not 0 <= vector <= 0xFF:
            raise ValueError(f"interrupt vector {vector!r} is not 0..255")
        self._accept(vector, bool(level_triggered))

    def _accept(self, vector: int, level: bool) -> None:
        if not self.hw_enabled or not self.sw_enabled:
            return  # as KVM: a disabled APIC accepts no fixed interrupt
        if vector < 16:
            self._error(ESR_RECV_ILLEGAL_VECTOR)  # never set IRR 0..15
            return
        st = self.state
        _set_bit(st.irr, vector)
        if level:
            _set_bit(st.tmr, vector)
        else:
            _clear_bit(st.tmr, vector)
        self._update_irq()

    def _deliverable(self) -> int | None:
        """The vector the CPU would take now, if any."""
        if not (self.hw_enabled and self.sw_enabled):
            return None
        irrv = _highest(self.state.irr)
        if irrv < 0 or (irrv >> 4) <= (self.ppr >> 4):
            return None
        return irrv

    def _update_irq(self) -> None:
        level = self.interrupt_pending
        if level != self._irq_level:
            self._irq_level = level
            for fn in list(self._irq_listeners):
                fn(level)

    def _signal(self, kind: str) -> None:
        for fn in list(self._signal_listeners):
            fn(kind)

    def _eoi(self) -> None:
        st = self.state
        isrv = _highest(st.isr)
        if isrv < 0:
            return
        _clear_bit(st.isr, isrv)
        if _get_bit(st.tmr, isrv):
            for fn in list(self._eoi_listeners):
                fn(isrv)
        self._update_irq()

    # -- local interrupt sources -------------------------------------------------
    def raise_lint(self, pin: int) -> None:
        """Assert LINT0 (``pin=0``) or LINT1 (``pin=1``)."""
        self._local_deliver(self._lint_index(pin))

    def lower_lint(self, pin: int) -> None:
        """De-assert a LINT pin: a level-triggered fixed request that has not
        been taken yet is withdrawn (as QEMU's ``apic_deliver_pic_intr``)."""
        lvt = self.state.lvt[self._lint_index(pin)]
        if (lvt >> 8) & 7 == DM_FIXED and lvt & LVT_LEVEL_TRIGGER:
            _clear_bit(self.state.irr, lvt & 0xFF)
            self._update_irq()

    def local_interrupt(self, lvt_index: int) -> None:
        """Raise the local source behind LVT entry ``lvt_index`` (thermal
        sensor, performance counter overflow...)."""
        if type(lvt_index) is not int or not 0 <= lvt_index < APIC_LVT_NB:
            raise ValueError(f"LVT index {lvt_index!r} is not 0..{APIC_LVT_NB - 1}")
        self._local_deliver(lvt_index)

    @staticmethod
    def _lint_index(pin: int) -> int:
        if pin not in (0, 1):
            raise ValueError(f"LINT pin {pin!r} is not 0 or 1")
        return LVT_LINT0 if pin == 0 else LVT_LINT1

    def _local_deliver(self, index: int) -> None:
        """QEMU's ``apic_local_deliver``; a software-disabled APIC treats every
        entry as masked whatever its mask bit says."""
        lvt = self.state.lvt[index]
        if lvt & LVT_MASKED or not self.hw_enabled or not self.sw_enabled:
            return
        mode = (lvt >> 8) & 7
        if mode == DM_FIXED:
            level = index in (LVT_LINT0, LVT_LINT1) and bool(lvt & LVT_LEVEL_TRIGGER)
            self._accept(lvt & 0xFF, level)
        elif mode in _MODE_SIGNAL:
            self._signal(_MODE_SIGNAL[mode])
        elif mode == DM_INIT:
            self._receive_init()

    # -- inter-processor interrupts ------------------------------------------------
    def bus(self) -> list[Apic]:
        """Every userspace APIC of this machine, by APIC ID (the APIC bus)."""
        machine = self.machine
        if machine is None:
            return [self]
        return sorted((o for o in machine.walk() if isinstance(o, Apic)),
                      key=lambda a: (a.state.id, a.path))

    def _send_ipi(self) -> None:
        st = self.state
        icr = st.icr[0]
        vector, mode = icr & 0xFF, (icr >> 8) & 7
        logical, level, trigger = (icr >> 11) & 1, (icr >> 14) & 1, (icr >> 15) & 1
        shorthand = (icr >> 18) & 3
        if mode in (DM_FIXED, DM_LOWPRI) and vector < 16:
            self._error(ESR_SEND_ILLEGAL_VECTOR)
            return
        everyone = self.bus()
        if shorthand == 1:
            targets = [self]
        elif shorthand == 2:
            targets = everyone
        elif shorthand == 3:
            targets = [a for a in everyone if a is not self]
        else:
            targets = _match_destination(everyone, st.icr[1] >> 24, bool(logical))
        if mode == DM_INIT and level == 0 and trigger == 1:
            for a in targets:  # INIT level de-assert: resynchronise arbitration IDs
                a.state.arb_id = a.state.id
            return
        if mode == DM_SIPI:
            for a in targets:
                a._receive_sipi(vector)
            return
        _bus_deliver(targets, mode, vector, bool(trigger))

    def _receive_init(self) -> None:
        """INIT: the CPU resets its APIC (QEMU's ``do_cpu_init`` ->
        ``apic_init_reset``); an application processor then waits for SIPI."""
        if not self.hw_enabled:
            return
        self._init_reset()
        self.state.sipi = None if self.is_bsp else SipiState(sipi_vector=0, wait_for_sipi=1)
        self._update_irq()
        self._signal(SIGNAL_INIT)

    def _receive_sipi(self, vector: int) -> None:
        sipi = self.state.sipi
        if not self.hw_enabled or sipi is None or not sipi.wait_for_sipi:
            return  # a CPU that is not waiting ignores start-up IPIs
        sipi.sipi_vector = vector
        self._signal(SIGNAL_SIPI)

    def take_sipi(self) -> int | None:
        """The CPU starts on a received start-up IPI (QEMU's ``apic_sipi``):
        the vector (start address ``vector << 12``), or None if it is not
        waiting for one. Afterwards ``sipi`` is absent from the state."""
        sipi = self.state.sipi
        if sipi is None or not sipi.wait_for_sipi:
            return None
        self.state.sipi = None
        return sipi.sipi_vector

    # -- the timer ---------------------------------------------------------------
    def _now(self) -> int:
        machine = self.machine
        return machine.clock.ns if machine is not None else 0

    def _attach_clock(self) -> None:
        machine = self.machine
        if machine is not None and self._clock_machine is not machine:
            machine.clock_listeners.append(self._on_clock)
            self._clock_machine = machine

    def current_count(self) -> int:
        """The current-count register, computed from the virtual clock as
        QEMU's ``apic_get_current_count`` does (the count runs while masked)."""
        st = self.state
        # a load time ahead of the clock (only in a state no APIC wrote) has not started
        d = max(self._now() - st.initial_count_load_time, 0) >> st.count_shift
        if st.lvt[LVT_TIMER] & LVT_TIMER_PERIODIC:
            return st.initial_count - (d % (st.initial_count + 1))
        return 0 if d >= st.initial_count else st.initial_count - d

    def _arm(self, current: int) -> None:
        """QEMU's ``apic_next_timer`` + ``apic_timer_update``: the next expiry
        after ``current`` becomes ``next_time`` and ``timer_expiry`` (-1 when
        none; an expiry past the end of the i64 clock never comes)."""
        st = self.state
        st.timer_expiry = -1
        lvt = st.lvt[LVT_TIMER]
        if lvt & LVT_MASKED:
            return
        d = (current - st.initial_count_load_time) >> st.count_shift
        if lvt & LVT_TIMER_PERIODIC:
            if not st.initial_count:
                return
            period = st.initial_count + 1
            d = (d // period + 1) * period
        else:
            if d >= st.initial_count:
                return
            d = st.initial_count + 1
        next_time = st.initial_count_load_time + (d << st.count_shift)
        if next_time > CLOCK_MAX:
            return
        st.next_time = next_time
        st.timer_expiry = next_time
        self._attach_clock()

    def _on_clock(self, now: int) -> None:
        st = self.state
        while st.timer_expiry != -1 and st.timer_expiry <= now:
            due = st.timer_expiry
            self._local_deliver(LVT_TIMER)
            for fn in list(self._timer_listeners):
                fn(due)
            self._arm(st.next_time)  # QEMU's apic_timer: the expiry after this one
            if st.timer_expiry != -1 and st.timer_expiry <= now:
                # further periods passed within this one clock update, while the
                # CPU could not run: they would set the same IRR bit (or raise
                # the same latched signal) again, so they coalesce into this one
                self._arm(now)


def _match_destination(apics: Iterable[Apic], dest: int, logical: bool) -> list[Apic]:
    """QEMU's ``apic_get_delivery_bitmask``: physical (ID, 0xFF broadcast) or
    logical (flat model: LDR bit overlap; cluster model: same cluster and
    overlapping members)."""
    out = []
    for a in apics:
        st = a.state
        if not logical:
            hit = dest == 0xFF or st.id == dest
        elif st.dest_mode == 0xF:
            hit = bool(dest & st.log_dest)
        elif st.dest_mode == 0x0:
            hit = (dest & 0xF0) == (st.log_dest & 0xF0) and bool(dest & st.log_dest & 0x0F)
        else:
            hit = False
        if hit:
            out.append(a)
    return out


def _bus_deliver(targets: list[Apic], mode: int, vector: int, level: bool) -> None:
    """QEMU's ``apic_bus_deliver`` for the message types that reach targets."""
    if mode == DM_LOWPRI:
        live = [a for a in targets if a.hw_enabled and a.sw_enabled]
        if live:  # the lowest processor priority wins, ties to the lowest ID
            min(live, key=lambda a: (a.ppr, a.state.id))._accept(vector, level)
    elif mode == DM_FIXED:
        for a in targets:
            a._accept(vector, level)
    elif mode in (DM_SMI, DM_NMI):
        for a in targets:
            if a.hw_enabled:
                a._signal(_MODE_SIGNAL[mode])
    elif mode == DM_INIT:
        for a in targets:
            a._receive_init()


def deliver_irq(machine: Any, dest: int, logical: bool, mode: int, vector: int,
                level_triggered: bool = False) -> list[Apic]:
    """An interrupt message on the APIC bus (from an I/O APIC or an MSI), as
    QEMU's ``apic_deliver_irq``: routed by destination to the machine's
    APICs. Returns the APICs it was addressed to."""
    apics = sorted((o for o in machine.walk() if isinstance(o, Apic)),
                   key=lambda a: (a.state.id, a.path))
    targets = _match_destination(apics, dest & 0xFF, logical)
    if mode == DM_SIPI:
        for a in targets:
            a._receive_sipi(vector)
    else:
        _bus_deliver(targets, mode, vector, level_triggered)
    return targets


class X86Cpu(Device):
    """QEMU's ``x86-cpu``, reduced to what the APIC needs: a stateless object
    whose child ``lapic`` is its local APIC (``/machine/unattached/device[N]/lapic``).
    The CPU's own registers are not modelled; tests play the CPU."""

    TYPE = "x86-cpu"
    PARENT = "device"
    ABSTRACT = False
    DESCRIPTION = "x86 CPU (stateless here); its local APIC is the child 'lapic'"

    @property
    def lapic(self) -> Any:
        return self.children.get("lapic")
