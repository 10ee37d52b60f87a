"""The split/merge pair: declarations, round trips both ways (hypothesis over
the state declarations), agreement with the combined device's own
composition, and clear errors for nodes it cannot translate."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migtree import engine
from migtree.errors import FilterError
from migtree.filters import FilterContext
from migtree.testing import assert_round_trips
from migtree.visitor import node_to_state, state_to_node, strategy_for
from migtree_virtio.combined import compose
from migtree_virtio.filters import MERGE, PAIR, SPLIT, merge_virtio_pci, split_virtio_blk_pci
from migtree_virtio.state import VirtioBlkPciState, VirtioBlkState, VirtioPciState

PATH = "/machine/peripheral/vblk0"


def ctx(flt):
    return FilterContext(path=PATH, filter=flt)


def combined_node(state):
    return {"__type__": "virtio-blk-pci", "__version__": 1,
            **state_to_node(VirtioBlkPciState, state, 1)}


def split_node(pci, blk):
    return {"__type__": "virtio-pci", "__version__": 1, **state_to_node(VirtioPciState, pci, 1),
            "virtio-backend": {"__type__": "virtio-blk", "__version__": 1,
                               **state_to_node(VirtioBlkState, blk, 1)}}


def _fields(node):
    return {k: v for k, v in node.items() if not k.startswith("__") and k != "virtio-backend"}


def test_declarations():
    assert str(SPLIT.match) == "virtio-blk-pci@1" and str(SPLIT.produces) == "virtio-pci@1"
    assert {k: str(v) for k, v in SPLIT.creates.items()} == {"virtio-backend": "virtio-blk@1"}
    assert str(MERGE.produces) == "virtio-blk-pci@1"
    assert {k: str(v) for k, v in MERGE.consumes.items()} == {"virtio-backend": "virtio-blk@1"}
    a, b = PAIR.filters()
    assert a.pair == b.pair == PAIR.name


@settings(max_examples=150)
@given(strategy_for(VirtioBlkPciState))
def test_combined_split_merge_is_identity(state):
    node = combined_node(state)
    original = copy.deepcopy(node)
    mid = split_virtio_blk_pci(copy.deepcopy(node), ctx(SPLIT))
    # the split halves pass the strict input visitors of their types
    node_to_state(VirtioPciState, _fields(mid), 1, PATH)
    node_to_state(VirtioBlkState, _fields(mid["virtio-backend"]), 1, PATH + "/virtio-backend")
    assert merge_virtio_pci(mid, ctx(MERGE)) == original


@settings(max_examples=150)
@given(strategy_for(VirtioPciState), strategy_for(VirtioBlkState))
def test_split_merge_split_is_identity(pci, blk):
    node = split_node(pci, blk)
    original = copy.deepcopy(node)
    mid = merge_virtio_pci(copy.deepcopy(node), ctx(MERGE))
    node_to_state(VirtioBlkPciState, _fields(mid), 1, PATH)
    assert split_virtio_blk_pci(mid, ctx(SPLIT)) == original


@settings(max_examples=100)
@given(strategy_for(VirtioPciState), strategy_for(VirtioBlkState))
def test_merge_agrees_with_the_combined_device(pci, blk):
    """The filter and the combined device's own composition are written
    independently; they must say the same."""
    merged = merge_virtio_pci(split_node(pci, blk), ctx(MERGE))
    assert merged == combined_node(compose(pci, blk))


def test_testing_kit_round_trip(registry):
    assert_round_trips(registry, "virtio-blk-pci-split", "virtio-blk-pci-merge",
                       "virtio-blk-pci@1", path=PATH, max_examples=50)
    assert_round_trips(registry, "virtio-blk-pci-merge", "virtio-blk-pci-split",
                       "virtio-pci@1", path=PATH, max_examples=50)


def test_stash_travels_with_the_pair():
    node = combined_node(VirtioBlkPciState())
    node["__stash__"] = {"other-pair": {"x": 1}, "virtio-backend.__stash__": {"p": {"y": 2}}}
    mid = split_virtio_blk_pci(copy.deepcopy(node), ctx(SPLIT))
    assert mid["__stash__"] == {"other-pair": {"x": 1}}
    assert mid["virtio-backend"]["__stash__"] == {"p": {"y": 2}}
    assert merge_virtio_pci(mid, ctx(MERGE)) == node


def test_other_children_stay_with_the_pci_function():
    node = combined_node(VirtioBlkPciState())
    node["extra"] = {"__type__": "thing", "__version__": 1}
    mid = split_virtio_blk_pci(copy.deepcopy(node), ctx(SPLIT))
    assert mid["extra"] == node["extra"]
    assert merge_virtio_pci(mid, ctx(MERGE)) == node


@pytest.mark.parametrize("mutate, match", [
    (lambda n: n.update(mystery=1), "does not know"),
    (lambda n: n.pop("isr"), "no field 'isr'"),
    (lambda n: n["rq"].append({"vq": 0, "index": 1, "in_addr": [1, 2], "in_len": [3],
                               "out_addr": [], "out_len": []}), "2 in addresses but 1"),
    (lambda n: n["vq"].append({"num": 1}), "lacks fields"),
    (lambda n: n.update(vq=5), "not an array"),
])
def test_split_refuses_what_it_cannot_translate(mutate, match):
    node = combined_node(VirtioBlkPciState())
    mutate(node)
    with pytest.raises(FilterError, match=match):
        split_virtio_blk_pci(node, ctx(SPLIT))


def test_merge_refuses_a_non_blk_backend():
    node = split_node(VirtioPciState(), VirtioBlkState())
    node["virtio-backend"]["__type__"] = "virtio-net"
    with pytest.raises(FilterError, match="virtio-net"):
        merge_virtio_pci(node, ctx(MERGE))
    node = split_node(VirtioPciState(), VirtioBlkState())
    del node["virtio-backend"]
    with pytest.raises(FilterError, match="nothing"):
        merge_virtio_pci(node, ctx(MERGE))


def test_engine_explains_the_split(tmp_path, registry):
    """Through the engine, against a real split build: one application at the
    device's path, creating the backend child."""
    from virtio_helpers import make_build, make_image

    from migtree import tree

    img = make_image(str(tmp_path / "d.img"))
    src_root, _m, src = make_build("combined", img)
    dst_root, _dm, dst = make_build("split", img)
    t = tree.save_tree(src_root)
    report = engine.apply_filters(t, dst_root, [PAIR], explain=True)
    apps = report.as_dict()["applications"]
    assert [(a["filter"], a["path"]) for a in apps] == [("virtio-blk-pci-split", PATH)]
    assert t["machine"]["peripheral"]["vblk0"]["virtio-backend"]["__type__"] == "virtio-blk"
    src.vdev.close()
    dst.vdev.close()


def test_no_chain_without_the_pair(tmp_path):
    from virtio_helpers import make_build, make_image

    from migtree import tree

    img = make_image(str(tmp_path / "d.img"))
    src_root, _m, src = make_build("combined", img)
    dst_root, _dm, dst = make_build("split", img)
    with pytest.raises(FilterError):
        engine.apply_filters(tree.save_tree(src_root), dst_root, [])
    src.vdev.close()
    dst.vdev.close()


@given(st.data())
@settings(max_examples=20)
def test_rq_strategy_is_consistent(data):
    from migtree_virtio.state import OldRequest

    r = data.draw(strategy_for(OldRequest))
    assert len(r.in_addr) == len(r.in_len) and len(r.out_addr) == len(r.out_len)
