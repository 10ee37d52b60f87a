"""Filters that take a QEMU stream to an older (or newer) QEMU.

QEMU sends a subsection only when its ``needed()`` says the state differs
from what a QEMU without that subsection would assume, and a field added
without a version bump only when a test says so; a loading QEMU that does
not know one refuses the whole stream (or misreads the bytes after it).
So each such part a newer QEMU added gets a decision, made from QEMU's code
and written down here as a :class:`PartRule`: under which values the older
QEMU reconstructs the same guest-visible state without it (then the part is
dropped into the stash, and comes back on the way up), and what is refused
otherwise, naming the field and the reason.  Migration commands a target
does not know get the same treatment (:class:`CommandRule`).

Every rule is a :class:`migtree.filters.FilterPair` that keeps the node's
``type@version`` and declares the part it drops / restores
(docs/filters.md 2.15), registered through ``migtree_register_filters``
like any other filter; the machine-type mapping depends on the target and
is given by the target itself (:func:`machine_type_pair`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from migtree.filters import Filter, FilterPair

from . import machines
from .qevm import MIG_COMMANDS as COMMANDS
from .vmstate import qemu_json

STASH = "__stash__"
QEMU = "__qemu__"


class ConversionRefused(Exception):
    """Converting would lose or misinterpret state the guest depends on;
    the message names the field and the reason."""


# -- helpers -------------------------------------------------------------------


def _parent(node: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
    """The dict holding dotted *key* and the key's last part there; a key
    that is itself dotted (QEMU's ``acpi_pci_hotplug.acpi_index``) is
    taken whole where it exists."""
    if key in node or "." not in key:
        return node, key
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:i])
        if isinstance(node.get(head), dict):
            return _parent(node[head], ".".join(parts[i:]))
    return node, key


def _stash_put(node: dict[str, Any], pair: str, key: str, value: Any) -> None:
    node.setdefault(STASH, {}).setdefault(pair, {})[key] = value


def _stash_take(node: dict[str, Any], pair: str, key: str) -> Any:
    stash = node[STASH]
    entries = stash[pair]
    value = entries.pop(key)
    if not entries:
        del stash[pair]
    if not stash:
        del node[STASH]
    return value


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


# -- subsections and fields ---------------------------------------------------------


@attrs.frozen
class PartRule:
    """An optional part of a section -- a subsection, or a field a test
    guards on the sending side -- that a newer QEMU sends and an older one
    does not read.

    :param section: the section's vmsd name and version (``"pckbd@3"``)
    :param key: the part's dotted key in the node (``"kbd.extended_state"``;
        a field keeps its QEMU name, ``"acpi_pci_hotplug.acpi_index"``)
    :param qemu_name: QEMU's name for it (``"pckbd/extended_state"``)
    :param kind: ``"subsection"`` or ``"field"`` (a field is also taken out
        of the section's layout, so the bytes the older QEMU reads match)
    :param since: the first QEMU version that sends it
    :param needed: what QEMU's ``needed()`` (or the field's test) means, and
        why dropping is safe when :attr:`refuse` lets it
    :param refuse: ``refuse(node, value) -> reason | None``: why dropping it
        would lose state the guest depends on, for these values
    :param sent_unless: ``(qom-type, property, value)``: a compat property
        with which a machine type neither sends nor reads the part (a
        field's test); then whether the target reads it is known from its
        machine type, both ways
    :param default: for a field a target reads and the stream lacks (an
        older machine type's stream on a newer one): ``{"value": ...,
        "layout": field description, "after": the field it follows}``
    """

    section: str
    key: str
    qemu_name: str
    kind: str
    since: str
    needed: str
    refuse: Callable[[Mapping[str, Any], Any], str | None] = \
        attrs.field(repr=False, default=lambda node, value: None)
    sent_unless: tuple[str, str, str] | None = None
    default: Mapping[str, Any] | None = None
    #: a part that is bytes inside an opaque field (virtio-gpu's scanout
    #: framebuffers): ``(get, take, put)``; ``get(node)`` is the part or
    #: None, ``take(node)`` removes and returns it, ``put(node, value)``
    #: writes it back; ``default["value"]`` may then be ``f(node)``
    access: tuple[Callable[[Mapping[str, Any]], Any],
                  Callable[[dict[str, Any]], Any],
                  Callable[[dict[str, Any], Any], None]] | None = \
        attrs.field(default=None, repr=False)

    def value(self, node: Mapping[str, Any]) -> Any:
        """The part in *node*, None when the node does not have it."""
        if self.access is not None:
            return self.access[0](node)
        parent, last = _parent(node, self.key)  # type: ignore[arg-type]
        return parent.get(last)

    def expected_by(self, machine: str, qemu_version: tuple[int, int] | None) -> bool | None:
        """Whether a QEMU running *machine* reads this part; None when only
        its ``-dump-vmstate`` can tell."""
        if self.sent_unless is None:
            return None
        since = tuple(int(x) for x in self.since.split("."))
        if qemu_version is not None and qemu_version < since:
            return False
        props = machines.compat_props(machine)
        if props is None:
            return None
        qom_type, prop, value = self.sent_unless
        return props.get((qom_type, prop)) != value

    @property
    def pair_name(self) -> str:
        return f"qemu-{self.kind}-" + _slug(f"{self.section.split('@')[0]}-{self.key}")

    def pair(self) -> FilterPair:
        key, rule = self.key, self

        def drop(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
            value = rule.value(node)
            why = rule.refuse(node, value)
            if why is not None:
                raise ConversionRefused(f"{key} ({rule.kind} {rule.qemu_name}): {why}")
            saved: Any
            if rule.access is not None:
                saved = rule.access[1](node)
            else:
                parent, last = _parent(node, key)
                saved = parent.pop(last)
            if rule.kind == "field":
                saved = {"value": saved, **_take_field_layout(node, key)}
            elif rule.kind == "subsection":
                # the layout keeps the subsection's description (a subsection
                # without a value is not sent), but a QEMU that loads and
                # saves the stream describes the section its own way, without
                # it: the description goes with the value (stash files)
                slot = _subsection_slot(node, key)
                if slot is not None and slot[1] is not None:
                    _stash_put(node, ctx.stash_key, key + LAYOUT_SUFFIX,
                               {"at": slot[1], "layout": slot[0][slot[1]]})
            _stash_put(node, ctx.stash_key, key, saved)
            return node

        def restore(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
            if key in (node.get(STASH) or {}).get(ctx.stash_key, {}):
                saved = _stash_take(node, ctx.stash_key, key)
            elif rule.default is not None and rule.access is not None:
                value = rule.default["value"]
                saved = value(node) if callable(value) else value
                ctx.note_default(key, saved)
            elif rule.default is not None and rule.kind == "field":
                saved = {"value": rule.default["value"], "layout": rule.default["layout"],
                         "at": _field_index_after(node, rule.default["after"])}
                ctx.note_default(key, rule.default["value"])
            else:
                raise ConversionRefused(f"{key} ({rule.kind} {rule.qemu_name}): the target "
                                        "reads it and the stream has no value for it")
            if rule.access is not None:
                rule.access[2](node, saved)
                return node
            if rule.kind == "subsection":
                _restore_subsection_layout(node, key, ctx.stash_key)
            if rule.kind == "field":
                _put_field_layout(node, saved["at"], saved["layout"])
                saved = saved["value"]
            parent, last = _parent(node, key)
            parent[last] = saved
            return node

        desc = f"{self.kind} {self.qemu_name} (QEMU >= {self.since}): {self.needed}"
        return FilterPair(
            self.pair_name,
            Filter(self.pair_name + "-drop", self.section, self.section, drop,
                   drops=(key,), description="drop " + desc),
            Filter(self.pair_name + "-restore", self.section, self.section, restore,
                   restores=(key,), description="restore " + desc))


#: the stash entry beside a dropped subsection's value that keeps its layout
LAYOUT_SUFFIX = "#layout"


def _subsection_slot(node: Mapping[str, Any], key: str,
                     ) -> tuple[list[dict[str, Any]], int | None, dict[str, Any]] | None:
    """Where subsection *key* (dotted through struct fields and
    subsections, as the node's values are) is described in the node's
    layout: ``(the subsections list, its index there or None, the whole
    layout)``; None when the layout has no place for it."""
    from .tree import _sub_key

    try:
        whole = json.loads(node[QEMU]["layout"])
    except (KeyError, TypeError, ValueError):
        return None

    def find(layout: dict[str, Any], key: str) -> tuple[list[dict[str, Any]], int | None] | None:
        fields = layout.get("fields", [])
        taken = {f.get("name"): None for f in fields}
        subs = layout.setdefault("subsections", [])
        keys = [_sub_key(layout.get("vmsd_name", ""), sd.get("vmsd_name", ""), taken)
                for sd in subs]
        parts = key.split(".")
        for i in range(len(parts) - 1, 0, -1):
            head, rest = ".".join(parts[:i]), ".".join(parts[i:])
            for f in fields:
                inner = f.get("struct") or (f if "fields" in f else None)
                if f.get("name") == head and isinstance(inner, dict):
                    return find(inner, rest)
            if head in keys:
                return find(subs[keys.index(head)], rest)
        return subs, keys.index(key) if key in keys else None

    found = find(whole, key)
    return None if found is None else (found[0], found[1], whole)


def _restore_subsection_layout(node: dict[str, Any], key: str, pair: str) -> None:
    """Put a dropped subsection's description back into the layout when the
    layout lost it (a QEMU loaded and saved the section in between)."""
    saved = None
    if key + LAYOUT_SUFFIX in (node.get(STASH) or {}).get(pair, {}):
        saved = _stash_take(node, pair, key + LAYOUT_SUFFIX)
    slot = _subsection_slot(node, key)
    if slot is None or slot[1] is not None:
        return  # described already: the stream never left migtree
    if not isinstance(saved, dict) or not isinstance(saved.get("layout"), dict):
        raise ConversionRefused(f"{key}: the section's layout does not describe the "
                                "subsection and the stash has no description of it")
    subs, _, whole = slot
    at = saved.get("at")
    subs.insert(min(at, len(subs)) if isinstance(at, int) and at >= 0 else len(subs),
                saved["layout"])
    node[QEMU]["layout"] = qemu_json(whole)


def _take_field_layout(node: dict[str, Any], key: str) -> dict[str, Any]:
    """Take field *key* (top level) out of the node's layout: where it was
    and its description, for the way back."""
    layout = json.loads(node[QEMU]["layout"])
    fields = layout.get("fields", [])
    at = [i for i, f in enumerate(fields) if f.get("name") == key]
    if len(at) != 1:
        raise ConversionRefused(f"{key}: not one top-level field of the section's layout")
    fdesc = fields.pop(at[0])
    node[QEMU]["layout"] = qemu_json(layout)
    return {"at": at[0], "layout": fdesc}


def _field_index_after(node: dict[str, Any], name: str) -> int:
    """Where a field goes that follows field *name* (the last entry of an
    array QEMU describes element by element)."""
    fields = json.loads(node[QEMU]["layout"]).get("fields", [])
    at = [i for i, f in enumerate(fields) if f.get("name") == name]
    if not at:
        raise ConversionRefused(f"the section's layout has no field {name!r} to follow")
    return at[-1] + 1


def _put_field_layout(node: dict[str, Any], at: int, fdesc: dict[str, Any]) -> None:
    layout = json.loads(node[QEMU]["layout"])
    layout.setdefault("fields", []).insert(at, fdesc)
    node[QEMU]["layout"] = qemu_json(layout)


# i8042 (hw/input/pckbd.c) -- values from QEMU's KBD_* definitions
KBD_STAT_OBF = 0x01
KBD_PENDING_CTRL = 0x04 | 0x08  # KBD_PENDING_CTRL_KBD | KBD_PENDING_CTRL_AUX


def _pckbd_refuse(node: Mapping[str, Any], value: Mapping[str, Any]) -> str | None:
    kbd = node.get("kbd") or {}
    if kbd.get("status", 0) & KBD_STAT_OBF:
        return (f"kbd.status has OBF set (0x{kbd['status']:02x}): the byte waiting in the "
                f"output buffer is kbd.extended_state.obdata=0x{value.get('obdata', 0):02x}, "
                "already taken from the PS/2 queue; QEMU < 7.0 reads the next byte from "
                "the queue instead, so the guest would lose this one")
    if kbd.get("pending_tmp", 0) & KBD_PENDING_CTRL:
        return (f"kbd.pending_tmp=0x{kbd['pending_tmp']:02x} has a controller response "
                "pending (KBD_PENDING_CTRL_*), which QEMU < 7.0 has no way to hold")
    return None


def _pcihp_refuse(node: Mapping[str, Any], value: Mapping[str, Any]) -> str | None:
    pending = []
    for i, st in enumerate(value.get("acpi_pci_hotplug.acpi_pcihp_pci_status") or []):
        if isinstance(st, Mapping) and (st.get("up") or st.get("down")):
            pending.append(f"bus {i}: up=0x{st.get('up', 0):x} down=0x{st.get('down', 0):x}")
    if pending:
        return ("an ACPI PCI hotplug event is pending (" + "; ".join(pending) + "); a "
                "target without ACPI PCI hotplug on ICH9 would never deliver it")
    return None


# e1000e (hw/net/e1000e_core.c, e1000_regs.h): MAC register indices (offset / 4)
E1000E_SYSTIML = 0xB600 >> 2
E1000E_SYSTIMH = 0xB604 >> 2
E1000E_TIMINCA = 0xB608 >> 2
E1000E_TIMINCA_INCVALUE_MASK = 0x00FFFFFF


def _timadj_refuse(node: Mapping[str, Any], value: Any) -> str | None:
    mac = node.get("core.mac") or []
    timinca = mac[E1000E_TIMINCA] if len(mac) > E1000E_TIMINCA else 0
    systim = (mac[E1000E_SYSTIMH] << 32 | mac[E1000E_SYSTIML]
              if len(mac) > E1000E_SYSTIMH else 0)
    if value or timinca & E1000E_TIMINCA_INCVALUE_MASK or systim:
        return (f"the guest runs the e1000e's IEEE 1588 system clock (core.timadj={value}, "
                f"core.mac[TIMINCA]=0x{timinca:08x}, SYSTIM=0x{systim:x}): QEMU >= 8.0 "
                "computes SYSTIM from the virtual clock and TIMADJ, QEMU < 8.0 keeps it a "
                "plain register that never ticks, so the guest's PTP clock would stop")
    return None


def _ltim_refuse(node: Mapping[str, Any], value: Mapping[str, Any]) -> str | None:
    ltim = value.get("ltim", 0) if isinstance(value, Mapping) else 0
    if ltim:
        return (f"ltim=0x{ltim:02x}: the guest set ICW1.LTIM (the whole PIC level "
                "triggered); QEMU < 8.0 ignores LTIM and triggers on edges as ELCR says, "
                "so a level interrupt still asserted would not be delivered again")
    return None


def _gpu_blob_refuse(node: Mapping[str, Any], value: Mapping[str, Any]) -> str | None:
    data = value.get("virtio-gpu/blob") if isinstance(value, Mapping) else None
    if data != bytes(4):
        first = int.from_bytes(bytes(data or b"")[:4], "big")
        return (f"virtio-gpu/blob holds blob resources (the first is resource_id={first}, "
                f"{len(data or b'')} bytes): QEMU < 8.2 cannot migrate blob resources, the "
                "guest's scanouts and mappings on them would be gone")
    return None


# virtio-gpu's own field (hw/display/virtio-gpu.c virtio_gpu_save): the 2D
# resources, each u32 resource_id (0 ends the list), width, height, format,
# iov_cnt, iov_cnt x (u64 addr, u32 length), the image (32 bits a pixel: every
# virtio-gpu 2D format); then vmstate_virtio_gpu_scanouts: i32 enable, u32
# max_outputs, max_outputs x virtio-gpu-one-scanout: 10 u32 (resource_id,
# width, height, x, y, cursor.resource_id, hot_x, hot_y, pos.x, pos.y) and,
# with x-scanout-vmstate-version >= 2 (QEMU >= 9.0, machine types >= 9.0),
# 6 u32 fb.format, bytes_pp, width, height, stride, offset.
GPU_FIELD = "virtio-gpu"
GPU_SCANOUT_V1 = 40
GPU_FB = 24


def _gpu_scanouts(data: bytes) -> tuple[int, int, int] | None:
    """(offset of the first scanout, max_outputs, bytes a scanout) of a
    virtio-gpu field, None when it does not parse."""
    at = 0

    def u32(pos: int) -> int:
        return int.from_bytes(data[pos:pos + 4], "big")

    while True:
        if at + 4 > len(data):
            return None
        rid = u32(at)
        at += 4
        if rid == 0:
            break
        if at + 16 > len(data):
            return None
        width, height, iov_cnt = u32(at), u32(at + 4), u32(at + 12)
        at += 16 + 12 * iov_cnt + 4 * width * height
    if at + 8 > len(data):
        return None
    n = u32(at + 4)
    rest = len(data) - at - 8
    if n == 0 or rest % n or rest // n not in (GPU_SCANOUT_V1, GPU_SCANOUT_V1 + GPU_FB):
        return None
    return at + 8, n, rest // n


def _gpu_fb_get(node: Mapping[str, Any]) -> tuple[bytes, ...] | None:
    data = node.get(GPU_FIELD)
    parsed = _gpu_scanouts(data) if isinstance(data, bytes) else None
    if parsed is None or parsed[2] != GPU_SCANOUT_V1 + GPU_FB:
        return None
    first, n, size = parsed
    return tuple(data[first + i * size + GPU_SCANOUT_V1:first + (i + 1) * size]
                 for i in range(n))


def _gpu_set_field(node: dict[str, Any], data: bytes) -> None:
    node[GPU_FIELD] = data
    layout = json.loads(node[QEMU]["layout"])
    for f in layout.get("fields", []):
        if f.get("name") == GPU_FIELD:
            f["size"] = len(data)
    node[QEMU]["layout"] = qemu_json(layout)


def _gpu_fb_take(node: dict[str, Any]) -> list[bytes]:
    fbs = _gpu_fb_get(node)
    if fbs is None:
        raise ConversionRefused("virtio-gpu: no scanout framebuffers to take")
    data = node[GPU_FIELD]
    first, n, size = _gpu_scanouts(data)  # type: ignore[misc]
    out = bytearray(data[:first])
    for i in range(n):
        out += data[first + i * size:first + i * size + GPU_SCANOUT_V1]
    _gpu_set_field(node, bytes(out))
    return list(fbs)


def _gpu_fb_put(node: dict[str, Any], fbs: list[bytes]) -> None:
    data = node[GPU_FIELD]
    parsed = _gpu_scanouts(data)
    if parsed is None or parsed[2] != GPU_SCANOUT_V1 or parsed[1] != len(fbs):
        raise ConversionRefused(f"virtio-gpu: the field does not hold {len(fbs)} scanouts of "
                                "the QEMU < 9.0 layout")
    first, n, _ = parsed
    out = bytearray(data[:first])
    for i in range(n):
        out += data[first + i * GPU_SCANOUT_V1:first + (i + 1) * GPU_SCANOUT_V1]
        out += bytes(fbs[i])
    _gpu_set_field(node, bytes(out))


def _gpu_fb_default(node: Mapping[str, Any]) -> list[bytes]:
    data = node.get(GPU_FIELD)
    parsed = _gpu_scanouts(data) if isinstance(data, bytes) else None
    if parsed is None:
        raise ConversionRefused("virtio-gpu: its field does not parse as QEMU writes it")
    return [bytes(GPU_FB)] * parsed[1]


def _gpu_fb_refuse(node: Mapping[str, Any], fbs: Any) -> str | None:
    data = node.get(GPU_FIELD)
    parsed = _gpu_scanouts(data) if isinstance(data, bytes) else None
    if parsed is None:
        return "its field does not parse as QEMU writes it"
    first, _, size = parsed
    for i, fb in enumerate(fbs or ()):
        rid = int.from_bytes(data[first + i * size:first + i * size + 4], "big")
        fmt, offset = int.from_bytes(fb[:4], "big"), int.from_bytes(fb[20:24], "big")
        if rid and fmt and offset:
            return (f"scanout {i} shows resource {rid} from fb.offset={offset} (x/y inside "
                    "the resource); QEMU < 9.0 shows a restored scanout from the "
                    "resource's origin, so the guest's display would shift")
    return None


PART_RULES: tuple[PartRule, ...] = (
    PartRule(
        "pckbd@3", "kbd.extended_state", "pckbd/extended_state", "subsection", "7.0",
        "sent when the i8042's extended-state property is on (machine types >= 7.0): "
        "the output-buffer byte and its source, the pending controller response, the "
        "keyboard throttle timer. QEMU < 7.0 derives the byte's source from status and "
        "reads the byte from the PS/2 queue when the guest asks, so with the output "
        "buffer empty and no controller response pending nothing is lost (a pending "
        "throttle timer only delays the next byte: dropped)",
        _pckbd_refuse),
    PartRule(
        "ICH9LPC@1", "pm.pcihp", "ich9_pm/pcihp", "subsection", "6.1",
        "sent when ACPI PCI hotplug is on for ICH9 (q35 machine types >= 6.1): the "
        "hotplug controller's selector and per-bus up/down event bits. With no event "
        "pending the registers hold nothing a running guest waits for; a target machine "
        "without ACPI PCI hotplug (q35 <= 6.0) uses native PCIe hotplug for later "
        "hotplugs",
        _pcihp_refuse),
    PartRule(
        "piix4_pm@3", "acpi_pci_hotplug.acpi_index", "acpi_pci_hotplug.acpi_index", "field",
        "6.0",
        "sent (test vmstate_acpi_pcihp_use_acpi_index) when the machine type supports "
        "acpi-index (i440fx >= 6.0): the value the guest's ACPI _DSM last read back for a "
        "PCI device's acpi-index. It is a reply register of a query the guest makes while "
        "probing a device, not state a running guest waits on; QEMU < 6.0 has no "
        "acpi-index at all (a later query reads no index). On a machine type that has "
        "it, the stream of one that has not gets 0 (no query made)",
        sent_unless=("PIIX4_PM", "x-not-migrate-acpi-index", "on"),
        default={"value": 0, "after": "acpi_pci_hotplug.acpi_pcihp_pci_status",
                 "layout": {"name": "acpi_pci_hotplug.acpi_index", "type": "uint32",
                            "size": 4}}),
    PartRule(
        "e1000e@1", "core.timadj", "core.timadj", "field", "8.0",
        "sent (test e1000e_migrate_timadj) when the e1000e's migrate-timadj is on "
        "(machine types >= 8.0): the offset QEMU >= 8.0 adds to the virtual clock to give "
        "the guest the IEEE 1588 system time (SYSTIM). QEMU < 8.0 has no such clock "
        "(SYSTIM is a plain register), so with TIMADJ 0, TIMINCA's increment 0 and SYSTIM "
        "0 (a guest that never started the clock) both read SYSTIM as 0. On a machine "
        "type that reads it, a stream without it gets 0, as QEMU itself does with a 7.2 "
        "machine type's stream",
        _timadj_refuse,
        sent_unless=("e1000e", "migrate-timadj", "off"),
        default={"value": 0, "after": "core.tx",
                 "layout": {"name": "core.timadj", "type": "int64", "size": 8}}),
    PartRule(
        "i8259@1", "ltim", "i8259/ltim", "subsection", "8.0",
        "sent when the guest set ICW1.LTIM (ltim_state_needed: level-triggered mode for "
        "the whole PIC, which PC firmware and x86 guests leave off; ELCR selects the "
        "trigger mode per IRQ). QEMU < 8.0 ignores LTIM, so the part can only go when it "
        "is 0, which QEMU never sends",
        _ltim_refuse),
    PartRule(
        "virtio-gpu@1", "blob", "virtio-gpu/blob", "subsection", "8.2",
        "sent when the device's blob property is on (virtio_gpu_blob_state_needed): the "
        "blob resources (id, size, guest memory entries), the list ended by a 0 id. "
        "Dropped only when the list is empty: the older QEMU then has nothing to restore",
        _gpu_blob_refuse),
    PartRule(
        "virtio-gpu@1", "virtio-gpu.scanout_fb", "virtio-gpu-one-scanout fb.*", "bytes",
        "9.0",
        "the framebuffer description of each scanout (fb.format, bytes_pp, width, height, "
        "stride, offset: 6 u32 after the 10 of the scanout), sent when "
        "x-scanout-vmstate-version is 2 (machine types >= 9.0). QEMU >= 9.0 loads a scanout "
        "whose fb.format is 0 the way QEMU < 9.0 always does (a surface of the whole "
        "resource image, virtio_gpu_post_load's legacy path), and for a 2D resource fb "
        "describes that whole image; so the part goes unless a scanout starts inside its "
        "resource (fb.offset), and comes back as zeros (the legacy path)",
        _gpu_fb_refuse,
        sent_unless=("virtio-gpu-device", "x-scanout-vmstate-version", "1"),
        default={"value": _gpu_fb_default},
        access=(_gpu_fb_get, _gpu_fb_take, _gpu_fb_put)),
)


def part_rules_for(type_name: str, version: int) -> list[PartRule]:
    return [r for r in PART_RULES if r.section == f"{type_name}@{version}"]


# -- virtio features a guest may have negotiated ------------------------------------------


@attrs.frozen
class VirtioFeature:
    """A virtio feature bit whose offer depends on the QEMU version and the
    machine type (a compat property turns it off for older machine types).
    A guest that negotiated it keeps using it: a target that does not offer
    it refuses the device's state (QEMU: "Features ... unsupported"), or
    worse, so the converter refuses first."""

    bit: int
    name: str
    qom_type: str
    property: str
    since: tuple[int, int]
    #: the device's vmsd for a device-specific bit (< 24), None for any device
    device: str | None = None

    def offered(self, machine: str, qemu_version: tuple[int, int] | None) -> bool | None:
        if qemu_version is not None and qemu_version < self.since:
            return False
        props = machines.compat_props(machine)
        if props is None:
            return None
        return props.get((self.qom_type, self.property)) not in ("false", "off")


VIRTIO_FEATURES: tuple[VirtioFeature, ...] = (
    VirtioFeature(40, "VIRTIO_F_RING_RESET", "virtio-device", "queue_reset", (7, 2)),
    VirtioFeature(54, "VIRTIO_NET_F_GUEST_USO4", "virtio-net-device", "guest_uso4", (8, 2)),
    VirtioFeature(55, "VIRTIO_NET_F_GUEST_USO6", "virtio-net-device", "guest_uso6", (8, 2)),
    VirtioFeature(56, "VIRTIO_NET_F_HOST_USO", "virtio-net-device", "host_uso", (8, 2)),
    VirtioFeature(4, "VIRTIO_BALLOON_F_PAGE_POISON", "virtio-balloon-device", "page-poison",
                  (5, 1), device="virtio-balloon"),
)


# -- slirp instance ids ---------------------------------------------------------------

#: QEMU 8.2 registers each user-mode netdev's slirp state with
#: VMSTATE_INSTANCE_ID_ANY (net/slirp.c: instance 0, 1, 2 in netdev order);
#: before, every one was instance 0
SLIRP_NUMBERED_SINCE = (8, 2)
SLIRP = "slirp"
SLIRP_KEY = "instance_id"
WIRE_ID = "wire_instance_id"


def slirp_position(node: Mapping[str, Any]) -> int:
    """The netdev's place among the stream's slirp sections: its instance id
    in a stream of QEMU >= 8.2, its occurrence (the N-th instance 0) in one
    of QEMU < 8.2; both count netdevs in creation order."""
    q = node[QEMU]
    return int(q["instance_id"]) + int(q.get("occurrence", 0))


def slirp_wire_id(node: Mapping[str, Any]) -> int:
    q = node[QEMU]
    return int(q.get(WIRE_ID, q["instance_id"]))


def slirp_target_version(qemu_version: tuple[int, int] | None,
                         vmsds: Mapping[str, Mapping[str, Any]]) -> tuple[int, int] | None:
    """The QEMU version a target's slirp numbering follows.  A target knows
    only the lowest QEMU of its machine type (QEMU 10.0 running pc-q35-7.2
    says 7.2), and slirp's numbering is the QEMU's, not the machine type's:
    so a dump that describes what only QEMU >= 8.2 has (the
    ``virtio-gpu/blob`` subsection, the ``virtio-sound-device`` vmsd, both
    new in 8.2) is taken as QEMU 8.2 at least."""
    if qemu_version is not None and qemu_version >= SLIRP_NUMBERED_SINCE:
        return qemu_version
    gpu = vmsds.get("virtio-gpu") or {}
    if "virtio-sound-device" in vmsds or any(
            sub.get("name") == "virtio-gpu/blob" for sub in gpu.get("Subsections", [])):
        return SLIRP_NUMBERED_SINCE
    return qemu_version


def slirp_wanted(node: Mapping[str, Any], qemu_version: tuple[int, int] | None) -> int | None:
    """The instance id a loading QEMU of *qemu_version* has for this slirp
    section's netdev (None: unknown version, leave it)."""
    if qemu_version is None:
        return None
    return 0 if qemu_version < SLIRP_NUMBERED_SINCE else slirp_position(node)


def slirp_misfit(node: Mapping[str, Any], qemu_version: tuple[int, int] | None,
                 Misfit: Any) -> Any:
    """The misfit of a slirp section whose instance id the target (QEMU
    *qemu_version*: :func:`slirp_target_version`) does not have for its
    netdev, or None."""
    wanted = slirp_wanted(node, qemu_version)
    if wanted is None or wanted == slirp_wire_id(node):
        return None
    v = f"{qemu_version[0]}.{qemu_version[1]}"  # type: ignore[index]
    v = v if wanted == 0 else f">= {v}"
    if wanted == 0:
        return Misfit(SLIRP_KEY, "absent",
                      f"QEMU {v} registers every user-mode netdev's slirp state as instance 0 "
                      f"and refuses instance {slirp_wire_id(node)} (QEMU >= 8.2 numbers "
                      "them)")
    return Misfit(SLIRP_KEY, "required",
                  f"QEMU {v} numbers the user-mode netdevs' slirp states 0, 1, 2 in netdev "
                  f"order, this is netdev {wanted}; as instance {slirp_wire_id(node)} it "
                  "would be loaded into another netdev's slirp")


def _slirp_guestfwd(node: Mapping[str, Any]) -> str | None:
    data = node.get("data")
    if isinstance(data, bytes) and data[:1] not in (b"", b"\x00"):
        return (f"data[0]=0x{data[0]:02x}: this netdev's slirp holds guestfwd connections; "
                "QEMU < 8.2 loads every slirp section into its first user-mode netdev, so "
                f"they would move to that netdev (this is netdev {slirp_position(node)})")
    return None


def slirp_pair() -> FilterPair:
    """Renumber the slirp sections for the target: all 0 for QEMU < 8.2,
    0, 1, 2 in netdev order for QEMU >= 8.2.  The instance id is the
    section's identity on the wire, not state: the node keeps its original
    one (``__qemu__["instance_id"]``, by which :func:`tree_to_stream` finds
    it), and ``__qemu__["wire_instance_id"]`` is what is written."""
    name = "qemu-slirp-instance-id"

    def set_wire(node: dict[str, Any], wire: int) -> None:
        q = node[QEMU]
        if wire == q["instance_id"]:
            q.pop(WIRE_ID, None)
        else:
            q[WIRE_ID] = wire

    def drop(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
        if slirp_position(node):
            why = _slirp_guestfwd(node)
            if why is not None:
                raise ConversionRefused(f"slirp instance {node[QEMU]['instance_id']}: {why}")
        set_wire(node, 0)
        return node

    def restore(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
        set_wire(node, slirp_position(node))
        return node

    return FilterPair(
        name,
        Filter(name + "-drop", "slirp@4", "slirp@4", drop, drops=(SLIRP_KEY,),
               description="write the slirp section as instance 0, as QEMU < 8.2 "
                           "registers every user-mode netdev (refused when a later netdev "
                           "holds guestfwd connections, which would move to the first)"),
        Filter(name + "-restore", "slirp@4", "slirp@4", restore, restores=(SLIRP_KEY,),
               description="write the slirp section as instance N, its netdev's place, as "
                           "QEMU >= 8.2 numbers them"))


# -- migration commands --------------------------------------------------------------


@attrs.frozen
class CommandRule:
    """A migration command a target QEMU may not know."""

    command: int
    refuse: Callable[[Mapping[str, Any]], str | None] = \
        attrs.field(repr=False, default=lambda tree: None)

    @property
    def name(self) -> str:
        return COMMANDS[self.command][0]

    @property
    def key(self) -> str:
        return f"command.{self.name}"

    def pair(self) -> FilterPair:
        rule, key, cmd = self, self.key, self.command

        def drop(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
            why = rule.refuse(ctx.tree or node)
            if why is not None:
                raise ConversionRefused(f"migration command {rule.name}: {why}")
            q = node[QEMU]
            order = q["order"]
            at = [i for i, e in enumerate(order) if e[0] == "COMMAND" and e[1] == cmd]
            data = [bytes(order[i][2]) for i in at]
            q["order"] = [e for i, e in enumerate(order) if i not in set(at)]
            _stash_put(node, ctx.stash_key, key, {"command": cmd, "at": at, "data": data})
            return node

        def restore(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
            saved = _stash_take(node, ctx.stash_key, key)
            order = list(node[QEMU]["order"])
            for i, data in zip(saved["at"], saved["data"], strict=True):
                order.insert(i, ["COMMAND", saved["command"], data])
            node[QEMU]["order"] = order
            return node

        name = "qemu-command-" + self.name
        info = COMMANDS[cmd][2]
        return FilterPair(
            name,
            Filter(name + "-drop", "qemu-machine@1", "qemu-machine@1", drop, drops=(key,),
                   description=f"drop MIG_CMD {self.name}: {info}"),
            Filter(name + "-restore", "qemu-machine@1", "qemu-machine@1", restore,
                   restores=(key,), description=f"restore MIG_CMD {self.name}"))


def _vfio_present(tree: Mapping[str, Any]) -> str | None:
    from .tree import iter_section_nodes

    vfio = [p for p, n in iter_section_nodes(dict(tree))
            if "vfio" in str(n.get(QEMU, {}).get("idstr", "")).lower()]
    if vfio:
        return (f"VFIO devices load their state at switchover ({', '.join(vfio)}); a target "
                "without the command would not prepare them")
    return None


COMMAND_RULES: tuple[CommandRule, ...] = (CommandRule(0x0B, _vfio_present),)


def static_filters() -> list[FilterPair]:
    """The pairs the plugin registers (``migtree_register_filters``)."""
    return ([r.pair() for r in PART_RULES] + [r.pair() for r in COMMAND_RULES]
            + [slirp_pair()])


# -- the machine type -----------------------------------------------------------------


def machine_type_pair(target_machine: str, vmdesc_style: str,
                      describes_configuration: bool) -> FilterPair:
    """Map the stream's machine type to the target's, within one family
    (i440fx or q35): the configuration section names the machine type and a
    loading QEMU refuses a stream for another.  The vmdesc is written as the
    target's QEMU writes it.  The original is stashed, so the way back gives
    it again.  What the guest sees differently on the target machine type
    (its compat properties) is listed by :func:`machine_notes`."""
    pair_name = "qemu-machine-type"

    def drop(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
        q = node[QEMU]
        cfg = q.get("configuration")
        if cfg is None:
            raise ConversionRefused("the stream has no configuration section (QEMU < 2.4?); "
                                    "its machine type cannot be mapped")
        source = cfg["machine"]
        a, b = machines.parse(source), machines.parse(target_machine)
        if a is None or b is None or a[0] != b[0]:
            raise ConversionRefused(
                f"machine type {source} cannot become {target_machine}: not the same "
                "versioned machine family (i440fx or q35); the chipset would change under "
                "the guest")
        _stash_put(node, ctx.stash_key, "machine_type", {
            "machine": source, "vmdesc_style": q.get("vmdesc_style", "json-writer"),
            "vmdesc_keys": list(q.get("vmdesc_keys", []))})
        cfg["machine"] = target_machine
        q["vmdesc_style"] = vmdesc_style
        keys = [k for k in q.get("vmdesc_keys", []) if k != "configuration"]
        if describes_configuration:
            keys.insert(0, "configuration")
        q["vmdesc_keys"] = keys
        return node

    def restore(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
        saved = _stash_take(node, ctx.stash_key, "machine_type")
        q = node[QEMU]
        q["configuration"]["machine"] = saved["machine"]
        q["vmdesc_style"] = saved["vmdesc_style"]
        q["vmdesc_keys"] = list(saved["vmdesc_keys"])
        return node

    return FilterPair(
        pair_name,
        Filter("qemu-machine-type-map", "qemu-machine@1", "qemu-machine@1", drop,
               drops=("machine_type",), dynamic=True, plugin="migtree-qemu",
               description=f"map the machine type to the target's {target_machine}"),
        Filter("qemu-machine-type-restore", "qemu-machine@1", "qemu-machine@1", restore,
               restores=("machine_type",), dynamic=True, plugin="migtree-qemu",
               description="give the machine type back"))


def machine_notes(source_machine: str | None, target_machine: str) -> list[str]:
    """Lines naming the compat properties that differ between the stream's
    original machine type and the target's."""
    if source_machine is None or source_machine == target_machine:
        return []
    diffs = machines.differences(source_machine, target_machine)
    if diffs is None:
        return [f"machine type {source_machine} -> {target_machine}: no compat-property "
                "table for one of them (migtree_qemu.machines)"]
    head = (f"machine type {source_machine} -> {target_machine}: {len(diffs)} compat "
            "properties differ (source -> target)")
    return [head] + [f"  {d}" for d in diffs]
