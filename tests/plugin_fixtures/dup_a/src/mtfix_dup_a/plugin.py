"""Declares entry point ``fixture-dup``, as its twin distribution does."""

from __future__ import annotations

from migtree import hookimpl
from migtree.qom import Device


class Dup(Device):
    TYPE = "fixture-dup-a"
    ABSTRACT = False


@hookimpl
def migtree_register_types(register):
    register(Dup)
