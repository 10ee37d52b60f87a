"""Build a tiny Linux guest that keeps its virtio-blk disk busy.

Debian's kernel (``apt-get download linux-image-<abi>-amd64``, unpacked with
``dpkg -x``) boots an initramfs made here from ``busybox-static`` and the
virtio modules; its ``/init`` loads the modules and runs ``dd`` readers and
a writer against ``/dev/vda`` forever, printing ``MIGTREE-IO <n>`` on the
serial console as it goes.  Streams taken from it have configured virtqueues
with moved indices (QEMU drains in-flight requests when it stops the VM).

A second initramfs, the *devices guest* (:func:`build_devices_guest`), loads
the drivers of every virtio device tests/qemu/test_qemu_virtio_devices.py
gives it (network, balloon, serial console, RNG, SCSI, GPU, block; each
module with the modules it depends on, read from its ``modinfo``) and uses
them all, printing ``MIGTREE-LOOP <n>`` as it goes; a second serial port
(``/dev/vport*p1``), when the VM has one, gets the lines ``1`` .. ``100000``
(``seq``), written as fast as the host side takes them.

Artifacts are cached in a directory (default ``/tmp/migtree-qemu-guest``);
nothing here is committed.  By hand::

    python tests/qemu/guest_builder.py [CACHE_DIR] [--devices]
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("MIGTREE_QEMU_GUEST_CACHE", "/tmp/migtree-qemu-guest"))

# load order: each module only needs the ones before it
MODULES = [
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
]

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in __MODULES__; do
  insmod /lib/modules/$m.ko || echo "MIGTREE-INIT insmod $m failed"
done
n=0
while [ ! -b /dev/vda ]; do
  n=$((n+1)); [ $n -gt 300 ] && echo "MIGTREE-INIT no /dev/vda" && poweroff -f
  sleep 0.1
done
echo "MIGTREE-INIT vda ready"
reader() {
  i=$1
  while true; do
    dd if=/dev/vda of=/dev/null bs=4096 count=32 skip=$((i % 3000)) iflag=direct 2>/dev/null \
      || dd if=/dev/vda of=/dev/null bs=4096 count=32 skip=$((i % 3000)) 2>/dev/null
    i=$((i+37))
  done
}
reader 0 &
reader 1500 &
i=0
while true; do
  dd if=/dev/urandom of=/dev/vda bs=4096 count=8 seek=$((i % 3000)) oflag=direct \
     conv=notrunc 2>/dev/null \
    || dd if=/dev/urandom of=/dev/vda bs=4096 count=8 seek=$((i % 3000)) \
          conv=notrunc,fsync 2>/dev/null
  i=$((i+1))
  [ $((i % 20)) = 0 ] && echo "MIGTREE-IO $i"
done
"""


#: the devices guest's drivers (their dependencies are found and loaded first)
DEVICE_MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "virtio_balloon",
                  "virtio_console", "virtio_rng", "virtio_scsi", "sd_mod", "virtio_gpu"]

# Everything it does stays inside QEMU: DHCP and ping go to QEMU's user-mode
# network stack (started with restrict=on), console bytes to a chardev.
DEVICES_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in __MODULES__; do
  insmod /lib/modules/$m.ko || echo "MIGTREE-INIT insmod $m failed"
done
n=0
for d in /dev/vda /dev/sda /dev/hvc0 /dev/hwrng /sys/class/net/eth0; do
  while [ ! -e $d ]; do
    n=$((n+1)); [ $n -gt 300 ] && echo "MIGTREE-INIT no $d" && poweroff -f
    sleep 0.1
  done
done
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -f -q -n -t 5 -T 1 -s /bin/true >/dev/null 2>&1 \
  && echo "MIGTREE-DEV dhcp" || echo "MIGTREE-DEV no dhcp"
ip addr add 10.0.2.15/24 dev eth0
exec 3>/dev/hvc0
echo "MIGTREE-HVC hello" >&3
dd if=/dev/hwrng of=/dev/null bs=16 count=1 2>/dev/null && echo "MIGTREE-DEV hwrng"
n=0
while [ -e /sys/class/virtio-ports ] && [ $n -lt 30 ] && ! ls /dev/vport*p1 >/dev/null 2>&1
do
  n=$((n+1)); sleep 0.1
done
for port in /dev/vport*p1; do
  [ -e $port ] || continue
  seq 1 100000 > /tmp/port.txt
  (cat /tmp/port.txt > $port && echo "MIGTREE-DEV port done") &
done
echo "MIGTREE-DEV ready"
i=0
while true; do
  i=$((i+1))
  echo "MIGTREE-HVC $i" >&3
  dd if=/dev/hwrng of=/dev/null bs=16 count=1 2>/dev/null
  dd if=/dev/sda of=/dev/null bs=4096 count=4 skip=$((i % 1000)) iflag=direct 2>/dev/null
  dd if=/dev/vda of=/dev/null bs=4096 count=4 skip=$((i % 1000)) iflag=direct 2>/dev/null
  ping -c 1 -W 1 10.0.2.2 >/dev/null 2>&1
  echo "MIGTREE-LOOP $i"
