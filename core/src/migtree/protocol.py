"""The migration protocol's control messages, declared in one place.

Every control frame a peer sends (HELLO, OFFER, PASS, END, LOADED, FAILED,
COMMIT, DONE, ABORT) is checked against its declaration here before any
code reads a field of it, on both sides and in every phase
(:func:`validate`, called from :meth:`migtree.transport.Channel.decode`):
required keys, no unknown keys, types, integer ranges, text and list sizes,
and the nesting depth of the free-form reports. A message that does not
match is a :class:`migtree.transport.ProtocolError` naming the message and
the field -- before COMMIT that makes the source resume; nothing after COMMIT
reads a peer's message except DONE.

To add a field, add one line to its message's entry in :data:`MESSAGES`
(``required`` or ``optional``).

``session`` fields carry the nonces that make a recorded session useless:
the destination's HELLO names a fresh one that OFFER, PASS, END and COMMIT
must echo; the source's OFFER names its own that LOADED and DONE must echo
(checked in :mod:`migtree.migration`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

import attrs

#: a session nonce: 128 random bits as 32 lower-case hex digits
NONCE_RE = re.compile(r"[0-9a-f]{32}")
MAX_TEXT = 1 << 16  # names, errors
MAX_ITEMS = 1 << 20  # list entries and map entries of the reports
MAX_DEPTH = 48  # nesting of the free-form reports (check, load, schema dumps)


def new_nonce() -> str:
    return secrets.token_hex(16)


class Invalid(Exception):
    """A message does not match its declaration (where, what)."""


@attrs.frozen
class Text:
    max_length: int = MAX_TEXT
    pattern: re.Pattern[str] | None = None

    def check(self, v: Any, where: str) -> None:
        if type(v) is not str:
            raise Invalid(f"{where} must be text, not {_tname(v)}")
        if len(v) > self.max_length:
            raise Invalid(f"{where} is {len(v)} characters, above {self.max_length}")
        if self.pattern is not None and not self.pattern.fullmatch(v):
            raise Invalid(f"{where} is not of the form {self.pattern.pattern}")


@attrs.frozen
class Int:
    lo: int = 0
    hi: int = (1 << 63) - 1

    def check(self, v: Any, where: str) -> None:
        if type(v) is not int:
            raise Invalid(f"{where} must be an integer, not {_tname(v)}")
        if not self.lo <= v <= self.hi:
            raise Invalid(f"{where} is {v}, outside {self.lo}..{self.hi}")


@attrs.frozen
class Number:
    lo: float = 0.0
    hi: float = 1e12

    def check(self, v: Any, where: str) -> None:
        if type(v) not in (int, float) or not self.lo <= v <= self.hi:
            raise Invalid(f"{where} must be a number from {self.lo} to {self.hi}")


@attrs.frozen
class Boolean:
    def check(self, v: Any, where: str) -> None:
        if type(v) is not bool:
            raise Invalid(f"{where} must be true or false, not {_tname(v)}")


@attrs.frozen
class Null:
    def check(self, v: Any, where: str) -> None:
        if v is not None:
            raise Invalid(f"{where} must be null")


@attrs.frozen
class OneOf:
    options: tuple[Any, ...]

    def check(self, v: Any, where: str) -> None:
        errors = []
        for o in self.options:
            try:
                o.check(v, where)
                return
            except Invalid as e:
                errors.append(str(e))
        raise Invalid(" or ".join(errors))


@attrs.frozen
class ListOf:
    item: Any
    max_items: int = MAX_ITEMS

    def check(self, v: Any, where: str) -> None:
        if type(v) is not list:
            raise Invalid(f"{where} must be a list, not {_tname(v)}")
        if len(v) > self.max_items:
            raise Invalid(f"{where} has {len(v)} entries, above {self.max_items}")
        for i, x in enumerate(v):
            self.item.check(x, f"{where}[{i}]")


@attrs.frozen
class MapOf:
    value: Any
    max_items: int = MAX_ITEMS

    def check(self, v: Any, where: str) -> None:
        if type(v) is not dict:
            raise Invalid(f"{where} must be a map, not {_tname(v)}")
        if len(v) > self.max_items:
            raise Invalid(f"{where} has {len(v)} entries, above {self.max_items}")
        for k, x in v.items():
            Text().check(k, f"{where} key")
            self.value.check(x, f"{where}[{k!r}]")


@attrs.frozen
class Record:
    """A map with declared keys: ``required`` ones must be there, no key
    outside ``required`` and ``optional`` may be."""

    required: Mapping[str, Any]
    optional: Mapping[str, Any] = attrs.field(factory=dict)

    def check(self, v: Any, where: str) -> None:
        if type(v) is not dict:
            raise Invalid(f"{where} must be a map, not {_tname(v)}")
        missing = [k for k in self.required if k not in v]
        if missing:
            raise Invalid(f"{where} lacks {', '.join(missing)}")
        unknown = sorted(k for k in v if k not in self.required and k not in self.optional)
        if unknown:
            raise Invalid(f"{where} has unknown keys {unknown[:5]}")
        for k, x in v.items():
            spec = self.required.get(k) or self.optional[k]
            spec.check(x, f"{where}.{k}")


@attrs.frozen
class Json:
    """Any JSON value (a free-form report), nested at most ``max_depth``
    deep, every text and container within the sizes above."""

    max_depth: int = MAX_DEPTH

    def check(self, v: Any, where: str) -> None:
        todo = [(v, 0)]
        while todo:
            x, depth = todo.pop()
            if depth > self.max_depth:
                raise Invalid(f"{where} is nested deeper than {self.max_depth}")
            t = type(x)
            if t is dict:
                if len(x) > MAX_ITEMS:
                    raise Invalid(f"{where} holds a map above {MAX_ITEMS} entries")
                for k, y in x.items():
                    if len(k) > MAX_TEXT:
                        raise Invalid(f"{where} holds a key above {MAX_TEXT} characters")
                    todo.append((y, depth + 1))
            elif t is list:
                if len(x) > MAX_ITEMS:
                    raise Invalid(f"{where} holds a list above {MAX_ITEMS} entries")
                todo.extend((y, depth + 1) for y in x)
            elif t is str:
                if len(x) > MAX_TEXT * 16:
                    raise Invalid(f"{where} holds a text above {MAX_TEXT * 16} characters")
            elif t not in (int, float, bool, type(None)):
                raise Invalid(f"{where} holds a {t.__name__}")


def _tname(v: Any) -> str:
    return {dict: "a map", list: "a list", str: "text", int: "an integer", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(v), type(v).__name__)


NAME = Text(max_length=1024)
NONCE = Text(pattern=NONCE_RE)
SHA256 = Text(pattern=re.compile(r"[0-9a-f]{64}"))
#: who ran the filters of a migration (OFFER)
FILTER_SIDE = Text(pattern=re.compile(r"destination|source"))
PLUGINS = MapOf(OneOf((Text(max_length=256), Null())), max_items=4096)
PROTOCOL_VERSION = Int(0, (1 << 31) - 1)
ERROR = Text(max_length=1 << 20)
STAGE = OneOf((NAME, Null()))

#: one filter application in LOADED (migtree.engine.Application.as_dict);
#: the source prints these after COMMIT, so their shape is checked before it
APPLICATION = Record(
    required={"filter": NAME, "plugin": STAGE, "kind": NAME, "path": Text(max_length=4096),
              "before": NAME, "after": NAME, "reason": Text(max_length=8192)},
    optional={"diff": Json(), "stashed": Json(), "restored": Json(), "defaulted": Json()})

#: Every control message: kind name -> declaration. One line per field.
MESSAGES: dict[str, Record] = {
    "HELLO": Record(required={
        "protocol": PROTOCOL_VERSION,
        "build": NAME,
        "backend": NAME,
        "plugins": PLUGINS,
        "destination": MapOf(Json()),  # a schema dump, checked by Destination.of_schema
        "filters": ListOf(Json()),  # declarations, checked by filters_from_declarations
        "session": NONCE,  # the destination's nonce: OFFER, END and COMMIT echo it
    }, optional={
        # what this destination can take beyond stop-and-copy ("precopy");
        # a destination without it is sent the whole stream after the pause
        "features": ListOf(NAME, max_items=64),
    }),
    "OFFER": Record(required={
        "protocol": PROTOCOL_VERSION,
        "build": NAME,
        "backend": NAME,
        "plugins": PLUGINS,
        "session": NONCE,  # the destination's, echoed
        "source_session": NONCE,  # the source's: LOADED and DONE echo it
        "filtered_by": FILTER_SIDE,  # who ran the filters (migration.OFFER_KEYS)
    }, optional={
        # pre-copy: RAM comes page by page before the stream (PASS frames);
        # only sent to a destination whose HELLO lists the "precopy" feature
        "precopy": Record(required={"path": Text(max_length=4096),
                                    "size": Int(1), "page_size": Int(4096, 4096)}),
    }),
    # the end of one pre-copy pass: the DATA frames since the previous PASS
    # (or OFFER) were page runs, ``runs`` of them, ``bytes`` of pages in all;
    # ``final``: the source is paused and the stream follows
    # ``sha256``: of the pass's DATA payloads in order (as the stream's
    # footer, a flipped byte in guest RAM is caught)
    "PASS": Record(required={"pass": Int(1, 1 << 20), "runs": Int(), "bytes": Int(),
                             "final": Boolean(), "sha256": SHA256, "session": NONCE}),
    "END": Record(required={"bytes": Int(), "session": NONCE}),
    "LOADED": Record(required={
        "filters": Record(required={"destination": NAME, "nodes": Int(),
                                    "applications": ListOf(APPLICATION),
                                    "chains": Json()}),
        "load": Json(),
        "stream_bytes": Int(),
        "timings": MapOf(Number(), max_items=64),
        "session": NONCE,
    }),
    "FAILED": Record(required={"stage": STAGE, "error": ERROR}, optional={"session": NONCE}),
    "ABORT": Record(required={"error": ERROR}, optional={"check": Json(), "session": NONCE}),
    "COMMIT": Record(required={"session": NONCE}),
    "DONE": Record(required={"session": NONCE}),
}


def validate(kind_name: str, msg: Any) -> None:
    """Check ``msg`` (decoded JSON) against the declaration of ``kind_name``;
    raise :class:`Invalid` naming the field."""
    decl = MESSAGES.get(kind_name)
    if decl is None:
        raise Invalid(f"{kind_name} is not a control message")
    decl.check(msg, kind_name)


class Session:
    """The validator one side of a migration installs on its channel
    (:attr:`migtree.transport.Channel.validator`): every control message
    checked against :data:`MESSAGES`, and the ``session`` of the kinds in
    :attr:`expect` compared with this session's nonces."""

    def __init__(self, version: int) -> None:
        self.version = version
        #: kind name -> the nonce its ``session`` must carry
        self.expect: dict[str, str] = {}

    def __call__(self, kind: int, msg: Any) -> None:
        from .transport import KIND_NAMES, ProtocolError

        name = KIND_NAMES.get(kind, str(kind))
        if name in ("HELLO", "OFFER") and isinstance(msg, dict) \
                and msg.get("protocol") != self.version:
            # first, so a peer of another version hears that, not a schema complaint
            raise ProtocolError(f"the peer speaks migration protocol {msg.get('protocol')!r}, "
                                f"this side speaks protocol {self.version}")
        try:
            validate(name, msg)
        except Invalid as e:
            raise ProtocolError(f"the peer's {name} message is malformed: {e}") from None
        want = self.expect.get(name)
        if want is not None and msg.get("session", want) != want:
            raise ProtocolError(f"the peer's {name} belongs to another session (it names "
                                f"{msg.get('session')!r}, this one is {want}): a replayed or "
                                "crossed connection is refused")
