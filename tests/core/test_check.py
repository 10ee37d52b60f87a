"""The static check (engine.check, `migtree check`) and the dry run
(`migtree explain`): same answers, same words as a real filter pass."""

from __future__ import annotations

import copy
import json

import pytest
from test_engine_support import F, blk_filters, build_with, dest, dyn_registry, node, tree

from migtree import plugins, stream
from migtree.cli import main
from migtree.engine import Destination, apply_filters, check, describe_filter, gather_filters
from migtree.errors import FilterError


def entries(report):
    return {(e.path, e.source): (e.status, [s["filter"] for s in e.chain])
            for e in report.entries}


# -- engine.check ----------------------------------------------------------------------------


def test_check_per_type_lists_ok_filtered_and_gaps():
    src = {"types": {"a": {"version": 1}, "b": {"version": 2}, "z": {"version": 1},
                     "device": {"version": 1, "abstract": True}}}
    fs = [F("a-1-2", "a@1", "a@2"), F("a-2-3", "a@2", "a@3"), F("z-to-y", "z@1", "y@1")]
    report = check(src, dest(None, {"a": "3", "b": "1..2"}), fs)
    assert entries(report) == {
        (None, "a@1"): ("filtered", ["a-1-2", "a-2-3"]),
        (None, "b@2"): ("ok", []),
        (None, "z@1"): ("gap", []),
    }
    (gap,) = report.gaps
    assert gap.error == ("z@1 (any path): no chain of filters turns z@1 into a type the "
                         "destination registers (z is not registered there; it has no object "
                         "at this path); nearest reachable: y@1 (via z-to-y)")
    assert not report.compatible


def test_check_per_path_simulates_splits_and_merges():
    fs = list(blk_filters().values())
    src = {"types": {}, "objects": {"/": "container@1", "/dev": "virtio-blk-pci@1",
                                    "/other": "virtio-pci@1",
                                    "/other/virtio-backend": "virtio-blk@2"}}
    d = dest({"/dev": "virtio-pci@1", "/dev/virtio-backend": "virtio-blk@2",
              "/other": "virtio-blk-pci@1"}, {"virtio-blk": "1..2"})
    report = check(src, d, fs)
    assert report.compatible, report.format_text()
    assert entries(report) == {
        ("/", "container@1"): ("ok", []),
        ("/dev", "virtio-blk-pci@1"): ("filtered", ["blkpci-split"]),
        ("/dev/virtio-backend", "virtio-blk@1"): ("filtered", ["blk-v1-to-v2"]),
        ("/other", "virtio-pci@1"): ("filtered", ["blkpci-merge"]),
        ("/other/virtio-backend", "virtio-blk@2"): ("consumed", ["blk-v2-to-v1"]),
    }
    created = {e.path: e for e in report.entries}["/dev/virtio-backend"]
    assert created.wanted == "created by filter blkpci-split at /dev"
    consumed = [e for e in report.entries if e.status == "consumed"][0]
    assert consumed.wanted == "consumed by filter blkpci-merge at /other"
    text = report.format_text()
    assert "ok   /dev: virtio-blk-pci@1 -> virtio-pci@1 via blkpci-split" in text
    assert ("ok   /other/virtio-backend: virtio-blk@2 consumed by filter blkpci-merge at "
            "/other after blk-v2-to-v1 (to virtio-blk@1)") in text
    assert text.endswith("compatible")


SCENARIOS = {
    "no filter": ({"/dev": "kvm-a@1"}, {"/dev": "a@3"}, []),
    "nearest": ({"/dev": "a@1"}, {"/dev": "a@5"},
                [F("a-1-2", "a@1", "a@2"), F("a-2-b", "a@2", "b@1")]),
    "path-limited": ({"/dev": "kvm-a@1"}, {"/dev": "a@3"},
                     [F("x", "kvm-a@1", "a@3", path="/machine/**")]),
    "created child": ({"/dev": "virtio-blk-pci@1"},
                      {"/dev": "virtio-pci@1", "/dev/virtio-backend": "virtio-blk@3"},
                      list(blk_filters().values())),
    "consumed child": ({"/dev": "virtio-pci@1", "/dev/virtio-backend": "virtio-blk@3"},
                       {"/dev": "virtio-blk-pci@1"}, list(blk_filters().values())),
    "bound": ({"/dev": "a@1"}, {"/dev": "a@40"},
              [F(f"v{v}", f"a@{v}", f"a@{v + 1}") for v in range(1, 40)]),
}