done
"""


class GuestBuildError(RuntimeError):
    pass


def _apt_download(names: list[str], dest: Path) -> None:
    if shutil.which("apt-get") is None:
        raise GuestBuildError("apt-get is not available to download the guest kernel")
    r = subprocess.run(["apt-get", "download", *names], cwd=dest, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise GuestBuildError(f"apt-get download {' '.join(names)} failed:\n{r.stderr}")


def _kernel_package() -> str:
    """The versioned image package linux-image-amd64 depends on (running
    ``apt-get update`` once if apt knows no package lists yet)."""
    r = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True,
                       text=True)
    if "Depends: linux-image-" not in r.stdout and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        r = subprocess.run(["apt-cache", "depends", "linux-image-amd64"],
                           capture_output=True, text=True)
    for line in r.stdout.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split(": ", 1)[1]
    raise GuestBuildError(
        "apt-cache knows no linux-image-amd64 (run apt-get update):\n" + r.stdout + r.stderr
    )


# -- a newc cpio writer -------------------------------------------------------

def _cpio_entry(out: bytearray, name: str, mode: int, data: bytes = b"",
                rdev: tuple[int, int] = (0, 0), ino: int = 0) -> None:
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
              len(name) + 1, 0]
    out += b"070701" + b"".join(b"%08X" % f for f in fields)
    out += name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)


def module_order(moddir: Path, wanted: list[str]) -> list[Path]:
    """The ``.ko`` files of *wanted* (module names) and of every module they
    depend on (each module's ``modinfo`` ``depends=``), dependencies first."""
    files = {p.name[:-3].replace("-", "_"): p for p in moddir.rglob("*.ko")}
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name not in files:
            raise GuestBuildError(f"module {name} is not in the kernel package")
        m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", files[name].read_bytes())
        for dep in (m.group(1).decode().split(",") if m else []):
            if dep:
                visit(dep.replace("-", "_"))
        order.append(name)

    for name in wanted:
        visit(name)
    return [files[n] for n in order]


def build_initramfs(busybox: Path, modules: list[Path], out_path: Path,
                    init: str = INIT) -> Path:
    out = bytearray()
    ino = 1
    for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
        _cpio_entry(out, d, stat.S_IFDIR | 0o755, ino=ino)
        ino += 1
    _cpio_entry(out, "dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1), ino=ino)
    ino += 1
    _cpio_entry(out, "bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes(), ino=ino)
    ino += 1
    _cpio_entry(out, "bin/sh", stat.S_IFLNK | 0o777, b"busybox", ino=ino)
    ino += 1
    names = []
    for m in modules:
        _cpio_entry(out, f"lib/modules/{m.name}", stat.S_IFREG | 0o644, m.read_bytes(),
                    ino=ino)
        names.append(m.stem)
        ino += 1
    script = init.replace("__MODULES__", " ".join(names)).encode()
    _cpio_entry(out, "init", stat.S_IFREG | 0o755, script, ino=ino)
    _cpio_entry(out, "TRAILER!!!", 0)
    out_path.write_bytes(bytes(out))
    return out_path


def build_guest(cache: Path = DEFAULT_CACHE) -> tuple[Path, Path]:
    """Return ``(kernel, initramfs)``, downloading and building them into
    *cache* the first time."""
    return _build(Path(cache), "initramfs.cpio", None, INIT)


def build_devices_guest(cache: Path = DEFAULT_CACHE) -> tuple[Path, Path]:
    """Return ``(kernel, initramfs)`` of the devices guest (the same kernel
    as :func:`build_guest`'s), building them into *cache* the first time
    (the initramfs is named after its script and modules, so a change to
    either builds a new one)."""
    tag = hashlib.sha256(repr((DEVICE_MODULES, DEVICES_INIT)).encode()).hexdigest()[:12]
    return _build(Path(cache), f"initramfs-devices-{tag}.cpio", DEVICE_MODULES, DEVICES_INIT)


def _build(cache: Path, initrd_name: str, wanted: list[str] | None,
           init: str) -> tuple[Path, Path]:
    kernel_out = cache / "vmlinuz"
    initrd_out = cache / initrd_name
    if kernel_out.exists() and initrd_out.exists():
        return kernel_out, initrd_out
    cache.mkdir(parents=True, exist_ok=True)
    debs = cache / "debs"
    debs.mkdir(exist_ok=True)
    if not glob.glob(str(debs / "linux-image-*.deb")):
        _apt_download([_kernel_package()], debs)
    if not glob.glob(str(debs / "busybox-static*.deb")):
        _apt_download(["busybox-static"], debs)
    root = cache / f"root-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    vmlinuz = sorted(root.glob("boot/vmlinuz-*"))
    if not vmlinuz:
        raise GuestBuildError("no boot/vmlinuz-* in the kernel package")
    moddir = sorted(root.glob("lib/modules/*/kernel"))[-1]
    if wanted is None:
        modules = [moddir / m for m in MODULES]
    else:
        modules = module_order(moddir, wanted)
    missing = [str(m) for m in modules if not m.exists()]
    if missing:
        raise GuestBuildError(f"virtio modules missing from the kernel package: {missing}")
    busybox = root / "bin" / "busybox"
    tmp = initrd_out.with_suffix(".tmp")
    build_initramfs(busybox, modules, tmp, init)
    if not kernel_out.exists():
        shutil.copyfile(vmlinuz[-1], kernel_out.with_suffix(".tmp"))
        kernel_out.with_suffix(".tmp").rename(kernel_out)
    tmp.rename(initrd_out)
    shutil.rmtree(root, ignore_errors=True)
    return kernel_out, initrd_out


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--devices"]
    build = build_devices_guest if "--devices" in sys.argv[1:] else build_guest
    print(*build(Path(args[0]) if args else DEFAULT_CACHE))
