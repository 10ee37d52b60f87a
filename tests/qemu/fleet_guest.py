"""The *fleet guest*: a third initramfs for guest_builder's kernel that uses
every device of the fleet device set (``qemu_streams.fleet_args``).

It loads the drivers of those devices (each with the modules it depends
on, :func:`guest_builder.module_order`; a driver the kernel has built in is
skipped), brings every NIC up on its own user-mode network (each netdev is
a separate slirp: 10.0.2.15/24 on every NIC, pinged per interface at the
gateway 10.0.2.2, which slirp answers itself even with ``restrict=on``),
and runs one worker per device, each counting what succeeded:

========  ============================================================
``vda``   direct reads and writes on the virtio-blk disk
``sda``   direct reads and writes on the virtio-scsi disk
``ethN``  ``ping -I ethN 10.0.2.2`` (e1000 or e1000e, e1000e, virtio-net)
``hvc``   a line to the virtio-serial console port (``/dev/hvc0``)
``rng``   16 bytes from ``/dev/hwrng`` (virtio-rng)
``usb``   the usb-tablet's input events (the host sends them over QMP
          ``input-send-event``; through qemu-xhci, usbhid, evdev)
``gpu``   writes to virtio-gpu's framebuffer; counted when the device's
          interrupts went up (it completed commands)
``cd``    a sector of the IDE/AHCI CD-ROM's medium (``fleet_args`` gives it
          one whose sector *k* starts with ``MIGTREE-CD k``), read after
          dropping the drive's buffers so that every read is ATAPI I/O
          (ata_piix or ahci, sr_mod), and checked against its number
``pvpanic`` the pvpanic port (0x505) read through ``/dev/port``: when its
          capability register offers the crash-loaded event, the guest
          writes that event, which QEMU reports as a QMP
          ``GUEST_CRASHLOADED`` event and otherwise ignores (the panicked
          event would stop the guest); the host counts the device only
          when those QMP events arrive
========  ============================================================

Every two seconds it prints ``MIGTREE-FLEET <n> <devices> mem=<MiB>``:
the devices whose count went up since the last round, and MemTotal (the
balloon takes pages out of it). ``MIGTREE-FLEET-BOOT`` is printed once at
boot, when the workers start, with the pvpanic capability register's value.

By hand::

    python tests/qemu/fleet_guest.py [CACHE_DIR]
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import guest_builder
from guest_builder import DEFAULT_CACHE, _build, build_guest

#: the drivers of the fleet's devices; their dependencies are found and loaded first
FLEET_MODULES = [
    "virtio_pci",
    "e1000", "e1000e", "virtio_net",
    "virtio_blk", "virtio_scsi", "sd_mod",
    "virtio_balloon", "virtio_console", "virtio_rng", "virtio_gpu",
    "xhci_pci", "usbhid", "hid_generic", "evdev",
    "ata_piix", "ahci", "sr_mod",
    "pvpanic_mmio",
]

#: what a round names when every device of the fleet device set worked
FLEET_DEVICES = ("vda", "sda", "eth0", "eth1", "eth2", "hvc", "rng", "usb", "gpu", "cd",
                 "pvpanic")

# Everything it does stays inside QEMU: pings go to QEMU's user-mode network
# stack (started with restrict=on), console bytes to a chardev file.
FLEET_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in __MODULES__; do
  insmod /lib/modules/$m.ko || echo "MIGTREE-FLEET-INIT insmod $m failed"
done
waitfor() {
  n=0
  while [ ! -e "$1" ] && [ $n -lt 150 ]; do n=$((n+1)); sleep 0.2; done
  [ -e "$1" ] || echo "MIGTREE-FLEET-INIT no $1"
}
for d in /dev/vda /dev/sda /dev/hvc0 /dev/hwrng /dev/fb0 /dev/sr0; do waitfor $d; done
# every NIC the PCI bus has (class 0x0200xx) as an ethN
nics=$(grep -l '^0x0200' /sys/bus/pci/devices/*/class | wc -l)
n=0
while [ $(ls -d /sys/class/net/eth* 2>/dev/null | wc -l) -lt $nics ] && [ $n -lt 150 ]; do
  n=$((n+1)); sleep 0.2
done
NICS=""
for e in /sys/class/net/eth*; do [ -e $e ] && NICS="$NICS ${e##*/}"; done
ip link set lo up
for e in $NICS; do
  ip link set $e up
  ip addr add 10.0.2.15/24 dev $e
done
tablet=""
n=0
while [ -z "$tablet" ] && [ $n -lt 150 ]; do
  for e in /sys/class/input/event*; do
    grep -q Tablet $e/device/name 2>/dev/null && tablet=/dev/input/${e##*/}
  done
  [ -z "$tablet" ] && { n=$((n+1)); sleep 0.2; }
done
gpu=$(ls /sys/bus/virtio/drivers/virtio_gpu 2>/dev/null | grep '^virtio[0-9]')
rngdev=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)

ok() {
  echo $(( $(cat /tmp/ok.$1 2>/dev/null || echo 0) + 1 )) > /tmp/ok.$1.new
  mv /tmp/ok.$1.new /tmp/ok.$1
}
disk() {
  i=0
  while true; do
    i=$((i+1))
    dd if=/dev/$1 of=/dev/null bs=4096 count=4 skip=$((i % 1000)) iflag=direct 2>/dev/null \
      && dd if=/dev/urandom of=/dev/$1 bs=4096 count=1 seek=$((2000 + i % 1000)) \
            oflag=direct conv=notrunc 2>/dev/null \
      && ok $1
    sleep 0.3
  done
}
nic() {
  while true; do ping -c 1 -W 2 -I $1 10.0.2.2 >/dev/null 2>&1 && ok $1; sleep 0.5; done
}
hvc() {
  i=0
  while true; do
    i=$((i+1)); echo "MIGTREE-FLEET-HVC $i" > /dev/hvc0 && ok hvc; sleep 0.5
  done
}
rng() {
  while true; do dd if=/dev/hwrng of=/dev/null bs=16 count=1 2>/dev/null && ok rng; sleep 0.5; done
}
fb() {
  i=0
  while true; do
    i=$((i+1))
    dd if=/dev/urandom of=/dev/fb0 bs=4096 count=4 seek=$((i % 64)) 2>/dev/null
    sleep 0.5
  done
}
cdrom() {
  i=0
  while true; do
    i=$((i+1)); k=$((i % 512))
    blockdev --flushbufs /dev/sr0 2>/dev/null
    dd if=/dev/sr0 bs=2048 count=1 skip=$k 2>/dev/null | head -c 16 | grep -q "^MIGTREE-CD $k " \
      && ok cd
    sleep 0.5
  done
}
# pvpanic's capability register: bit 0 panicked, bit 1 crash-loaded (QEMU >= 5.0)
pvcaps() {
  dd if=/dev/port bs=1 skip=$((0x505)) count=1 2>/dev/null | od -An -tu1 | tr -d ' '
}
pvpanic() {
  while true; do
    c=$(pvcaps)
    if [ -n "$c" ] && [ $((c & 2)) -ne 0 ]; then
      printf '\002' | dd of=/dev/port bs=1 seek=$((0x505)) count=1 conv=notrunc 2>/dev/null \
        && ok pvpanic
    fi
    sleep 1
  done
}
# the interrupts a virtio device (virtioN) has had: its MSI-X vectors or its line
irqs() {
  awk -v d="$1" '{ n = $NF; if (n == d || index(n, d "-") == 1) s += $2 } END { print s + 0 }' \
    /proc/interrupts
}

sr=$(ls /dev/sr0 2>/dev/null)
echo "MIGTREE-FLEET-BOOT nics:$NICS tablet:$tablet gpu:$gpu rng:$rngdev cd:$sr pvpanic:$(pvcaps)"
if [ -n "$tablet" ]; then cat $tablet > /tmp/tablet.raw & fi
disk vda &
disk sda &
for e in $NICS; do nic $e & done
hvc &
rng &
fb &
[ -e /dev/sr0 ] && cdrom &
pvpanic &
r=0
while true; do
  sleep 2
  r=$((r+1))
  line="MIGTREE-FLEET $r"
  for d in vda sda $NICS hvc rng cd pvpanic; do
    c=$(cat /tmp/ok.$d 2>/dev/null || echo 0)
    eval p=\${prev_$d:-0}
    [ "$c" != "$p" ] && line="$line $d"
    eval prev_$d=$c
  done
  c=$(wc -c < /tmp/tablet.raw 2>/dev/null || echo 0)
  [ "$c" != "${prev_usb:-0}" ] && line="$line usb"
  prev_usb=$c
  c=0
  [ -n "$gpu" ] && c=$(irqs $gpu)
  [ "$c" != "${prev_gpu:-0}" ] && line="$line gpu"
  prev_gpu=$c
  echo "$line mem=$(awk '/^MemTotal/ { print int($2 / 1024) }' /proc/meminfo)"
done
"""


