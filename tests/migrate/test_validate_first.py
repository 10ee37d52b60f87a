"""Validate before filtering: a node is checked against its own
type@version -- the layout the stream wrote -- before any filter touches
it; errors name the stream's field and the stream offset of the node's
section, and nothing is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dg_vendor as V
import pytest
from mig_helpers import write_build
from test_downgrade import _use_registry, build_of, device, device_node, migrate

from migtree import cli, stream
from migtree.build import load_build
from migtree.tree import save_tree

DG = "/machine/peripheral/dg0"


def bad_stream(d: Path, **fields: Any) -> tuple[Path, int]:
    """A release-2 stream whose dg-device node has ``fields`` changed (None:
    removed); and the offset of that node's section."""
    src = build_of(d, "new", 2)
    tree = save_tree(src.root)
    node = device_node(tree)
    for k, v in fields.items():
        if v is None:
            del node[k]
        else:
            node[k] = v
    path = d / "bad.mt"
    path.write_bytes(stream.write_tree(None, None, tree, src.registry, build_name="new"))
    offsets: dict[str, int] = {}
    stream.read_tree(str(path), offsets=offsets)
    return path, offsets[DG]


def restore_into_old(d: Path, monkeypatch, capsys, stream_path: Path) -> tuple[int, str, Any]:
    """``restore`` on an older host whose release has the pair backported
    (so its own filters would take the node down), and the build after."""
    reg = V.release(1, with_filters=True)
    old_path = write_build(d, "old", backend="userspace", cpus=1,
                           devices=[{"type": "dg-device", "id": "dg0"}])
    _use_registry(monkeypatch, reg)
    old = load_build(old_path, reg)
    before = save_tree(old.root)
    rc = cli.main(["restore", str(old_path), str(stream_path),
                   "--dump-state", str(d / "after.mt")])
    err = capsys.readouterr().err
    after = stream.read_tree(str(d / "after.mt"))[1] if (d / "after.mt").exists() else None
    return rc, err, (before, after)


def test_a_bad_value_in_a_field_a_filter_stashes_is_refused(short_tmp, monkeypatch, capsys):
    # irq_mask is u8; the way down would have moved 300 into the stash unchecked
    path, offset = bad_stream(short_tmp, irq_mask=300)
    rc, err, (before, after) = restore_into_old(short_tmp, monkeypatch, capsys, path)
    assert rc == 1
    assert f"stream offset {offset}: {DG}: irq_mask: 300" in err
    assert "the stream's own dg-device@2, before any filter" in err
    assert after is None or device_node(after) == device_node(before)


def test_a_field_missing_from_the_stream_is_named_not_a_filter_crash(short_tmp, monkeypatch,
                                                                     capsys):
    path, offset = bad_stream(short_tmp, count=None)
    rc, err, _ = restore_into_old(short_tmp, monkeypatch, capsys, path)
    assert rc == 1
    assert f"stream offset {offset}: {DG}: count" in err
    assert "dg-device-v2-to-v1" not in err  # the vendor's filter never ran


def test_errors_name_the_streams_field_not_the_destinations(short_tmp, monkeypatch, capsys):
    # 'count' (v2's name) is out of range; v1 would call it 'counter'
    path, offset = bad_stream(short_tmp, count=70000)
    rc, err, _ = restore_into_old(short_tmp, monkeypatch, capsys, path)
    assert rc == 1
    assert f"stream offset {offset}: {DG}: count: 70000" in err and "counter" not in err


def test_live_migration_validates_first_and_loads_nothing(short_tmp, monkeypatch):
    """The same over the wire: the destination refuses at stage 'validate'
    and keeps its state; the source resumes."""
    import migtree.stream as S

    src = build_of(short_tmp, "new", 2)
    device(src).state.count = 5
    dst = build_of(short_tmp, "old", 1, with_filters=True)
    before = save_tree(dst.root)
    original = S.save

    def corrupting(root, fp=None, **kw):  # the source writes a value v2 cannot hold
        tree = save_tree(root)
        device_node(tree)["irq_mask"] = 999
        return S.write_tree(fp, None, tree, kw.get("registry"), build_name=kw.get(
            "build_name"))

    monkeypatch.setattr(S, "save", corrupting)
    s, r = migrate(short_tmp, src, dst, filter_side="destination")
    monkeypatch.setattr(S, "save", original)
    assert r.outcome == "failed" and r.stage == "validate", r.error
    assert "irq_mask: 999" in r.error and "stream offset" in r.error
    assert s.outcome == "resumed"
    assert save_tree(dst.root) == before


@pytest.mark.parametrize("value", [0, 255])
def test_good_values_pass_the_first_check(short_tmp, monkeypatch, capsys, value):
    path, _ = bad_stream(short_tmp, irq_mask=value)
    rc, err, (_, after) = restore_into_old(short_tmp, monkeypatch, capsys, path)
    assert rc == 0, err
    node = device_node(after)
    assert node.get("__stash__", {}).get("dg-device-v1-v2", {}).get("irq_mask", 0) == value


def test_a_load_error_after_the_filters_carries_the_stream_offset(short_tmp, monkeypatch,
                                                                  capsys):
    """The stream's node fits its own layout, the filter runs, and the old
    device refuses the value (its check_load): the load error names the
    path with the offset of that node's section; nothing is loaded."""
    from migtree.errors import StateError

    def picky(self, state):
        if state.counter > 1000:
            raise StateError(DG, "counter", f"{state.counter} is more than this device counts")

    monkeypatch.setattr(V.DgDeviceV1, "check_load", picky, raising=False)
    path, offset = bad_stream(short_tmp, count=5000)
    rc, err, (before, after) = restore_into_old(short_tmp, monkeypatch, capsys, path)
    assert rc == 1
    assert f"stream offset {offset}: {DG}: counter: 5000 is more than this device counts" in err
    assert after is None or device_node(after) == device_node(before)
