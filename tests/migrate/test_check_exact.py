"""``migtree check`` is exact: its verdict for a (source, destination) pair
is what a migration between them then does, whichever side's filters run.

Every ordered pair of the builds below -- the README pair (combined and
split virtio-blk), and the vendor device of ``dg_vendor`` in release 2,
release 1, release 1 with the pair backported, release 2 without its
filters (version downgrades and upgrades) -- is checked as a user on the
source's host would check it: ``check --from A.toml --to B.json``, where
B.json is what ``migtree schema --build B.toml --json`` wrote on B's host
(B's own registry). Then the migration really runs, each side with its own
registry, and the outcome must match the verdict.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dg_vendor as V
import pytest
from mig_helpers import write_build
from mig_pairs import make_pair
from test_downgrade import migrate

from migtree.build import load_build
from migtree.commands.check import check_paths
from migtree.commands.schema import describe, describe_build

#: name -> (release, with_filters, kind)
BUILDS = {
    "pair-src": (2, None, "pair-src"),
    "pair-dst": (2, None, "pair-dst"),
    "dg-new": (2, None, "dg"),
    "dg-old": (1, None, "dg"),
    "dg-old-backport": (1, True, "dg"),
    "dg-new-nofilters": (2, False, "dg"),
}


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any, Path]]:
    """name -> (build file, its registry, its schema dump)."""
    d = tmp_path_factory.mktemp("exact")
    pair = make_pair(d, src_backend="userspace")
    out = {}
    for name, (release, with_filters, kind) in BUILDS.items():
        reg = V.release(release, with_filters=with_filters)
        if kind == "dg":
            path = write_build(d, name, backend="userspace", cpus=1,
                               devices=[{"type": "dg-device", "id": "dg0"}])
        else:
            path = d / f"{name}.toml"
            shutil.copyfile(pair.src if kind == "pair-src" else pair.dst, path)
        dump = d / f"{name}.json"
        dump.write_text(json.dumps({**describe(reg), **describe_build(str(path), reg)}))
        out[name] = (path, reg, dump)
    return out


@pytest.mark.parametrize("dst", list(BUILDS))
@pytest.mark.parametrize("src", list(BUILDS))
def test_check_verdict_is_the_migration_outcome(builds, short_tmp: Path, src: str,
                                                dst: str) -> None:
    a_path, a_reg, _ = builds[src]
    b_path, b_reg, b_dump = builds[dst]
    report = check_paths(str(a_path), str(b_dump), a_reg)
    s, r = migrate(short_tmp, load_build(a_path, a_reg), load_build(b_path, b_reg))
    assert report.compatible == (s.outcome == "committed"), (report.format_text(), s.error,
                                                             r.error)
    if report.compatible:
        assert r.outcome == "committed", r.error
        assert s.filtered_by == report.filtered_by
    else:
        assert s.outcome == "refused" and r.outcome == "refused"
    if a_reg is b_reg or BUILDS[src][:2] == BUILDS[dst][:2]:
        # one host: checking against the build file says the same
        assert check_paths(str(a_path), str(b_path), a_reg).compatible == report.compatible


def test_the_downgrade_verdicts(builds) -> None:
    """The cases the pairs above contain, spelled out: the verdicts are not
    all one way."""
    def verdict(a: str, b: str) -> tuple[bool, str | None]:
        rep = check_paths(str(builds[a][0]), str(builds[b][2]), builds[a][1])
        return rep.compatible, rep.filtered_by

    assert verdict("dg-new", "dg-old") == (True, "source")
    assert verdict("dg-old", "dg-new") == (True, "destination")
    assert verdict("dg-new", "dg-old-backport") == (True, "destination")
    assert verdict("dg-new-nofilters", "dg-old") == (False, None)
    assert verdict("pair-src", "pair-dst") == (True, "destination")
    assert verdict("pair-src", "dg-new")[0] is False


@pytest.mark.parametrize("dst", list(BUILDS))
@pytest.mark.parametrize("src", list(BUILDS))
def test_check_of_a_stream_is_what_restore_does(builds, tmp_path: Path, src: str,
                                                dst: str) -> None:
    """On B's host: ``check --from A.mt --to B.toml`` against ``restore
    B.toml A.mt`` (B's filters only: a stream has no other side)."""
    from migtree import stream
    from migtree.engine import Destination, apply_filters, gather_filters
    from migtree.errors import MigtreeError
    from migtree.validate import validate_tree

    a_path, a_reg, _ = builds[src]
    b_path, b_reg, _ = builds[dst]
    data = stream.save(load_build(a_path, a_reg).root, registry=a_reg)
    (tmp_path / "a.mt").write_bytes(data)
    report = check_paths(str(tmp_path / "a.mt"), str(b_path), b_reg)
    b = load_build(b_path, b_reg)
    header, tree = stream.read_tree(data)
    try:  # what `migtree restore` does
        validate_tree(tree, b_reg, header=header)
        apply_filters(tree, Destination.of_build(b), gather_filters(b))
        stream.load(tree, b.root, registry=b_reg)
        restored = True
    except MigtreeError:
        restored = False
    assert report.compatible == restored, report.format_text()
