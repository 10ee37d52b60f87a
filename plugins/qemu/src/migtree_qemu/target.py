"""A QEMU destination described by its ``-dump-vmstate``: what it loads.

``qemu-system-x86_64 -machine TYPE -dump-vmstate FILE`` writes, for every
device type with a VMState, the description its loader follows: name,
``version_id``, ``minimum_version_id``, fields (with the version each
appeared in and whether a test decides it) and subsections, recursively,
plus the machine type it was asked for (``vmschkmachine``).  That is a
destination for the filter engine:

* **types**: every section's vmsd name with the versions QEMU loads
  (``minimum_version_id..version_id``); a section at another version is
  driven there by version filters, or refused;
* **misfits** (:class:`migtree.engine.Misfit`, docs/filters.md 2.15): a
  subsection the target does not define, or defines at a lower version (the
  loading QEMU refuses the whole stream); on the machine node, a machine
  type other than the target's and migration commands the target does not
  know.  Filters shipped in :mod:`migtree_qemu.compat` declare which of
  these they drop or restore.

The dump describes only device types whose class carries the VMState
(``dc->vmsd``): sections registered with ``vmstate_register`` (the CPU, its
APIC, timers, RAM, global state, and in QEMU <= 7.2 even the PIIX IDE
controller) are not in it, and a missing vmsd cannot tell such a section
from a device the target lacks.  Those sections pass as they are; the
notes list them (the loading QEMU decides).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from migtree.errors import MigtreeError

from . import compat
from .qevm import MIG_COMMANDS as COMMANDS
from .tree import (
    MACHINE_TYPE,
    QEMU_KEY,
    RAM_TYPE,
    ROOT_TYPE,
    TYPE_KEY,
    VERSION_KEY,
    _sub_key,
    iter_section_nodes,
    layout_of,
)

STASH_KEY = "__stash__"
_MACHINE_VERSION = re.compile(r"-(\d+)\.(\d+)$")
_UNIQUE_SUFFIX = re.compile(r"\[\d+\]$")


class QemuTargetError(MigtreeError):
    """A file is not a usable ``-dump-vmstate`` description."""


@attrs.define
class QemuTarget:
    """One QEMU destination: a ``-dump-vmstate`` of that QEMU for the machine
    type it will run."""

    name: str
    machine: str
    #: vmsd name -> its description (the dump's ``Description``)
    vmsds: dict[str, dict[str, Any]]
    #: the lowest QEMU version that has this machine type (the version a
    #: QEMU-version-dependent rule assumes; None: not a versioned machine)
    qemu_version: tuple[int, int] | None
    format: str = "qemu"
    #: refusals of the safety analysis taken as warnings (``--accept KEY``)
    accepted: frozenset[str] = frozenset()
    _tree: Mapping[str, Any] | None = attrs.field(default=None, repr=False, eq=False)
    _analysed: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    # -- reading ----------------------------------------------------------
    @staticmethod
    def sniff(doc: Any) -> bool:
        return isinstance(doc, dict) and isinstance(doc.get("vmschkmachine"), dict)

    @classmethod
    def from_dump(cls, doc: Any, name: str = "-dump-vmstate") -> QemuTarget:
        if not cls.sniff(doc):
            raise QemuTargetError(f"{name}: not a -dump-vmstate dump (no vmschkmachine)")
        machine = doc["vmschkmachine"].get("Name")
        if not isinstance(machine, str) or not machine:
            raise QemuTargetError(f"{name}: vmschkmachine has no Name")
        vmsds: dict[str, dict[str, Any]] = {}
        for type_name, entry in doc.items():
            if type_name == "vmschkmachine":
                continue
            desc = entry.get("Description") if isinstance(entry, dict) else None
            if desc is None:
                continue
            _check_desc(desc, f"{name}: {type_name}", 0)
            vmsds.setdefault(desc["name"], desc)
        m = _MACHINE_VERSION.search(machine)
        version = (int(m.group(1)), int(m.group(2))) if m else None
        return cls(f"QEMU ({machine}, {name})", machine, vmsds, version)

    @classmethod
    def from_file(cls, path: str | Path) -> QemuTarget:
        p = Path(path)
        try:
            doc = json.loads(p.read_bytes())
        except (OSError, ValueError) as e:
            raise QemuTargetError(f"{path}: cannot read a -dump-vmstate dump: {e}") from None
        return cls.from_dump(doc, p.name)

    def accept(self, keys: list[str]) -> None:
        """Take the safety analysis's refusals named *keys*
        (``TYPE.PROPERTY``) as warnings: the operator knows the guest does
        without what the target cannot present."""
        self.accepted = frozenset(self.accepted | set(keys))

    # -- what it knows ------------------------------------------------------
    def knows_command(self, cmd: int) -> bool:
        info = COMMANDS.get(cmd)
        if info is None:
            return False
        return self.qemu_version is not None and self.qemu_version >= info[1]

    def vmdesc_style(self) -> str:
        """How this target's QEMU writes a vmdesc (QEMU <= 6.1: qjson)."""
        v = self.qemu_version
        return "qjson" if v is not None and v < (6, 2) else "json-writer"

    def describes_configuration(self) -> bool:
        """QEMU >= 9.1 puts the configuration section in the vmdesc."""
        return self.qemu_version is not None and self.qemu_version >= (9, 1)

    # -- as an engine destination ----------------------------------------
    def destination(self, tree: Mapping[str, Any]) -> Any:
        """The :class:`migtree.engine.Destination` for *tree*: the dump's
        vmsds at their version ranges; undescribed sections, the tree's
        structural nodes and decoder nodes (lifted virtio nodes, checked by
        their section's vmsd in :meth:`shape`) at the versions they have."""
        from migtree.engine import Destination

        self._tree, self._analysed = tree, {}
        types: dict[str, tuple[int, int]] = {
            name: (d.get("minimum_version_id", 0), d.get("version_id", 0))
            for name, d in self.vmsds.items()}
        for t in (ROOT_TYPE, MACHINE_TYPE):
            types.setdefault(t, (1, 1))
        for node in _object_nodes(tree):
            t, v = node.get(TYPE_KEY), node.get(VERSION_KEY)
            if not isinstance(t, str) or type(v) is not int or t in self.vmsds:
                continue
            lo, hi = types.get(t, (v, v))
            types[t] = (min(lo, v), max(hi, v))
        return Destination(types=types, name=self.name, shape=self.shape)

    def shape(self, path: str, node: dict[str, Any]) -> list[Any]:
        """The misfits of *node* on this target (docs/filters.md 2.15)."""
        from migtree.engine import Misfit

        t = node.get(TYPE_KEY)
        q = node.get(QEMU_KEY)
        if t == MACHINE_TYPE and isinstance(q, dict):
            return list(self._machine_misfits(node, q, Misfit))
        if not isinstance(q, dict) or "idstr" not in q:
            return []
        if t == compat.SLIRP:
            slirp = compat.slirp_misfit(
                node, compat.slirp_target_version(self.qemu_version, self.vmsds), Misfit)
            return [] if slirp is None else [slirp]
        if q.get("lifted"):
            return list(self._lifted_misfits(node, q, Misfit))
        desc = self.vmsds.get(t)
        if desc is None:
            return []  # undescribed (passes) or unknown (the engine refuses its type)
        layout = layout_of(node)
        stashed = _stashed_keys(node)
        out: dict[str, Any] = {}
        # the rules that know which machine types send a part decide it first
        for rule in compat.part_rules_for(t, node.get(VERSION_KEY)):
            expected = rule.expected_by(self.machine, self.qemu_version)
            has = rule.value(node)
            if expected is True and has is None:
                out[rule.key] = Misfit(rule.key, "present" if rule.key in stashed
                                       else "required",
                                       f"{rule.kind} {rule.qemu_name!r} is read by machine type "
                                       f"{self.machine}")
            elif expected is False and has is not None:
                out[rule.key] = Misfit(rule.key, "absent",
                                       f"{rule.kind} {rule.qemu_name!r} is not read by machine "
                                       f"type {self.machine} of QEMU "
                                       f"{_version_str(self.qemu_version)}")
            elif expected is not None:
                out[rule.key] = None
        for m in self._object_misfits(node, layout, desc, "", stashed, Misfit):
            out.setdefault(m.key, m)
        return [m for m in out.values() if m is not None]

    def filters(self) -> list[Any]:
        """The filters that come with this target: the machine-type mapping
        to its machine type (and the vmdesc as its QEMU writes it)."""
        return [compat.machine_type_pair(self.machine, self.vmdesc_style(),
                                         self.describes_configuration())]

    def notes(self, tree: Mapping[str, Any]) -> list[str]:
        """After filtering: the compat properties that differ when the
        machine type was mapped, and the sections the dump cannot check."""
        from . import analysis

        out = compat.machine_notes(analysis.source_machine(tree), self.machine)
        out += analysis.notes(tree, self)
        undescribed = sorted({self._vmsd_of(n) for _, n in iter_section_nodes(dict(tree))
                              if self._vmsd_of(n) not in self.vmsds
                              and n.get(TYPE_KEY) != RAM_TYPE})
        if undescribed:
            out.append("sections the target's -dump-vmstate does not describe (registered "
                       "outside a device class), passed as they are (RAM is checked by "
                       "the loading QEMU): " + ", ".join(undescribed))
        return out

    @staticmethod
    def _vmsd_of(node: Mapping[str, Any]) -> str:
        q = node.get(QEMU_KEY) or {}
        return str(q.get("vmsd_name") if q.get("lifted") else node.get(TYPE_KEY))

    def schemas(self, tree: Mapping[str, Any]) -> dict[str, Any]:
        from .format import QEMU_FORMAT
        from .tree import tree_schemas

        return tree_schemas(tree, QEMU_FORMAT.describe)

    # -- misfits --------------------------------------------------------------
    def _machine_misfits(self, node: dict[str, Any], q: dict[str, Any],
                         Misfit: Any) -> Iterator[Any]:
        cfg = q.get("configuration") or {}
        stash = (node.get(STASH_KEY) or {}).get("qemu-machine-type", {})
        if cfg.get("machine") != self.machine:
            if stash.get("machine_type", {}).get("machine") == self.machine:
                yield Misfit("machine_type", "present",
                             f"the stream was converted from machine type {self.machine}")
            else:
                yield Misfit("machine_type", "absent",
                             f"the target runs machine type {self.machine}, the stream's "
                             f"is {cfg.get('machine')}")
        for entry in q.get("order", []):
            if entry[0] == "COMMAND" and not self.knows_command(entry[1]):
                name = COMMANDS.get(entry[1], (f"0x{entry[1]:x}",))[0]
                yield Misfit(f"command.{name}", "absent",
                             f"migration command {name} (0x{entry[1]:x}) is unknown to QEMU "
                             f"{_version_str(self.qemu_version)}")
        # after the commands: a command's own refusal (VFIO) is the more precise one
        for finding in self._analysis(node):
            if finding.verdict == "refuse":
                yield Misfit(f"compat.{finding.key}", "absent", finding.reason)
        for key, entries in (node.get(STASH_KEY) or {}).items():
            if not key.startswith("qemu-command-"):
                continue
            for cmd_key, value in entries.items():
                if isinstance(value, dict) and self.knows_command(value.get("command", -1)):
                    yield Misfit(cmd_key, "present",
                                 f"QEMU {_version_str(self.qemu_version)} knows "
                                 f"{cmd_key.split('.', 1)[-1]}")

    def _analysis(self, machine_node: Mapping[str, Any]) -> list[Any]:
        """The safety analysis of the tree this machine node belongs to
        (:mod:`migtree_qemu.analysis`), once per tree."""
        key = id(machine_node)
        if self._analysed.get("key") != key:
            from . import analysis

            self._analysed = {"key": key,
                              "findings": analysis.analyse(self._tree or {}, self)}
        return self._analysed["findings"]

    def _lifted_misfits(self, node: dict[str, Any], q: dict[str, Any],
                        Misfit: Any) -> Iterator[Any]:
        vmsd, version = q.get("vmsd_name"), q.get("version")
        backend = node.get("virtio-backend")
        features = backend.get("guest_features") if isinstance(backend, Mapping) else None
        if type(features) is int:
            for feat in compat.VIRTIO_FEATURES:
                if not features >> feat.bit & 1 or feat.device not in (None, vmsd):
                    continue
                if feat.offered(self.machine, self.qemu_version) is False:
                    old = self.qemu_version is not None and self.qemu_version < feat.since
                    why = (f"{feat.qom_type}.{feat.property} came in QEMU "
                           f"{_version_str(feat.since)}" if old else
                           f"machine type {self.machine} turns {feat.qom_type}."
                           f"{feat.property} off")
                    yield Misfit(
                        f"virtio-backend.guest_features.{feat.name}", "absent",
                        f"the guest negotiated {feat.name} (bit {feat.bit}) with this {vmsd}, "
                        f"and QEMU {_version_str(self.qemu_version)} on {self.machine} does "
                        f"not offer it ({why}); a guest cannot be told to stop using a "
                        f"feature it negotiated")
        desc = self.vmsds.get(vmsd)
        if desc is None:
            return  # not described (see notes)
        lo, hi = desc.get("minimum_version_id", 0), desc.get("version_id", 0)
        if not lo <= version <= hi:
            yield Misfit("section", "absent",
                         f"section {vmsd!r} version {version} is outside {lo}..{hi}, the "
                         f"versions the target loads")

    def _object_misfits(self, plain: Mapping[str, Any], layout: Mapping[str, Any],
                        desc: Mapping[str, Any], prefix: str, stashed: set[str],
                        Misfit: Any) -> Iterator[Any]:
        """Fields and subsections (recursively, also of struct fields) the
        target does not have at this version; stashed ones it can take
        back."""
        target_fields = desc.get("Fields", [])
        yield from self._field_misfits(layout, target_fields, desc, prefix, stashed, Misfit)
        by_name = {}
        for f in target_fields:
            by_name.setdefault(f.get("field"), f)
        counts: dict[str, int] = {}
        for fdesc in layout.get("fields", []):
            name = fdesc["name"]
            sub_layout = fdesc.get("struct") or (fdesc if "fields" in fdesc else None)
            target_f = by_name.get(name)
            if not sub_layout or target_f is None or "Description" not in target_f:
                continue
            if "index" in fdesc:
                continue  # elements of one array share a layout: the first is enough
            n = counts[name] = counts.get(name, 0) + 1
            key = name if n == 1 else f"{name}#{n}"
            value = plain.get(key)
            values = value if isinstance(value, list) else [value]
            for i, v in enumerate(values):
                if isinstance(v, Mapping):
                    sub = f"{prefix}{key}." if not isinstance(value, list) else \
                        f"{prefix}{key}[{i}]."
                    yield from self._object_misfits(v, sub_layout, target_f["Description"],
                                                    sub, stashed, Misfit)
                    break  # one element says what the layout holds
        known = {s.get("name"): s for s in desc.get("Subsections", [])}
        taken = {f["name"]: None for f in layout.get("fields", [])}
        for sdesc in layout.get("subsections", []):
            sname = sdesc["vmsd_name"]
            key = _sub_key(layout.get("vmsd_name", ""), sname, taken)
            taken[key] = None
            value = plain.get(key)
            target_s = known.get(sname)
            full_key = prefix + key
            if value is None:
                if target_s is not None and full_key in stashed:
                    yield Misfit(full_key, "present",
                                 f"the target defines subsection {sname!r} again")
                continue
            if target_s is None:
                yield Misfit(full_key, "absent",
                             f"subsection {sname!r} is unknown to the target "
                             f"({_names(known)} are what its {desc.get('name')!r} defines)")
            elif sdesc.get("version", 0) > target_s.get("version_id", 0):
                yield Misfit(full_key, "absent",
                             f"subsection {sname!r} version {sdesc.get('version')} is newer "
                             f"than the target's {target_s.get('version_id')}")
            elif isinstance(value, Mapping):
                yield from self._object_misfits(value, sdesc, target_s, full_key + ".",
                                                stashed, Misfit)
        # a stashed subsection the layout no longer describes (a QEMU loaded
        # and saved the section in between: it describes only what it has)
        for key in sorted(stashed):
            rest = key[len(prefix):] if key.startswith(prefix) else None
            if not rest or "." in rest or "#" in rest or rest in taken:
                continue
            for sname in known:
                if _sub_key(layout.get("vmsd_name", ""), sname, taken) == rest:
                    yield Misfit(key, "present",
                                 f"the target defines subsection {sname!r} again")
                    break

    def _field_misfits(self, layout: Mapping[str, Any], target_fields: list[dict[str, Any]],
                       desc: Mapping[str, Any], prefix: str, stashed: set[str],
                       Misfit: Any) -> Iterator[Any]:
        """Fields the stream has and the target does not read.

        Names are not the wire format (hpet's ``num_timers`` became
        ``num_timers_save`` in 9.x, the same byte; QEMU 10.0's e1000e sends
        5 bytes of padding where 7.2 reads the array ``eitr_intr_pending``),
        order and sizes are.  So the stream's fields (the vmdesc: element
        size and count) are aligned with the fields the target reads at the
        stream's version (the dump: element size, and the count only from
        QEMU 9.1 on) by :func:`_align`: a target field guarded by a test
        (``field_exists``: QEMU adds fields without a version bump that
        way, and ``VMSTATE_UNUSED_TEST`` pads only old versions) may be
        absent from the stream; same-named fields are preferred, then a
        rename of the same byte size.  A stream field no target field takes
        is a misfit.  The reverse (a target field the stream lacks) cannot
        be told from a dump: a variable array with no elements is in the
        dump and not in the stream.  A stashed field the target has again
        can come back."""
        version = layout.get("version", desc.get("version_id", 0))
        wanted = [f for f in target_fields if f.get("version_id", 0) <= version]
        ours = _logical_fields(layout.get("fields", []))
        for field in _align(ours, wanted):
            yield Misfit(prefix + field.name, "absent",
                         f"field {field.name!r} ({field.wire_size} bytes) is not in the "
                         f"target's {desc.get('name')!r} version {version}")
        target_names = {f.get("field") for f in wanted}
        for key in sorted(stashed):
            if key.startswith(prefix) and key[len(prefix):] in target_names:
                yield Misfit(key, "present", f"the target's {desc.get('name')!r} has field "
                             f"{key[len(prefix):]!r} again")


