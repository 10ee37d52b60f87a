"""``migtree build show``, ``save`` and ``restore``: the lower-level commands
scripts use, run as a user runs them."""

from __future__ import annotations

import json

from mig_helpers import Proc, migtree_cmd, plain, tree_of
from mig_pairs import make_pair, reference


def run(tmp, *args, env=None):
    p = Proc(migtree_cmd(*args), tmp, "cmd", env)
    rc = p.wait()
    return rc, p


def test_build_show_text_and_json(short_tmp):
    pair = make_pair(short_tmp)
    rc, p = run(short_tmp, "build", "show", str(pair.dst))
    assert rc == 0, p.stderr
    out = p.stdout
    assert "backend: userspace (migtree-apic)" in out
    assert "/machine/peripheral/vblk0/virtio-backend  virtio-blk@1" in out
    assert "/machine/unattached/device[1]/lapic" in out
    rc, p = run(short_tmp, "build", "show", str(pair.src), "--json")
    assert rc == 0, p.stderr
    doc = json.loads(p.stdout)
    paths = {o["path"]: o["type"] for o in doc["objects"]}
    assert paths["/machine/peripheral/vblk0"] == "virtio-blk-pci"
    assert paths["/machine/ram"] == "guest-memory"
    assert doc["devices"][0]["drive"] == "disk.img"


def test_build_errors_are_one_line(short_tmp):
    bad = short_tmp / "bad.toml"
    bad.write_text('[machine]\nbackend = "userspace"\n[[device]]\ntype = "no-such-device"\n')
    rc, p = run(short_tmp, "build", "show", str(bad))
    assert rc == 1
    assert "device[0].type" in p.stderr and "no-such-device" in p.stderr
    assert "Traceback" not in p.stderr


def test_missing_drive_and_create_drives(short_tmp):
    cfg = short_tmp / "b.toml"
    cfg.write_text('[machine]\nbackend = "userspace"\nmemory = "4M"\n[[device]]\n'
                   'type = "virtio-blk-pci"\ndrive = "sub/new.img"\n')
    rc, p = run(short_tmp, "build", "show", str(cfg))
    assert rc == 1 and "new.img" in p.stderr and "Traceback" not in p.stderr
    rc, p = run(short_tmp, "build", "show", str(cfg), "--create-drives", "1M")
    assert rc == 0, p.stderr
    assert (short_tmp / "sub" / "new.img").stat().st_size == 1 << 20
    assert "created" in p.stderr


def test_save_then_restore_finishes_the_work(short_tmp):
    """An offline migration: the combined build saves with I/O in flight, the
    split build restores the file and finishes it, as a build that never
    moved would."""
    pair = make_pair(short_tmp)
    stream = short_tmp / "vm.mt"
    rc, p = run(short_tmp, "save", str(pair.src), "-o", str(stream), "--workload",
                pair.workloads, "--seed", "9")
    assert rc == 0, p.stderr
    assert "saved src:" in p.stderr
    rc, p = run(short_tmp, "restore", str(pair.dst), str(stream), "--workload", pair.workloads,
                "--json", "--dump-state", str(short_tmp / "after.mt"))
    assert rc == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["format"] == "migtree"
    assert [a["filter"] for a in doc["filters"]["applications"]
            if a["path"] == "/machine/peripheral/vblk0"] == ["virtio-blk-pci-split"]
    assert doc["workloads"] == reference(pair.ref_dst, pair.workloads, 9)["checks"]
    assert plain(tree_of(short_tmp / "after.mt"))["machine"]["peripheral"]["vblk0"][
        "__type__"] == "virtio-pci"


def test_save_to_stdout_and_restore_text(short_tmp):
    pair = make_pair(short_tmp)
    rc, p = run(short_tmp, "save", str(pair.src), "-o", "-")
    assert rc == 0
    data = p.out.read_bytes()
    (short_tmp / "s.mt").write_bytes(data)
    rc, p = run(short_tmp, "restore", str(pair.dst), str(short_tmp / "s.mt"))
    assert rc == 0, p.stderr
    assert "restored" in p.stdout and "virtio-blk-pci-split" in p.stdout
    assert "loaded 12 objects" in p.stdout  # 2 vCPUs


def test_restore_refuses_a_corrupted_stream_and_changes_nothing(short_tmp):
    pair = make_pair(short_tmp)
    stream = short_tmp / "vm.mt"
    assert run(short_tmp, "save", str(pair.src), "-o", str(stream))[0] == 0
    data = bytearray(stream.read_bytes())
    data[len(data) // 2] ^= 0x40
    stream.write_bytes(bytes(data))
    rc, p = run(short_tmp, "restore", str(pair.dst), str(stream))
    assert rc == 1
    assert "checksum mismatch" in p.stderr and "Traceback" not in p.stderr