def skeleton_tree(objects):
    t = tree()
    for path, tv in sorted(objects.items()):
        parts = path.strip("/").split("/")
        at = t
        for p in parts[:-1]:
            at = at[p]
        at[parts[-1]] = node(tv)
    return t


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_gap_reads_exactly_as_the_real_pass_fails(name):
    objects, wanted, fs = SCENARIOS[name]
    d = dest(wanted, {"virtio-blk": "1..2"})
    with pytest.raises(FilterError) as real:
        apply_filters(skeleton_tree(objects), d, fs)
    src = {"types": {}, "objects": {"/": "container@1", **objects}}
    report = check(src, d, fs)
    assert not report.compatible
    assert str(real.value) in [e.error for e in report.gaps]


def test_check_reports_coverage_both_ways():
    src = {"types": {}, "objects": {"/": "container@1", "/a": "a@1", "/extra": "a@1",
                                    "/extra/kid": "a@1"}}
    dump = dest({"/a": "a@1", "/b": "a@1"}, {"a": "1"}).as_schema()
    dump["objects"]["/c"] = {"type": "container", "version": 1, "stateful": False}
    report = check(src, Destination.of_schema(dump), [])
    assert report.missing == ["/b"]  # /c has no state: nothing to miss
    assert report.unconsumed == ["/extra", "/extra/kid"]
    assert not report.compatible
    text = report.format_text()
    assert "GAP  /b: the destination has an object with state here but the source provides " \
           "no node for it" in text
    assert text.endswith("NOT compatible: 3 gap(s)")


def test_check_build_to_build_uses_the_destination_builds_dynamic_filters():
    reg = dyn_registry()
    old, new = build_with("t-old", reg), build_with("t-new", reg)
    report = check(old, Destination.of_build(new), gather_filters(new))
    assert report.compatible, report.format_text()
    chain = {e.path: e.chain for e in report.entries}["/machine/peripheral/d0"]
    assert chain == [{"filter": "old-to-new-hook", "plugin": "dyn-plugin", "kind": "dynamic",
                      "from": "t-old@1", "to": "t-new@2"}]
    report = check(old, Destination.of_build(new), gather_filters(reg))
    (gap,) = report.gaps
    assert gap.error.startswith("/machine/peripheral/d0: no chain of filters turns t-old@1 "
                                "into t-new@2 (what the destination has here)")
    # a real tree of the source gives the same answer
    real = check(copy.deepcopy(stream.read_tree(stream.save(old.root, registry=reg))[1]),
                 Destination.of_build(new), gather_filters(new))
    assert real.compatible


def test_check_never_runs_a_filter():
    def boom(n, ctx):
        raise AssertionError("ran")

    report = check({"types": {"a": {"version": 1}}}, dest(None, {"a": "2"}),
                   [F("a-up", "a@1", "a@2", boom)])
    assert report.compatible


# -- the commands ------------------------------------------------------------------------------


@pytest.fixture
def installed(monkeypatch):
    """The in-process dynamic-filter plugin stands in for the installed plugins."""
    reg = dyn_registry()
    monkeypatch.setattr(plugins, "_registry", reg)
    return reg


def write_build(tmp_path, name, type_name):
    p = tmp_path / f"{name}.toml"
    p.write_text(f'[machine]\nbackend = "test"\n\n[[device]]\ntype = "{type_name}"\n'
                 'id = "d0"\n')
    return str(p)


