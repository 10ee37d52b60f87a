"""Version pins: a build file pins a type to an older registered version;
the device then writes and loads that version, so one environment runs both
ends of a v1 <-> v2 migration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dg_vendor as V
import pytest
from mig_helpers import write_build
from test_downgrade import device, device_node, migrate

from migtree import stream
from migtree.build import load_build
from migtree.errors import BuildError
from migtree.migration import dump_toml
from migtree.tree import save_tree


def pinned_build(d: Path, name: str, pin: Any = 1, **extra: Any) -> Path:
    path = write_build(d, name, backend="userspace", cpus=1,
                       devices=[{"type": "dg-device", "id": "dg0"}])
    path.write_text(path.read_text() + dump_toml({"pins": {"dg-device": pin, **extra}}))
    return path


def plain_build(d: Path, name: str) -> Path:
    return write_build(d, name, backend="userspace", cpus=1,
                       devices=[{"type": "dg-device", "id": "dg0"}])


def test_a_pinned_build_writes_the_old_version_and_the_old_release_loads_it(short_tmp):
    reg = V.release(2)
    b = load_build(pinned_build(short_tmp, "pinned"), reg)
    assert any("pinned to version 1" in n for n in b.notes)
    device(b).state.count, device(b).state.ctrl = 99, 5
    data = stream.save(b.root, registry=reg)
    header, tree = stream.read_tree(data)
    node = device_node(tree)
    assert (node["__version__"], node["counter"], node["ctrl"]) == (1, 99, 5)
    assert "dg-device@1" in header["schemas"] and "dg-device@2" not in header["schemas"]
    old = load_build(plain_build(short_tmp, "old"), V.release(1))
    stream.load(tree, old.root, registry=old.registry)  # release 1: no filter needed
    assert device(old).state.counter == 99


@pytest.mark.parametrize("direction", ["up", "down"])
@pytest.mark.parametrize("irq_mask", [0, 0x5A])
def test_pinned_versions_migrate_both_ways_in_one_environment(short_tmp, direction,
                                                              irq_mask):
    """One registry (release 2 with its filters) on both sides: v2 -> pinned
    v1 runs the downgrade; pinned v1 -> v2 the upgrade. A value v1 cannot
    hold rides in the stash on the way down; the pinned device (running
    version 2) gets it back when its node is driven up to load it."""
    reg = V.release(2)
    new, pinned = plain_build(short_tmp, "new"), pinned_build(short_tmp, "pinned")
    src_path, dst_path = (new, pinned) if direction == "down" else (pinned, new)
    src, dst = load_build(src_path, reg), load_build(dst_path, reg)
    st = device(src).state
    st.ctrl, st.count, st.irq_mask = 0x1234, 77, irq_mask
    s, r = migrate(short_tmp, src, dst)
    assert (s.outcome, r.outcome) == ("committed", "committed"), (s.error, r.error)
    chain = [a["filter"] for a in r.filters["applications"]]
    assert chain == (["dg-device-v2-to-v1"] if direction == "down" else
                     ["dg-device-v1-to-v2"])
    got = device(dst).state
    assert (got.ctrl, got.count, got.irq_mask) == (0x1234, 77, irq_mask)
    if direction == "down":
        assert device_node(save_tree(dst.root))["__version__"] == 1


def test_pin_errors_name_the_key(short_tmp):
    reg = V.release(2)
    with pytest.raises(BuildError, match=r"pins\.dg-device: dg-device has no version 7"):
        load_build(pinned_build(short_tmp, "a", 7), reg)
    with pytest.raises(BuildError, match=r"pins\.dg-device: cannot pin .* no installed filter"):
        load_build(pinned_build(short_tmp, "b", 1), V.release(2, with_filters=False))
    with pytest.raises(BuildError, match=r"pins\.nope: type 'nope' is not registered"):
        load_build(pinned_build(short_tmp, "c", 1, nope=1), reg)


TEMPLATE = Path(__file__).resolve().parents[2] / "plugins" / "_template"


@pytest.mark.parametrize("src,dst,chain", [
    ("example-v2.toml", "example-v1.toml", "example-device-v2-to-v1"),
    ("example-v1.toml", "example-v2.toml", "example-device-v1-to-v2"),
])
def test_template_plugin_v1_v2_with_migtree_migrate_in_one_environment(short_tmp, src, dst,
                                                                       chain):
    """docs/writing-a-plugin.md, "Test the way down": the template plugin,
    installed (here: an installed-looking dist-info on PYTHONPATH, found
    through its entry point as pip would make it), and its two build files;
    ``migtree migrate`` verifies the migrated machine against one that never
    moved."""
    import json
    import os
    import subprocess
    import sys

    info = short_tmp / "migtree_example-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: migtree-example\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[migtree]\nmigtree-example = "
                                           "migtree_example.plugin\n")
    env = dict(os.environ, MIGTREE_PROGRESS="0",
               PYTHONPATH=os.pathsep.join([str(short_tmp), str(TEMPLATE / "src")]))
    env.pop("MIGTREE_LOAD_PLUGINS", None)
    p = subprocess.run([sys.executable, "-m", "migtree", "migrate", src, dst, "--json"],
                       cwd=TEMPLATE / "builds", env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["ok"] and doc["verification"]["ok"]
    apps = doc["destination"]["filters"]["applications"]
    assert [a["filter"] for a in apps if a["path"] == "/machine/peripheral/ex0"] == [chain]