@attrs.frozen
class _StreamField:
    """One field of the stream's layout as the dump lists it: an array QEMU
    describes element by element (``index``) or with ``array_len`` is one
    field of *count* elements of *size* bytes (a buffer's size is its
    length)."""

    name: str
    size: int
    count: int
    struct: str | None  # the struct's vmsd name ("" unnamed); None: a plain value
    type: str | None

    @property
    def wire_size(self) -> int:
        return self.size * self.count


def _logical_fields(fields: list[dict[str, Any]]) -> list[_StreamField]:
    """The stream's fields as the dump lists them: an array QEMU describes
    element by element (``index``; QEMU >= 9.1 leaves it off the last
    element) is one field."""
    out: list[_StreamField] = []
    prev: dict[str, Any] | None = None
    for f in fields:
        if prev is not None and prev["name"] == f["name"] and "index" in prev \
                and (f.get("index", 0) > 0 or "index" not in f):
            last = out[-1]
            out[-1] = attrs.evolve(last, count=last.count + 1)
            prev = f
            continue
        prev = f
        sub = f.get("struct") if "struct" in f else (f if "fields" in f else None)
        struct = None if sub is None else str((sub or {}).get("vmsd_name", ""))
        out.append(_StreamField(f["name"], f.get("size", 0), f.get("array_len", 1), struct,
                                f.get("type")))
    return out


