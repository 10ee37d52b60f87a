"""The plugin as migtree sees it: what it registers, the schema of every
version, the ``userspace`` backend in a build, the installed entry point,
and the ``apic-interrupts`` workload."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys

import pytest
from apic_helpers import make_registry

from migtree import stream
from migtree.build import load_build
from migtree.errors import LoadError
from migtree.qom import new_root
from migtree.tree import get_node, load_tree, save_tree
from migtree.visitor import schema_of
from migtree_apic.device import Apic, X86Cpu
from migtree_apic.workload import NAME as WORKLOAD

QEMU_APIC_V3 = [  # hw/intc/apic_common.c, vmstate_apic_common
    ("apicbase", "u32"), ("id", "u8"), ("arb_id", "u8"), ("tpr", "u8"),
    ("spurious_vec", "u32"), ("log_dest", "u8"), ("dest_mode", "u8"),
    ("isr", "u32[8]"), ("tmr", "u32[8]"), ("irr", "u32[8]"), ("lvt", "u32[6]"),
    ("esr", "u32"), ("icr", "u32[2]"), ("divide_conf", "u32"), ("count_shift", "i32"),
    ("initial_count", "u32"), ("initial_count_load_time", "i64"), ("next_time", "i64"),
    ("timer_expiry", "i64"),
]


def flat(fields):
    out = []
    for f in fields:
        if f["kind"] == "array":
            out.append((f["name"], f"{f['element'].get('struct', f['element']['kind'])}"
                                   f"[{f['length']}]"))
        else:
            out.append((f["name"], f["kind"]))
    return out


def userspace_build(cpus=2, registry=None):
    return load_build({"machine": {"backend": "userspace", "cpus": cpus}},
                      registry or make_registry())


def test_what_the_plugin_registers():
    reg = make_registry()
    rec = reg.plugins["migtree-apic"]
    assert rec.types == ["x86-cpu@1", "apic@1,2,3"]
    assert sorted(rec.filters) == ["apic-v1-to-v2", "apic-v2-to-v1", "apic-v2-to-v3",
                                   "apic-v3-to-v2"]
    assert {reg.filters[n].pair for n in rec.filters} == {"apic-v1-v2", "apic-v2-v3"}
    assert rec.backends == ["userspace"] and rec.workloads == [WORKLOAD]
    info = reg.types.lookup("apic")
    assert (info.version, info.min_version, info.parent) == (3, 3, "device")
    assert sorted(info.versions()) == [1, 2, 3]
    assert reg.types.lookup("x86-cpu").state_class is None


def test_schema_v3_is_qemus_apic_vmstate_plus_the_sipi_subsection():
    fields = schema_of(Apic.STATE, 3)
    assert flat(fields[:-1]) == QEMU_APIC_V3
    sipi = fields[-1]
    assert sipi["name"] == "sipi" and sipi["kind"] == "optional"
    assert flat(sipi["inner"]["fields"]) == [("sipi_vector", "i32"), ("wait_for_sipi", "i32")]


def test_schemas_of_the_older_versions():
    v2 = flat(schema_of(Apic.HISTORY[2], 2))
    v1 = flat(schema_of(Apic.HISTORY[1], 1))
    assert v2[:7] == QEMU_APIC_V3[:7]
    assert v2[7] == ("isr_tmr_irr", "IsrTmrIrrWord[8]")
    assert v2[8:] == QEMU_APIC_V3[10:-1] + [("timer", "i64")]
    assert v1 == v2[:-1]
    words = schema_of(Apic.HISTORY[2], 2)[7]["element"]["fields"]
    assert flat(words) == [("isr", "u32"), ("tmr", "u32"), ("irr", "u32")]


def test_stream_header_describes_every_version():
    reg = make_registry()
    for v in (1, 2, 3):
        entry = stream.schema_entry("apic", v, reg)
        assert entry["plugin"] == "migtree-apic" and entry["version"] == v
        assert entry["fields"] == schema_of(Apic.HISTORY.get(v, Apic.STATE), v)


def test_userspace_backend_composes_cpus_as_qemu_does():
    build = userspace_build(3)
    unattached = build.machine.child("unattached")
    for i in range(3):
        cpu = unattached.child(f"device[{i}]")
        assert isinstance(cpu, X86Cpu) and cpu.TYPE == "x86-cpu"
        apic = cpu.lapic
        assert isinstance(apic, Apic)
        assert apic.path == f"/machine/unattached/device[{i}]/lapic"
        assert apic.state.id == i
        assert apic.is_bsp == (i == 0)
        assert (apic.state.sipi is None) == (i == 0)
    tree = save_tree(build.root)
    cpu_node = get_node(tree, "/machine/unattached/device[1]")
    assert set(cpu_node) == {"__type__", "__version__", "lapic"}
    build.machine.clock.advance(1)  # the APICs listen to the clock once realized
    assert build.machine.clock_listeners


def test_a_build_round_trips_through_a_stream_into_another_build():
    reg = make_registry()
    src, dst = userspace_build(2, reg), userspace_build(2, reg)
    a = src.machine.child("unattached").child("device[0]").lapic
    a.write(0xF0, 0x1FF)
    a.set_irq(0x42)
    _, tree = stream.read_tree(stream.save(src.root, registry=reg))
    report = stream.load(tree, dst.root, registry=reg)
    assert report.missing == [] and report.unconsumed == []
    assert dst.machine.child("unattached").child("device[0]").lapic.get_interrupt() == 0x42


def test_a_build_with_more_cpus_refuses_the_smaller_tree():
    reg = make_registry()
    tree = save_tree(userspace_build(1, reg).root)
    root, machine = new_root()
    reg.backends["userspace"].create_cpus(machine, 2, reg)
    with pytest.raises(LoadError, match=r"device\[1\].*has no node"):
        load_tree(tree, root)


# -- the workload ---------------------------------------------------------------------

def run_workload(build, migrate_to=None, seed=7):
    wl = build.registry.workloads[WORKLOAD]
    assert wl.applies(build.machine)
    wl.start(build.machine, seed)
    if migrate_to is not None:
        _, tree = stream.read_tree(stream.save(build.root, registry=build.registry))
        stream.load(tree, migrate_to.root, registry=build.registry)
        build = migrate_to
    wl.finish(build.machine)
    return wl.check(build.machine)


@pytest.mark.parametrize("seed", [0, 7, 12345])
def test_workload_outcome_is_the_same_with_and_without_migration(seed):
    reg = make_registry()
    reference = run_workload(userspace_build(2, reg), seed=seed)
    migrated = run_workload(userspace_build(2, reg), userspace_build(2, reg), seed=seed)
    assert json.loads(json.dumps(migrated)) == json.loads(json.dumps(reference))
    for path, outcome in reference.items():
        assert outcome["taken"], path
        assert outcome["timer"], path
        assert outcome["isr"] == [0] * 8 and outcome["tpr"] == 0


def test_workload_applies_only_where_there_are_userspace_apics():
    reg = make_registry()
    _, machine = new_root()
    assert not reg.workloads[WORKLOAD].applies(machine)


# -- installed: the entry point and the command line ---------------------------------------

def _installed() -> md.Distribution:
    try:
        return md.distribution("migtree-apic")
    except md.PackageNotFoundError:
        pytest.skip("migtree-apic is not installed (pip install -e plugins/apic)")


def test_the_distribution_declares_its_entry_point():
    dist = _installed()
    eps = [ep for ep in dist.entry_points if ep.group == "migtree"]
    assert [(ep.name, ep.value) for ep in eps] == [("apic", "migtree_apic.plugin")]
    from migtree.plugins import load_registry

    reg = load_registry()
    assert "apic" in reg.types and "userspace" in reg.backends
    assert reg.plugins["migtree-apic"].error is None


def test_migtree_plugins_lists_the_apic_plugin():
    _installed()
    out = subprocess.run([sys.executable, "-m", "migtree", "plugins", "--json"],
                         capture_output=True, text=True, check=True,
                         env={"MIGTREE_LOAD_PLUGINS": "migtree-apic", "PATH": ""})
    (rec,) = [p for p in json.loads(out.stdout) if p["name"] == "migtree-apic"]
    types = {t["name"]: t for t in rec["types"]}
    assert types["apic"]["versions"] == [1, 2, 3] and types["apic"]["version"] == 3
    assert "x86-cpu" in types
    assert [b["name"] for b in rec["backends"]] == ["userspace"]
    assert [f["name"] for f in rec["filters"]] == ["apic-v1-to-v2", "apic-v2-to-v1",
                                                   "apic-v2-to-v3", "apic-v3-to-v2"]


def test_closing_a_build_detaches_the_apics_from_the_clock():
    build = userspace_build(2)
    assert len(build.machine.clock_listeners) == 2
    build.close()
    build.close()
    assert build.machine.clock_listeners == []
