"""QOM paths of QEMU sections from the stream alone, without a live QEMU.

A section's idstr is not a QOM path, and the QOM path of most objects is
an index QEMU hands out in creation order: every device created without a
parent becomes ``/machine/unattached/device[N]``.  For the CPUs and the
board's own devices that order is fixed by the QEMU version and the
machine family, and the stream shows enough of it to count: the sections
are in registration order (a device registers its VMState when it is
realized), so the vCPUs given by ``-smp`` come first, the board's devices
next, and everything the user added with ``-device`` after those.

:func:`static_paths` recognises the layout (:data:`LAYOUTS`, worked out
from QOM walks of QEMU 5.2, 7.2 and 10.0, ``pc-i440fx-*`` and
``pc-q35-*``), matches the stream's leading sections against the
layout's expected order, and counts ``/machine/unattached`` indices up to
the first device whose presence the stream cannot show:

* vCPU *i* of ``-smp`` is ``device[i]``, shifted by one for *i* > 0 when
  the ``kvmvapic`` (section ``kvm-tpr-opt``) was created by CPU 0's APIC;
  its APIC is ``.../lapic``, its ``cpu_common`` ``.../cpu_common`` (as
  :mod:`migtree_qemu.qompaths` names them); ``kvmclock`` (KVM) follows the
  vCPUs;
* board devices follow in the layout's creation order; a device that has
  no section counts only when its presence follows from one that has (the
  ``vmport`` before ``vmmouse``); a floppy drive or an IDE/AHCI disk or
  CD-ROM (no section, and present or not depending on the command line)
  ends the count;
* objects QEMU gives a name (``/machine/fw_cfg``, ``/machine/i440fx``,
  ``/machine/q35/mch``, ``.../ioapic``) and children of placed devices
  (``.../lapic``, the 10.0 PIIX3's ``rtc``, ``ide``, ``uhci``, ``pm``).

Not placed: devices added with ``-device``/``device_add`` (their path is
``/machine/peripheral/ID`` or ``/machine/peripheral-anon/device[N]``, and
neither the id nor the order of anonymous devices is in the stream),
devices created after the first one the stream cannot count, idstrs with
more than one instance (``dma``, ``i8259``: walks do not tell instances
apart either), and any stream whose leading sections do not follow a
known layout.  Those need a QOM walk (:mod:`migtree_qemu.qompaths`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .qevm import QemuStream, Section

UNATTACHED = "/machine/unattached/device"


@dataclass(frozen=True)
class Step:
    """Board sections expected next in the stream: *least*..*most* whose
    idstr fully matches *idstr* (a regular expression)."""

    name: str
    idstr: str
    least: int = 1
    most: int = 1


def _s(name: str, idstr: str | None = None, least: int = 1, most: int = 1) -> Step:
    return Step(name, idstr if idstr is not None else re.escape(name), least, most)


#: creation order: an unknown number of devices without a section
UNKNOWN = "?"
#: the oldest machine type (of both families, on every version) the walks
#: proved; 4.2, 5.2 and 7.2 were walked too
OLDEST = (2, 12)


@dataclass(frozen=True)
class Layout:
    """How one QEMU version builds one machine family.

    ``order``: the board's sections after the vCPUs (and ``kvmclock``), in
    stream order.  ``created``: the board's ``/machine/unattached``
    devices after the vCPUs, in creation order, by step name; a name in
    ``tied`` is a device without a section, there exactly when that step
    has one; :data:`UNKNOWN` ends the count.  ``at``: where each step's
    section goes: an absolute path, or ``@STEP`` + a suffix (that step's
    device, or its child)."""

    qemu: str
    family: str
    oldest: tuple[int, int]  # the oldest machine type of the family proven with a walk
    order: tuple[Step, ...]
    created: tuple[str, ...]
    at: Mapping[str, str]
    tied: Mapping[str, str] = field(default_factory=dict)


#: the display -vga std (also the default) or -vga cirrus makes, on the board
_VGA = _s("vga", r"0000:00:02\.0/(vga|cirrus_vga)", 0)
_HPET = _s("hpet", least=0)
_SERIAL = _s("serial", most=4, least=0)  # -serial (not -device isa-serial)
_PARALLEL = _s("parallel", "parallel_isa", least=0, most=3)
_KBD = (_s("ps2kbd"), _s("ps2mouse"), _s("pckbd"), _s("vmmouse", least=0), _s("port92"))
_PIIX_AT = {"fw_cfg": "/machine/fw_cfg", "PCIHost": "/machine/i440fx",
            "ioapic": "/machine/i440fx/ioapic", "I440FX": "@I440FX", "PIIX3": "@PIIX3"}
_Q35_AT = {"fw_cfg": "/machine/fw_cfg", "PCIHost": "/machine/q35", "mch": "/machine/q35/mch",
           "ioapic": "/machine/q35/ioapic", "ICH9LPC": "@ICH9LPC"}
_ISA_AT = {n: "@" + n for n in ("vga", "hpet", "rtc", "pit", "pcspk", "serial", "parallel",
                                "fdc", "pckbd", "vmmouse", "port92", "ich9_ahci")}
_PS2_AT = {"ps2kbd": "@pckbd/ps2kbd", "ps2mouse": "@pckbd/ps2mouse"}
_FW_CFG = _s("fw_cfg")
_PCIHOST = (_s("PCIHost", least=0), _s("PCIBUS"))
_I440FX = _s("I440FX", r"0000:00:00\.0/I440FX")
_PIIX3 = _s("PIIX3", r"0000:00:01\.0/PIIX3")
_MCH = _s("mch", r"0000:00:00\.0/mch")
_LPC = _s("ICH9LPC", r"0000:00:1f\.0/ICH9LPC")
_AHCI = _s("ich9_ahci", r"0000:00:1f\.2/ich9_ahci")
_TWO = {"dma": _s("dma", least=2, most=2), "i8259": _s("i8259", least=2, most=2)}
_RTC, _PIT, _PCSPK = _s("rtc", "mc146818rtc"), _s("pit", "i8254"), _s("pcspk")
_VMPORT = {"vmport": "vmmouse"}  # created just before the vmmouse, with it

LAYOUTS: tuple[Layout, ...] = (
    Layout("5.2", "i440fx", OLDEST,
           order=(_FW_CFG, *_PCIHOST, _I440FX, _PIIX3, _TWO["i8259"], _s("ioapic"), _VGA, _HPET,
                  _RTC, _PIT, _PCSPK, _TWO["dma"], _SERIAL, _PARALLEL, _s("fdc")),
           created=("I440FX", "PIIX3", "i8259", "vga", "hpet", "rtc", "pit", "pcspk", "dma",
                    "serial", "parallel", "fdc", UNKNOWN),  # then the floppy drives
           at={**_PIIX_AT, **_ISA_AT}),
    Layout("5.2", "q35", OLDEST,
           order=(_FW_CFG, _MCH, *_PCIHOST, _LPC, _TWO["i8259"], _s("ioapic"), _HPET, _RTC, _PIT,
                  _PCSPK, _TWO["dma"], _SERIAL, _PARALLEL, *_KBD, _AHCI),
           created=("ICH9LPC", "i8259", "hpet", "rtc", "pit", "pcspk", "dma", "serial",
                    "parallel", "pckbd", "vmport", "vmmouse", "port92", "ich9_ahci",
                    UNKNOWN),  # then the AHCI disks and CD-ROMs
           at={**_Q35_AT, **_ISA_AT}, tied=_VMPORT),
    Layout("7.2", "i440fx", OLDEST,
           order=(_FW_CFG, *_PCIHOST, _I440FX, _TWO["dma"], _PIIX3, _TWO["i8259"], _s("ioapic"),
                  _VGA, _HPET, _RTC, _PIT, _PCSPK, _SERIAL, _PARALLEL, _s("fdc")),
           created=("I440FX", "PIIX3", "dma", "i8259", "vga", "hpet", "rtc", "pit", "pcspk",
                    "serial", "parallel", "fdc", UNKNOWN),  # then the floppy drives
           at={**_PIIX_AT, **_ISA_AT}),
    Layout("7.2", "q35", OLDEST,
           order=(_FW_CFG, _MCH, *_PCIHOST, _TWO["dma"], _LPC, _TWO["i8259"], _s("ioapic"), _HPET,
                  _RTC, _PIT, _PCSPK, _SERIAL, _PARALLEL, *_KBD, _AHCI),
           created=("ICH9LPC", "dma", "i8259", "hpet", "rtc", "pit", "pcspk", "serial",
                    "parallel", "pckbd", "vmport", "vmmouse", "port92", "ich9_ahci",
                    UNKNOWN),  # then the AHCI disks and CD-ROMs
           at={**_Q35_AT, **_ISA_AT, **_PS2_AT}, tied=_VMPORT),
    # 10.0's PIIX3 makes the RTC, IDE and PM functions (and the DMA
    # controllers) its own children, then the IDE drives follow it
    Layout("10.0", "i440fx", OLDEST,
           order=(_I440FX, *_PCIHOST, _FW_CFG, _TWO["dma"], _RTC, _s("ide", r"0000:00:01\.1/ide"),
                  _s("uhci", r"0000:00:01\.2/uhci", 0), _s("i2c_bus", least=0),
                  _s("piix4_pm", r"0000:00:01\.3/piix4_pm", 0), _PIIX3, _TWO["i8259"],
                  _s("ioapic")),
           created=("I440FX", "PIIX3", UNKNOWN),  # then the IDE drives
           at={**_PIIX_AT, "rtc": "@PIIX3/rtc", "ide": "@PIIX3/ide", "uhci": "@PIIX3/uhci",
                  "piix4_pm": "@PIIX3/pm"}),
    Layout("10.0", "q35", OLDEST,
           order=(_FW_CFG, _MCH, *_PCIHOST, _TWO["dma"], _RTC, _LPC, _TWO["i8259"], _s("ioapic"),
                  _HPET, _PIT, _PCSPK, _SERIAL, _PARALLEL, *_KBD, _AHCI),
           created=("ICH9LPC", "i8259", "hpet", "pit", "pcspk", "serial", "parallel", "pckbd",
                    "vmport", "vmmouse", "port92", "ich9_ahci",
                    UNKNOWN),  # then the AHCI disks and CD-ROMs
           at={**_Q35_AT, **_ISA_AT, **_PS2_AT, "rtc": "@ICH9LPC/rtc"}, tied=_VMPORT),
)

_MACHINE = re.compile(r"pc-(i440fx|q35)-(\d+)\.(\d+)")


def qemu_version(stream: QemuStream) -> str | None:
    """Which of the QEMU versions of :data:`LAYOUTS` wrote *stream*, from
    its description: 5.2 wrote it with qjson, 7.2 with the JSON writer,
    10.0 with the JSON writer and a ``configuration`` entry."""
    config = "configuration" in stream.vmdesc_keys
    if stream.vmdesc_style == "qjson":
        return None if config else "5.2"
    return "10.0" if config else "7.2"


def layout_of(stream: QemuStream) -> Layout | None:
    """The :class:`Layout` of *stream*: its QEMU version (:func:`qemu_version`)
    and machine family, for a machine type no newer than that version and
    no older than the oldest one a walk proved."""
    version = qemu_version(stream)
    machine = stream.configuration.machine if stream.configuration else ""
    m = _MACHINE.fullmatch(machine)
    if version is None or m is None:
        return None
    family, mtype = m.group(1), (int(m.group(2)), int(m.group(3)))
    for layout in LAYOUTS:
        if (layout.qemu == version and layout.family == family
                and layout.oldest <= mtype <= _version_tuple(version)):
            return layout
    return None


def _version_tuple(v: str) -> tuple[int, int]:
    major, minor = v.split(".")
    return int(major), int(minor)


def _cpus(secs: Sequence[Section]) -> tuple[list[dict[str, Section]], Section | None, int]:
    """The ``-smp`` vCPUs' sections at the head of the stream (after
    ``timer`` and any ``slirp``): per vCPU its ``cpu_common``, ``cpu`` and
    ``apic`` sections, the ``kvm-tpr-opt`` of CPU 0's APIC, and where the
    board's sections start."""
    pos = 0
    if pos < len(secs) and secs[pos].idstr == "timer":
        pos += 1
    while pos < len(secs) and secs[pos].idstr == "slirp":
        pos += 1
    cpus: list[dict[str, Section]] = []
    vapic = None
    while (pos + 1 < len(secs) and secs[pos].idstr == "cpu_common"
           and secs[pos + 1].idstr == "cpu"
           and secs[pos].instance_id == secs[pos + 1].instance_id == len(cpus)):
        cpu = {"cpu_common": secs[pos], "cpu": secs[pos + 1]}
        pos += 2
        if not cpus and pos < len(secs) and secs[pos].idstr == "kvm-tpr-opt":
            vapic = secs[pos]
            pos += 1
        # the APIC follows its CPU (its instance id is the APIC id, not the index)
        if pos < len(secs) and secs[pos].idstr == "apic":
            cpu["apic"] = secs[pos]
            pos += 1
        cpus.append(cpu)
    return cpus, vapic, pos


