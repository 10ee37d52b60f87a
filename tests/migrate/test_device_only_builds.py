"""A build of devices only needs no CPU backend; a missing backend names
the plugin that provides it; a workload mismatch shows both sides."""

from __future__ import annotations

import pytest

from migtree.build import load_build
from migtree.commands.migrate import format_report
from migtree.errors import BuildError
from migtree.plugins import load_registry

NO_CPU_PLUGINS = ["migtree-apic", "migtree-kvm"]


def test_a_device_only_build_needs_no_backend(short_tmp):
    reg = load_registry(deny=NO_CPU_PLUGINS)
    assert not reg.backends
    (short_tmp / "d.toml").write_text('[machine]\ncpus = 0\nmemory = "1M"\n[[device]]\n'
                                      'type = "virtio-blk-pci"\nid = "vblk0"\n'
                                      'drive = "d.img"\n')
    (short_tmp / "d.img").write_bytes(b"\0" * 4096)
    b = load_build(short_tmp / "d.toml", reg)
    assert b.backend.name == "none"
    types = {o.TYPE for o in b.root.walk()}
    assert "virtio-blk-pci" in types and "x86-cpu" not in types


def test_a_missing_backend_names_the_plugin_that_provides_it(short_tmp):
    reg = load_registry(deny=NO_CPU_PLUGINS)
    (short_tmp / "c.toml").write_text('[machine]\ncpus = 1\nbackend = "kvm"\n')
    with pytest.raises(BuildError) as e:
        load_build(short_tmp / "c.toml", reg)
    msg = str(e.value)
    assert "machine.backend" in msg and "provided by the plugin migtree-kvm" in msg
    assert "disabled" in msg and "cpus = 0" in msg


def test_a_workload_mismatch_shows_both_sides_results():
    got = {"vblk0": {"requests": [{"status": 0, "sector": 7}]}}
    want = {"vblk0": {"requests": [{"status": 0, "sector": 8}]}}
    doc = {"source": {"build": "a", "backend": "userspace", "outcome": "committed"},
           "destination": {"build": "b", "backend": "userspace", "outcome": "committed"},
           "via": "unix", "created_drives": [], "workloads": ["w"], "seed": 0,
           "reference": {"build": "b"}, "total_s": 1.0,
           "verification": {"disks": [], "ok": False,
                            "state": {"match": True, "objects": 3},
                            "workloads": {"w": {"match": False, "summary": "",
                                                "destination": got, "reference": want}}}}
    text = format_report(doc)
    assert "workload w: DIFFERENT" in text
    assert "destination [{'status': 0, 'sector': 7}]" in text
    assert "reference [{'status': 0, 'sector': 8}]" in text
