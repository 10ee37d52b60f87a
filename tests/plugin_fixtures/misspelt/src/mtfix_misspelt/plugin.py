"""Implements ``migtree_register_type`` (no s): check_pending must refuse it."""

from __future__ import annotations

from migtree import hookimpl
from migtree.qom import Device


class Misspelt(Device):
    TYPE = "fixture-misspelt"
    ABSTRACT = False


@hookimpl
def migtree_register_type(register):
    register(Misspelt)
