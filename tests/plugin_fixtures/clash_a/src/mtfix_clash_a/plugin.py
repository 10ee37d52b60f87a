"""Claims type ``fixture-clash``, as its twin distribution does: the one
loaded second is rejected whole, with an error naming both."""

from __future__ import annotations

from migtree import hookimpl
from migtree.qom import Device


class Clash(Device):
    TYPE = "fixture-clash"
    ABSTRACT = False


class OnlyA(Device):
    TYPE = "fixture-clash-only-a"
    ABSTRACT = False


@hookimpl
def migtree_register_types(register):
    register(OnlyA)
    register(Clash)
