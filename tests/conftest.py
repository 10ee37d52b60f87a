"""Shared test configuration.

Hypothesis never enforces a deadline here: a timing assertion would make the
suite depend on the machine's load, which the brief forbids.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, max_examples=60, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, max_examples=25)
settings.register_profile("thorough", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


#: the markers of tests that run against a real part (pyproject's markers)
REAL_PARTS = ("kvm", "qemu")


def pytest_collection_modifyitems(config, items):
    """Remember which tests carry a real-part marker: the summary counts
    those, not every test that lives in a directory named after the part
    (tests/qemu has pure-Python tests too)."""
    config.stash[_REAL_TESTS] = {item.nodeid: part for item in items for part in REAL_PARTS
                                 if item.get_closest_marker(part) is not None}


_REAL_TESTS = pytest.StashKey[dict]()


def pytest_terminal_summary(terminalreporter):
    """Say how many tests ran against the real parts (CI must show that the
    KVM and QEMU tests ran, not skipped)."""
    real = terminalreporter.config.stash.get(_REAL_TESTS, {})
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for rep in terminalreporter.stats.get(outcome, []):
            part = real.get(getattr(rep, "nodeid", ""))
            if part and (rep.when == "call" or outcome in ("skipped", "error")):
                counts.setdefault(part, {}).setdefault(outcome, 0)
                counts[part][outcome] += 1
    for part, c in sorted(counts.items()):
        what = ", ".join(f"{n} {o}" for o, n in sorted(c.items()))
        terminalreporter.write_line(f"real {part.upper()} tests: {what}")
