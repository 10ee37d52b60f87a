"""Migration: a source with interrupts pending, one in service, TPR raised and
the timer armed is saved and loaded into a fresh build; the destination must
do exactly what the source would have done had it never migrated.

The expectation is never hard-coded: two identical machines get the same
set-up, one (the reference) is never saved, the other is migrated, and both
then run the same continuation -- the CPU taking interrupts, the clock
moving -- while every interrupt, EOI broadcast, CPU signal and timer expiry
is logged with its virtual time. The logs and the final states must match.
"""

from __future__ import annotations

import copy

import cbor2
import pytest
from apic_helpers import CpuPlayer, make_machine, make_registry

from migtree import stream
from migtree.engine import Destination, apply_filters, gather_filters
from migtree.errors import LoadError, StateError
from migtree.filters import FilterContext
from migtree.tree import get_node, iter_object_nodes, load_tree, save_tree
from migtree_apic.device import (
    REG_EOI,
    REG_ICR_HI,
    REG_ICR_LO,
    REG_IRR,
    REG_ISR,
    REG_LVT,
    REG_PPR,
    REG_SVR,
    REG_TDCR,
    REG_TMCCT,
    REG_TMICT,
    REG_TPR,
)
from migtree_apic.filters import V3_TO_V2

BSP = "/machine/unattached/device[0]/lapic"
AP = "/machine/unattached/device[1]/lapic"


def set_up(machine, apics, *, ap_started=False):
    """The source's history up to the migration point (virtual time 7000)."""
    bsp, ap = apics
    for a in apics:
        a.write(REG_SVR, 0x1FF)
    machine.clock.set(1_000)
    bsp.write(REG_TDCR, 0b0011)  # divide by 16
    bsp.write(REG_LVT, (1 << 17) | 0xEF)  # periodic, vector 0xEF
    bsp.write(REG_TMICT, 624)  # period (624 + 1) * 16 = 10000 ns from t=1000
    bsp.write(REG_LVT + 0x40, 4 << 8)  # LINT1: NMI
    machine.clock.set(3_000)
    bsp.set_irq(0x31)
    bsp.set_irq(0x62, level_triggered=True)
    bsp.set_irq(0x45)
    bsp.set_irq(0xB1)
    assert bsp.get_interrupt() == 0xB1  # in service
    bsp.write(REG_TPR, 0x50)  # raised
    ap.set_irq(0x70)
    if ap_started:
        assert ap.take_sipi() == 0
    machine.clock.set(7_000)


def observe(apics):
    """Register reads a guest could make right now."""
    return [(a.read(REG_PPR), a.read(REG_TPR), a.read(REG_TMCCT),
             [a.read(REG_IRR + 0x10 * i) for i in range(8)],
             [a.read(REG_ISR + 0x10 * i) for i in range(8)]) for a in apics]


def carry_on(machine, apics):
    """The continuation after the migration point; returns the event log."""
    bsp, ap = apics
    log: list = []
    cpus = [CpuPlayer(bsp, "cpu0", log), CpuPlayer(ap, "cpu1", log)]
    seen = [observe(apics)]

    def run_all():
        for cpu in cpus:
            cpu.run()

    machine.clock.set(10_999)
    run_all()  # nothing can be delivered above PPR 0xB0 yet
    machine.clock.set(11_000)  # the first expiry after the migration
    run_all()  # the timer vector nests above 0xB1
    cpus[0].eoi()  # the handler of 0xB1 ends
    run_all()  # 0x62 (level, EOI broadcast); 0x45 and 0x31 stay below TPR
    seen.append(observe(apics))
    bsp.write(REG_TPR, 0)
    run_all()
    bsp.write(REG_ICR_HI, 1 << 24)
    bsp.write(REG_ICR_LO, (6 << 8) | 0x9A)  # start-up IPI to CPU 1
    log.append((machine.clock.ns, "cpu1", "started", ap.take_sipi()))
    run_all()
    bsp.raise_lint(1)  # NMI
    machine.clock.set(35_000)  # two expiries pass while the CPUs do not run
    seen.append(observe(apics))
    run_all()
    for t in (41_000, 51_000, 51_500, 61_000):
        machine.clock.set(t)
        seen.append(observe(apics))
        run_all()
    return log, seen


def through_cbor_bytes(tree):
    """The tree as CBOR bytes and back (the plain-data part of the wire format)."""
    data = cbor2.dumps(tree)
    assert isinstance(data, bytes) and len(data) > 100
    return cbor2.loads(data)


def migrate(source_root, source_machine, how, registry):
    """Save the source, load into a fresh build; return the destination."""
    dest_root, dest_machine, dest_apics = make_machine(2, registry)
    if how == "stream":
        data = stream.save(source_root, registry=registry)
        _, tree = stream.read_tree(data)
        stream.load(tree, dest_root, registry=registry)
    else:
        tree = save_tree(source_root)
        if how == "cbor":
            tree = through_cbor_bytes(tree)
        load_tree(tree, dest_root)
    return dest_root, dest_machine, dest_apics


