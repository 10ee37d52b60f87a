"""migtree: migrate VM device state between emulator builds that do not match.

A vendor needs ``hookimpl`` for hooks, :mod:`migtree.fields` to declare state,
:mod:`migtree.qom` for object types and :mod:`migtree.filters` / :mod:`migtree.ops`
for filters.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .hookspecs import hookimpl

try:
    __version__ = _version("migtree")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["hookimpl", "__version__"]
