"""Installed-looking distributions made in a temporary directory, for fast
in-process plugin-loading tests: a real ``*.dist-info`` (METADATA and
entry_points.txt) and the plugin module beside it, found by
:mod:`importlib.metadata` exactly as pip-installed ones are.

The tests that install real wheels into a real virtual environment are in
``tests/core/test_plugins_installed.py``; these are their fast companions.
"""

from __future__ import annotations

import importlib.metadata as md
import itertools
import sys
import textwrap
from pathlib import Path

_serial = itertools.count()


class FakeDists:
    """Make distributions under ``root`` (which the caller puts on sys.path)."""

    def __init__(self, root: Path):
        self.root = root
        self.dists: list[md.Distribution] = []

    def add(self, name: str, source: str, *, version: str = "1.0",
            ep_name: str | None = None, extra_eps: dict[str, str] | None = None
            ) -> md.Distribution:
        """A distribution ``name`` whose entry point (named ``ep_name``,
        default the distribution name) is a fresh module holding ``source``.
        Returns the distribution; its module name is unique per call so
        sys.modules never serves a stale one."""
        module = f"mtfake_{name.replace('-', '_')}_{next(_serial)}"
        (self.root / f"{module}.py").write_text(textwrap.dedent(source))
        info = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        eps = {ep_name or name: module, **(extra_eps or {})}
        (info / "entry_points.txt").write_text(
            "[migtree]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
        dist = md.PathDistribution(info)
        self.dists.append(dist)
        return dist

    def entry_points(self, *, core: bool = True) -> list[md.EntryPoint]:
        """The entry points of every distribution made so far, plus (by
        default) the installed core's."""
        eps: list[md.EntryPoint] = []
        if core:
            eps.extend(ep for ep in md.distribution("migtree").entry_points
                       if ep.group == "migtree")
        for d in self.dists:
            eps.extend(ep for ep in d.entry_points if ep.group == "migtree")
        return eps

    def forget_modules(self) -> None:
        for name in [m for m in sys.modules if m.startswith("mtfake_")]:
            del sys.modules[name]


#: the smallest well-behaved plugin: one type
ONE_TYPE = """
    from migtree import hookimpl
    from migtree.qom import Device

    class Thing(Device):
        TYPE = "{type}"
        ABSTRACT = False

    @hookimpl
    def migtree_register_types(register):
        register(Thing)
"""