#: costs of an alignment step (:func:`_align`), in this order of importance
_MISFIT, _SKIP_READ, _LOOSE, _RENAME = 10**6, 10**4, 10**2, 1


def _pair_cost(ours: _StreamField, theirs: Mapping[str, Any]) -> int | None:
    """What pairing a stream field with a target field costs (None: they
    cannot be the same bytes).  Same name (QEMU numbers repeated names:
    ``unused[1]``) or the same struct vmsd: free; a rename of the same wire
    size: _RENAME; a buffer or array whose element count the dump does not
    give (before QEMU 9.1) and whose length is a multiple of the target's
    element size, or any value against a target field of size 0 (a
    VMStateInfo with its own reader, ``scsi-requests``, ``virtio``): _LOOSE."""
    name = theirs.get("field")
    same = name in (ours.name, _UNIQUE_SUFFIX.sub("", ours.name))
    num = theirs.get("num")
    t_desc = theirs.get("Description")
    if ours.struct is not None or t_desc is not None:
        if ours.struct is None or t_desc is None:
            return None
        if num is not None and num != ours.count:
            return None
        return 0 if same or (ours.struct and ours.struct == t_desc.get("name")) else _RENAME
    size = theirs.get("size", 0)
    if size == 0:  # a VMStateInfo of its own that reads what it reads (scsi-requests)
        return 0 if same else _LOOSE
    if num is not None:
        fits = ours.wire_size == size * num
    else:  # a plain value, a buffer, or (dumps before QEMU 9.1) an array of unknown count
        fits = ours.wire_size == size or (ours.count > 1 and ours.size == size)
        if not fits and size > 0 and ours.wire_size % size == 0 \
                and (ours.count > 1 or ours.type in ("buffer", "unused_buffer")):
            return _LOOSE
    if not fits:
        return None
    return 0 if same else _RENAME


