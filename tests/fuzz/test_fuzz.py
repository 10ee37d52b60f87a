"""The fuzzing suite's short run (the long one is run_fuzz.py, docs/security.md):
a few structure-aware cases per surface, every case kept in found/ replayed,
and the harness's own classification checked."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzzlib

TARGETS = fuzzlib.targets()
FOUND = sorted(fuzzlib.FOUND.glob("*/*.bin"))


def _check(target: fuzzlib.Target, data: bytes) -> None:
    out = fuzzlib.run_case(target, data)
    if out.kind in fuzzlib.FAILING:
        p = fuzzlib.keep(target, data, out)
        pytest.fail(f"{target.name}: {out.kind} (kept as {p}):\n{out.detail}")


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(rnd=st.randoms(use_true_random=False))
def test_short_run(name, rnd):
    target = TARGETS[name]
    _check(target, target.generate(rnd))


@pytest.mark.parametrize("path", FOUND, ids=[f"{p.parent.name}/{p.stem}" for p in FOUND])
def test_found_cases_stay_fixed(path):
    _check(TARGETS[path.parent.name], path.read_bytes())


# -- the harness classifies what it sees --------------------------------------------------------

class Refused(Exception):
    pass


def _target(run) -> fuzzlib.Target:
    return fuzzlib.Target("probe", "probe", lambda: [b""], lambda r, d: d, run, (Refused,))


def _refuse(_):
    raise Refused("no")


def _crash(_):
    raise KeyError("x")


def _allocate(_):
    keep = []
    while True:
        keep.append(bytearray(64 << 20))


def _sleep(_):
    time.sleep(60)


def _spin(_):
    while True:
        pass


@pytest.mark.parametrize("run, kind", [(lambda _: None, "accepted"), (_refuse, "clean"),
                                       (_crash, "traceback"), (_allocate, "blow-up"),
                                       (_sleep, "hang"), (_spin, "hang")],
                         ids=["accepted", "clean", "traceback", "blow-up", "hang", "spin"])
def test_the_harness_classifies(run, kind):
    out = fuzzlib.run_case(_target(run), b"x", seconds=1.0, memory=128 << 20)
    assert out.kind == kind, out
    if kind == "traceback":
        assert "KeyError" in out.detail


def test_wrong_success_is_a_failure():
    def run(_):
        raise fuzzlib.WrongSuccess("written back differently")
    out = fuzzlib.run_case(_target(run), b"x")
    assert out.kind == "traceback" and "wrong success" in out.detail