@pytest.mark.parametrize("how", ["tree", "cbor", "stream"])
def test_destination_carries_on_exactly_like_a_source_that_never_migrated(how):
    registry = make_registry()
    ref_root, ref_machine, ref_apics = make_machine(2, registry)
    src_root, src_machine, src_apics = make_machine(2, registry)
    set_up(ref_machine, ref_apics)
    set_up(src_machine, src_apics)
    before = save_tree(src_root)
    assert observe(src_apics) == observe(ref_apics)

    dst_root, dst_machine, dst_apics = migrate(src_root, src_machine, how, registry)
    assert dst_machine.clock.ns == 7_000
    assert save_tree(dst_root) == before

    expected, expected_reads = carry_on(ref_machine, ref_apics)
    got, got_reads = carry_on(dst_machine, dst_apics)
    assert got == expected
    assert got_reads == expected_reads
    assert save_tree(dst_root) == save_tree(ref_root)

    # the scenario is not vacuous: what the reference did
    ints = [e[3] for e in expected if e[1] == "cpu0" and e[2] == "int"]
    assert ints[:2] == [0xEF, 0x62] and 0x45 in ints and 0x31 in ints
    timer = [e[0] for e in expected if e[2] == "timer-due"]
    assert timer[0] == 11_000 and len(timer) >= 4
    assert ("eoi-broadcast", 0x62) in [e[2:] for e in expected]
    assert [e[3] for e in expected if e[2] == "started"] == [0x9A]
    assert [e[3] for e in expected if e[2] == "signal"] == ["sipi", "nmi"]


def test_the_source_state_at_the_migration_point():
    """What the migrated node holds, read against QEMU's field meanings."""
    _, machine, apics = make_machine(2)
    set_up(machine, apics)
    root = apics[0].root
    tree = save_tree(root)
    node = get_node(tree, BSP)
    assert node["__type__"] == "apic" and node["__version__"] == 3
    assert node["tpr"] == 0x50
    assert node["isr"][0xB1 >> 5] == 1 << (0xB1 & 31)
    assert node["irr"][1:4] == [1 << (0x31 - 32), 1 << (0x45 - 64), 1 << (0x62 - 96)]
    assert node["tmr"][3] == 1 << (0x62 - 96)
    assert node["count_shift"] == 4 and node["initial_count"] == 624
    assert node["initial_count_load_time"] == 1_000
    assert node["timer_expiry"] == node["next_time"] == 11_000
    assert "sipi" not in node  # the BSP does not wait for SIPI
    ap = get_node(tree, AP)
    assert ap["sipi"] == {"sipi_vector": 0, "wait_for_sipi": 1}
    assert list(k for k in node if not k.startswith("__")) == [
        "apicbase", "id", "arb_id", "tpr", "spurious_vec", "log_dest", "dest_mode", "isr",
        "tmr", "irr", "lvt", "esr", "icr", "divide_conf", "count_shift", "initial_count",
        "initial_count_load_time", "next_time", "timer_expiry"]


def test_a_version_2_stream_is_filtered_up_and_carries_on():
    """An older build wrote QEMU's v2 layout; the filters bring it to v3."""
    registry = make_registry()
    ref_root, ref_machine, ref_apics = make_machine(2, registry)
    src_root, src_machine, src_apics = make_machine(2, registry)
    set_up(ref_machine, ref_apics, ap_started=True)  # v2 has no sipi subsection
    set_up(src_machine, src_apics, ap_started=True)
    tree = save_tree(src_root)
    for path, node in list(iter_object_nodes(tree)):
        if node["__type__"] == "apic":
            assert "sipi" not in node
            v2 = V3_TO_V2.func(node, FilterContext(path, V3_TO_V2))
            node.clear()
            node.update(v2)
    assert get_node(tree, BSP)["__version__"] == 2
    assert get_node(tree, BSP)["timer"] == 11_000
    tree = through_cbor_bytes(tree)

    dst_root, dst_machine, dst_apics = make_machine(2, registry)
    report = apply_filters(tree, Destination.of_build(dst_root, registry),
                           gather_filters(registry))
    assert report.chains() == {BSP: ["apic-v2-to-v3"], AP: ["apic-v2-to-v3"]}
    load_tree(tree, dst_root)
    assert carry_on(dst_machine, dst_apics) == carry_on(ref_machine, ref_apics)


