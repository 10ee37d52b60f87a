"""The plugin as the core sees it: types, filters and the workload are
registered through the hooks; the workload migrates I/O in flight."""

from __future__ import annotations

import io

from virtio_helpers import copy_image, make_build, make_image

from migtree import engine, stream
from migtree_virtio import workload as wl
from migtree_virtio.filters import PAIR


def test_registered_things(registry):
    rec = registry.plugins["migtree-virtio"]
    assert {t.split("@")[0] for t in rec.types} >= {
        "virtio-device", "virtio-pci", "virtio-blk", "virtio-blk-pci"}
    assert sorted(rec.filters) == ["virtio-blk-pci-merge", "virtio-blk-pci-split"]
    assert rec.workloads == ["virtio-blk-io"]
    assert registry.types.is_a("virtio-blk", "virtio-device")
    assert registry.types.lookup("virtio-device").abstract
    assert "guest-memory" in registry.types


def test_registry_creates_a_split_device(registry, tmp_path):
    img = make_image(str(tmp_path / "d.img"))
    dev = registry.types.create("virtio-pci", backend="virtio-blk", drive=img)
    assert dev.child("virtio-backend").TYPE == "virtio-blk"
    dev.vdev.close()


def test_workload_migrates_like_a_reference(tmp_path, registry):
    base = make_image(str(tmp_path / "base.img"), size=1 << 20)
    shared = copy_image(base, str(tmp_path / "shared.img"))
    ref_img = copy_image(base, str(tmp_path / "ref.img"))
    _rr, ref_m, ref = make_build("combined", ref_img, mem=8 << 20)
    assert wl.applies(ref_m)
    wl.start(ref_m, 42)
    wl.finish(ref_m)
    want = wl.check(ref_m)

    src_root, src_m, src = make_build("combined", shared, mem=8 << 20)
    wl.start(src_m, 42)
    assert src.vdev.state.inflight or src.vdev.pending()
    buf = io.BytesIO()
    stream.save(src_root, buf, registry=registry)
    _h, t = stream.read_tree(io.BytesIO(buf.getvalue()))
    dst_root, dst_m, dst = make_build("split", shared, mem=8 << 20)
    engine.apply_filters(t, dst_root, [PAIR])
    stream.load(t, dst_root, registry=registry)
    src_m.memory.fill(0, src_m.memory.size, 0xEE)
    wl.finish(dst_m)
    got = wl.check(dst_m)
    ref_key, = want
    assert got["/machine/peripheral/vblk0"] == want[ref_key]
    assert all(r["status"] == 0 for r in got["/machine/peripheral/vblk0"]["requests"])
    for d in (ref, src, dst):
        d.vdev.close()
