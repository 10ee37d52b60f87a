"""The QEMU compat filters and the -dump-vmstate target, without a QEMU:
small sections and dumps built here, the engine run on them.

Real streams of QEMU 5.2, 7.2 and 10.0 go through the same filters in
test_qemu_versions.py; here every pair is property-tested (drop then
restore is the identity for every value the drop accepts) and every
refusal is checked to name its field and reason.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migtree.engine import apply_filters
from migtree.errors import FilterError
from migtree_qemu import compat, machines
from migtree_qemu.qevm import MIG_CMD_SWITCHOVER_START
from migtree_qemu.target import QemuTarget
from migtree_qemu.vmstate import qemu_json

U8 = {"type": "uint8", "size": 1}
U32 = {"type": "uint32", "size": 4}


def _f(name, t=U8):
    return {"name": name, **t}


def _dfield(name, size, **kw):
    return {"field": name, "version_id": 0, "field_exists": False, "size": size, **kw}


# -- a small i8042 and PIIX4 PM, as QEMU 10.0 sends them ------------------------------

KBD_LAYOUT = {"vmsd_name": "pckbd", "version": 3, "fields": [
    {"name": "kbd", "type": "struct", "size": 4, "struct": {
        "vmsd_name": "pckbd", "version": 3,
        "fields": [_f("write_cmd"), _f("status"), _f("mode"), _f("pending_tmp")],
        "subsections": [{"vmsd_name": "pckbd/extended_state", "version": 0, "fields": [
            _f("migration_flags", U32), _f("obsrc", U32), _f("obdata"), _f("cbdata")]}]}}]}

PM_LAYOUT = {"vmsd_name": "piix4_pm", "version": 3, "fields": [
    _f("acpi_pci_hotplug.hotplug_select", U32), _f("acpi_pci_hotplug.acpi_index", U32)]}


def _section(layout, idstr, **values):
    return {"__type__": layout["vmsd_name"], "__version__": layout["version"],
            "__qemu__": {"idstr": idstr, "instance_id": 0, "section_id": 1,
                         "layout": qemu_json(layout)}, **values}


def _machine(name, commands=()):
    order = [["START", 1, "ram", 0, True]]
    order += [["COMMAND", c, b""] for c in commands]
    order += [["FULL", 2, "pckbd", 0, True]]
    return {"__type__": "qemu-machine", "__version__": 1, "__qemu__": {
        "qevm_version": 3, "configuration": {"machine": name, "subsections": {}},
        "page_size": 4096, "vmdesc": True, "vmdesc_keys": ["configuration", "page_size",
                                                           "devices"],
        "vmdesc_style": "json-writer", "order": order}}


def _tree(machine, **sections):
    machine = dict(machine, qemu={"__type__": "container", "__version__": 1, **sections})
    return {"__type__": "container", "__version__": 1, "machine": machine}


def _dump(machine, *, extended_state: bool, acpi_index: bool):
    kbd_subs = [{"name": "pckbd_outport", "version_id": 1, "minimum_version_id": 1,
                 "Fields": [_dfield("outport", 1)]}]
    if extended_state:
        kbd_subs.append({"name": "pckbd/extended_state", "version_id": 0,
                         "minimum_version_id": 0,
                         "Fields": [_dfield("migration_flags", 4), _dfield("obsrc", 4),
                                    _dfield("obdata", 1), _dfield("cbdata", 1)]})
    pm_fields = [_dfield("acpi_pci_hotplug.hotplug_select", 4)]
    if acpi_index:
        pm_fields.append(_dfield("acpi_pci_hotplug.acpi_index", 4, field_exists=True))
    return {
        "vmschkmachine": {"Name": machine},
        "i8042": {"Name": "i8042", "version_id": 3, "minimum_version_id": 3, "Description": {
            "name": "pckbd", "version_id": 3, "minimum_version_id": 3, "Fields": [
                _dfield("kbd", 2328, Description={
                    "name": "pckbd", "version_id": 3, "minimum_version_id": 3,
                    "Fields": [_dfield(n, 1) for n in ("write_cmd", "status", "mode",
                                                       "pending_tmp")],
                    "Subsections": kbd_subs})]}},
        "PIIX4_PM": {"Name": "PIIX4_PM", "version_id": 3, "minimum_version_id": 3,
                     "Description": {"name": "piix4_pm", "version_id": 3,
                                     "minimum_version_id": 3, "Fields": pm_fields}},
    }


OLD = QemuTarget.from_dump(_dump("pc-i440fx-5.2", extended_state=False, acpi_index=False))
NEW = QemuTarget.from_dump(_dump("pc-i440fx-10.0", extended_state=True, acpi_index=True))


def _filters(target):
    return compat.static_filters() + target.filters()


def _convert(tree, target):
    return apply_filters(tree, target.destination(tree), _filters(target), explain=True)


def _new_tree(status=0, pending=0, obdata=0, flags=0, acpi_index=0, commands=()):
    kbd = {"write_cmd": 0, "status": status, "mode": 0, "pending_tmp": pending,
           "extended_state": {"migration_flags": flags, "obsrc": 0, "obdata": obdata,
                              "cbdata": 0}}
    return _tree(_machine("pc-i440fx-10.0", commands),
                 pckbd=_section(KBD_LAYOUT, "pckbd", kbd=kbd),
                 piix4_pm=_section(PM_LAYOUT, "0000:00:01.3/piix4_pm",
                                   **{"acpi_pci_hotplug.hotplug_select": 0,
                                      "acpi_pci_hotplug.acpi_index": acpi_index}))


# -- the way down and back up -------------------------------------------------------


@given(status=st.integers(0, 255).filter(lambda s: not s & 1),
       pending=st.integers(0, 255).filter(lambda p: not p & 0x0C),
       obdata=st.integers(0, 255), flags=st.integers(0, 2**32 - 1),
       acpi_index=st.integers(0, 2**32 - 1),
       with_command=st.booleans())
def test_down_to_an_older_qemu_and_back_is_the_identity(status, pending, obdata, flags,
                                                        acpi_index, with_command):
    tree = _new_tree(status, pending, obdata, flags, acpi_index,
                     [MIG_CMD_SWITCHOVER_START] if with_command else [])
    original = copy.deepcopy(tree)
    report = _convert(tree, OLD)
    q = tree["machine"]["qemu"]
    assert "extended_state" not in q["pckbd"]["kbd"]
    assert "acpi_pci_hotplug.acpi_index" not in q["piix4_pm"]
    assert "acpi_index" not in q["piix4_pm"]["__qemu__"]["layout"]
    meta = tree["machine"]["__qemu__"]
    assert meta["configuration"]["machine"] == "pc-i440fx-5.2"
    assert meta["vmdesc_style"] == "qjson" and "configuration" not in meta["vmdesc_keys"]
    assert all(e[0] != "COMMAND" for e in meta["order"])
    assert OLD.destination(tree).shape is not None
    assert all(not OLD.shape(p, n) for p, n in _nodes(tree))
    # pckbd's subsection, piix4_pm's field, the machine type, and the command if any
    assert len(report.applications) == 3 + with_command
    _convert(tree, NEW)
    assert tree == original


def _nodes(tree, path=""):
    for k, v in tree.items():
        if isinstance(v, dict) and "__type__" in v:
            yield f"{path}/{k}", v
            yield from _nodes(v, f"{path}/{k}")


def test_a_byte_in_the_output_buffer_is_refused_naming_field_and_value():
    tree = _new_tree(status=0x1D, obdata=0x1C)
    with pytest.raises(FilterError) as e:
        _convert(tree, OLD)
    msg = str(e.value)
    assert msg.startswith("/machine/qemu/pckbd: filter qemu-subsection-pckbd-kbd-extended-state")
    assert "kbd.status has OBF set (0x1d)" in msg and "obdata=0x1c" in msg


def test_a_pending_controller_response_is_refused():
    with pytest.raises(FilterError, match=r"kbd.pending_tmp=0x04 has a controller response"):
        _convert(_new_tree(pending=0x04), OLD)


def test_a_pending_acpi_hotplug_event_is_refused():
    layout = {"vmsd_name": "ICH9LPC", "version": 1, "fields": [
        {"name": "pm", "type": "struct", "size": 8, "struct": {
            "vmsd_name": "ich9_pm", "version": 1, "fields": [_f("x")],
            "subsections": [{"vmsd_name": "ich9_pm/pcihp", "version": 1, "fields": [
                _f("acpi_pci_hotplug.hotplug_select", U32)]}]}}]}
    pcihp = {"acpi_pci_hotplug.hotplug_select": 0,
             "acpi_pci_hotplug.acpi_pcihp_pci_status": [{"up": 0, "down": 0},
                                                        {"up": 0x10, "down": 0}]}
    tree = _tree(_machine("pc-q35-5.2"),
                 lpc=_section(layout, "0000:00:1f.0/ICH9LPC", pm={"x": 0, "pcihp": pcihp}))
    dump = {"vmschkmachine": {"Name": "pc-q35-5.2"}, "ICH9-LPC": {"Description": {
        "name": "ICH9LPC", "version_id": 1, "minimum_version_id": 1, "Fields": [
            _dfield("pm", 100, Description={"name": "ich9_pm", "version_id": 1,
                                            "Fields": [_dfield("x", 1)]})]}}}
    with pytest.raises(FilterError, match=r"ACPI PCI hotplug event is pending \(bus 1: "
                                          r"up=0x10 down=0x0\)"):
        _convert(tree, QemuTarget.from_dump(dump))
    pcihp["acpi_pci_hotplug.acpi_pcihp_pci_status"][1]["up"] = 0
    report = _convert(tree, QemuTarget.from_dump(dump))
    assert [a.filter for a in report.applications] == ["qemu-subsection-ich9lpc-pm-pcihp-drop"]


def test_switchover_start_is_refused_when_a_vfio_device_needs_it():
    tree = _new_tree(commands=[MIG_CMD_SWITCHOVER_START])
    tree["machine"]["qemu"]["vfio"] = _section(PM_LAYOUT | {"vmsd_name": "vfio-pci"},
                                               "0000:00:05.0/vfio")
    tree["machine"]["qemu"]["vfio"].update({"acpi_pci_hotplug.hotplug_select": 0,
                                            "acpi_pci_hotplug.acpi_index": 0})
    with pytest.raises(FilterError, match=r"VFIO devices load their state at switchover "
                                          r"\(/machine/qemu/vfio\)"):
        _convert(tree, OLD)


def test_the_machine_type_stays_in_its_family():
    tree = _new_tree()
    q35 = QemuTarget.from_dump(_dump("pc-q35-5.2", extended_state=True, acpi_index=True))
    with pytest.raises(FilterError, match=r"machine type pc-i440fx-10.0 cannot become "
                                          r"pc-q35-5.2: not the same versioned machine"):
        _convert(tree, q35)


def test_a_part_the_target_lacks_without_a_rule_is_refused_naming_it():
    layout = {"vmsd_name": "pckbd", "version": 3, "fields": [_f("status")],
              "subsections": [{"vmsd_name": "pckbd/brand_new", "version": 1,
                               "fields": [_f("x")]}]}
    tree = _tree(_machine("pc-i440fx-5.2"),
                 kbd=_section(layout, "pckbd", status=0, brand_new={"x": 1}))
    dump = {"vmschkmachine": {"Name": "pc-i440fx-5.2"}, "i8042": {"Description": {
        "name": "pckbd", "version_id": 3, "minimum_version_id": 3,
        "Fields": [_dfield("status", 1)], "Subsections": []}}}
    with pytest.raises(FilterError) as e:
        _convert(tree, QemuTarget.from_dump(dump))
    assert str(e.value) == (
        "/machine/qemu/kbd: pckbd@3: subsection 'pckbd/brand_new' is unknown to the target "
        "(no subsections are what its 'pckbd' defines); no filter for pckbd@3 drops "
        "'brand_new'")


def test_a_section_version_the_target_does_not_load_names_the_range():
    tree = _new_tree()
    tree["machine"]["qemu"]["pckbd"]["__version__"] = 4
    with pytest.raises(FilterError, match=r"/machine/qemu/pckbd: no chain of filters turns "
                                          r"pckbd@4 into pckbd@3"):
        _convert(tree, NEW)


def test_a_dump_is_read_with_clear_errors():
    with pytest.raises(Exception, match="not a -dump-vmstate dump"):
        QemuTarget.from_dump({"foo": 1})
    with pytest.raises(Exception, match=r"i8042: pckbd.version_id is not an integer"):
        QemuTarget.from_dump({"vmschkmachine": {"Name": "pc"},
                              "i8042": {"Description": {"name": "pckbd", "version_id": "3"}}})


# -- the machine-type table ------------------------------------------------------------


NAMES = sorted(machines.compat_props_index())


@given(st.sampled_from(NAMES), st.sampled_from(NAMES))
def test_compat_differences_are_symmetric(a, b):
    ab, ba = machines.differences(a, b), machines.differences(b, a)
    assert [(d.qom_type, d.property, d.source, d.target) for d in ab] == \
        [(d.qom_type, d.property, d.target, d.source) for d in ba]
    assert (a == b) <= (ab == [])


def test_older_machine_types_carry_more_compat_properties():
    for family in ("i440fx", "q35"):
        chain = sorted((n for n in NAMES if machines.parse(n)[0] == family),
                       key=lambda n: machines.parse(n)[1])
        for older, newer in zip(chain, chain[1:], strict=False):
            assert set(machines.compat_props(newer)) <= set(machines.compat_props(older)), \
                (older, newer)
            assert len(machines.compat_props(newer)) < len(machines.compat_props(older))


def test_the_switchover_start_rule_matches_qemus_own_compat_property():
    # QEMU 10.0 turns migration.send-switchover-start off for machine types <= 9.2,
    # which is when migtree's table says a QEMU of that machine type lacks the command
    for name in NAMES:
        version = machines.parse(name)[1]
        off = machines.compat_props(name).get(("migration", "send-switchover-start"))
        target = QemuTarget(name, name, {}, version)
        assert target.knows_command(MIG_CMD_SWITCHOVER_START) == (off is None), name
