"""Shared test configuration.

Hypothesis never enforces a deadline here: a timing assertion would make the
suite depend on the machine's load, which the brief forbids.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, max_examples=60, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, max_examples=25)
settings.register_profile("thorough", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _real_part(nodeid: str) -> str | None:
    for part in ("kvm", "qemu"):
        if nodeid.startswith(f"tests/{part}/") or f"/{part}/" in nodeid.split("::")[0]:
            return part
    return None


def pytest_terminal_summary(terminalreporter):
    """Say how many tests ran against the real parts (CI must show that the
    KVM and QEMU tests ran, not skipped)."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for rep in terminalreporter.stats.get(outcome, []):
            part = _real_part(getattr(rep, "nodeid", ""))
            if part and (rep.when == "call" or outcome in ("skipped", "error")):
                counts.setdefault(part, {}).setdefault(outcome, 0)
                counts[part][outcome] += 1
    for part, c in sorted(counts.items()):
        what = ", ".join(f"{n} {o}" for o, n in sorted(c.items()))
        terminalreporter.write_line(f"real {part.upper()} tests: {what}")
