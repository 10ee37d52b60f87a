"""The ioctl wrappers against the real /dev/kvm: lifecycle, LAPIC, MSRs, errors."""

from __future__ import annotations

import ctypes
import errno
import functools
import gc
import os
import pickle
import shutil
import struct
import subprocess
import warnings
from pathlib import Path

import pytest
from kvm_helpers import masked, requires_kvm

from migtree_kvm import ioctls
from migtree_kvm.ioctls import (
    KVM_CAP_IRQCHIP,
    KVM_CAP_MP_STATE,
    KVM_CAP_SIGNAL_MSI,
    KVM_MP_STATE_AP_RESET_HOLD,
    KVM_MP_STATE_HALTED,
    KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_SIPI_RECEIVED,
    KVM_MP_STATE_STOPPED,
    KVM_MP_STATE_UNINITIALIZED,
    MSR_IA32_APICBASE,
    Kvm,
    KvmError,
    KvmLapicState,
    KvmMpState,
    KvmMsi,
    KvmMsrEntry,
    KvmMsrs,
    KvmUnavailable,
    kvm_available,
)

# Values <linux/kvm.h> gives on x86-64 (checked against the compiler below
# where one is installed).
EXPECTED_REQUESTS = {
    "KVM_GET_API_VERSION": 0xAE00,
    "KVM_CREATE_VM": 0xAE01,
    "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
    "KVM_CREATE_VCPU": 0xAE41,
    "KVM_CREATE_IRQCHIP": 0xAE60,
    "KVM_GET_MSRS": 0xC008AE88,
    "KVM_SET_MSRS": 0x4008AE89,
    "KVM_GET_LAPIC": 0x8400AE8E,
    "KVM_SET_LAPIC": 0x4400AE8F,
    "KVM_SIGNAL_MSI": 0x4020AEA5,
    "KVM_GET_MP_STATE": 0x8004AE98,
    "KVM_SET_MP_STATE": 0x4004AE99,
}


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


# --- layout, no kernel needed ----------------------------------------------------


def test_request_numbers_match_linux_kvm_h():
    for name, value in EXPECTED_REQUESTS.items():
        assert getattr(ioctls, name) == value, name


def test_struct_sizes_match_linux_kvm_h():
    assert ctypes.sizeof(KvmLapicState) == 1024
    assert ctypes.sizeof(KvmMsrEntry) == 16
    assert ctypes.sizeof(KvmMsrs) == 8
    assert ctypes.sizeof(KvmMsi) == 32
    assert KvmMsrEntry.data.offset == 8
    assert ctypes.sizeof(KvmMpState) == 4


@pytest.mark.skipif(
    shutil.which("cc") is None or not os.path.exists("/usr/include/linux/kvm.h"),
    reason="no C compiler or <linux/kvm.h> to compare request numbers with",
)
def test_request_numbers_match_the_c_compiler(tmp_path):
    names = sorted(EXPECTED_REQUESTS)
    src = tmp_path / "nums.c"
    src.write_text(
        "#include <stdio.h>\n#include <linux/kvm.h>\nint main(void){\n"
        + "".join(f'printf("%lu\\n", (unsigned long){n});\n' for n in names)
        + 'printf("%lu %lu %lu\\n", sizeof(struct kvm_lapic_state), '
        "sizeof(struct kvm_msr_entry), sizeof(struct kvm_msi));\nreturn 0;}\n"
    )
    exe = tmp_path / "nums"
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")
    for name, line in zip(names, out[: len(names)], strict=True):
        assert getattr(ioctls, name) == int(line), name
    assert out[len(names)] == "1024 16 32"


def test_kvm_error_message_names_ioctl_and_errno():
    err = KvmError("KVM_SET_LAPIC", 22)
    assert str(err) == "KVM_SET_LAPIC failed: [Errno 22] Invalid argument"
    assert isinstance(err, OSError)
    assert (err.ioctl, err.errno, err.strerror) == ("KVM_SET_LAPIC", 22, "Invalid argument")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.ioctl == "KVM_SET_LAPIC"


