"""Compare two QEMU ``-dump-vmstate`` dumps: what a source QEMU sends that a
destination QEMU cannot load, and which installed filters bridge it.

``qemu-system-x86_64 -machine M -dump-vmstate FILE`` describes what that
QEMU *accepts*: for every qdev device type, its VMStateDescription (vmsd)
with ``version_id``, ``minimum_version_id``, fields (name, size, the
version they appeared in, whether a ``field_exists`` test guards them,
nested struct descriptions) and subsections, plus the machine type
(``vmschkmachine``).  :func:`compare` walks every type of the source dump
and reports, per section and field, what the destination lacks or reads
differently, in the terms QEMU's loader uses (``migration/vmstate.c``):

* the vmsd the destination has for the type: missing, or another name
  (``section-missing``, ``section-renamed``); a QOM type only the source
  has whose vmsd the destination loads under another type is reported but
  does not break loading (``type-missing``: streams name sections by vmsd),
  nor does a vmsd some QEMU versions register by hand, which the
  destination's dump may therefore not list (``section-undescribed``:
  5.2's PS/2 devices, 7.2's PIIX IDE; see :data:`UNDESCRIBED`);
* the section version: newer than the destination's ``version_id`` or
  older than its ``minimum_version_id`` (``version-too-new`` / ``-old``);
* the fields the destination reads *at the stream's version* (a field
  whose ``version_id`` is above it is not read) against those the source
  writes, aligned by name, recursing into structs: ``field-removed``,
  ``field-added``, ``field-moved``, ``field-size``, ``field-changed``
  (a struct against a plain field), ``field-condition`` (a
  ``field_exists`` test on one side only), and the wire-compatible ones
  that do not break loading: ``field-renamed`` (same place, same size),
  ``field-unused`` (padding on one side), ``fields-regrouped`` (same bytes
  in another split), ``struct-renamed``, ``struct-version`` (QEMU loads a
  struct at the destination's own version, so only its fields matter);
  ``field-undecidable`` where the dumps do not say (dumps before QEMU 9.1
  give no element count for arrays);
* subsections, recursively and inside structs: unknown to the destination
  (``subsection-unknown``) or at a version it does not load
  (``subsection-too-new`` / ``-old``), and their fields;
* the machine type (``machine-type``): the destination's configuration
  section refuses a stream of another machine type.

Each difference says whether it breaks loading -- ``ok`` when it does not,
``conditional`` when only a ``field_exists`` test on the side that has the
field decides (QEMU guards fields that way to keep streams compatible, by
the stream's version or a property the machine type sets: a dump cannot
evaluate it) -- and whether the filters bridge it, from their declarations
only, nothing runs:

* a version (or vmsd) difference is bridged by a chain of filters from the
  source's ``vmsd@version`` to one the destination loads -- the engine's own
  graph search (:func:`migtree.engine.check`); the chain then answers for the
  section's fields too (a filter that declares ``produces`` takes the node
  to that version's layout);
* an unknown subsection (or one at a version the destination does not
  load, or a field only the source has) is bridged by a filter that keeps
  the node's ``type@version`` and declares the part's key in
  ``Filter.drops`` (docs/filters.md 2.15), or by a filter on the chain that
  declares it.  Keys are the migtree tree's: a subsection under its short
  name (:func:`migtree_qemu.tree._sub_key`: ``pckbd/extended_state`` ->
  ``extended_state``) prefixed with the struct field it belongs to
  (``kbd.extended_state``); dropping a key bridges everything under it;
* the machine type is bridged by a filter matching ``qemu-machine`` that
  drops ``machine_type``.

The report is ``compatible`` when no difference is a ``gap`` (unbridged
and unconditional).

Sections QEMU registers outside qdev (``cpu``, ``apic``, ``timer``,
``ram``, ``globalstate``, ...) are in no dump; the report lists them as
"not described by either dump", not as differences.

The stream format hooks (``read_description`` / ``check``, see
:class:`migtree.formats.StreamFormat`) are :func:`read_description` and
:func:`check` here.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from .errors import QemuStreamError
from .tree import MACHINE_TYPE, _sub_key

#: the key that makes a JSON object a ``-dump-vmstate`` dump
MACHINE_KEY = "vmschkmachine"
#: what ``migtree check --json`` says the description format is
FORMAT = "qemu-vmstate-dump"

#: sections a QEMU stream of an x86 ``pc``/``q35`` machine carries that no
#: ``-dump-vmstate`` lists (it lists qdev device types with a vmsd; these
#: are registered by hand, or are iterable), and why
UNDESCRIBED: dict[str, str] = {
    "ram": "guest RAM (an iterable section)",
    "block": "block migration (an iterable section, when enabled)",
    "dirty-bitmap": "dirty bitmaps (an iterable section, when enabled)",
    "cpu": "each vCPU's state (the CPU registers it, not qdev)",
    "cpu_common": "each vCPU's common state",
    "apic": "each local APIC (apic and kvm-apic register it by hand)",
    "timer": "the virtual clock",
    "globalstate": "the run state",
    "PCIBUS": "each PCI bus",
    "i2c_bus": "each I2C bus",
    "acpi_build": "the ACPI tables' build state",
    "ps2kbd": "the PS/2 keyboard (registered by hand in QEMU 5.2; a described device in 7.2)",
    "ps2mouse": "the PS/2 mouse (registered by hand in QEMU 5.2; a described device in 7.2)",
    "ide": "the PIIX IDE controller (registered by hand in QEMU 5.2 and 7.2; described in 10.0)",
}

#: the key of the machine type in the ``qemu-machine`` node, for ``drops``
MACHINE_KEY_DROP = "machine_type"


#: how deep structs and subsections may nest (QEMU's x86 dumps: 4)
MAX_DEPTH = 32


class QemuDumpError(QemuStreamError):
    """A ``-dump-vmstate`` dump does not have the shape QEMU writes; the
    message names the file, the entry and the place inside it."""


# -- reading -------------------------------------------------------------------


@attrs.define
class VmstateDump:
    """A validated ``-dump-vmstate`` dump.

    :ivar name: where it came from (a file name), for messages
    :ivar machine: ``vmschkmachine.Name`` (``pc-i440fx-7.2``)
    :ivar entries: QOM type -> ``{"version_id", "minimum_version_id",
        "Description"}`` as QEMU wrote it
    :ivar counts: whether the dump gives ``num`` for fixed arrays (QEMU >=
        9.1); older dumps give only the element size of an array
    """

    name: str
    machine: str | None
    entries: dict[str, dict[str, Any]]
    counts: bool = False

    def vmsds(self) -> dict[str, list[str]]:
        """vmsd name -> the QOM types whose description it is."""
        out: dict[str, list[str]] = {}
        for t in sorted(self.entries):
            out.setdefault(self.entries[t]["Description"]["name"], []).append(t)
        return out


def is_dump(doc: Any) -> bool:
    """A ``-dump-vmstate`` dump is a JSON object with a ``vmschkmachine`` key."""
    return isinstance(doc, Mapping) and MACHINE_KEY in doc


def _int(v: Any) -> bool:
    return type(v) is int and v >= 0


class _Validator:
    def __init__(self, name: str) -> None:
        self.name = name
        self.counts = False

    def fail(self, where: str, what: str) -> QemuDumpError:
        return QemuDumpError(f"{self.name}: {where}: {what}" if self.name else
                             f"{where}: {what}")

    def need_int(self, obj: Mapping[str, Any], key: str, where: str,
                 default: int | None = None) -> None:
        if key not in obj:
            if default is not None:
                return
            raise self.fail(where, f"no {key!r}")
        if not _int(obj[key]):
            raise self.fail(where, f"{key!r} must be a non-negative integer, got "
                                   f"{json.dumps(obj[key])}")

    def description(self, d: Any, where: str, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise self.fail(where, f"descriptions nested more than {MAX_DEPTH} deep")
        if not isinstance(d, Mapping):
            raise self.fail(where, f"expected an object, got {type(d).__name__}")
        if not isinstance(d.get("name"), str) or not d.get("name"):
            raise self.fail(where, "no 'name' (the vmsd's name)")
        where = f"{where} (vmsd {d['name']!r})"
        self.need_int(d, "version_id", where)
        self.need_int(d, "minimum_version_id", where, default=0)
        fields = d.get("Fields", [])
        if not isinstance(fields, list):
            raise self.fail(where, "'Fields' must be a list")
        for i, f in enumerate(fields):
            fw = f"{where}.Fields[{i}]"
            if not isinstance(f, Mapping):
                raise self.fail(fw, f"expected an object, got {type(f).__name__}")
            if not isinstance(f.get("field"), str) or not f.get("field"):
                raise self.fail(fw, "no 'field' (the field's name)")
            fw = f"{fw} (field {f['field']!r})"
            self.need_int(f, "size", fw)
            self.need_int(f, "version_id", fw, default=0)
            self.need_int(f, "num", fw, default=0)
            self.counts = self.counts or "num" in f
            if "field_exists" in f and type(f["field_exists"]) is not bool:
                raise self.fail(fw, f"'field_exists' must be true or false, got "
                                    f"{json.dumps(f['field_exists'])}")
            if "Description" in f:
                self.description(f["Description"], f"{fw}.Description", depth + 1)
        subs = d.get("Subsections", [])
        if not isinstance(subs, list):
            raise self.fail(where, "'Subsections' must be a list")
        for i, s in enumerate(subs):
            self.description(s, f"{where}.Subsections[{i}]", depth + 1)

    def dump(self, doc: Mapping[str, Any]) -> VmstateDump:
        machine = doc[MACHINE_KEY]
        if not isinstance(machine, Mapping) or not isinstance(machine.get("Name"), str):
            raise self.fail(f"entry {MACHINE_KEY!r}", "expected {\"Name\": MACHINE-TYPE}")
        entries: dict[str, dict[str, Any]] = {}
        for t, e in doc.items():
            if t == MACHINE_KEY:
                continue
            where = f"entry {t!r}"
            if not isinstance(e, Mapping):
                raise self.fail(where, f"expected an object, got {type(e).__name__}")
            if "Description" not in e:
                raise self.fail(where, "no 'Description'")
            self.need_int(e, "version_id", where)
            self.need_int(e, "minimum_version_id", where, default=0)
            self.description(e["Description"], f"{where}: Description")
            entries[t] = dict(e)
        return VmstateDump(self.name, machine["Name"], entries, self.counts)


def parse_dump(doc: Any, name: str = "") -> VmstateDump:
    """Validate *doc* (the parsed JSON) as a dump; :class:`QemuDumpError`
    naming the entry (and *name*, the file, when given) when it is not one."""
    if not is_dump(doc):
        raise QemuDumpError((f"{name}: " if name else "") + "not a QEMU -dump-vmstate dump (a "
                            f"JSON object with a {MACHINE_KEY!r} entry)")
    dump = _Validator(name).dump(doc)
    dump.name = name or "dump"
    return dump


def read_description(path_or_bytes: Any, name: str | None = None) -> VmstateDump | None:
    """The stream format's ``read_description`` hook: a :class:`VmstateDump`
    when *path_or_bytes* (a path, or the file's bytes) is a ``-dump-vmstate``
    dump, None when it is something else (not JSON, or JSON without a
    ``vmschkmachine`` entry); :class:`QemuDumpError` when it is a dump with
    a malformed entry."""
    if isinstance(path_or_bytes, (str, os.PathLike)):
        name = name or str(path_or_bytes)
        data = Path(path_or_bytes).read_bytes()
    else:
        data = bytes(path_or_bytes)
    name = name or ""
    head = data.lstrip()[:1]
    if head != b"{":
        return None
    try:
        doc = json.loads(data)
    except RecursionError:
        raise QemuDumpError((f"{name}: " if name else "")
                            + "JSON nested too deeply for a -dump-vmstate dump") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        # a dump's first entry is "vmschkmachine"; anything else is not ours
        if MACHINE_KEY.encode() in data[:200]:
            raise QemuDumpError((f"{name}: " if name else "")
                                + "a -dump-vmstate dump that is not valid JSON") from None
        return None
    if not is_dump(doc):
        return None
    return parse_dump(doc, name)


def load_dump(path: str | os.PathLike[str]) -> VmstateDump:
    """Read and validate the dump at *path*."""
    try:
        doc = json.loads(Path(path).read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QemuDumpError(f"{path}: not JSON: {e}") from None
    return parse_dump(doc, str(path))


# -- the report ----------------------------------------------------------------


@attrs.define
class Difference:
    """One thing the destination lacks or reads differently.

    :ivar kind: ``section-missing``, ``field-removed``, ... (module docstring)
    :ivar key: where, as a dotted key of the section's node in the migtree
        tree (``kbd.extended_state``); ``""`` for the section itself
    :ivar message: what differs, in words
    :ivar breaks: the destination QEMU would refuse or misread the stream
    :ivar bridged_by: the filters that bridge it (name, plugin), in order
    :ivar how: how they do (``pckbd@3 -> pckbd@2 via ...``, ``drops
        'kbd.extended_state'``), or why nothing does
    :ivar within: the vmsd (the section's, a struct's, a subsection's) that
        holds the key's last part
    :ivar conditional: it breaks loading only when a ``field_exists`` test
        holds: QEMU guards a field that way to keep streams compatible (by
        the stream's version, or a property the machine type sets), which a
        dump cannot show
    """

    kind: str
    key: str
    message: str
    breaks: bool = True
    bridged_by: list[dict[str, str]] = attrs.Factory(list)
    how: str = ""
    within: str = ""
    conditional: bool = False

    @property
    def status(self) -> str:
        """``ok`` (does not break loading), ``bridged``, ``conditional`` (it
        breaks only when a ``field_exists`` test holds, which a dump cannot
        evaluate) or ``gap``."""
        if not self.breaks:
            return "ok"
        if self.bridged_by:
            return "bridged"
        return "conditional" if self.conditional else "gap"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "within": self.within,
                "message": self.message, "breaks": self.breaks,
                "conditional": self.conditional, "status": self.status,
                "bridged_by": list(self.bridged_by), "how": self.how}

    def line(self) -> str:
        where = f"{self.key}: " if self.key else ""
        text = f"{where}{self.message}"
        if self.status == "bridged":
            text += f" [bridged: {self.how}]"
        elif self.status == "gap" and self.how:
            text += f" [{self.how}]"
        return text


@attrs.define
class SectionReport:
    """One type of the source dump against the destination."""

    type: str
    vmsd: str
    version: int
    min_version: int
    #: the destination's description compared with: its QOM type, vmsd and
    #: loadable range; None when it has none
    dest_type: str | None = None
    dest_vmsd: str | None = None
    dest_range: tuple[int, int] | None = None
    differences: list[Difference] = attrs.Factory(list)

    @property
    def status(self) -> str:
        """The worst of its differences' (``gap``, ``conditional``,
        ``bridged``, ``ok``), or ``same``."""
        states = {d.status for d in self.differences}
        for s in ("gap", "conditional", "bridged", "ok"):
            if s in states:
                return s
        return "same"

    def as_dict(self) -> dict[str, Any]:
        dest = None
        if self.dest_type is not None:
            dest = {"type": self.dest_type, "vmsd": self.dest_vmsd,
                    "version": self.dest_range[1] if self.dest_range else None,
                    "min_version": self.dest_range[0] if self.dest_range else None}
        return {"type": self.type, "vmsd": self.vmsd, "version": self.version,
                "min_version": self.min_version, "status": self.status,
                "destination": dest, "differences": [d.as_dict() for d in self.differences]}

    def heading(self) -> str:
        text = f"{self.type} (vmsd {self.vmsd}@{self.version}"
        if self.dest_type is None:
            text += "; no description in the destination"
        else:
            lo, hi = self.dest_range or (0, 0)
            other = (f"{self.dest_type}, " if self.dest_type != self.type else "")
            name = f"vmsd {self.dest_vmsd} " if self.dest_vmsd != self.vmsd else ""
            text += f"; destination {other}{name}loads {lo}..{hi}"
        return text + ")"


_LABEL = {"gap": "GAP", "bridged": "BRIDGED", "conditional": "COND", "ok": "ok",
          "same": "same"}


@attrs.define
class DumpCheckReport:
    """What :func:`compare` found; ``compatible`` when no difference is a
    gap (each one that breaks loading is bridged or conditional)."""

    source: str
    destination: str
    source_machine: str | None
    destination_machine: str | None
    machine: Difference | None = None
    sections: list[SectionReport] = attrs.Factory(list)
    #: sections of a QEMU stream that neither dump describes -> why
    undescribed: dict[str, str] = attrs.Factory(dict)
    #: vmsds only the destination describes
    only_in_destination: list[str] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)

    @property
    def differences(self) -> list[Difference]:
        out = [self.machine] if self.machine is not None else []
        for s in self.sections:
            out.extend(s.differences)
        return out

    @property
    def compatible(self) -> bool:
        return all(d.status != "gap" for d in self.differences)

    def section(self, type_name: str) -> SectionReport:
        for s in self.sections:
            if s.type == type_name:
                return s
        raise KeyError(type_name)

    def counts(self) -> dict[str, int]:
        out = {"gap": 0, "conditional": 0, "bridged": 0, "ok": 0}
        for d in self.differences:
            out[d.status] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "compatible": self.compatible,
            "source": {"dump": self.source, "machine": self.source_machine,
                       "types": len(self.sections)},
            "destination": {"dump": self.destination, "machine": self.destination_machine},
            "machine_type": self.machine.as_dict() if self.machine else None,
            "sections": [s.as_dict() for s in self.sections if s.status != "same"],
            "same": [s.type for s in self.sections if s.status == "same"],
            "not_described_by_either_dump": dict(self.undescribed),
            "only_in_destination": list(self.only_in_destination),
            "counts": self.counts(),
            "notes": list(self.notes),
        }

    def format_text(self) -> str:
        def named(machine: str | None, name: str) -> str:
            return f"{machine}" + (f" ({name})" if name and name != "dump" else "")

        lines = [f"QEMU -dump-vmstate descriptions: {named(self.source_machine, self.source)} "
                 f"-> {named(self.destination_machine, self.destination)}"]
        if self.machine is not None:
            lines.append(f"{_LABEL[self.machine.status]:<8} machine type: {self.machine.line()}")
        order = {"gap": 0, "conditional": 1, "bridged": 2, "ok": 3}
        shown = sorted((s for s in self.sections if s.status != "same"),
                       key=lambda s: (order[s.status], s.type))
        for s in shown:
            lines.append(f"{_LABEL[s.status]:<8} {s.heading()}")
            for d in s.differences:
                lines.append(f"    {_LABEL[d.status]:<8} {d.line()}")
        same = sum(1 for s in self.sections if s.status == "same")
        lines.append(f"same     {same} types are described alike by both dumps")
        if self.undescribed:
            lines.append("not described by either dump (QEMU registers them outside qdev; "
                         "-dump-vmstate lists device types only): "
                         + ", ".join(sorted(self.undescribed)))
        if self.only_in_destination:
            lines.append(f"only the destination describes {len(self.only_in_destination)} "
                         f"vmsds: {', '.join(self.only_in_destination)}")
        lines.extend(f"note {n}" for n in self.notes)
        c = self.counts()
        gaps = sum(1 for s in self.sections if s.status == "gap") + (
            1 if self.machine is not None and self.machine.status == "gap" else 0)
        summary = (f"{c['gap']} gap(s), {c['conditional']} conditional, {c['bridged']} bridged, "
                   f"{c['ok']} that do not break loading")
        if self.compatible:
            lines.append(f"compatible ({summary})")
        else:
            lines.append(f"NOT compatible: {gaps} section(s) with gaps ({summary})")
        return "\n".join(lines)


# -- comparing -----------------------------------------------------------------


def _fields(desc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The fields of *desc*, each with its ``key``: the name, and
    ``name#2``, ``name#3`` ... for a name used again (as the tree names
    them: QEMU's ``unused`` padding, a buffer sent in two parts)."""
    out = []
    seen: dict[str, int] = {}
    for f in desc.get("Fields", []):
        n = seen.get(f["field"], 0) + 1
        seen[f["field"]] = n
        out.append({**f, "key": f["field"] if n == 1 else f"{f['field']}#{n}"})
    return out


def _read_at(fields: list[dict[str, Any]], version: int) -> list[dict[str, Any]]:
    """The fields QEMU reads or writes at *version*: a ``field_exists`` test
    decides for the fields that have one, ``version_id`` for the others
    (``vmstate_load_state`` / ``vmstate_save_state``)."""
    return [f for f in fields if f.get("field_exists") or f.get("version_id", 0) <= version]


def _size_text(f: Mapping[str, Any]) -> str:
    if "num" in f:
        return f"{f['num']} x {f['size']} bytes"
    if f["size"] == 0:
        return "variable size"
    return f"{f['size']} byte" + ("" if f["size"] == 1 else "s")


def _wire(f: Mapping[str, Any], counts: bool) -> int | None:
    """Bytes on the wire, None when the dump cannot say (an array in a dump
    without element counts)."""
    if "Description" in f:
        return None
    if "num" in f:
        return f["size"] * f["num"]
    return f["size"] if counts or f["field"] == "unused" else None


def _line_up(a_block: list[dict[str, Any]], a_counts: bool, b_block: list[dict[str, Any]],
             b_counts: bool) -> tuple[str, int]:
    """Whether two runs of plain fields take the same bytes on the wire:
    ``("same", bytes)``, ``("differ", 0)``, or ``("undecidable", 0)`` when
    only arrays whose count a dump does not give could make them agree.  A
    field of a dump without counts is taken as one element (QEMU's checker
    does the same)."""
    if any("Description" in f for f in a_block + b_block):
        return "differ", 0

    def total(block: list[dict[str, Any]], counts: bool) -> tuple[int, list[int]]:
        n, elems = 0, []
        for f in block:
            w = _wire(f, counts)
            if w is None:
                n += f["size"]
                if f["size"]:
                    elems.append(f["size"])
            else:
                n += w
        return n, elems

    ta, ea = total(a_block, a_counts)
    tb, eb = total(b_block, b_counts)
    if ta == tb:
        return "same", ta
    for small, e_small, big, e_big in ((ta, ea, tb, eb), (tb, eb, ta, ea)):
        if e_small and not e_big and big > small and (big - small) % math.gcd(*e_small) == 0:
            return "undecidable", 0
    return "differ", 0


class _Compare:
    """The field and subsection differences of one section (or struct, or
    subsection), recursively."""

    def __init__(self, src: VmstateDump, dst: VmstateDump) -> None:
        self.src, self.dst = src, dst
        self.out: list[Difference] = []
        #: per difference: inside a subsection (a chain does not answer for it)
        self.in_subsection: list[bool] = []
        #: the keys of the source's subsections (optional parts a filter may drop)
        self.subsection_keys: set[str] = set()
        self._depth = 0

    def add(self, kind: str, key: str, within: str, message: str, breaks: bool = True,
            conditional: bool = False) -> None:
        self.out.append(Difference(kind, key, message, breaks, within=within,
                                   conditional=conditional))
        self.in_subsection.append(self._depth > 0)

    # fields ------------------------------------------------------------------
    def fields(self, s_desc: Mapping[str, Any], d_desc: Mapping[str, Any], s_ver: int,
               d_ver: int, prefix: str, what: str) -> None:
        """The fields *s_desc* writes at *s_ver* against those *d_desc*
        reads at *d_ver*, by name and order."""
        within = s_desc["name"]
        d_all = _fields(d_desc)
        sf = _read_at(_fields(s_desc), s_ver)
        df = _read_at(d_all, d_ver)
        # by identity: df is a subset of d_all and every entry's key is unique,
        # and a list membership test here was quadratic in the field count
        read = {id(f) for f in df}
        later = {f["key"]: f for f in d_all if id(f) not in read}
        sm = difflib.SequenceMatcher(None, [f["key"] for f in sf], [f["key"] for f in df],
                                     autojunk=False)
        removed: list[dict[str, Any]] = []
        added: list[dict[str, Any]] = []
        for op, i1, i2, j1, j2 in sm.get_opcodes():
            if op == "equal":
                for a, b in zip(sf[i1:i2], df[j1:j2], strict=True):
                    self.pair(a, b, prefix, within)
            elif op == "delete":
                removed.extend(sf[i1:i2])
            elif op == "insert":
                added.extend(df[j1:j2])
            else:
                r, a = self.replaced(sf[i1:i2], df[j1:j2], prefix, within)
                removed.extend(r)
                added.extend(a)
        moved = {f["key"] for f in removed} & {f["key"] for f in added}
        for f in removed:
            if f["key"] in moved:
                continue
            name = f["field"]
            if f["key"] in later:
                self.add("field-removed", prefix + f["key"], within,
                         f"field {name!r} ({_size_text(f)}): the destination reads it only "
                         f"from version {later[f['key']].get('version_id', 0)} of {what}, the "
                         f"stream is version {d_ver}")
            else:
                self.add("field-removed", prefix + f["key"], within,
                         f"field {name!r} ({_size_text(f)}) is not in the destination's {what}"
                         + (" (sent only when the source's field_exists test holds)"
                            if f.get("field_exists") else ""),
                         conditional=bool(f.get("field_exists")))
        for f in added:
            name = f["field"]
            if f["key"] in moved:
                self.add("field-moved", prefix + f["key"], within,
                         f"field {name!r} is at another place in the destination's {what}: "
                         "the bytes from there on are read as other fields")
                continue
            cond = (" only when its field_exists test holds" if f.get("field_exists") else "")
            since = f.get("version_id", 0)
            self.add("field-added", prefix + f["key"], within,
                     f"field {name!r} ({_size_text(f)}) is read by the destination"
                     + (f" from version {since}" if since and not cond else "") + cond
                     + ", the source does not send it", conditional=bool(f.get("field_exists")))

    def pair(self, a: Mapping[str, Any], b: Mapping[str, Any], prefix: str,
             within: str) -> None:
        """Two fields of the same name at the same place."""
        name = a["field"]
        key = prefix + a["key"]
        if bool(a.get("field_exists")) != bool(b.get("field_exists")):
            side = "destination" if b.get("field_exists") else "source"
            self.add("field-condition", key, within,
                     f"field {name!r} is guarded by a field_exists test in the {side} only: "
                     "the two agree only when that test holds", conditional=True)
        sa, sb = "Description" in a, "Description" in b
        if sa and sb:
            self.struct(a, b, key, within)
            return
        if sa != sb:
            self.add("field-changed", key, within,
                     f"field {name!r} is a struct in the {'source' if sa else 'destination'} "
                     f"and a plain field of {_size_text(b if sa else a)} in the other")
            return
        if a["size"] != b["size"] or ("num" in a and "num" in b and a["num"] != b["num"]):
            self.add("field-size", key, within,
                     f"field {name!r} is {_size_text(a)} in the source, {_size_text(b)} in the "
                     "destination")

    def struct(self, a: Mapping[str, Any], b: Mapping[str, Any], key: str,
               within: str) -> None:
        sd, dd = a["Description"], b["Description"]
        if sd["name"] != dd["name"]:
            self.add("struct-renamed", key, within,
                     f"struct field {a['field']!r} is vmsd {sd['name']!r} in the source, "
                     f"{dd['name']!r} in the destination (struct names are not in the stream)",
                     breaks=False)
        sv, dv = sd["version_id"], dd["version_id"]
        if sv != dv:
            self.add("struct-version", key, within,
                     f"struct field {a['field']!r} (vmsd {sd['name']!r}) is version {sv} in "
                     f"the source, {dv} in the destination; QEMU loads a struct at the "
                     "destination's own version, so only its fields matter", breaks=False)
        self.fields(sd, dd, sv, dv, key + ".", f"struct {dd['name']!r}")
        self.subsections(sd, dd, key + ".")

    def replaced(self, s_block: list[dict[str, Any]], d_block: list[dict[str, Any]],
                 prefix: str, within: str,
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """A run of source fields where the destination has other names:
        renames and padding when the bytes line up; the rest is returned
        as removed / added."""
        if len(s_block) == len(d_block):
            rest_s, rest_d = [], []
            for a, b in zip(s_block, d_block, strict=True):
                if not self.renamed(a, b, prefix, within):
                    rest_s.append(a)
                    rest_d.append(b)
            if not rest_s:
                return [], []
            s_block, d_block = rest_s, rest_d
        names_s = ", ".join(repr(f["field"]) for f in s_block)
        names_d = ", ".join(repr(f["field"]) for f in d_block)
        key = prefix + s_block[0]["key"]
        verdict, total = _line_up(s_block, self.src.counts, d_block, self.dst.counts)
        if verdict == "same":
            self.add("fields-regrouped", key, within,
                     f"fields {names_s} of the source are {names_d} in the destination: the "
                     f"same {total} bytes on the wire, split differently", breaks=False)
            return [], []
        if verdict == "undecidable":
            old = " and ".join(f"the {side}'s dump" for side, d in
                               (("source", self.src), ("destination", self.dst)) if not d.counts)
            verb = "give" if " and " in old else "gives"
            self.add("field-undecidable", key, within,
                     f"fields {names_s} of the source are {names_d} in the destination; "
                     f"whether the bytes line up cannot be told: {old} {verb} no element "
                     "count for arrays (QEMU before 9.1 dumps element sizes only)")
            return [], []
        # the leading fields that line up one to one are renames; the rest is
        # removed / added
        i = 0
        while i < min(len(s_block), len(d_block)) and self.renamed(s_block[i], d_block[i],
                                                                    prefix, within):
            i += 1
        return s_block[i:], d_block[i:]

    def renamed(self, a: Mapping[str, Any], b: Mapping[str, Any], prefix: str,
                within: str) -> bool:
        """Two fields at the same place under other names: True when
        reported as a rename or padding, False to leave them to
        :meth:`replaced`."""
        sa, sb = "Description" in a, "Description" in b
        key = prefix + a["key"]
        if sa and sb:
            self.add("field-renamed", key, within,
                     f"struct field {a['field']!r} is {b['field']!r} in the destination "
                     "(same place)", breaks=False)
            self.struct(a, b, key, within)
            return True
        if sa or sb:
            return False
        if _line_up([a], self.src.counts, [b], self.dst.counts)[0] != "same":
            return False
        unused_a, unused_b = a["field"] == "unused", b["field"] == "unused"
        if unused_b and not unused_a:
            self.add("field-unused", key, within,
                     f"field {a['field']!r} ({_size_text(a)}) is padding in the destination "
                     "(VMSTATE_UNUSED): its value is skipped", breaks=False)
        elif unused_a and not unused_b:
            self.add("field-unused", prefix + b["key"], within,
                     f"field {b['field']!r} ({_size_text(b)}) of the destination is padding "
                     "in the source: it is loaded with the source's zeros", breaks=False)
        else:
            self.add("field-renamed", key, within,
                     f"field {a['field']!r} is {b['field']!r} in the destination (same place, "
                     f"{_size_text(b)})", breaks=False)
        return True

    # subsections -------------------------------------------------------------
    def subsections(self, s_desc: Mapping[str, Any], d_desc: Mapping[str, Any],
                    prefix: str) -> None:
        known = {s["name"]: s for s in d_desc.get("Subsections", [])}
        taken: dict[str, None] = {f["key"]: None for f in _fields(s_desc)}
        within = s_desc["name"]
        for s in s_desc.get("Subsections", []):
            short = _sub_key(s_desc["name"], s["name"], taken)
            taken[short] = None
            key = prefix + short
            self.subsection_keys.add(key)
            d = known.get(s["name"])
            ver = s["version_id"]
            if d is None:
                names = ", ".join(sorted(known)) or "none"
                self.add("subsection-unknown", key, within,
                         f"subsection {s['name']!r} (version {ver}) is unknown to the "
                         f"destination ({d_desc['name']!r} there has: {names}); QEMU sends "
                         "it when its needed() test holds")
                continue
            lo, hi = d.get("minimum_version_id", 0), d["version_id"]
            if ver > hi or ver < lo:
                self.add("subsection-too-new" if ver > hi else "subsection-too-old", key,
                         within, f"subsection {s['name']!r} is version {ver}, the destination "
                         f"loads {lo}..{hi}")
            at = min(max(ver, lo), hi)
            self._depth += 1
            try:
                self.fields(s, d, ver, at, key + ".", f"subsection {s['name']!r}")
                self.subsections(s, d, key + ".")
            finally:
                self._depth -= 1


def _plan(vmsd: str, version: int, targets: Mapping[str, tuple[int, int]],
          filters: list[Any], name: str) -> Any:
    """The engine's verdict on ``vmsd@version`` against *targets*: a
    :class:`migtree.engine.CheckEntry` (``ok``, ``filtered`` with its
    chain, or ``gap`` with the engine's message)."""
    from migtree.engine import Destination
    from migtree.engine import check as engine_check

    dest = Destination(types=dict(targets), name=name)
    report = engine_check({"types": {vmsd: {"version": version}}}, dest, filters)
    return report.entries[0]


def _covers(drops: Iterable[str], key: str, droppable: bool = True,
            optional: Iterable[str] = ()) -> str | None:
    """The declared drop that fixes the difference at *key*: the key itself
    when the difference is one a drop fixes (*droppable*: the source has a
    part the destination cannot take), or an *optional* part (a subsection:
    the destination loads the node without it) that holds the key."""
    optional = set(optional)
    for d in drops:
        if (key == d and droppable) or (key.startswith(d + ".") and d in optional):
            return d
    return None


def _droppers(key: str, tv: tuple[str, int], filters: list[Any], chain: list[Any],
              droppable: bool = True, optional: Iterable[str] = ()) -> tuple[Any, str] | None:
    """The filter that removes *key* (or the subsection holding it) from a
    node at ``type@version`` *tv*: one on the chain that declares it, else
    the first (by priority, name) that keeps *tv* and declares it -- the
    one the engine would run."""
    optional = set(optional)
    for f in chain:
        d = _covers(getattr(f, "drops", ()), key, droppable, optional)
        if d is not None:
            return f, d
    keepers = [f for f in filters
               if f.match.type == tv[0] and f.match.lo <= tv[1] <= f.match.hi
               and (f.produces.type, f.produces.version) == tv]
    for f in sorted(keepers, key=lambda f: (f.sort_key(), f.path or "")):
        d = _covers(getattr(f, "drops", ()), key, droppable, optional)
        if d is not None:
            return f, d
    return None


def _who(f: Any) -> dict[str, str]:
    return {"filter": f.name, "plugin": f.plugin}


def _vmsd_ranges(dump: VmstateDump) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for e in dump.entries.values():
        d = e["Description"]
        lo, hi = d.get("minimum_version_id", 0), d["version_id"]
        if d["name"] in out:
            plo, phi = out[d["name"]]
            lo, hi = min(lo, plo), max(hi, phi)
        out[d["name"]] = (lo, hi)
    return out


def _top(entry: Mapping[str, Any]) -> tuple[int, int]:
    d = entry["Description"]
    return d.get("minimum_version_id", 0), d["version_id"]


def _section(t: str, src: VmstateDump, dst: VmstateDump, filters: list[Any],
             by_name: Mapping[str, Any], dst_vmsds: Mapping[str, list[str]],
             all_ranges: Mapping[str, tuple[int, int]]) -> SectionReport:
    entry = src.entries[t]
    sd = entry["Description"]
    vmsd, ver = sd["name"], sd["version_id"]
    smin = sd.get("minimum_version_id", 0)
    rep = SectionReport(t, vmsd, ver, smin)
    pre: list[Difference] = []
    if entry["version_id"] != ver or entry.get("minimum_version_id", smin) != smin:
        pre.append(Difference("dump-inconsistent", "",
                              f"the source dump gives type {t!r} version "
                              f"{entry['version_id']} but its vmsd {vmsd!r} version {ver}; "
                              "the vmsd's is the one in the stream", breaks=False))
    candidates: list[str] = []
    if t in dst.entries:
        candidates = [t]
    elif vmsd in dst_vmsds:
        candidates = list(dst_vmsds[vmsd])
        pre.append(Difference(
            "type-missing", "",
            f"QOM type {t!r} is not in the destination, which loads vmsd {vmsd!r} as "
            f"{', '.join(repr(x) for x in candidates)} (a stream names sections by vmsd, "
            "so the destination runs with that type instead)", breaks=False))
    if not candidates and vmsd in UNDESCRIBED:
        diff = Difference("section-undescribed", "",
                          f"the destination's dump does not describe vmsd {vmsd!r}, which some "
                          f"QEMU versions register outside qdev ({UNDESCRIBED[vmsd]}): not "
                          "checked, the loading QEMU decides", breaks=False, within=vmsd)
        rep.differences = pre + [diff]
        return rep
    if not candidates:
        diff = Difference("section-missing", "",
                          f"the destination has no type {t!r} and no description of vmsd "
                          f"{vmsd!r}: it refuses the section")
        e = _plan(vmsd, ver, all_ranges, filters, dst.name)
        _bridge_by_chain(diff, e)
        rep.differences = pre + [diff]
        if diff.bridged_by:
            diff.how += " (the chain answers for the section's layout)"
        for d in rep.differences:
            d.within = vmsd
        return rep
    best: tuple[Any, ...] | None = None
    for c in candidates:
        diffs, d_range, d_vmsd = _against(entry, src, dst, c, filters, by_name)
        score = (sum(1 for d in diffs if d.status == "gap"),
                 sum(1 for d in diffs if d.breaks), len(diffs))
        if best is None or score < best[0]:
            best = (score, c, diffs, d_range, d_vmsd)
    assert best is not None
    _, rep.dest_type, diffs, rep.dest_range, rep.dest_vmsd = best
    for d in pre:
        d.within = vmsd
    rep.differences = pre + diffs
    return rep


def _bridge_by_chain(diff: Difference, entry: Any) -> list[Any]:
    """Mark *diff* bridged when the engine found a chain; returns the chain's
    filters (names -> the caller maps them)."""
    if entry.status == "filtered" and entry.chain:
        steps = " -> ".join(s["filter"] for s in entry.chain)
        diff.bridged_by = [{"filter": s["filter"], "plugin": s["plugin"]} for s in entry.chain]
        diff.how = f"{entry.source} -> {entry.chain[-1]['to']} via {steps}"
    elif entry.status == "gap":
        diff.how = entry.error or "no chain of filters"
    return entry.chain if entry.status == "filtered" else []


def _against(entry: Mapping[str, Any], src: VmstateDump, dst: VmstateDump, c: str,
             filters: list[Any], by_name: Mapping[str, Any],
             ) -> tuple[list[Difference], tuple[int, int], str]:
    """The differences of a source type's *entry* against destination type *c*."""
    sd = entry["Description"]
    dd = dst.entries[c]["Description"]
    vmsd, ver = sd["name"], sd["version_id"]
    lo, hi = _top(dst.entries[c])
    out: list[Difference] = []
    chain: list[Any] = []
    final: tuple[str, int] = (vmsd, ver)
    at = ver  # the version the destination reads the section's fields at
    head: Difference | None = None
    if dd["name"] != vmsd:
        head = Difference("section-renamed", "",
                          f"the destination's {c!r} is vmsd {dd['name']!r} (loading versions "
                          f"{lo}..{hi}), not {vmsd!r}: it refuses a section named {vmsd!r}")
        e = _plan(vmsd, ver, {dd["name"]: (lo, hi)}, filters, dst.name)
    elif ver > hi or ver < lo:
        kind = "version-too-new" if ver > hi else "version-too-old"
        head = Difference(kind, "", f"vmsd {vmsd!r} is version {ver}, the destination loads "
                                    f"{lo}..{hi}")
        e = _plan(vmsd, ver, {vmsd: (lo, hi)}, filters, dst.name)
    else:
        e = None
    if head is not None:
        head.within = vmsd
        out.append(head)
        steps = _bridge_by_chain(head, e)
        chain = [by_name[s["filter"]] for s in steps if s["filter"] in by_name]
        if steps:
            to = steps[-1]["to"]
            final = (to.rpartition("@")[0], int(to.rpartition("@")[2]))
            at = final[1]
        else:
            at = min(max(ver, lo), hi)
    cmp = _Compare(src, dst)
    cmp.fields(sd, dd, ver, at, "", f"vmsd {dd['name']!r}")
    cmp.subsections(sd, dd, "")
    for d, in_sub in zip(cmp.out, cmp.in_subsection, strict=True):
        if not d.breaks:
            out.append(d)
            continue
        if chain and not in_sub and not d.kind.startswith("subsection"):
            d.bridged_by = [_who(f) for f in chain]
            d.how = (f"by the chain {head.how if head else ''}: its filters declare "
                     f"{final[0]}@{final[1]}, the destination's layout").strip()
        else:
            hit = _droppers(d.key, final, filters, chain, d.kind in _DROPPABLE,
                            cmp.subsection_keys) if d.key else None
            if hit is not None:
                f, key = hit
                d.bridged_by = [_who(f)]
                d.how = f"filter {f.name} ({f.plugin}) drops {key!r}"
            elif d.key and d.kind in _DROPPABLE:
                d.how = f"no filter for {final[0]}@{final[1]} drops {d.key!r}"
        out.append(d)
    return out, (lo, hi), dd["name"]


#: differences a filter fixes by dropping the part (the source has it, the
#: destination cannot take it)
_DROPPABLE = {"subsection-unknown", "subsection-too-new", "subsection-too-old",
              "field-removed"}


def compare(src: VmstateDump, dst: VmstateDump, filters: Iterable[Any] = ()) -> DumpCheckReport:
    """What *src* sends that *dst* cannot load, per section and field, and
    which of *filters* (:class:`migtree.filters.Filter` or ``FilterPair``)
    bridge it; nothing runs."""
    from migtree.engine import gather_filters

    flist = gather_filters(None, extra=filters)
    by_name = {f.name: f for f in flist}
    report = DumpCheckReport(src.name, dst.name, src.machine, dst.machine)
    if src.machine != dst.machine:
        report.machine = _machine(src, dst, flist)
    dst_vmsds = dst.vmsds()
    all_ranges = _vmsd_ranges(dst)
    for t in sorted(src.entries):
        report.sections.append(_section(t, src, dst, flist, by_name, dst_vmsds, all_ranges))
    described = set(src.vmsds()) | set(dst_vmsds)
    report.undescribed = {k: v for k, v in UNDESCRIBED.items() if k not in described}
    report.only_in_destination = sorted(set(dst_vmsds) - set(src.vmsds()))
    if any(f.path for f in flist):
        report.notes.append("a dump has no QOM paths: path-limited filters are assumed to apply")
    if not (src.counts and dst.counts):
        old = " and ".join(f"the {side}'s dump" for side, d in
                           (("source", src), ("destination", dst)) if not d.counts)
        verb = "give" if " and " in old else "gives"
        report.notes.append(f"{old} {verb} no element counts for arrays (QEMU before 9.1 dumps "
                            "element sizes only): arrays of the same name are compared by "
                            "element size")
    return report


def _machine(src: VmstateDump, dst: VmstateDump, filters: list[Any]) -> Difference:
    diff = Difference(
        "machine-type", "",
        f"{src.machine} -> {dst.machine}: the destination refuses a stream of another machine "
        f"type (its configuration section checks it); run it with -machine {src.machine} "
        "(and dump it that way) if it has that machine type")
    for f in sorted(filters, key=lambda f: (f.sort_key(), f.path or "")):
        if f.match.type == MACHINE_TYPE and _covers(getattr(f, "drops", ()),
                                                     MACHINE_KEY_DROP):
            diff.bridged_by = [_who(f)]
            diff.how = f"filter {f.name} ({f.plugin}) drops {MACHINE_KEY_DROP!r}"
            break
    else:
        diff.how = f"no filter for {MACHINE_TYPE} drops {MACHINE_KEY_DROP!r}"
    return diff


def destination_filters(src: VmstateDump, dst: VmstateDump) -> tuple[list[Any], str]:
    """The filters the destination brings itself, as a ``convert --target``
    target does (:meth:`migtree_qemu.target.QemuTarget.filters`): the
    mapping of the stream's machine type to the destination's, which works
    within one versioned family (i440fx or q35); and a note saying so."""
    from . import machines
    from .target import QemuTarget

    a, b = machines.parse(src.machine or ""), machines.parse(dst.machine or "")
    if src.machine == dst.machine:
        return [], ""
    if a is None or b is None or a[0] != b[0]:
        return [], (f"the destination's machine-type mapping works within one versioned "
                    f"family (pc-i440fx-X or pc-q35-X): it does not apply from {src.machine} "
                    f"to {dst.machine}")
    target = QemuTarget.from_dump({MACHINE_KEY: {"Name": dst.machine}, **dst.entries},
                                  dst.name)
    return list(target.filters()), ("the destination brings its machine-type mapping to "
                                     f"{dst.machine}, as for `migtree convert --target`")


def check(src: VmstateDump, dst: VmstateDump, filters: Iterable[Any]) -> DumpCheckReport:
    """The stream format's ``check`` hook: :func:`compare` with *filters*
    (the installed ones) and the destination's own
    (:func:`destination_filters`)."""
    extra, note = destination_filters(src, dst)
    report = compare(src, dst, [*filters, *extra])
    if note:
        report.notes.append(note)
    return report