def _align(ours: list[_StreamField], wanted: list[dict[str, Any]]) -> list[_StreamField]:
    """The stream fields no target field can take, in the cheapest
    alignment of the two lists in order: each stream field is paired with
    a target field (:func:`_pair_cost`) or left over (a misfit); a target
    field the stream lacks is skipped, freely when a test guards it, else
    at _SKIP_READ (it can only be a variable array with no elements)."""
    n, m = len(ours), len(wanted)
    skip = [0 if t.get("field_exists") else _SKIP_READ for t in wanted]
    inf = float("inf")
    # best[i][j]: the cheapest alignment of ours[i:] with wanted[j:]
    best = [[inf] * (m + 1) for _ in range(n + 1)]
    best[n][m] = 0
    for j in range(m - 1, -1, -1):
        best[n][j] = best[n][j + 1] + skip[j]
    for i in range(n - 1, -1, -1):
        best[i][m] = best[i + 1][m] + _MISFIT
        for j in range(m - 1, -1, -1):
            cost = min(best[i + 1][j] + _MISFIT, best[i][j + 1] + skip[j])
            pair = _pair_cost(ours[i], wanted[j])
            if pair is not None:
                cost = min(cost, best[i + 1][j + 1] + pair)
            best[i][j] = cost
    left: list[_StreamField] = []
    i = j = 0
    while i < n:
        pair = _pair_cost(ours[i], wanted[j]) if j < m else None
        if pair is not None and best[i][j] == best[i + 1][j + 1] + pair:
            i, j = i + 1, j + 1
        elif j < m and best[i][j] == best[i][j + 1] + skip[j]:
            j += 1
        else:
            left.append(ours[i])
            i += 1
    return left