def test_missing_device_is_kvm_unavailable(tmp_path):
    path = str(tmp_path / "kvm")
    with pytest.raises(KvmUnavailable) as info:
        Kvm(path)
    assert str(info.value) == f"KVM is not available: {path}: No such file or directory"
    assert kvm_available(path) == (False, str(info.value))


def test_a_device_that_is_not_kvm_is_unavailable():
    before = open_fds()
    with pytest.raises(KvmUnavailable) as info:
        Kvm("/dev/null")
    assert str(info.value) == (
        "KVM is not available: /dev/null: "
        "KVM_GET_API_VERSION failed: [Errno 25] Inappropriate ioctl for device"
    )
    assert open_fds() == before


# --- the real kernel ---------------------------------------------------------------


@requires_kvm
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_inaccessible_device_says_permission_denied():
    """An unprivileged user cannot open the 0600 root-owned /dev/kvm here."""
    if os.stat(ioctls.KVM_PATH).st_mode & 0o006:
        pytest.skip("/dev/kvm is world-accessible on this machine")
    # fork rather than exec: a fresh interpreter could not read its own
    # stdlib under /root as nobody, but this one has everything imported
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, try, report through the pipe
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                Kvm()
                lines = ["opened"]
            except KvmUnavailable as exc:
                lines = [str(exc)]
            lines.append(repr(kvm_available()))
            os.write(write_end, "\n".join(lines).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        out = pipe.read().splitlines()
    assert os.waitpid(pid, 0)[1] == 0
    assert out[0] == "KVM is not available: /dev/kvm: Permission denied"
    assert out[1] == "(False, 'KVM is not available: /dev/kvm: Permission denied')"


@requires_kvm
def test_kvm_available_here():
    assert kvm_available() == (True, "")


@requires_kvm
def test_system_ioctls(kvm):
    assert kvm.api_version() == 12
    assert kvm.check_extension(KVM_CAP_IRQCHIP) > 0
    assert kvm.vcpu_mmap_size() >= 4096


@requires_kvm
def test_every_fd_is_closed_deterministically():
    before = open_fds()
    with Kvm() as kvm:
        with kvm.create_vm() as vm:
            vm.create_irqchip()
            with vm.create_vcpu(0) as c0, vm.create_vcpu(1) as c1:
                assert len(open_fds() - before) == 4
                assert all(x.fileno() >= 0 for x in (kvm, vm, c0, c1))
            assert c0.closed and c1.closed
            assert len(open_fds() - before) == 2
        assert vm.closed
    assert kvm.closed and open_fds() == before


@requires_kvm
def test_closing_a_parent_closes_what_it_created():
    before = open_fds()
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.create_irqchip()
    cpu = vm.create_vcpu(0)
    kvm.close()
    assert kvm.closed and vm.closed and cpu.closed
    assert open_fds() == before
    kvm.close()  # idempotent
    vm.close()
    cpu.close()
    assert repr(cpu) == "<Vcpu closed>"


@requires_kvm
def test_unclosed_object_warns_and_closes_on_collection():
    before = open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Kvm()
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert open_fds() == before


@requires_kvm
def test_ioctl_on_a_closed_fd_raises_kvm_error(vm):
    cpu = vm.create_vcpu(0)
    page = cpu.get_lapic()
    cpu.close()
    with pytest.raises(KvmError) as info:
        cpu.set_lapic(page)
    assert str(info.value) == "KVM_SET_LAPIC failed: [Errno 9] Bad file descriptor"
    with pytest.raises(KvmError, match=r"^KVM_GET_LAPIC failed: \[Errno 9\]"):
        cpu.get_lapic()


@requires_kvm
def test_kernel_errors_name_the_ioctl(kvm):
    with kvm.create_vm() as vm:
        vm.create_irqchip()
        with pytest.raises(KvmError) as info:
            vm.create_irqchip()
        assert str(info.value) == "KVM_CREATE_IRQCHIP failed: [Errno 17] File exists"
        assert info.value.errno == 17
        vm.create_vcpu(3)
        with pytest.raises(KvmError, match=r"^KVM_CREATE_VCPU failed: \[Errno 17\] File exists$"):
            vm.create_vcpu(3)
    with kvm.create_vm() as vm:
        cpu = vm.create_vcpu(0)
        # no irqchip: this vCPU has no in-kernel LAPIC
        with pytest.raises(KvmError, match=r"^KVM_GET_LAPIC failed: \[Errno \d+\]"):
            cpu.get_lapic()
        # and it is too late to add one
        with pytest.raises(
            KvmError, match=r"^KVM_CREATE_IRQCHIP failed: \[Errno 22\] Invalid argument$"
        ):
            vm.create_irqchip()


@requires_kvm
def test_set_lapic_wants_exactly_one_page(vcpu):
    with pytest.raises(ValueError, match="1024 bytes, not 1023"):
        vcpu.set_lapic(bytes(1023))


@requires_kvm
def test_lapic_after_creation_holds_reset_values(vm):
    """KVM resets a new vCPU's LAPIC as the SDM says (10.12.5.1 / 10.4.7.1)."""
    bsp, ap = vm.create_vcpu(0), vm.create_vcpu(5)
    for cpu in (bsp, ap):
        page = cpu.get_lapic()
        assert len(page) == 1024
        reg = functools.partial(lambda p, i: struct.unpack_from("<I", p, i << 4)[0], page)
        assert reg(0x02) == cpu.vcpu_id << 24  # APIC ID = vCPU id in xAPIC mode
        assert reg(0x03) & 0xFF in (0x10, 0x11, 0x12, 0x13, 0x14, 0x15)  # integrated APIC
        assert reg(0x0E) == 0xFFFF_FFFF  # DFR: flat model
        assert reg(0x0F) == 0xFF  # SVR: software-disabled, vector 0xff
        assert reg(0x32) & (1 << 16)  # timer LVT masked
        for i in range(0x10, 0x28):
            assert reg(i) == 0  # no ISR/TMR/IRR bit
    assert bsp.get_apic_base() == 0xFEE0_0900  # enabled, BSP
    assert ap.get_apic_base() == 0xFEE0_0800  # enabled, not BSP


@requires_kvm
def test_apic_base_msr_get_set(vcpu):
    assert vcpu.get_msrs([MSR_IA32_APICBASE]) == {MSR_IA32_APICBASE: 0xFEE0_0900}
    for value in (0xFEE0_0800, 0xFED0_0900, 0x1_FEE0_0900, 0xFEE0_0900):
        vcpu.set_apic_base(value)
        assert vcpu.get_apic_base() == value
    # globally disabled (bit 11 clear) is a valid state too
    vcpu.set_msrs({MSR_IA32_APICBASE: 0xFEE0_0100})
    assert vcpu.get_apic_base() == 0xFEE0_0100
    vcpu.set_apic_base(0xFEE0_0900)


@requires_kvm
def test_apic_base_msr_rejections_name_the_msr(vcpu):
    # bit 0 is reserved
    with pytest.raises(KvmError) as info:
        vcpu.set_apic_base(0xFEE0_0901)
    assert str(info.value) == "KVM_SET_MSRS failed: MSR 0x1b = 0xfee00901 rejected, 0 of 1 written"
    assert info.value.errno is None
    # x2APIC enable (bit 10) is reserved while the vCPU's CPUID lacks x2APIC
    with pytest.raises(KvmError, match="MSR 0x1b = 0xfee00d00 rejected"):
        vcpu.set_apic_base(0xFEE0_0D00)
    assert vcpu.get_apic_base() == 0xFEE0_0900


@requires_kvm
def test_unknown_msr_is_reported_by_index(vcpu):
    ignore = "/sys/module/kvm/parameters/ignore_msrs"
    if os.path.exists(ignore) and Path(ignore).read_text().strip() == "Y":
        pytest.skip("kvm.ignore_msrs=Y makes unknown MSRs read as 0")
    with pytest.raises(KvmError) as info:
        vcpu.get_msrs([MSR_IA32_APICBASE, 0xDEADBEEF])
    assert str(info.value) == "KVM_GET_MSRS failed: MSR 0xdeadbeef rejected, 1 of 2 read"


@requires_kvm
def test_lapic_set_get_round_trip_of_raw_bytes(vcpu):
    """Whatever page is set, the kernel gives it back but for what it computes."""
    from migtree_kvm.lapic_map import kernel_computed_mask

    keep = bytes(~m & 0xFF for m in kernel_computed_mask())
    for seed in range(8):
        page = bytes((seed * 131 + i * 7 + (i >> 4)) & 0xFF for i in range(1024))
        vcpu.set_lapic(page)
        got = vcpu.get_lapic()
        assert masked(got, keep) == masked(page, keep)


@requires_kvm
def test_signal_msi_sets_irr_and_tmr_in_the_kernel(vm, vcpu):
    """The kernel's own delivery fills IRR (and TMR for level-triggered)."""
    assert vm.check_extension(KVM_CAP_SIGNAL_MSI)
    page = bytearray(vcpu.get_lapic())
    struct.pack_into("<I", page, 0xF0, 0x1FF)  # SVR: software-enable
    vcpu.set_lapic(bytes(page))
    # fixed delivery, physical destination APIC ID 0
    assert vm.signal_msi(0xFEE0_0000, 0x41) == 1
    assert vm.signal_msi(0xFEE0_0000, 0x52 | 0x8000 | 0x4000) == 1  # level, asserted
    got = vcpu.get_lapic()
    irr = [struct.unpack_from("<I", got, 0x200 + 16 * i)[0] for i in range(8)]
    tmr = [struct.unpack_from("<I", got, 0x180 + 16 * i)[0] for i in range(8)]
    assert irr == [0, 0, (1 << 1) | (1 << 18), 0, 0, 0, 0, 0]
    assert tmr == [0, 0, 1 << 18, 0, 0, 0, 0, 0]


@requires_kvm
def test_msi_to_a_software_disabled_lapic_is_blocked(vm, vcpu):
    assert vm.signal_msi(0xFEE0_0000, 0x41) == 0
    assert vcpu.get_lapic()[0x200:0x280] == bytes(0x80)


@requires_kvm
def test_mp_state_of_new_vcpus_and_set_get(kvm, vm):
    """With the in-kernel irqchip the BSP starts runnable and an application
    processor UNINITIALIZED (waiting for INIT/SIPI); the x86 states set are
    read back."""
    assert kvm.check_extension(KVM_CAP_MP_STATE)
    bsp, ap = vm.create_vcpu(0), vm.create_vcpu(1)
    assert bsp.get_mp_state() == KVM_MP_STATE_RUNNABLE
    assert ap.get_mp_state() == KVM_MP_STATE_UNINITIALIZED
    for value in (KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_HALTED, KVM_MP_STATE_AP_RESET_HOLD,
                  KVM_MP_STATE_UNINITIALIZED, KVM_MP_STATE_RUNNABLE):
        ap.set_mp_state(value)
        assert ap.get_mp_state() == value
    # SIPI_RECEIVED is accepted as INIT_RECEIVED plus a pending SIPI, which the
    # kernel processes on the next read: the vCPU starts
    ap.set_mp_state(KVM_MP_STATE_INIT_RECEIVED)
    ap.set_mp_state(KVM_MP_STATE_SIPI_RECEIVED)
    assert ap.get_mp_state() == KVM_MP_STATE_RUNNABLE


@requires_kvm
def test_mp_state_refusals_name_the_ioctl_and_the_state(vcpu):
    with pytest.raises(KvmError, match=r"KVM_SET_MP_STATE failed: \[Errno 22\] Invalid argument "
                                       r"\(mp_state STOPPED\)") as exc:
        vcpu.set_mp_state(KVM_MP_STATE_STOPPED)  # s390's
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(KvmError, match=r"\(mp_state 4096\)"):
        vcpu.set_mp_state(4096)
    with pytest.raises(ValueError, match="u32"):
        vcpu.set_mp_state(-1)
    assert vcpu.get_mp_state() == KVM_MP_STATE_RUNNABLE  # unchanged
