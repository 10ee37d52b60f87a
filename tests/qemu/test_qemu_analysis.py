"""The safety analysis (migtree_qemu.analysis) on small trees, without QEMU:
each kind of compat property judged from the stream's own state, refusals
named, honoured properties turned into the target's launch arguments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migtree_qemu import analysis, machines
from migtree_qemu.target import QemuTarget
from migtree_qemu.vmstate import qemu_json


def _node(vmsd, idstr, lifted=False, **fields):
    q = {"idstr": idstr, "instance_id": 0, "section_id": 1, "layout": qemu_json({})}
    if lifted:
        q.update(vmsd_name=vmsd, version=1, lifted="virtio")
        return {"__type__": "qemu-virtio-pci", "__version__": 1, "__qemu__": q, **fields}
    return {"__type__": vmsd, "__version__": 1, "__qemu__": q, **fields}


def _tree(machine, **sections):
    return {"__type__": "container", "__version__": 1, "machine": {
        "__type__": "qemu-machine", "__version__": 1,
        "__qemu__": {"configuration": {"machine": machine}},
        "qemu": {"__type__": "container", "__version__": 1, **sections}}}


def _target(machine):
    return QemuTarget.from_dump({"vmschkmachine": {"Name": machine}})


def _balloon(vectors):
    return _node("virtio-balloon", "0000:00:05.0/virtio-balloon", lifted=True,
                 msix_table=b"\0" * 16 * vectors)


def _find(findings, key):
    return next(f for f in findings if f.key == key)


def test_a_balloon_with_msix_cannot_go_to_a_qemu_whose_balloon_has_none():
    tree = _tree("pc-i440fx-10.0", balloon=_balloon(2), cpu=_node("cpu", "cpu"))
    f = _find(analysis.analyse(tree, _target("pc-i440fx-7.2")), "virtio-balloon-pci.vectors")
    assert f.verdict == "refuse" and f.devices == ("/machine/qemu/balloon",)
    assert "has [2] MSI-X vectors" in f.reason and "QEMU 7.2 cannot give" in f.reason


def _config_with_cap(cap_id: int, fields: dict[int, int], size: int = 256) -> bytes:
    """A PCI config space whose one capability (*cap_id*, at 0x40) has the
    16-bit registers *fields* (offset within the capability: value)."""
    cfg = bytearray(size)
    cfg[0x06] = 0x10  # status: a capability list
    cfg[0x34] = 0x40
    cfg[0x40] = cap_id
    for off, value in fields.items():
        cfg[0x40 + off:0x40 + off + 2] = value.to_bytes(2, "little")
    return bytes(cfg)


@pytest.mark.parametrize("enabled", [True, False])
def test_an_msix_refusal_says_whether_the_guest_enabled_msix(enabled):
    config = _config_with_cap(0x11, {2: (0x8000 if enabled else 0) | 1})
    balloon = _node("virtio-balloon", "0000:00:05.0/virtio-balloon", lifted=True,
                    msix_table=b"\0" * 32, config=config)
    tree = _tree("pc-i440fx-10.0", balloon=balloon)
    f = _find(analysis.analyse(tree, _target("pc-i440fx-7.2")), "virtio-balloon-pci.vectors")
    assert f.verdict == "refuse"
    assert ("the guest's driver enabled it" in f.reason) is enabled
    assert ("the guest has not enabled it" in f.reason) is not enabled


@pytest.mark.parametrize("enabled", [True, False])
def test_an_extended_tag_refusal_says_whether_the_guest_enabled_extended_tags(enabled):
    # the PCI Express capability: DEVCAP (offset 4) bit 5, DEVCTL (offset 8) bit 8
    config = _config_with_cap(0x10, {4: 0x20, 8: 0x100 if enabled else 0}, size=4096)
    nic = _node("e1000e", "0000:00:02.0/e1000e", parent_obj={"config": config})
    tree = _tree("pc-q35-10.0", nic=nic)
    f = _find(analysis.analyse(tree, _target("pc-q35-7.2")), "pci-device.x-pcie-ext-tag")
    assert f.verdict == "refuse" and f.devices == ("/machine/qemu/nic",)
    assert ("enabled extended tags" in f.reason) is enabled
    assert ("the guest has not acted on it" in f.reason) is not enabled


def test_a_balloon_without_msix_going_up_is_kept_without_by_a_global():
    tree = _tree("pc-i440fx-7.2", balloon=_balloon(0))
    findings = analysis.analyse(tree, _target("pc-i440fx-10.0"))
    f = _find(findings, "virtio-balloon-pci.vectors")
    assert (f.verdict, f.value) == ("honour", "0")
    assert analysis.required_globals([f]) == ["-global", "virtio-balloon-pci.vectors=0"]


def test_a_property_on_a_device_the_vm_does_not_have_is_ok():
    tree = _tree("pc-i440fx-10.0", cpu=_node("cpu", "cpu"))
    f = _find(analysis.analyse(tree, _target("pc-i440fx-7.2")), "virtio-balloon-pci.vectors")
    assert f.verdict == "ok" and "no device it acts on" in f.reason


def test_cpuid_the_target_can_set_is_honoured_and_what_it_cannot_is_a_warning():
    tree = _tree("pc-i440fx-10.0", cpu=_node("cpu", "cpu"))
    findings = analysis.analyse(tree, _target("pc-i440fx-7.2"))
    l1 = _find(findings, "x86_64-cpu.x-l1-cache-per-thread")
    assert l1.verdict == "warn" and "QEMU 7.2 has no x-l1-cache-per-thread" in l1.reason
    down = analysis.analyse(tree, _target("pc-i440fx-9.0"))
    # QEMU 9.0 is judged by the newest table entry not newer than it (7.2)
    assert _find(down, "x86_64-cpu.x-l1-cache-per-thread").verdict == "warn"


def test_migration_only_properties_are_not_guest_visible():
    tree = _tree("pc-i440fx-10.0", cpu=_node("cpu", "cpu"))
    f = _find(analysis.analyse(tree, _target("pc-i440fx-7.2")),
              "migration.send-switchover-start")
    assert f.verdict == "ok" and "not guest-visible" in f.reason


@pytest.mark.parametrize("negotiated,verdict", [(0, "ok"), (1 << 4, "refuse")])
def test_an_smi_feature_is_judged_by_what_the_firmware_negotiated(negotiated, verdict):
    lpc = _node("ICH9LPC", "0000:00:1f.0/ICH9LPC",
                smi_feature={"smi_negotiated_features": negotiated})
    tree = _tree("pc-q35-10.0", lpc=lpc)
    f = _find(analysis.analyse(tree, _target("pc-q35-5.2")), "ICH9-LPC.x-smi-periodic-timer")
    assert f.verdict == verdict


def test_an_accepted_refusal_is_a_warning_and_the_target_reports_it():
    tree = _tree("pc-i440fx-10.0", balloon=_balloon(2))
    target = _target("pc-i440fx-7.2")
    target.accept(["virtio-balloon-pci.vectors"])
    f = _find(analysis.analyse(tree, target), "virtio-balloon-pci.vectors")
    assert f.verdict == "warn" and f.reason.endswith("(accepted by --accept)")


def test_the_same_machine_type_has_nothing_to_analyse():
    tree = _tree("pc-i440fx-7.2", balloon=_balloon(2))
    assert analysis.analyse(tree, _target("pc-i440fx-7.2")) == []


#: compat-property types an x86 pc/q35 VM of this project cannot have: other
#: architectures, and devices judged "no such device" from the stream
OTHER = {"arm-cpu", "arm-gicv3-common", "gpex-pcihost", "sd-card", "nvme", "nvme-ns", "igb",
         "intel-iommu", "virtio-iommu-pci", "virtio-mem", "virtio-mem-pci", "vfio-pci",
         "vfio-pci-nohotplug", "sev-guest", "vhost-vsock-device", "vhost-user-vsock-device",
         "base-pci-bridge", "pl011"}


def test_every_compat_property_of_pc_and_q35_machine_types_is_classified():
    unclassified = sorted({f"{t}.{p}" for props in machines.compat_props_index().values()
                           for t, p in props
                           if t not in OTHER and analysis.kind_of(t, p) is None})
    assert unclassified == []


@given(st.sampled_from(sorted(machines.compat_props_index())),
       st.sampled_from(sorted(machines.compat_props_index())))
def test_findings_cover_exactly_the_differences(a, b):
    tree = _tree(a, balloon=_balloon(2), cpu=_node("cpu", "cpu"))
    findings = analysis.analyse(tree, _target(b))
    keys = {f.key for f in findings}
    diffs = machines.differences(a, b) if a != b else []
    assert keys == {f"{d.qom_type}.{d.property}" for d in diffs}
    assert all(f.verdict in ("ok", "honour", "warn", "refuse") for f in findings)
