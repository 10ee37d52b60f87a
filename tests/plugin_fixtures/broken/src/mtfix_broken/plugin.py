"""Fails to import: the error must name this distribution and the cause."""

from __future__ import annotations

import mtfix_no_such_module  # noqa: F401

from migtree import hookimpl


@hookimpl
def migtree_register_types(register):
    raise AssertionError("never reached")