def _match(secs: Sequence[Section], pos: int,
           order: Sequence[Step]) -> dict[str, list[Section]]:
    """The sections of each step of *order*, matched from *pos* on, for
    the steps the stream confirms: those up to the last step that matched
    a section (an optional step is known to be absent only when a later
    step is found where it would have been)."""
    found: list[tuple[str, list[Section]]] = []
    confirmed = 0
    for step in order:
        got: list[Section] = []
        while (len(got) < step.most and pos < len(secs)
               and re.fullmatch(step.idstr, secs[pos].idstr)):
            got.append(secs[pos])
            pos += 1
        if len(got) < step.least:
            break
        found.append((step.name, got))
        if got:
            confirmed = len(found)
    return dict(found[:confirmed])


def static_paths(stream: QemuStream) -> dict[tuple[str, int], str]:
    """``{(idstr, instance_id): QOM path}`` for the sections of *stream*
    whose QOM path the stream and its machine type determine (see the
    module docstring); ``{}`` for a stream of an unknown layout."""
    layout = layout_of(stream)
    if layout is None:
        return {}
    secs = list(stream.devices())
    instances = Counter(s.idstr for s in secs)
    cpus, vapic, pos = _cpus(secs)
    if not cpus:
        return {}
    out: dict[tuple[str, int], str] = {}
    index = 0
    for i, cpu in enumerate(cpus):
        path = f"{UNATTACHED}[{index}]"
        index += 2 if i == 0 and vapic is not None else 1
        out[_key(cpu["cpu"])] = path
        out[_key(cpu["cpu_common"])] = f"{path}/cpu_common"
        if "apic" in cpu:
            out[_key(cpu["apic"])] = f"{path}/lapic"
    if vapic is not None:
        out[_key(vapic)] = f"{UNATTACHED}[1]"
    if pos < len(secs) and secs[pos].idstr == "kvmclock":
        out[_key(secs[pos])] = f"{UNATTACHED}[{index}]"
        index += 1
        pos += 1
    matched = _match(secs, pos, layout.order)
    devices: dict[str, str] = {}  # step -> its one device's path
    for name in layout.created:
        if name in layout.tied:
            if len(matched.get(layout.tied[name], ())) != 1:
                break
            index += 1
            continue
        if name not in matched:  # UNKNOWN, or not confirmed by the stream
            break
        if len(matched[name]) == 1:
            devices[name] = f"{UNATTACHED}[{index}]"
        index += len(matched[name])
    for name, where in layout.at.items():
        if where.startswith("@"):
            step, _, suffix = where[1:].partition("/")
            if step not in devices:
                continue
            where = devices[step] + (f"/{suffix}" if suffix else "")
        for sec in matched.get(name, ()):
            if instances[sec.idstr] == 1:
                out[_key(sec)] = where
    return out


def _key(sec: Section) -> tuple[str, int]:
    return sec.idstr, sec.instance_id
