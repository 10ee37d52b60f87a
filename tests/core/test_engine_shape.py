"""Misfits (docs/filters.md 2.15): a destination that loads a node's
type@version but not one of its optional parts, and the filters that keep
type@version and declare the parts they drop or restore."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migtree.engine import Destination, Misfit, apply_filters
from migtree.errors import FilterError
from migtree.filters import Filter, FilterPair

STASH = "__stash__"


def _node(**fields):
    return {"__type__": "dev", "__version__": 3, **fields}


def _tree(dev):
    return {"__type__": "container", "__version__": 1, "dev": dev}


def _shape(known: set[str]):
    """A destination that knows the optional parts in *known*: anything else
    must go; a stashed part it knows can come back."""

    def shape(path, node):
        if node.get("__type__") != "dev":
            return []
        out = [Misfit(k, "absent", f"the destination does not know part {k!r}")
               for k in sorted(node) if k.startswith("opt_") and k not in known]
        for k in sorted((node.get(STASH) or {}).get("parts", {})):
            if k in known:
                out.append(Misfit(k, "present", f"the destination knows {k!r} again"))
        return out

    return shape


def _dest(known=()):
    return Destination(types={"container": (1, 1), "dev": (1, 3)}, shape=_shape(set(known)))


def _dropper(key: str) -> FilterPair:
    def drop(node, ctx):
        node.setdefault(STASH, {}).setdefault(ctx.stash_key, {})[key] = node.pop(key)
        return node

    def restore(node, ctx):
        stash = node.get(STASH, {})
        node[key] = stash["parts"].pop(key)
        if not stash["parts"]:
            del stash["parts"]
        if not stash:
            del node[STASH]
        return node

    return FilterPair("parts",
                      Filter(f"drop-{key}", "dev@3", "dev@3", drop, drops=(key,)),
                      Filter(f"restore-{key}", "dev@3", "dev@3", restore, restores=(key,)))


def test_a_part_the_destination_does_not_know_is_dropped_by_the_filter_that_declares_it():
    t = _tree(_node(a=1, opt_x=5))
    report = apply_filters(t, _dest(), [_dropper("opt_x"), _dropper("opt_y")], explain=True)
    assert "opt_x" not in t["dev"]
    assert t["dev"][STASH] == {"parts": {"opt_x": 5}}
    assert [a.filter for a in report.applications] == ["drop-opt_x"]
    assert report.applications[0].stashed == {"parts.opt_x": 5}


def test_without_a_filter_that_drops_it_the_error_names_path_part_and_reason():
    t = _tree(_node(opt_z=1))
    with pytest.raises(FilterError) as e:
        apply_filters(t, _dest(), [_dropper("opt_x")])
    assert str(e.value).startswith("/dev: dev@3: the destination does not know part 'opt_z'")
    assert "no filter for dev@3 drops 'opt_z'" in str(e.value)


def test_filters_keeping_type_and_version_do_not_run_on_a_node_that_fits():
    t = _tree(_node(opt_x=1))
    report = apply_filters(t, _dest(known={"opt_x"}), [_dropper("opt_x")])
    assert t["dev"]["opt_x"] == 1
    assert report.applications == []


def test_a_stashed_part_comes_back_where_the_destination_knows_it():
    t = _tree(_node(a=1, **{STASH: {"parts": {"opt_x": 7}}}))
    report = apply_filters(t, _dest(known={"opt_x"}), [_dropper("opt_x")])
    assert t["dev"] == _node(a=1, opt_x=7)
    assert [a.filter for a in report.applications] == ["restore-opt_x"]


def test_a_stashed_part_without_a_restoring_filter_stays_in_the_stash():
    t = _tree(_node(**{STASH: {"parts": {"opt_q": 7}}}))
    report = apply_filters(t, _dest(known={"opt_q"}), [_dropper("opt_x")])
    assert t["dev"][STASH] == {"parts": {"opt_q": 7}}
    assert report.applications == []


def test_a_filter_that_declares_a_drop_and_keeps_the_part_is_caught():
    liar = Filter("liar", "dev@3", "dev@3", lambda n, c: n, drops=("opt_x",))
    with pytest.raises(FilterError, match="declared it drops 'opt_x' but produced a node"):
        apply_filters(_tree(_node(opt_x=1)), _dest(), [liar])


def test_each_filter_keeping_type_and_version_runs_at_most_once_per_node():
    # two filters that keep undoing each other: an error, not a loop
    calls = []

    def swap(old, new):
        def func(node, ctx):
            calls.append(old)
            node[new] = node.pop(old)
            return node
        return func

    one = Filter("one", "dev@3", "dev@3", swap("opt_x", "opt_y"), drops=("opt_x",))
    two = Filter("two", "dev@3", "dev@3", swap("opt_y", "opt_x"), drops=("opt_y",))
    with pytest.raises(FilterError, match=r"drops 'opt_x' \(already applied: one, two\)"):
        apply_filters(_tree(_node(opt_x=1)), _dest(), [one, two])
    assert calls == ["opt_x", "opt_y"]


def test_a_version_chain_runs_first_then_the_parts_are_fitted():
    up = Filter("dev-2-3", "dev@2", "dev@3", lambda n, c: {**n, "__version__": 3})
    t = _tree({"__type__": "dev", "__version__": 2, "opt_x": 1})
    dest = Destination(types={"container": (1, 1), "dev": (3, 3)}, shape=_shape(set()))
    report = apply_filters(t, dest, [up, _dropper("opt_x")])
    assert [a.filter for a in report.applications] == ["dev-2-3", "drop-opt_x"]
    assert "opt_x" not in t["dev"]


@given(st.dictionaries(st.sampled_from(["opt_a", "opt_b", "opt_c"]), st.integers(), min_size=0),
       st.sets(st.sampled_from(["opt_a", "opt_b", "opt_c"])))
def test_dropping_to_a_narrow_destination_and_back_is_the_identity(parts, known):
    pairs = [_dropper(k) for k in ("opt_a", "opt_b", "opt_c")]
    original = _node(a=1, **parts)
    t = _tree(dict(original))
    apply_filters(t, _dest(known), pairs)
    assert set(k for k in t["dev"] if k.startswith("opt_")) == set(parts) & known
    apply_filters(t, _dest({"opt_a", "opt_b", "opt_c"}), pairs)
    assert t["dev"] == original
