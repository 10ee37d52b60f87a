"""The module the ``migtree`` entry point names: hook implementations only."""

from __future__ import annotations

from migtree import hookimpl

from .device import ExampleDevice
from .filters import PAIR


@hookimpl
def migtree_register_types(register):
    register(ExampleDevice)


@hookimpl
def migtree_register_filters(register):
    register(PAIR)
