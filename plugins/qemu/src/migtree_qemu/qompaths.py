"""QOM paths for QEMU sections, from a walk of the running QEMU's QOM tree.

A section's idstr is not a QOM path: it is the device's qdev path (for PCI
devices the bus address, ``0000:00:02.0``) plus the VMState name.  A walk of
``qom-list`` from ``/machine`` (saved beside the stream as JSON by
:func:`walk`) lets :func:`section_paths` place sections at real QOM paths:

* ``ADDR/<vmsd>`` -> the PCI device whose ``addr`` property is that
  devfn on bus 0 (for a virtio device: the ``virtio-*-pci`` proxy; its
  ``virtio-backend`` child is what a virtio decoder splits out);
* ``cpu`` / ``cpu_common`` / ``apic`` instance N -> the N-th CPU object
  (``.../device[N]``), ``.../cpu_common`` and its ``lapic`` child;
* any other idstr with exactly one instance -> the one QOM object whose
  type has that VMState (from a ``-dump-vmstate`` dump), if there is
  exactly one.

Sections left unmatched keep :func:`migtree_qemu.tree.default_path`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .qevm import QemuStream

_INDEX = re.compile(r"\[(\d+)\]$")


def walk(qmp: Any, root: str = "/machine") -> dict[str, Any]:
    """Walk QOM from *root* over ``child<...>`` properties; return
    ``{"objects": {path: type}, "pci_devfn": {path: devfn}}``."""
    objects: dict[str, str] = {root: qmp.execute("qom-get", path=root, property="type")}
    pci: dict[str, int] = {}
    stack = [root]
    while stack:
        path = stack.pop()
        props = qmp.execute("qom-list", path=path)
        for p in props:
            t = p["type"]
            if t.startswith("child<"):
                child = f"{path.rstrip('/')}/{p['name']}"
                objects[child] = t[len("child<") : -1]
                stack.append(child)
            # the devfn; QEMU 10.0 types the property "str" but still answers an int
            elif p["name"] == "addr" and t in ("int32", "str") and path != root:
                try:
                    devfn = qmp.execute("qom-get", path=path, property="addr")
                except Exception:
                    continue
                if isinstance(devfn, int) and devfn >= 0:
                    pci[path] = devfn
    return {"objects": objects, "pci_devfn": pci}


def save(walk_result: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(walk_result, indent=1, sort_keys=True))


def load(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _order(path: str) -> tuple[int, str]:
    m = _INDEX.search(path)
    return (int(m.group(1)) if m else -1, path)


def section_paths(
    stream: QemuStream,
    qom: Mapping[str, Any],
    vmstate_dump: Mapping[str, Any] | None = None,
) -> dict[tuple[str, int], str]:
    """``{(idstr, instance_id): QOM path}`` for the sections of *stream*
    that the QOM walk *qom* identifies (see the module docstring)."""
    objects: dict[str, str] = qom["objects"]
    out: dict[tuple[str, int], str] = {}
    by_devfn: dict[int, list[str]] = {}
    for p, devfn in qom.get("pci_devfn", {}).items():
        by_devfn.setdefault(devfn, []).append(p)
    cpus = sorted((p for p, t in objects.items() if t.endswith("-cpu")), key=_order)
    vmsd_of_type: dict[str, str] = {}
    for tname, entry in (vmstate_dump or {}).items():
        if isinstance(entry, Mapping) and "Description" in entry:
            vmsd_of_type[tname] = entry["Description"]["name"]
    instances: dict[str, int] = {}
    for sec in stream.devices():
        instances[sec.idstr] = instances.get(sec.idstr, 0) + 1
    used: set[str] = set()
    for sec in stream.devices():
        key = (sec.idstr, sec.instance_id)
        target = None
        m = re.match(r"^0000:00:([0-9a-f]{2})\.([0-7])/", sec.idstr)
        if m:
            devfn = int(m.group(1), 16) << 3 | int(m.group(2))
            found = by_devfn.get(devfn, [])
            if len(found) == 1:
                target = found[0]
        elif sec.idstr in ("cpu", "cpu_common", "apic") and sec.instance_id < len(cpus):
            cpu = cpus[sec.instance_id]
            target = {"cpu": cpu, "cpu_common": f"{cpu}/cpu_common",
                      "apic": f"{cpu}/lapic"}[sec.idstr]
            if sec.idstr == "apic" and target not in objects:
                target = None
        elif instances[sec.idstr] == 1 and vmsd_of_type:
            vmsd = sec.state.vmsd_name
            found = [p for p, t in objects.items() if vmsd_of_type.get(t) == vmsd]
            if len(found) == 1:
                target = found[0]
        if target is not None and target not in used:
            used.add(target)
            out[key] = target
    return out