def _kernel_has_as_module(names: list[str], cache: Path) -> tuple[list[str], list[str]]:
    """(*names* the kernel package has as a ``.ko``, the rest): the rest are
    built in (or absent), and left out of the initramfs."""
    debs = sorted((cache / "debs").glob("linux-image-*.deb"))
    listing = subprocess.run(["dpkg", "-c", str(debs[-1])], capture_output=True, text=True,
                             check=True).stdout
    kos = {Path(line.split()[-1]).name.split(".ko")[0].replace("-", "_")
           for line in listing.splitlines() if ".ko" in line}
    return [n for n in names if n in kos], [n for n in names if n not in kos]


def build_fleet_guest(cache: Path = DEFAULT_CACHE) -> tuple[Path, Path]:
    """Return ``(kernel, initramfs)`` of the fleet guest (the same kernel as
    :func:`guest_builder.build_guest`'s), building them into *cache* the
    first time (named after its script and modules)."""
    cache = Path(cache)
    build_guest(cache)  # the kernel and busybox packages downloaded, the kernel in place
    wanted, _ = _kernel_has_as_module(FLEET_MODULES, cache)
    tag = hashlib.sha256(repr((wanted, FLEET_INIT)).encode()).hexdigest()[:12]
    return _build(cache, f"initramfs-fleet-{tag}.cpio", wanted, FLEET_INIT)


def built_in(cache: Path = DEFAULT_CACHE) -> list[str]:
    """The fleet's drivers the kernel has no module for (built in)."""
    return _kernel_has_as_module(FLEET_MODULES, Path(cache))[1]


__all__ = ["FLEET_DEVICES", "FLEET_MODULES", "build_fleet_guest", "built_in", "guest_builder"]


if __name__ == "__main__":
    print(*build_fleet_guest(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE))
