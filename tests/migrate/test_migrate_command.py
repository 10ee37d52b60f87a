"""``migtree migrate``: the README's main job, end to end, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from mig_helpers import HERE, Proc, migtree_cmd
from mig_pairs import kvm_ok

REPO = HERE.parent.parent
EXAMPLES = REPO / "examples"
SRC, DST = EXAMPLES / "kvm-combined.toml", EXAMPLES / "userspace-split.toml"
NO_KVM = {"PYTHONPATH": os.pathsep.join([str(HERE / "nokvm"),
                                         os.environ.get("PYTHONPATH", "")]),
          "MIGTREE_TEST_NO_KVM": "1"}


def migrate(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Proc:
    return Proc(migtree_cmd("migrate", *args), tmp, "migrate", env)


def check_common(doc: dict) -> None:
    s, d, v = doc["source"], doc["destination"], doc["verification"]
    assert s["outcome"] == d["outcome"] == "committed"
    assert s["check"]["compatible"]
    chains = {a["path"]: a["filter"] for a in d["filters"]["applications"]}
    assert chains["/machine/peripheral/vblk0"] == "virtio-blk-pci-split"
    if s["mode"] == "precopy":  # the default: RAM page by page, then a small stream
        pc = s["precopy"]
        assert pc["ram_bytes"] == 16 << 20 and pc["page_bytes_sent"] > 0
        assert pc["passes"][-1]["final"] and pc["converged"]
        assert pc["page_bytes_sent"] == sum(p["bytes"] for p in d["precopy"])
        assert s["stream_bytes"] < 1 << 20  # device state only: RAM came in the passes
        assert s["wire_bytes_sent"] >= s["stream_bytes"] + pc["page_bytes_sent"]
    else:
        assert s["stream_bytes"] > 16 << 20  # 16 MiB of guest RAM went across
        assert s["wire_bytes_sent"] >= s["stream_bytes"]
    assert s["paused_s"] is not None and s["paused_s"] > 0
    assert "virtio-blk-io" in doc["workloads"]
    assert all(x["match"] for x in v["disks"]), v["disks"]
    assert all(w["match"] for w in v["workloads"].values()), v["workloads"]


def test_examples_without_kvm_fall_back_and_verify(short_tmp):
    # stop-and-copy, the way back: the whole RAM in the stream, during the pause
    p = migrate(short_tmp, str(SRC), str(DST), "--json", "--stop-and-copy", env=NO_KVM)
    assert p.wait() == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    check_common(doc)
    assert doc["source"]["mode"] == "stop-and-copy" and doc["source"]["precopy"] is None
    assert doc["source"]["backend"] == "userspace"
    assert doc["source"]["notes"] == [
        "backend 'kvm' is unavailable (/dev/kvm cannot be opened (simulated by the test "
        "suite)); using 'userspace' instead"]
    assert "apic-interrupts" in doc["workloads"]  # userspace APICs on both sides
    assert doc["verification"]["ok"], doc["verification"]
    assert doc["ok"] and doc["scratch"] is None  # nothing left behind


@pytest.mark.parametrize("via", ["unix", "tcp", "file"])
@pytest.mark.skipif(not kvm_ok(), reason="/dev/kvm cannot be opened here")
def test_examples_kvm_to_userspace(short_tmp, via):
    p = migrate(short_tmp, str(SRC), str(DST), "--via", via, "--json")
    p.wait()
    doc = json.loads(p.stdout)
    check_common(doc)
    assert doc["source"]["mode"] == "precopy"
    assert doc["source"]["backend"] == "kvm" and doc["source"]["notes"] == []
    chains = {a["path"]: a for a in doc["destination"]["filters"]["applications"]}
    for cpu in range(4):
        app = chains[f"/machine/unattached/device[{cpu}]/lapic"]
        assert (app["before"], app["after"], app["kind"]) == ("kvm-apic@1", "apic@3", "dynamic")
    state = doc["verification"]["state"]
    assert state["match"], state["differences"]
    assert doc["ok"]


def test_report_text(short_tmp):
    p = migrate(short_tmp, str(SRC), str(DST), "--via", "tcp", env=NO_KVM)
    assert p.wait() == 0, p.stdout + p.stderr
    out = p.stdout
    for needle in ("migrated kvm-combined (userspace) -> userspace-split (userspace) via tcp: "
                   "committed",
                   "note: kvm-combined: backend 'kvm' is unavailable",
                   "filters applied (per path):",
                   "/machine/peripheral/vblk0: virtio-blk-pci@1 -> virtio-pci@1 via "
                   "virtio-blk-pci-split",
                   "bytes sent: ", "source paused: ",
                   "pre-copy: 1 pass(es) while the source ran + the final pass paused",
                   "pass 2 (paused): 0 pages", "(limit 300 ms)",
                   "disk disk.img: identical", "workload virtio-blk-io: identical",
                   "device state: identical",
                   "verified: the migrated machine is the one that never moved"):
        assert needle in out, out
    assert out.count("note:") == 1  # one clear line about the fallback


def test_the_users_disk_is_never_touched(short_tmp):
    d = short_tmp / "b"
    d.mkdir()
    for f in (SRC, DST):
        shutil.copy(f, d / f.name)
    disk = d / "disk.img"
    disk.write_bytes(b"\xab" * (1 << 20))
    p = migrate(short_tmp, str(d / SRC.name), str(d / DST.name), "--json", env=NO_KVM)
    assert p.wait() == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["created_drives"] == []  # it used a copy of ours
    assert disk.read_bytes() == b"\xab" * (1 << 20)


def test_an_impossible_migration_is_refused_and_reported(short_tmp):
    # a destination with fewer vCPUs: the pre-flight check finds objects nobody takes
    dst = short_tmp / "two-cpus.toml"
    dst.write_text(DST.read_text().replace("cpus = 4", "cpus = 2"))
    p = migrate(short_tmp, str(SRC), str(dst), "--json", env=NO_KVM)
    assert p.wait() == 1
    doc = json.loads(p.stdout)
    assert doc["source"]["outcome"] == "refused"
    assert doc["destination"]["outcome"] == "refused"
    assert doc["source"]["paused_s"] is None  # the source never paused
    assert "/machine/unattached/device[2]" in doc["source"]["error"]
    assert doc["verification"] is None
    shutil.rmtree(doc["scratch"], ignore_errors=True)


def test_missing_build_file_is_one_line(short_tmp):
    p = migrate(short_tmp, str(short_tmp / "nope.toml"), str(DST))
    assert p.wait() == 1
    assert "nope.toml: no such build file" in p.stderr and "Traceback" not in p.stderr