def test_v3_to_v1_and_back_through_the_engine_keeps_everything_in_the_stash():
    registry = make_registry()
    src_root, src_machine, src_apics = make_machine(2, registry)
    set_up(src_machine, src_apics)
    tree = save_tree(src_root)
    original = copy.deepcopy(tree)
    old_build = Destination(types={"apic": (1, 1), "x86-cpu": (1, 1), "container": (1, 1),
                                   "machine": (1, 1)}, name="a QEMU of apic v1")
    down = apply_filters(tree, old_build, gather_filters(registry))
    assert down.chains()[AP] == ["apic-v3-to-v2", "apic-v2-to-v1"]
    ap = get_node(tree, AP)
    assert ap["__version__"] == 1 and "timer" not in ap and "sipi" not in ap
    # timer -1 (no pending expiry) is what the way up gives anyway: not stashed
    assert ap["__stash__"] == {"apic-v2-v3": {"sipi": {"sipi_vector": 0, "wait_for_sipi": 1}}}
    tree = through_cbor_bytes(tree)
    apply_filters(tree, Destination.of_build(src_root, registry), gather_filters(registry))
    assert tree == original


def test_load_is_all_or_nothing_when_a_state_no_apic_can_hold_arrives():
    registry = make_registry()
    src_root, src_machine, src_apics = make_machine(2, registry)
    set_up(src_machine, src_apics)
    tree = save_tree(src_root)
    get_node(tree, AP)["count_shift"] = 9  # fits i32, but no divide gives it
    dst_root, dst_machine, dst_apics = make_machine(2, registry)
    dst_apics[0].write(REG_SVR, 0x1FF)
    dst_apics[0].set_irq(0x99)
    before = save_tree(dst_root)
    with pytest.raises(LoadError, match=r"count_shift 9 is not a timer divide shift"):
        load_tree(tree, dst_root)
    assert save_tree(dst_root) == before
    assert dst_apics[0].get_interrupt() == 0x99  # the old state still works


def test_out_of_range_values_are_refused_with_path_and_field():
    registry = make_registry()
    src_root, _, src_apics = make_machine(2, registry)
    tree = save_tree(src_root)
    get_node(tree, BSP)["lvt"][3] = 1 << 32
    get_node(tree, AP)["sipi"]["wait_for_sipi"] = 1 << 31
    dst_root, _, _ = make_machine(2, registry)
    with pytest.raises(LoadError) as e:
        load_tree(tree, dst_root)
    message = str(e.value)
    assert f"{BSP}: lvt[3]: 4294967296 does not fit u32" in message
    assert f"{AP}: sipi.wait_for_sipi: 2147483648 does not fit i32" in message
    # a device bug that leaves such a value fails at save time, not on the destination
    src_apics[0].state.tpr = 256
    with pytest.raises(StateError, match=r"^/machine/unattached/device\[0\]/lapic: tpr: "
                                         r"256 does not fit u8$"):
        save_tree(src_root)


def test_a_timer_expiry_already_due_on_arrival_fires_at_the_next_clock_update():
    """QEMU's timer_mod with a past expiry fires as soon as the clock runs."""
    registry = make_registry()
    src_root, src_machine, src_apics = make_machine(1, registry)
    tree = save_tree(src_root)
    node = get_node(tree, BSP)
    node.update(spurious_vec=0x1FF, lvt=[0x41] + node["lvt"][1:], initial_count=100,
                initial_count_load_time=0, next_time=202, timer_expiry=202)
    tree["machine"]["clock_ns"] = 500
    dst_root, dst_machine, (apic,) = make_machine(1, registry)
    load_tree(tree, dst_root)
    cpu = CpuPlayer(apic)
    assert apic.timer_deadline == 202
    dst_machine.clock.advance(0)
    assert [e[2:] for e in cpu.log] == [("timer-due", 202)]
    assert cpu.run() == [0x41]
    assert apic.read(REG_EOI) == 0


def test_what_migrates_of_the_error_status_register():
    """ESR is a latch (SDM): a write copies the errors detected since the
    previous write into the readable register. QEMU's VMState has one field,
    ``esr``: the errors detected and not yet latched. Those migrate; the value
    latched before the migration does not (the destination reads ``esr``
    until the guest's next write), so only a guest migrated between its
    latching write and its read notices."""
    registry = make_registry()
    src_root, src_machine, (src,) = make_machine(1, registry)
    src.write(REG_SVR, 0x1FF)
    src.read(0x040)  # illegal register address, detected
    tree = save_tree(src_root)
    assert get_node(tree, BSP)["esr"] == 0x80
    dst_root, _, (dst,) = make_machine(1, registry)
    load_tree(tree, dst_root)
    dst.write(0x280, 0)  # the guest's write-then-read sees the error
    assert dst.read(0x280) == 0x80

    src.write(0x280, 0)  # now latched on the source
    assert src.read(0x280) == 0x80
    tree = save_tree(src_root)
    assert get_node(tree, BSP)["esr"] == 0  # nothing detected since the latch
    load_tree(tree, dst_root)
    assert dst.read(0x280) == 0  # the latched 0x80 did not migrate
