"""Check a decoded stream against what a destination QEMU can load.

``qemu-system-x86_64 -dump-vmstate FILE`` writes, for every device type,
its VMStateDescription: name, ``version_id``, ``minimum_version_id``,
fields and subsections (recursively).  A stream section whose version is
outside ``[minimum_version_id, version_id]``, or that carries a subsection
the destination does not define, will be refused by that QEMU — with
messages like "No such file or directory" (7.2, for an unknown subsection).
:meth:`VmstateSchema.check` finds these before QEMU is started and names
the section, subsection and byte offset.

The dump covers device types only: sections such as ``cpu``, ``apic``,
``timer``, ``ram`` or ``globalstate`` are not in it and are reported as
unchecked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import QemuUnknownSubsectionError, QemuVersionError
from .qevm import QemuStream, Section
from .vmstate import VMStateObject


class VmstateSchema:
    """The VMState descriptions of one QEMU build (a ``-dump-vmstate`` dump)."""

    def __init__(self, dump: dict[str, Any]) -> None:
        self.machine = dump.get("vmschkmachine", {}).get("Name")
        self.by_vmsd: dict[str, dict[str, Any]] = {}
        for type_name, entry in dump.items():
            if type_name == "vmschkmachine" or "Description" not in entry:
                continue
            desc = entry["Description"]
            self.by_vmsd.setdefault(desc["name"], desc)

    @classmethod
    def from_file(cls, path: str | Path) -> VmstateSchema:
        return cls(json.loads(Path(path).read_text()))

    def check(self, stream: QemuStream) -> list[str]:
        """Raise :class:`QemuVersionError` or
        :class:`QemuUnknownSubsectionError` for the first section this QEMU
        would refuse; return the idstrs of sections the dump does not cover."""
        unchecked = []
        for sec in stream.devices():
            desc = self.by_vmsd.get(sec.state.vmsd_name)
            if desc is None:
                unchecked.append(sec.idstr)
                continue
            self._check_version(sec, sec.version_id, desc, sec.state.vmsd_name, sec.offset)
            self._check_object(sec, sec.state, desc, "")
        return unchecked

    def _where(self, sec: Section, field: str | None, offset: int | None) -> dict[str, Any]:
        return dict(section=sec.idstr, section_id=sec.section_id,
                    instance_id=sec.instance_id, field=field or None, offset=offset)

    def _check_version(self, sec: Section, version: int, desc: dict[str, Any],
                       what: str, offset: int | None) -> None:
        lo, hi = desc.get("minimum_version_id", 0), desc.get("version_id", 0)
        if version > hi:
            raise QemuVersionError(
                f"{what!r} version {version} is too new: this QEMU loads "
                f"versions {lo}..{hi}",
                **self._where(sec, None if what == sec.state.vmsd_name else what, offset),
            )
        if version < lo:
            raise QemuVersionError(
                f"{what!r} version {version} is too old: this QEMU loads "
                f"versions {lo}..{hi}",
                **self._where(sec, None if what == sec.state.vmsd_name else what, offset),
            )

    def _check_object(self, sec: Section, obj: VMStateObject, desc: dict[str, Any],
                      path: str) -> None:
        fields = {f["field"]: f for f in desc.get("Fields", [])}
        for f in obj.fields:
            fdesc = fields.get(f.name)
            if fdesc is None or "Description" not in fdesc:
                continue
            values = f.value if f.array_len is not None else [f.value]
            for i, v in enumerate(values):
                if isinstance(v, VMStateObject):
                    sub = f"{path}{f.label}" + (f"[{i}]" if f.array_len is not None else "")
                    self._check_object(sec, v, fdesc["Description"], sub + ".")
        known = {s["name"]: s for s in desc.get("Subsections", [])}
        for s in obj.subsections:
            sdesc = known.get(s.vmsd_name)
            if sdesc is None:
                names = ", ".join(sorted(known)) or "none"
                raise QemuUnknownSubsectionError(
                    f"unknown subsection {s.vmsd_name!r}: this QEMU's "
                    f"{desc['name']!r} defines {names}",
                    **self._where(sec, f"{path}{s.vmsd_name}", s.offset),
                )
            self._check_version(sec, s.version, sdesc, s.vmsd_name, s.offset)
            self._check_object(sec, s, sdesc, f"{path}{s.vmsd_name}:")
