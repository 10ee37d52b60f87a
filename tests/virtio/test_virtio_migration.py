"""Migration with requests in flight, between the combined and the split
builds, both ways, through the filter engine and real CBOR streams.

The expectation is never hard-coded: a reference build (its own copy of the
disk, its own RAM) does the same source steps and the same finish without
migrating; the destination must end with the same disk, the same result for
every request (status, used length, data), the same used ring, the same
interrupts seen by the guest, and the same device state. The source's RAM
is scribbled over and its disk closed before the destination finishes, so
the destination can only have used what migrated.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from virtio_helpers import (
    DISK,
    Op,
    Plan,
    copy_image,
    finish,
    make_build,
    make_image,
    migrate,
    outcome,
    random_ops,
    read_file,
    run_source,
)

from migtree import engine, stream, tree
from migtree.errors import LoadError
from migtree.memory import GuestMemoryError
from migtree_virtio.constants import BLK_S_OK, BLK_T_IN, BLK_T_OUT, STATUS_DRIVER_OK
from migtree_virtio.filters import PAIR
from migtree_virtio.testdriver import COMPLETED

OTHER = {"combined": "split", "split": "combined"}


def scenario(tmp: str, plan: Plan, src_kind: str, via: str, registry, seed: int = 1):
    """Run the plan on a source, migrate it into the other kind, finish it;
    run the same on a never-migrated reference; return both outcomes."""
    base = make_image(f"{tmp}/base.img", seed=seed)
    shared = copy_image(base, f"{tmp}/shared.img")   # source and destination share it
    ref_img = copy_image(base, f"{tmp}/ref.img")

    _r, ref_m, ref_dev = make_build(src_kind, ref_img)
    run_source(ref_dev, ref_m.memory, plan)
    ref_drv = finish(ref_dev, ref_m.memory)
    want = outcome(ref_drv, ref_dev)
    ref_state = tree.save_tree(_r)

    src_root, src_m, src_dev = make_build(src_kind, shared)
    run_source(src_dev, src_m.memory, plan)
    inflight_at_cut = len(src_dev.vdev.state.inflight)
    dst_root, dst_m, dst_dev = make_build(OTHER[src_kind], shared)
    migrate(src_root, dst_root, registry, via=via)
    # the source is gone: its RAM is garbage, its disk handle closed
    src_m.memory.fill(0, src_m.memory.size, 0xAA)
    src_dev.vdev.close()
    assert len(dst_dev.vdev.state.inflight) == inflight_at_cut

    dst_drv = finish(dst_dev, dst_m.memory)
    got = outcome(dst_drv, dst_dev)
    dst_state = tree.save_tree(dst_root)
    # the reference's device state, seen through the filter, is the destination's
    engine.apply_filters(ref_state, dst_root, [PAIR])
    ref_dev.vdev.close()
    dst_dev.vdev.close()
    return want, got, ref_state, dst_state


def check_same(want, got, ref_state, dst_state, nops: int) -> None:
    assert got["disk"] == want["disk"]
    assert got["requests"] == want["requests"]
    assert got["used"] == want["used"]
    assert got["interrupts"] == want["interrupts"]
    assert got["status"] == want["status"]
    # exactly once: every request completed, each head in the used ring once
    assert len(got["requests"]) == nops
    assert all(r["state"] == COMPLETED for r in got["requests"])
    ids = [i for i, _ in got["used"]]
    assert len(ids) == len(set(ids)) == nops
    # the device state is the reference's (filtered to the destination's layout)
    ref_node = ref_state["machine"]["peripheral"]["vblk0"]
    assert ref_node == dst_state["machine"]["peripheral"]["vblk0"]


@pytest.mark.parametrize("src_kind", ["combined", "split"])
@pytest.mark.parametrize("via", ["stream", "tree"])
def test_inflight_requests_complete_once_on_the_destination(tmp_path, registry, src_kind, via):
    rng = random.Random(7)
    ops = random_ops(rng, 16, DISK // 512)
    plan = Plan(ops, processed=5, taken=6, completes=[3], poll=True,
                late=random_ops(rng, 3, DISK // 512))
    want, got, ref_state, dst_state = scenario(str(tmp_path), plan, src_kind, via, registry)
    check_same(want, got, ref_state, dst_state, 19)
    # the scenario really had all three kinds of request at the cut
    assert want["requests"][0]["status"] == BLK_S_OK


def test_cut_states_are_really_mixed(tmp_path, registry):
    """At the cut, the source has completed, in-flight and untouched requests."""
    img = make_image(str(tmp_path / "d.img"))
    _root, m, dev = make_build("combined", img)
    rng = random.Random(3)
    plan = Plan(random_ops(rng, 12, DISK // 512), processed=4, taken=4, completes=[], poll=False,
                late=[])
    run_source(dev, m.memory, plan)
    vq = dev.vdev.state.queues[0]
    assert vq.used_idx == 4
    assert len(dev.vdev.state.inflight) == 4
    assert vq.last_avail_idx == 8
    assert m.memory.read_u16(vq.driver + 2) == 12
    dev.vdev.close()


def test_overlapping_writes_and_reads_keep_their_order(tmp_path, registry):
    """Writes and reads of the same sectors, some completed on the source,
    some in flight, some untouched: the destination orders them as the
    reference does."""
    ops = []
    for i in range(10):
        ops.append(Op(BLK_T_OUT, 8, 2048, seed=i))
        ops.append(Op(BLK_T_IN, 6, 4096))
    plan = Plan(ops, processed=7, taken=5, completes=[2, 0], poll=False, late=[])
    for src_kind in ("combined", "split"):
        want, got, rs, ds = scenario(str(tmp_path / src_kind), plan, src_kind, "stream", registry)
        check_same(want, got, rs, ds, 20)


plans = st.builds(
    lambda seed, n, p, t, c, poll, late: (seed, n, p, t, c, poll, late),
    st.integers(0, 2**32 - 1), st.integers(1, 20), st.integers(0, 20), st.integers(0, 20),
    st.lists(st.integers(0, 30), max_size=4), st.booleans(), st.integers(0, 4))


@settings(max_examples=40)
@given(params=plans, src_kind=st.sampled_from(["combined", "split"]),
       via=st.sampled_from(["stream", "tree"]))
def test_random_cut_points(tmp_path_factory, registry, params, src_kind, via):
    seed, n, processed, taken, completes, poll, late = params
    rng = random.Random(seed)
    plan = Plan(random_ops(rng, n, DISK // 512), processed=min(processed, n),
                taken=taken, completes=completes, poll=poll,
                late=random_ops(rng, late, DISK // 512))
    tmp = tmp_path_factory.mktemp("cut")
    want, got, rs, ds = scenario(str(tmp), plan, src_kind, via, registry, seed=seed & 0xFF)
    check_same(want, got, rs, ds, n + late)


def test_destination_reads_buffers_from_its_own_memory(tmp_path, registry):
    """A write in flight whose data exists only in (migrated) guest RAM."""
    img = make_image(str(tmp_path / "d.img"))
    src_root, src_m, src = make_build("combined", img)
    plan = Plan([Op(BLK_T_OUT, 16, 4096, seed=99)], processed=0, taken=1, completes=[],
                poll=False, late=[])
    run_source(src, src_m.memory, plan)
    assert len(src.vdev.state.inflight) == 1
    before = read_file(img)
    dst_root, dst_m, dst = make_build("split", img)
    migrate(src_root, dst_root, registry)
    src_m.memory.fill(0, src_m.memory.size, 0)
    assert read_file(img) == before  # nothing was written before the migration
    finish(dst, dst_m.memory)
    data = random.Random(99).randbytes(4096)
    assert read_file(img)[16 * 512:16 * 512 + 4096] == data
    src.vdev.close()
    dst.vdev.close()


def test_interrupts_and_driver_ok_survive(tmp_path, registry):
    img = make_image(str(tmp_path / "d.img"))
    src_root, src_m, src = make_build("split", img)
    plan = Plan([Op(BLK_T_IN, 0, 512)] * 3, processed=1, taken=1, completes=[], poll=True,
                late=[])
    drv = run_source(src, src_m.memory, plan)
    assert drv.interrupts["msi_queue"] == 1
    dst_root, dst_m, dst = make_build("combined", img)
    migrate(src_root, dst_root, registry)
    assert dst.vdev.state.device_status & STATUS_DRIVER_OK
    assert dst.transport.msix_enabled
    d = finish(dst, dst_m.memory)
    assert d.interrupts["msi_queue"] == 2
    assert dst.transport.msi_log  # the message went out on the destination
    src.vdev.close()
    dst.vdev.close()


# -- refusals: the destination is left as it was ------------------------------------

def _snapshot(root):
    return tree.save_tree(root)


def test_different_disk_size_is_refused(tmp_path, registry):
    img = make_image(str(tmp_path / "a.img"))
    other = make_image(str(tmp_path / "b.img"), size=DISK * 2)
    src_root, src_m, src = make_build("combined", img)
    run_source(src, src_m.memory, Plan([Op(BLK_T_IN, 0, 512)], 0, 1, [], False, []))
    dst_root, dst_m, dst = make_build("split", other)
    dst_m.memory.write(0x2000, b"untouched")
    before = _snapshot(dst_root)
    with pytest.raises(LoadError, match="capacity"):
        migrate(src_root, dst_root, registry)
    after = _snapshot(dst_root)
    assert after["machine"]["peripheral"] == before["machine"]["peripheral"]
    assert dst_m.memory.read(0x2000, 9) == b"untouched"
    src.vdev.close()
    dst.vdev.close()


def test_different_queue_count_is_refused(tmp_path, registry):
    img = make_image(str(tmp_path / "a.img"))
    src_root, _m, src = make_build("combined", img)
    dst_root, _dm, dst = make_build("split", img, num_queues=2)
    with pytest.raises(LoadError, match="MSI-X vectors|queues"):
        migrate(src_root, dst_root, registry)
    src.vdev.close()
    dst.vdev.close()


def test_different_ram_size_is_refused_before_any_byte(tmp_path, registry):
    img = make_image(str(tmp_path / "a.img"))
    src_root, src_m, src = make_build("combined", img)
    src_m.memory.fill(0, 4096, 0x55)
    dst_root, dst_m, dst = make_build("split", img, mem=8 << 20)
    with pytest.raises(LoadError) as e:
        migrate(src_root, dst_root, registry)
    assert isinstance(e.value.__cause__, GuestMemoryError) or "guest RAM" in str(e.value)
    assert dst_m.memory.read(0, 4096) == bytes(4096)
    src.vdev.close()
    dst.vdev.close()


def test_stream_carries_guest_memory_in_chunks(tmp_path, registry):
    import io

    img = make_image(str(tmp_path / "a.img"))
    src_root, src_m, src = make_build("combined", img, mem=3 << 20)
    buf = io.BytesIO()
    stream.save(src_root, buf, registry=registry)
    sections = list(stream.iter_sections(io.BytesIO(buf.getvalue())))
    chunks = [s for s in sections if s.kind == "chunk"]
    assert len(chunks) == 3
    src.vdev.close()
