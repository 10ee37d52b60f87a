"""QEMU's x86 machine types and the compat properties that tell them apart.

A versioned machine type (``pc-i440fx-7.2``, ``pc-q35-10.0``) is the newest
machine of its family with *compat properties* set: device property values
that make a newer QEMU present the hardware an older one presented (a virtio
device's vectors, a CPU feature, whether ACPI PCI hotplug is on).  Moving a
running guest from one machine type to another changes exactly those
properties, so the converter lists them (and, for the ones a guest can have
seen, the safety analysis decides).

The table ``data/machines-10.0.json`` is what QEMU 10.0 itself reports
(QMP ``query-machines`` with ``compat-props``, which 10.0 has) for every
``pc-i440fx-*`` and ``pc-q35-*`` machine from 5.0 on, stored as deltas:
per family, the machines newest first, each with the properties it adds to
the next newer one (QEMU's ``hw_compat_X_Y``/``pc_compat_X_Y`` lists are
cumulative, so a machine's full list is its own delta plus every newer
one's).  Regenerate it with ``python -m migtree_qemu.machines refresh``
(it starts QEMU 10.0 from :mod:`migtree_qemu.versions`); it is data read
from a QEMU binary, reviewed in the diff, not code.
"""

from __future__ import annotations

import json
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import attrs

DATA = Path(__file__).with_name("data") / "machines-10.0.json"
_NAME = re.compile(r"^pc-(i440fx|q35)-(\d+)\.(\d+)$")
#: the oldest machine version kept in the table
OLDEST = (5, 0)


def parse(name: str) -> tuple[str, tuple[int, int]] | None:
    """``("i440fx", (7, 2))`` for ``pc-i440fx-7.2``; None for a machine type
    that is not a versioned pc/q35 one."""
    m = _NAME.fullmatch(name)
    if m is None:
        return None
    return m.group(1), (int(m.group(2)), int(m.group(3)))


@attrs.frozen
class CompatDifference:
    """One property a guest sees differently on the target machine type:
    ``source``/``target`` are the values each machine type sets, None where
    the machine type leaves the device's default (that QEMU's default)."""

    qom_type: str
    property: str
    source: str | None
    target: str | None

    def __str__(self) -> str:
        def show(v: str | None) -> str:
            return "(default)" if v is None else v

        return f"{self.qom_type}.{self.property}: {show(self.source)} -> {show(self.target)}"


@cache
def _table() -> dict[str, Any]:
    return json.loads(DATA.read_text())


def known(name: str) -> bool:
    return name in compat_props_index()


@cache
def compat_props_index() -> dict[str, dict[tuple[str, str], str]]:
    """Every machine type in the table -> its full compat properties."""
    out: dict[str, dict[tuple[str, str], str]] = {}
    for family in _table()["families"].values():
        acc: dict[tuple[str, str], str] = {}
        for machine in family:  # newest first
            for p in machine["adds"]:
                acc[(p["qom-type"], p["property"])] = p["value"]
            out[machine["name"]] = dict(acc)
    return out


def compat_props(name: str) -> dict[tuple[str, str], str] | None:
    return compat_props_index().get(name)


def differences(source: str, target: str) -> list[CompatDifference] | None:
    """The compat properties that differ between two machine types (sorted
    by type and property), or None when either is not in the table."""
    a, b = compat_props(source), compat_props(target)
    if a is None or b is None:
        return None
    keys = sorted(set(a) | set(b))
    return [CompatDifference(t, p, a.get((t, p)), b.get((t, p)))
            for t, p in keys if a.get((t, p)) != b.get((t, p))]


def newest(family: str, at_most: tuple[int, int] | None = None) -> str | None:
    """The newest machine type of *family* in the table (no newer than
    *at_most*)."""
    for machine in _table()["families"].get(family, []):
        parsed = parse(machine["name"])
        if parsed and (at_most is None or parsed[1] <= at_most):
            return machine["name"]
    return None


def refresh(out: Path = DATA) -> Path:  # pragma: no cover - needs QEMU 10.0
    """Ask QEMU 10.0 for its machine types and their compat properties and
    write the delta table."""
    from . import versions

    with versions.qmp_session("10.0") as qmp:
        machines = qmp.execute("query-machines", **{"compat-props": True})
    full_version = versions.find("10.0").full_version
    families: dict[str, list[dict[str, Any]]] = {}
    full: dict[str, set[tuple[str, str, str]]] = {}
    for m in machines:
        parsed = parse(m["name"])
        if parsed is None or parsed[1] < OLDEST:
            continue
        full[m["name"]] = {(p["qom-type"], p["property"], p["value"])
                           for p in m.get("compat-props", [])}
        families.setdefault(parsed[0], []).append(m["name"])
    table: dict[str, Any] = {
        "source": f"QEMU {full_version}: query-machines compat-props",
        "families": {}}
    for fam, names in sorted(families.items()):
        names.sort(key=lambda n: parse(n)[1], reverse=True)
        rows = []
        newer: set[tuple[str, str, str]] = set()
        for name in names:
            adds = sorted(full[name] - newer)
            rows.append({"name": name, "adds": [
                {"qom-type": t, "property": p, "value": v} for t, p, v in adds]})
            newer = full[name]
        table["families"][fam] = rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return out


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] != ["refresh"]:
        print("usage: python -m migtree_qemu.machines refresh", file=sys.stderr)
        sys.exit(2)
    print(refresh())
