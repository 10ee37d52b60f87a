"""Every error migtree raises on purpose derives from :class:`MigtreeError`.

The CLI prints ``str(error)`` without a traceback, so each message must stand
on its own: it names the object path, the field's dotted path and the stream
offset wherever they are known.
"""

from __future__ import annotations


class MigtreeError(Exception):
    """Base class of all migtree errors."""


class StreamError(MigtreeError):
    """A stream is malformed, truncated, corrupted or exceeds a limit."""

    def __init__(self, message: str, *, offset: int | None = None, path: str | None = None):
        self.offset = offset
        self.path = path
        self.reason = message
        where = []
        if path is not None:
            where.append(path)
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{' at '.join(where)}: {message}" if where else message)


class StateError(MigtreeError):
    """A node does not fit the state declaration of the object it is for.

    ``str()`` reads ``/machine/unattached/device[0]/lapic: lvt[3]: 4294967296
    does not fit u32``.
    """

    def __init__(self, path: str, field: str, message: str):
        self.path = path
        self.field = field
        self.reason = message
        super().__init__(f"{path}: {field}: {message}" if field else f"{path}: {message}")


class RegistryError(MigtreeError):
    """A type, filter, backend or format was registered wrongly or twice."""


class UnknownTypeError(MigtreeError):
    """A stream or build names a type that no installed plugin registered."""


class PathError(MigtreeError):
    """A QOM path does not resolve."""


class PathNotFound(PathError):
    pass


class AmbiguousPath(PathError):
    def __init__(self, path: str, candidates: list[str]):
        self.candidates = candidates
        listed = ", ".join(candidates)
        super().__init__(f"partial path {path!r} is ambiguous: it matches {listed}")


class LoadError(MigtreeError):
    """Loading a tree into a build failed; nothing in the build changed."""


class FilterError(MigtreeError):
    """A filter failed, lied about its output, cycled, or no chain exists."""


class PluginError(MigtreeError):
    """A plugin failed to load or registered something invalid."""


class BuildError(MigtreeError):
    """A build configuration is invalid."""