def _object_nodes(tree: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node  # type: ignore[misc]
        for v in node.values():
            if isinstance(v, dict) and TYPE_KEY in v:
                stack.append(v)


def _stashed_keys(node: Mapping[str, Any]) -> set[str]:
    out: set[str] = set()
    for entries in (node.get(STASH_KEY) or {}).values():
        if isinstance(entries, dict):
            out.update(entries)
    return out


def _names(known: Mapping[str, Any]) -> str:
    return ", ".join(repr(n) for n in sorted(known)) or "no subsections"


def _version_str(v: tuple[int, int] | None) -> str:
    return "of unknown version" if v is None else f"{v[0]}.{v[1]}"


def _check_desc(desc: Any, where: str, depth: int) -> None:
    """The dump's shape, so a damaged file is an error naming the entry."""
    if depth > 32:
        raise QemuTargetError(f"{where}: nested deeper than 32")
    if not isinstance(desc, dict) or not isinstance(desc.get("name"), str):
        raise QemuTargetError(f"{where}: a Description without a name")
    for k in ("version_id", "minimum_version_id"):
        if k in desc and type(desc[k]) is not int:
            raise QemuTargetError(f"{where}: {desc['name']}.{k} is not an integer")
    for k in ("Fields", "Subsections"):
        if not isinstance(desc.get(k, []), list):
            raise QemuTargetError(f"{where}: {desc['name']}.{k} is not a list")
    for f in desc.get("Fields", []):
        if not isinstance(f, dict) or not isinstance(f.get("field"), str):
            raise QemuTargetError(f"{where}: {desc['name']} has a field without a name")
        if "Description" in f:
            _check_desc(f["Description"], f"{where}.{f['field']}", depth + 1)
    for s in desc.get("Subsections", []):
        _check_desc(s, f"{where}/{s.get('name') if isinstance(s, dict) else '?'}", depth + 1)