def test_cli_check_between_builds(installed, tmp_path, capsys):
    old, new = write_build(tmp_path, "old", "t-old"), write_build(tmp_path, "new", "t-new")
    assert main(["check", "--from", old, "--to", new]) == 0
    out = capsys.readouterr().out
    assert "ok   /machine/peripheral/d0: t-old@1 -> t-new@2 via old-to-new-hook" in out
    assert out.rstrip().endswith("compatible")
    # backwards there is no filter: exit 1 with the gap
    assert main(["check", "--from", new, "--to", old, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["compatible"] is False
    (gap,) = [e for e in doc["entries"] if e["status"] == "gap"]
    assert gap["path"] == "/machine/peripheral/d0"
    assert gap["error"].startswith("/machine/peripheral/d0: no chain of filters turns "
                                   "t-new@2 into t-old@1")


def test_cli_check_with_schema_dumps_and_their_filter_declarations(installed, tmp_path, capsys):
    src = tmp_path / "a.json"
    src.write_text(json.dumps({"types": {"a": {"version": 1}}}))
    dst = tmp_path / "b.json"
    dump = {"types": {"a": {"version": 2, "min_version": 2}}}
    dst.write_text(json.dumps(dump))
    # no filters listed in B: the installed ones are used (none for a)
    assert main(["check", "--from", str(src), "--to", str(dst)]) == 1
    out = capsys.readouterr().out
    assert "lists no filters: using the 0 installed here" in out
    assert "GAP  a@1 (any path): no chain of filters turns a@1 into a@2" in out
    dump["filters"] = [describe_filter(F("a-up", "a@1", "a@2"))]
    dst.write_text(json.dumps(dump))
    assert main(["check", "--from", str(src), "--to", str(dst), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["entries"][0]["chain"][0]["filter"] == "a-up"


def test_cli_check_from_a_stream(installed, tmp_path, capsys):
    old = build_with("t-old", installed)
    s = tmp_path / "old.mig"
    s.write_bytes(stream.save(old.root, registry=installed))
    new = write_build(tmp_path, "new", "t-new")
    assert main(["check", "--from", str(s), "--to", new]) == 0
    capsys.readouterr()


def test_cli_check_refuses_what_it_cannot_read(installed, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    assert main(["check", "--from", str(bad), "--to", str(bad)]) == 1
    assert "not a build .toml, a schema dump or a stream" in capsys.readouterr().err
    bad.write_text('{"types": {"a": {"version": "x"}}}')
    assert main(["check", "--from", str(bad), "--to", str(bad)]) == 1
    assert "types.a.version: expected a non-negative integer" in capsys.readouterr().err


def test_cli_explain_is_a_dry_run(installed, tmp_path, capsys):
    old = build_with("t-old", installed)
    old.machine.child("peripheral").child("d0").state.value = 41
    s = tmp_path / "old.mig"
    s.write_bytes(stream.save(old.root, registry=installed, build_name="old"))
    new = write_build(tmp_path, "new", "t-new")
    assert main(["explain", str(s), "--to", new]) == 0
    out = capsys.readouterr().out
    assert "/machine/peripheral/d0: t-old@1 -> t-new@2 (1 filter)" in out
    assert "1. old-to-new-hook [dyn-plugin, dynamic]: t-old@1 -> t-new@2" in out
    assert "defaulted: extra=7" in out
    assert out.rstrip().endswith("would load: yes")
    assert main(["explain", str(s), "--to", new, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["error"] is None
    (app,) = doc["filters"]["applications"]
    assert app["kind"] == "dynamic" and app["defaulted"] == {"extra": 7}
    assert "/machine/peripheral/d0" in doc["load"]["loaded"]


def test_cli_explain_shows_what_happened_before_a_failure(installed, tmp_path, capsys):
    new = build_with("t-new", installed)
    s = tmp_path / "new.mig"
    s.write_bytes(stream.save(new.root, registry=installed))
    old = write_build(tmp_path, "old", "t-old")
    assert main(["explain", str(s), "--to", old]) == 1
    out = capsys.readouterr().out
    assert "FILTERS FAIL: /machine/peripheral/d0: no chain of filters turns t-new@2 into " \
           "t-old@1" in out


def test_cli_explain_reports_what_would_not_load(installed, tmp_path, capsys):
    old = build_with("t-old", installed)
    s = tmp_path / "old.mig"
    s.write_bytes(stream.save(old.root, registry=installed))
    p = tmp_path / "two.toml"
    p.write_text('[machine]\nbackend = "test"\n\n[[device]]\ntype = "t-old"\nid = "d0"\n\n'
                 '[[device]]\ntype = "t-old"\nid = "d1"\n')
    assert main(["explain", str(s), "--to", str(p)]) == 1
    out = capsys.readouterr().out
    assert "LOAD FAILS: /machine/peripheral/d1: the build has an object with state here but " \
           "the tree has no node for it" in out
    assert out.rstrip().endswith("would load: no")


def test_cli_explain_asks_each_device_as_the_load_would(installed, tmp_path, capsys,
                                                      monkeypatch):
    from test_engine_support import NewDev

    from migtree.errors import MigtreeError

    def refuse(self, state):
        raise MigtreeError(f"value {state.value} is not for this device")

    monkeypatch.setattr(NewDev, "check_load", refuse)
    old = build_with("t-old", installed)
    s = tmp_path / "old.mig"
    s.write_bytes(stream.save(old.root, registry=installed))
    new = write_build(tmp_path, "new", "t-new")
    assert main(["explain", str(s), "--to", new]) == 1
    out = capsys.readouterr().out
    assert "LOAD FAILS: /machine/peripheral/d0: value 0 is not for this device" in out
