"""Migrating down to an older build: the side that has the chain runs it.

The vendor's release 2 (``dg_vendor``) has ``dg-device@2`` and the filter
pair; release 1 has ``dg-device@1`` and no filter. Each side is a build
loaded with its own release's registry (two environments in one process),
connected over a real unix socket, each side in its own thread.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import dg_vendor as V
import pytest
from mig_helpers import write_build

from migtree import migration as M
from migtree.build import load_build
from migtree.transport import Address, Listener, connect
from migtree.tree import iter_object_nodes, save_tree

GUARD = 60  # seconds: a failure guard against a hang, never a measurement


def build_of(d: Path, name: str, release: int, **kw: Any) -> Any:
    path = write_build(d, name, backend="userspace", cpus=1,
                       devices=[{"type": "dg-device", "id": "dg0"}])
    return load_build(path, V.release(release, **kw))


def device(build: Any) -> Any:
    return next(o for o in build.root.walk() if o.TYPE == "dg-device")


def device_node(tree: dict[str, Any]) -> dict[str, Any]:
    return next(n for _, n in iter_object_nodes(tree) if n["__type__"] == "dg-device")


def migrate(d: Path, src: Any, dst: Any, *, source_listens: bool = False,
            filter_side: str = "auto") -> tuple[M.SourceResult, M.DestResult]:
    """Run one migration, the listening side in a thread."""
    listener = Listener(Address.parse(f"unix:{d / 'm.sock'}"))
    out: dict[str, Any] = {}

    def listening() -> None:
        with listener.accept(timeout=GUARD) as chan:
            if source_listens:
                out["src"] = M.send(src, chan, timeout=GUARD, progress=False,
                                    filter_side=filter_side)
            else:
                out["dst"] = M.receive(dst, chan, timeout=GUARD, progress=False)

    t = threading.Thread(target=listening)
    t.start()
    try:
        with connect(str(listener.address), timeout=GUARD) as chan:
            if source_listens:
                out["dst"] = M.receive(dst, chan, timeout=GUARD, progress=False)
            else:
                out["src"] = M.send(src, chan, timeout=GUARD, progress=False,
                                    filter_side=filter_side)
    finally:
        t.join(GUARD)
        listener.close()
    assert not t.is_alive()
    return out["src"], out["dst"]


@pytest.mark.parametrize("source_listens", [False, True], ids=["dst-listens", "src-listens"])
def test_new_to_old_with_the_filter_only_on_the_new_side(short_tmp: Path,
                                                         source_listens: bool) -> None:
    src = build_of(short_tmp, "new", 2)
    dst = build_of(short_tmp, "old", 1)
    assert not [f for f in dst.registry.filters if f.startswith("dg-")]
    dev = device(src)
    dev.state.ctrl, dev.state.count, dev.state.irq_mask = 0xABCD, 517, 0
    s, r = migrate(short_tmp, src, dst, source_listens=source_listens)
    assert (s.outcome, r.outcome) == ("committed", "committed"), (s.error, r.error)
    assert s.filtered_by == "source" and r.filtered_by == "source"
    assert [a["filter"] for a in s.source_filters["applications"]] == ["dg-device-v2-to-v1"]
    assert r.filters["applications"] == []  # the old side ran nothing
    got = device(dst).state
    assert (got.ctrl, got.counter) == (0xABCD, 517)


def test_old_destination_refuses_what_nobody_can_filter(short_tmp: Path) -> None:
    # release 2 without its filters installed: no side has a chain
    src = build_of(short_tmp, "new", 2, with_filters=False)
    dst = build_of(short_tmp, "old", 1)
    before = device(dst).state.counter
    s, r = migrate(short_tmp, src, dst)
    assert s.outcome == "refused" and r.outcome == "refused"
    assert "dg-device@2" in s.error and "source's own filters" in s.error
    assert device(dst).state.counter == before


@pytest.mark.parametrize("irq_mask", [0, 9])
def test_either_side_filtering_gives_the_same_loaded_state(short_tmp: Path,
                                                           irq_mask: int) -> None:
    # a 1.x release that backported the pair: both sides could filter
    states = {}
    for side in ("source", "destination"):
        d = short_tmp / side
        d.mkdir()
        src = build_of(d, "new", 2)
        dst = build_of(d, "old", 1, with_filters=True)
        dev = device(src)
        dev.state.ctrl, dev.state.count, dev.state.irq_mask = 7, 300, irq_mask
        s, r = migrate(d, src, dst, filter_side=side)
        assert (s.outcome, r.outcome) == ("committed", "committed"), (s.error, r.error)
        assert s.filtered_by == side == r.filtered_by
        states[side] = save_tree(dst.root)
    assert states["source"] == states["destination"]
    assert device_node(states["source"])["counter"] == 300


def test_auto_prefers_the_destination_when_it_has_the_chain(short_tmp: Path) -> None:
    src = build_of(short_tmp, "new", 2)
    dst = build_of(short_tmp, "old", 1, with_filters=True)
    s, r = migrate(short_tmp, src, dst)
    assert s.outcome == "committed", s.error
    assert s.filtered_by == "destination" and s.source_filters is None
    assert [a["filter"] for a in r.filters["applications"]] == ["dg-device-v2-to-v1"]


def test_cli_source_listens_and_destination_connects(short_tmp: Path) -> None:
    """``send --listen`` / ``serve --connect``: the same protocol, the
    connection turned around; the destination ends with the source's state
    (the README pair: combined virtio-blk-pci to split virtio-pci)."""
    from mig_helpers import Proc, migtree_cmd, wait_for_file
    from mig_pairs import make_pair

    pair = make_pair(short_tmp, src_backend="userspace")
    ready = short_tmp / "src.ready"
    src = Proc(migtree_cmd("send", str(pair.src), "--listen", f"unix:{short_tmp / 's.sock'}",
                           "--ready-file", str(ready), "--json", "--timeout", "60"),
               short_tmp, "src")
    address = wait_for_file(ready, src)
    dst = Proc(migtree_cmd("serve", str(pair.dst), "--connect", address, "--json",
                           "--timeout", "60"), short_tmp, "dst")
    assert dst.wait() == 0, dst.stderr
    assert src.wait() == 0, src.stderr
    s, d = src.json(), dst.json()
    assert s["outcome"] == d["outcome"] == "committed"
    assert s["filtered_by"] == d["filtered_by"] == "destination"
    assert "virtio-blk-pci-split" in [a["filter"] for a in d["filters"]["applications"]]
    assert "destination connected from" in src.stderr


def _use_registry(monkeypatch: pytest.MonkeyPatch, reg: Any) -> None:
    """Run a command in-process as if ``reg`` were what is installed."""
    import migtree.plugins as P

    monkeypatch.setattr(P, "_registry", reg)


@pytest.mark.parametrize("target_kind", ["dump", "pinned-build"])
def test_convert_target_filters_a_stream_down_offline(short_tmp: Path, monkeypatch,
                                                      capsys, target_kind: str) -> None:
    """On the new host: ``convert NEW.mt --target OLD -o OLD.mt``, OLD being
    the dump the old host wrote, or a build file here that pins the type to
    the old version (a build file is read with the plugins installed here);
    on the old host, ``restore`` loads it with no filter of its own."""
    from migtree import cli, stream
    from migtree.commands.schema import describe, describe_build
    from migtree.migration import dump_toml

    old_reg, new_reg = V.release(1), V.release(2)
    src = build_of(short_tmp, "new", 2)
    dev = device(src)
    dev.state.ctrl, dev.state.count = 41, 1234
    (short_tmp / "new.mt").write_bytes(stream.save(src.root, registry=src.registry))
    old_build = short_tmp / "old.toml"
    write_build(short_tmp, "old", backend="userspace", cpus=1,
                devices=[{"type": "dg-device", "id": "dg0"}])
    if target_kind == "dump":  # written on the old host
        target = short_tmp / "old.json"
        target.write_text(json.dumps({**describe(old_reg),
                                      **describe_build(str(old_build), old_reg)}))
    else:
        target = short_tmp / "old-pinned.toml"
        target.write_text(old_build.read_text() + dump_toml({"pins": {"dg-device": 1}}))
    _use_registry(monkeypatch, new_reg)
    rc = cli.main(["convert", str(short_tmp / "new.mt"), "--target", str(target), "-o",
                   str(short_tmp / "old.mt"), "--explain"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "dg-device-v2-to-v1" in out
    tree = stream.read_tree(str(short_tmp / "old.mt"))[1]
    node = device_node(tree)
    assert (node["__version__"], node["counter"], node["ctrl"]) == (1, 1234, 41)
    _use_registry(monkeypatch, old_reg)
    dst = load_build(old_build, old_reg)
    stream.load(tree, dst.root, registry=old_reg)
    assert device(dst).state.counter == 1234


def test_convert_target_refuses_when_no_chain_and_writes_nothing(short_tmp: Path,
                                                                 monkeypatch, capsys) -> None:
    from migtree import cli, stream
    from migtree.commands.schema import describe, describe_build

    src = build_of(short_tmp, "new", 2)
    (short_tmp / "new.mt").write_bytes(stream.save(src.root, registry=src.registry))
    old_build = write_build(short_tmp, "old", backend="userspace", cpus=1,
                            devices=[{"type": "dg-device", "id": "dg0"}])
    # here only release 2 without its filters: no chain down
    _use_registry(monkeypatch, V.release(2, with_filters=False))
    # the target build is read with the registry here, so describe it by a dump
    (short_tmp / "old.json").write_text(json.dumps(
        {**describe(V.release(1)), **describe_build(str(old_build), V.release(1))}))
    rc = cli.main(["convert", str(short_tmp / "new.mt"), "--target",
                   str(short_tmp / "old.json"), "-o", str(short_tmp / "old.mt")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "dg-device@2" in err and "nothing written" in err
    assert not (short_tmp / "old.mt").exists()


# -- the stash through a build that loads and saves ----------------------------------------------

@pytest.mark.parametrize("irq_mask", [0, 0x3C])
def test_new_old_new_through_a_loading_old_release_is_exact(short_tmp: Path,
                                                            irq_mask: int) -> None:
    """A -> B -> A live, B an older release that really loads the state and
    saves it again: the stash the way down left rides in B's object and its
    save, so A gets its own state back exactly."""
    a = build_of(short_tmp, "new", 2)
    st = device(a).state
    st.ctrl, st.count, st.irq_mask = 0xBEEF, 4000, irq_mask
    before = save_tree(a.root)
    b = build_of(short_tmp, "old", 1)
    s, r = migrate(short_tmp, a, b)
    assert (s.outcome, r.outcome) == ("committed", "committed"), (s.error, r.error)
    dg = "/machine/peripheral/dg0"
    if irq_mask:
        assert r.load["kept"][dg] == {"dg-device-v1-v2": {"irq_mask": irq_mask}}
    else:
        assert dg not in r.load["kept"]
    a2 = build_of(short_tmp, "new2", 2)
    s, r = migrate(short_tmp, b, a2)
    assert (s.outcome, r.outcome) == ("committed", "committed"), (s.error, r.error)
    assert save_tree(a2.root) == before


def test_a_stash_is_dropped_when_the_loading_build_changed_the_state(short_tmp: Path,
                                                                     caplog) -> None:
    """The rule (docs/filters.md 2.17): the stash is written back only while
    the device's state is the one it was loaded with; once B's device
    changed it, the stash may no longer fit, so it is dropped -- said in a
    warning -- and the way back up takes the defaults."""
    a = build_of(short_tmp, "new", 2)
    st = device(a).state
    st.ctrl, st.count, st.irq_mask = 1, 2, 0x3C
    b = build_of(short_tmp, "old", 1)
    assert migrate(short_tmp, a, b)[1].outcome == "committed"
    device(b).state.counter = 3  # B's device ran
    a2 = build_of(short_tmp, "new2", 2)
    with caplog.at_level("WARNING"):
        s, r = migrate(short_tmp, b, a2)
    assert r.outcome == "committed", r.error
    assert "state changed since it was loaded" in caplog.text
    assert "dg-device-v1-v2.irq_mask" in caplog.text
    got = device(a2).state
    assert (got.ctrl, got.count, got.irq_mask) == (1, 3, 0)


def test_restore_prints_what_was_stashed_and_what_a_later_save_carries(short_tmp: Path,
                                                                       monkeypatch,
                                                                       capsys) -> None:
    from migtree import cli, stream
    from migtree.engine import Destination

    new = build_of(short_tmp, "new", 2)
    st = device(new).state
    st.count, st.irq_mask = 8, 5
    old_path = write_build(short_tmp, "old", backend="userspace", cpus=1,
                           devices=[{"type": "dg-device", "id": "dg0"}])
    old_reg = V.release(1)
    tree, _ = M.filter_on_source(new, Destination.of_build(load_build(old_path, old_reg)))
    (short_tmp / "down.mt").write_bytes(stream.write_tree(None, None, tree, new.registry))
    _use_registry(monkeypatch, old_reg)
    assert cli.main(["restore", str(old_path), str(short_tmp / "down.mt"),
                     "--dump-state", str(short_tmp / "after.mt")]) == 0
    out = capsys.readouterr().out
    assert "stash kept (a later save writes it back" in out
    assert "/machine/peripheral/dg0: dg-device-v1-v2.irq_mask=5" in out
    # ...and the later save (--dump-state) carries it
    node = device_node(stream.read_tree(str(short_tmp / "after.mt"))[1])
    assert node["__stash__"] == {"dg-device-v1-v2": {"irq_mask": 5}}
    # a stream without a stash says so
    (short_tmp / "plain.mt").write_bytes(stream.save(load_build(old_path, old_reg).root,
                                                     registry=old_reg))
    assert cli.main(["restore", str(old_path), str(short_tmp / "plain.mt")]) == 0
    assert "stash: none" in capsys.readouterr().out


def test_a_stash_above_the_bound_is_refused_with_nothing_loaded(short_tmp: Path) -> None:
    from migtree import stream
    from migtree.errors import LoadError
    from migtree.tree import MAX_KEPT_STASH

    old = build_of(short_tmp, "old", 1)
    tree = save_tree(old.root)
    device_node(tree)["counter"] = 9
    device_node(tree)["__stash__"] = {"dg-device-v1-v2": {"junk": "x" * (MAX_KEPT_STASH + 1)}}
    with pytest.raises(LoadError, match=r"dg0: __stash__: the stash is \d+ bytes, above"):
        stream.load(tree, old.root, registry=old.registry)
    assert device(old).state.counter == 0


@pytest.mark.parametrize("source_listens", [False, True], ids=["dst-listens", "src-listens"])
def test_cli_new_to_old_two_environments(short_tmp: Path, source_listens: bool) -> None:
    """``migtree send`` in an environment with release 2 (device v2 and the
    filter pair), ``migtree serve`` in one with release 1 (device v1, no
    filter), as two processes over a unix socket, whoever listens."""
    from mig_helpers import Proc, child_cmd, wait_for_file

    for name in ("new", "old"):
        write_build(short_tmp, name, backend="userspace", cpus=1,
                    devices=[{"type": "dg-device", "id": "dg0"}])
    sock, ready = f"unix:{short_tmp / 'm.sock'}", short_tmp / "ready"
    common = ["--json", "--timeout", "60", "--no-progress"]
    new = ["--dg-release", "2", "--", "send", "new.toml", *common]
    old = ["--dg-release", "1", "--", "serve", "old.toml", "--dump-state", "old.final.mt",
           *common]
    if source_listens:
        first = Proc(child_cmd(*new, "--listen", sock, "--ready-file", str(ready)),
                     short_tmp, "src")
        second_args = [*old, "--connect", wait_for_file(ready, first)]
        second = Proc(child_cmd(*second_args), short_tmp, "dst")
        src, dst = first, second
    else:
        first = Proc(child_cmd(*old, "--listen", sock, "--ready-file", str(ready)),
                     short_tmp, "dst")
        second = Proc(child_cmd(*new, "--to", wait_for_file(ready, first)), short_tmp, "src")
        src, dst = second, first
    assert src.wait() == 0, src.stderr
    assert dst.wait() == 0, dst.stderr
    s, d = src.json(), dst.json()
    assert s["filtered_by"] == d["filtered_by"] == "source"
    assert [a["filter"] for a in s["source_filters"]["applications"]] == ["dg-device-v2-to-v1"]
    assert d["filters"]["applications"] == []
    from migtree import stream

    node = device_node(stream.read_tree(str(short_tmp / "old.final.mt"))[1])
    assert node["__version__"] == 1
