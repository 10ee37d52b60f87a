"""The safety analysis: what the guest sees differently when its machine
type changes, and whether the target can honour what it has seen.

Filled in below; :func:`analyse` is called by :class:`QemuTarget` for the
machine node (refusals become misfits) and for the notes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def analyse(tree: Mapping[str, Any], target: Any) -> list[Any]:
    return []


def notes(tree: Mapping[str, Any], target: Any) -> list[str]:
    return []
