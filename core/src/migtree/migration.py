"""Live migration between two builds: the protocol both sides speak over a
:mod:`migtree.transport` channel, with a pre-flight check and a commit.

The destination (``migtree serve``) listens; the source (``migtree send``)
connects. Then, frame by frame (docs/cli.md has the picture)::

    destination                                   source
    HELLO {types, objects, filters, plugins} ──►  pre-flight: who filters (plan_filters):
                                                  the destination's filters (declared in
                                                  HELLO), else the source's own
                                             ◄──  ABORT {check report}   (incompatible: the
                                                  source never paused; both sides stop)
                                             ◄──  OFFER {build, plugins, filtered_by}
                                                  ── source PAUSED ──
                                                  (filtered_by "source": the source drives
                                                  its state to the destination's types and
                                                  versions with its own filters first)
                                             ◄──  DATA ... DATA END {bytes}  (the stream)
    read_tree (checksum), validate (each node against
    its own type@version), filters, load_tree
    (all-or-nothing; nothing runs yet)
    LOADED {filters applied, load report}   ──►
      or FAILED {stage, error}              ──►   source RESUMES, nothing lost
                                             ◄──  COMMIT   (the source will never resume)
    DONE                                    ──►
    destination RUNS                              source stays stopped

Who filters (docs/cli.md, "Who runs the filters"): an older destination by
definition lacks the filter the newer release ships, so the side that has a
chain runs it. The rule, decided by the source on HELLO
(:func:`plan_filters`), is the same for ``send``, ``migrate`` and ``check``:

1. when the destination's filters (its HELLO declarations) bring every
   object of the source to what the destination loads, the source sends its
   state as it is and the destination filters (it knows its own build best:
   its dynamic filters, its composition);
2. otherwise, when the source's own (static, installed) filters bring every
   object there, the source filters before sending: the stream already holds
   the destination's types and versions, so every node is acceptable to the
   destination and its engine applies nothing -- a destination that knows
   nothing of this rule (an older release) loads it as any stream;
3. otherwise the migration is refused before anything is paused.

Filter chains are deterministic functions of the node (the engine picks the
shortest chain by ``(-priority, name)``), so when both sides could run the
chain the loaded state does not depend on which did (tested:
``tests/migrate/test_downgrade.py``). ``filter_side`` (``send --filter-on``)
forces one side for tests and operators.

Failure rules (each has a test in ``tests/migrate``):

* Before COMMIT is on the wire the source owns the VM: any error -- the
  pre-flight check, a broken connection, a FAILED, a timeout, the
  destination dying -- resumes the source with the state it had.
* The destination loads all-or-nothing (:func:`migtree.tree.load_tree`), so
  a failed load changed nothing. After LOADED it waits for COMMIT; if the
  connection ends instead (the source was killed, the cut came after
  LOADED), it puts back the state it had before the migration (a snapshot
  taken before HELLO, off the pause path) and does not run.
* A COMMIT the source could not hand to the kernel in full never reached the
  destination whole, so the source resumes. A COMMIT that went out but was
  not answered by DONE leaves the outcome unknown: the source must not run
  (the destination may be running) and cannot know it is; it stays stopped
  and keeps its state in a stream file so nothing is lost
  (:attr:`SourceResult.outcome` ``"unconfirmed"``). This is the one case that
  needs an operator, as in every two-party commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import struct
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from . import protocol
from . import transport as tp
from .errors import MigtreeError
from .memory import PAGE_SIZE
from .progress import Progress

log = logging.getLogger("migtree.migration")

#: the migration protocol's version, in HELLO; a mismatch is refused up front
#: (2: every message declared in migtree.protocol, with session nonces;
#: OFFER's ``filtered_by`` says who ran the filters)
PROTOCOL = 2
#: ``filter_side`` values: ``auto`` is the rule in the module docstring
FILTER_SIDES = ("auto", "destination", "source")
#: what OFFER carries besides the session nonces (declared, with their
#: types, in migtree.protocol.MESSAGES): ``filtered_by`` is
#: ``"destination"`` or ``"source"``; a stream the source filtered loads at
#: the destination like any other (the source keeps its own filter report,
#: SourceResult.source_filters).
OFFER_KEYS = ("protocol", "build", "backend", "plugins", "filtered_by")
#: seconds either side waits for the next frame before it gives up (a
#: failure guard against a peer that hangs, not a tuning knob)
DEFAULT_TIMEOUT = 120.0
#: what a destination of this release announces in HELLO ``features``
FEATURES = ("precopy",)
#: the pause pre-copy aims for when nothing says otherwise (QEMU's default)
DEFAULT_DOWNTIME_LIMIT = 0.3
#: pre-copy passes before the source pauses whatever is left (convergence bound)
DEFAULT_MAX_PASSES = 30
#: a pre-copy page frame: how many runs, then each run's guest-physical
#: address and length, then the runs' pages one after the other (many small
#: runs in one frame: a guest dirties scattered pages, and a frame each would
#: cost a syscall and a Python round on both sides per page)
_RUN_COUNT = struct.Struct(">I")
_RUN_ENTRY = struct.Struct(">QI")
#: runs one page frame carries at most
MAX_RUNS_PER_FRAME = 4096

Events = Callable[..., None]


class MigrationError(MigtreeError):
    """A migration did not happen; the message says why and who kept the VM."""


class PreflightRefused(MigrationError):
    """The static check found that the destination cannot take this source."""

    def __init__(self, message: str, report: Any = None) -> None:
        self.report = report
        super().__init__(message)


@attrs.define
class PrecopyOptions:
    """How a pre-copy migration converges (docs/cli.md, ``migtree send``).

    Pass 1 sends all of RAM while the source runs; each later pass sends the
    pages written since the one before. After each pass the source
    estimates the pause as dirty bytes / measured bandwidth; once that is
    within ``downtime_limit`` it pauses, sends the last dirty pages and the
    device state. After ``max_passes`` it pauses whatever the estimate (the
    report says what it expected). With ``auto_converge``, from pass
    ``throttle_after`` on, every pass that did not converge raises the
    throttle handed to :func:`send` (QEMU's auto-converge: 20% first, +10%
    a pass, at most 99%).
    """

    downtime_limit: float = DEFAULT_DOWNTIME_LIMIT  # seconds
    max_bandwidth: float | None = None  # bytes per second on the wire; None: no cap
    max_passes: int = DEFAULT_MAX_PASSES
    auto_converge: bool = False
    throttle_after: int = 3
    throttle_initial: float = 0.2
    throttle_increment: float = 0.1
    throttle_max: float = 0.99

    def __attrs_post_init__(self) -> None:
        if not self.downtime_limit > 0:
            raise ValueError(f"the downtime limit must be positive, got {self.downtime_limit}")
        if self.max_bandwidth is not None and not self.max_bandwidth > 0:
            raise ValueError(f"the bandwidth cap must be positive, got {self.max_bandwidth}")
        if self.max_passes < 1:
            raise ValueError(f"at least one pre-copy pass, got {self.max_passes}")


# -- results ----------------------------------------------------------------------------

@attrs.define
class SourceResult:
    """What happened on the source.

    ``outcome``: ``"committed"`` (the destination runs the VM; the source
    stopped), ``"refused"`` (pre-flight said no; the source never paused),
    ``"resumed"`` (something failed; the source runs on with its state),
    ``"unconfirmed"`` (COMMIT sent, no DONE: the source stays stopped, its
    state saved in ``kept_state``).
    """

    outcome: str = "pending"
    error: str | None = None
    #: the pre-flight check (engine.CheckReport.as_dict())
    check: dict[str, Any] | None = None
    #: what the destination said it had (from HELLO): build, plugins
    destination: dict[str, Any] = attrs.Factory(dict)
    #: what the destination reported in LOADED: filters, load, timings
    loaded: dict[str, Any] | None = None
    #: which side ran the filters: "destination" or "source" (None when refused)
    filtered_by: str | None = None
    #: the source's FilterReport.as_dict() when it filtered
    source_filters: dict[str, Any] | None = None
    stream_bytes: int = 0
    wire_bytes_sent: int = 0
    wire_bytes_received: int = 0
    #: seconds from pausing the source to the destination's LOADED (the VM
    #: ran nowhere in between); ``None`` when the source never paused
    paused_s: float | None = None
    #: seconds spent writing the stream (pre_save, encode, send)
    save_s: float | None = None
    #: where the state was kept when the outcome is unconfirmed
    kept_state: str | None = None
    #: "precopy" (RAM sent in passes while the source ran) or "stop-and-copy"
    mode: str = "stop-and-copy"
    #: pre-copy's account: every pass (bytes, pages, seconds, dirty rate,
    #: bandwidth), converged or not, the expected pause, the throttle
    precopy: dict[str, Any] | None = None
    #: why this migration did not do what was asked (a destination without
    #: pre-copy, a build without guest RAM)
    mode_notes: list[str] = attrs.Factory(list)

    @property
    def committed(self) -> bool:
        return self.outcome in ("committed", "unconfirmed")

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class DestResult:
    """What happened on the destination.

    ``outcome``: ``"committed"`` (loaded and told to run), ``"refused"``
    (the source's pre-flight said no; nothing was sent), ``"failed"`` (the
    stream, a filter or the load failed: nothing changed), ``"rolled-back"``
    (loaded, but the source never committed: the previous state is back).
    """

    outcome: str = "pending"
    error: str | None = None
    stage: str | None = None
    source: dict[str, Any] = attrs.Factory(dict)
    check: dict[str, Any] | None = None
    #: engine.FilterReport.as_dict(): every application, chains per path
    filters: dict[str, Any] | None = None
    #: which side ran the filters (from OFFER): "destination" or "source"
    filtered_by: str | None = None
    #: tree.LoadReport.as_dict()
    load: dict[str, Any] | None = None
    stream_bytes: int = 0
    wire_bytes_received: int = 0
    timings: dict[str, float] = attrs.Factory(dict)
    #: pre-copy passes received: [{pass, runs, bytes}] (None: stop-and-copy)
    precopy: list[dict[str, Any]] | None = None

    @property
    def committed(self) -> bool:
        return self.outcome == "committed"

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


# -- what the destination tells the source -----------------------------------------------

def describe_destination(build: Any) -> dict[str, Any]:
    """HELLO's payload: the destination's composition (every object, its
    type and the versions it loads), every filter it would apply (static and
    this build's dynamic ones, as declarations), and its plugins."""
    from .engine import Destination, describe_filter, gather_filters

    dest = Destination.of_build(build)
    return {
        "protocol": PROTOCOL,
        "build": build.name,
        "backend": build.backend.name,
        "plugins": {name: rec.version for name, rec in sorted(build.registry.plugins.items())
                    if rec.error is None},
        "destination": dest.as_schema(),
        "filters": [describe_filter(f) for f in gather_filters(build)],
        "features": list(FEATURES),
    }


def _hello_destination(hello: dict[str, Any]) -> tuple[Any, list[Any]]:
    """The destination and its filter declarations, from HELLO."""
    from .engine import Destination, SchemaDumpError, filters_from_declarations

    if hello.get("protocol") != PROTOCOL:
        raise PreflightRefused(f"the destination speaks migration protocol "
                               f"{hello.get('protocol')!r}, this source speaks {PROTOCOL}")
    try:
        dest = Destination.of_schema(hello.get("destination") or {},
                                     name=str(hello.get("build") or "destination"))
        filters = filters_from_declarations(hello.get("filters") or [])
    except (SchemaDumpError, KeyError, TypeError, ValueError, AttributeError) as e:
        # protocol.MESSAGES checked HELLO's shape; the schema dump inside it is
        # checked here, and any way it is wrong is a refusal, never a traceback
        raise PreflightRefused(f"the destination's HELLO is malformed: {e}") from None
    return dest, filters


def preflight(build: Any, hello: dict[str, Any]) -> Any:
    """The static check with the destination's filters alone: does every
    object of this build reach what the destination has at its path? Returns
    the engine's CheckReport. (:func:`plan_filters` is the whole rule.)"""
    from .engine import check

    dest, filters = _hello_destination(hello)
    return check(build, dest, filters)


@attrs.define
class FilterPlan:
    """Which side runs the filters of one migration, and the check that
    decided it (the report of the chosen side; when neither side can, the
    destination's, with the source's gaps as notes)."""

    side: str | None  # "destination" | "source" | None (refused)
    report: Any
    destination: Any = None

    def __attrs_post_init__(self) -> None:
        self.report.filtered_by = self.side

    @property
    def compatible(self) -> bool:
        return self.side is not None


def source_filters(build: Any) -> list[Any]:
    """The filters a source can run: the static ones installed with it (its
    build's dynamic filters are for streams coming *in*)."""
    from .engine import gather_filters

    return gather_filters(build.registry)


def _source_check(source: Any, dest: Any, own_filters: list[Any],
                  own_registry: Any) -> Any:
    """The check for the source's own filters, plus what only the source
    side needs: it writes the filtered tree itself, so every ``type@version``
    a chain ends at must be one it can describe in the stream's header."""
    from .engine import CheckEntry, check
    from .stream import schema_entry

    report = check(source, dest, own_filters)
    if own_registry is None or not report.compatible:
        return report
    for e in list(report.entries):
        if not e.chain:
            continue
        t, _, v = e.chain[-1]["to"].rpartition("@")
        if schema_entry(t, int(v), own_registry) is None:
            report.entries.append(CheckEntry(
                e.path, e.source, "gap", wanted=e.chain[-1]["to"],
                error=f"{e.path}: the source's filters reach {t}@{v}, but the source does "
                      f"not know that version's fields (no HISTORY entry), so it cannot "
                      "write it"))
    return report


def plan_filters(source: Any, destination: Any, dest_filters: list[Any],
                 own_filters: list[Any], filter_side: str = "auto", *,
                 own_registry: Any = None) -> FilterPlan:
    """The rule of the module docstring: the destination's filters when
    they reach, else the source's own, else refused. ``source`` is what
    :func:`migtree.engine.check` takes as a source (a build, a schema dump,
    a tree); ``filter_side`` forces a side (``auto`` applies the rule).
    ``own_registry`` (the source's, when known) must describe every
    ``type@version`` the source's filters produce."""
    from .engine import Destination, check

    if filter_side not in FILTER_SIDES:
        raise MigtreeError(f"filter side {filter_side!r}: expected one of "
                           f"{', '.join(FILTER_SIDES)}")
    dest = Destination.of(destination)
    if filter_side == "source":
        report = _source_check(source, dest, own_filters, own_registry)
        report.notes.append("the source runs the filters (forced)")
        return FilterPlan("source" if report.compatible else None, report, dest)
    report = check(source, dest, dest_filters)
    if report.compatible or filter_side == "destination":
        if filter_side == "destination":
            report.notes.append("the destination runs the filters (forced)")
        return FilterPlan("destination" if report.compatible else None, report, dest)
    mine = _source_check(source, dest, own_filters, own_registry)
    if mine.compatible:
        mine.notes.append("the destination's filters do not reach it; the source's do: the "
                          "source filters before sending")
        return FilterPlan("source", mine, dest)
    report.notes.append("the source's own filters do not reach it either:")
    report.notes.extend("  " + ln for ln in mine.format_text().splitlines()
                        if ln.startswith("GAP"))
    return FilterPlan(None, report, dest)


def filter_on_source(build: Any, destination: Any, *, explain: bool = False,
                     ) -> tuple[dict[str, Any], Any]:
    """The source's state as a tree, driven to ``destination`` with the
    source's own filters: ``(tree, FilterReport)``. Only memory is touched."""
    from .engine import apply_filters
    from .tree import save_tree

    tree = save_tree(build.root)
    report = apply_filters(tree, destination, source_filters(build), explain=explain)
    return tree, report


# -- source -------------------------------------------------------------------------------

def _noop(*_a: Any, **_k: Any) -> None:
    return None


def send(build: Any, chan: tp.Channel, *, timeout: float = DEFAULT_TIMEOUT,
         pause: Callable[[], None] = _noop, resume: Callable[[], None] = _noop,
         events: Events = _noop, progress: bool = True,
         keep_dir: str | None = None, filter_side: str = "auto",
         precopy: PrecopyOptions | None = None,
         throttle: Callable[[float], None] | None = None) -> SourceResult:
    """Migrate ``build`` over ``chan`` (connected to a destination).

    ``pause()`` is called before the state is written, ``resume()`` when the
    migration failed after that (the source runs on); neither is called
    when pre-flight refuses. ``events(name, **info)`` observes the steps:
    ``hello``, ``checked``, ``paused``, ``sent``, ``loaded``, ``committed``,
    ``done``, ``resumed``. ``filter_side`` says who runs the filters
    (:data:`FILTER_SIDES`; ``auto`` is the rule in the module docstring).

    ``precopy`` (:class:`PrecopyOptions`) moves guest RAM in passes before
    ``pause()`` while the caller's guest keeps writing it (the destination
    must announce the feature; otherwise the note says so and it is
    stop-and-copy); ``throttle(fraction)`` is how auto-converge slows that
    guest (0.0: full speed again). ``None``: stop-and-copy.
    Never raises for a failed migration: the result says what happened;
    raises only for programming errors.
    """
    res = SourceResult()
    ram_obj: Any = None  # the guest-memory object pre-copy moves, when it does
    session = protocol.Session(PROTOCOL)
    chan.validator = session
    source_nonce = protocol.new_nonce()
    # what the destination sends after OFFER must name this source's session
    for name in ("LOADED", "DONE", "FAILED"):
        session.expect[name] = source_nonce
    try:
        kind, hello = chan.recv_msg(timeout)
        if kind == tp.FAILED:
            raise MigrationError(f"the destination refused: {hello.get('error')}")
        if kind != tp.HELLO:
            raise tp.ProtocolError(f"expected HELLO, got {tp.KIND_NAMES[kind]}")
        res.destination = {k: hello.get(k) for k in ("build", "backend", "plugins")}
        events("hello", hello=hello)
        dest, dest_filters = _hello_destination(hello)
        plan = plan_filters(build, dest, dest_filters, source_filters(build), filter_side,
                            own_registry=build.registry)
        report = plan.report
        res.check = report.as_dict()
        res.filtered_by = plan.side
        events("checked", report=report)
        if not plan.compatible:
            gaps = [ln for ln in report.format_text().splitlines()
                    if not ln.startswith("ok ")]
            msg = (f"pre-flight check: {build.name} cannot migrate to "
                   f"{hello.get('build')}; the source was never paused:\n  "
                   + "\n  ".join(gaps))
            with contextlib.suppress(tp.TransportError):
                chan.send_msg(tp.ABORT, {"error": msg, "check": res.check})
            res.outcome, res.error = "refused", msg
            return res
        offer = {"protocol": PROTOCOL, "build": build.name, "backend": build.backend.name,
                 "plugins": {n: r.version for n, r in sorted(build.registry.plugins.items())
                             if r.error is None},
                 "filtered_by": plan.side, "session": hello["session"],
                 "source_session": source_nonce}
        if precopy is not None:
            ram_obj = _precopy_ram(build, hello, res.mode_notes)
            if ram_obj is not None:
                offer["precopy"] = {"path": ram_obj.path, "size": ram_obj.memory.size,
                                    "page_size": PAGE_SIZE}
                ram_obj.memory.start_dirty_log()  # before OFFER: pass 1 copies after this
        chan.send_msg(tp.OFFER, offer)
    except PreflightRefused as e:
        with contextlib.suppress(tp.TransportError):
            chan.send_msg(tp.ABORT, {"error": str(e)})
        res.outcome, res.error = "refused", str(e)
        return res
    except MigtreeError as e:  # before the pause: nothing to resume
        res.outcome, res.error = "refused", f"before pausing: {e}"
        with contextlib.suppress(tp.TransportError):  # the destination need not wait
            chan.send_msg(tp.ABORT, {"error": res.error})
        return res
    except Exception as e:  # a HELLO the checks let through but the pre-flight trips on
        res.outcome, res.error = "refused", f"before pausing: {_describe(e)}"
        log.error("pre-flight failed on the destination's HELLO: %s", _describe(e))
        with contextlib.suppress(tp.TransportError):
            chan.send_msg(tp.ABORT, {"error": res.error})
        return res
    finally:
        res.wire_bytes_sent, res.wire_bytes_received = chan.bytes_sent, chan.bytes_received
        if res.outcome == "refused" and ram_obj is not None:
            ram_obj.memory.stop_dirty_log()

    from . import stream

    pre: _Precopy | None = None
    if ram_obj is not None:
        res.mode = "precopy"
        pre = _Precopy(ram_obj.memory, chan, hello["session"], precopy, throttle, events)
        try:
            with Progress("pre-copy", ram_obj.memory.size, stream=None) if progress \
                    else _null_progress() as bar:
                pre.bar = bar
                pre.run_live()
        except Exception as e:  # the source never paused: it just runs on
            pre.stop()
            res.precopy = pre.report()
            res.outcome = "resumed"
            res.error = (f"pre-copy pass {pre.pass_no} failed: {_precopy_failure(e, chan)}; "
                         "the source never paused and runs on with its state")
            if not isinstance(e, tp.TransportError):
                with contextlib.suppress(tp.TransportError):
                    chan.send_msg(tp.ABORT, {"error": res.error, "session": hello["session"]})
            events("resumed", error=res.error)
            res.wire_bytes_sent, res.wire_bytes_received = chan.bytes_sent, \
                chan.bytes_received
            return res

    pause()
    t_pause = time.monotonic()
    events("paused")
    committed = False
    try:
        with Progress("migrating", stream=None) if progress else _null_progress() as bar:
            writer = tp.DataWriter(chan, bar.update)
            try:
                if pre is not None:
                    # the last dirty pages, the source paused: nothing writes now
                    pre.bar = bar
                    pre.final_pass()
                    ram_obj.precopied = True  # the stream's ram is empty: it came in passes
                if plan.side == "source":
                    try:
                        tree, freport = filter_on_source(build, plan.destination)
                    except MigtreeError as e:
                        raise _SourceSaveError(f"the source's filters failed: {e}") from e
                    res.source_filters = freport.as_dict()
                    events("filtered", report=freport)
                    stream.write_tree(writer, None, tree, build.registry,
                                      build_name=build.name)
                else:
                    stream.save(build.root, writer, registry=build.registry,
                                build_name=build.name)
                writer.flush()
            except tp.RemoteAbort as e:
                raise MigrationError(_remote_failure(e.msg)) from None
            except tp.PeerClosed as e:
                # the destination may have said why before it closed
                try:
                    if chan.incoming_ready():
                        tp.raise_remote(chan, timeout=1.0)
                except tp.RemoteAbort as r:
                    raise MigrationError(_remote_failure(r.msg)) from None
                except tp.TransportError:
                    pass
                raise e from None
            except tp.TransportError:
                raise
            except _SourceSaveError as e:
                with contextlib.suppress(tp.TransportError):
                    chan.send_msg(tp.ABORT, {"error": str(e)})
                raise MigrationError(str(e)) from e
            except Exception as e:  # a device's pre_save or visit failed (plugin code)
                why = _describe(e)
                with contextlib.suppress(tp.TransportError):
                    chan.send_msg(tp.ABORT, {"error": f"the source could not write its state: "
                                                      f"{why}"})
                raise MigrationError(f"the source could not write its state: {why}") from e
            finally:
                if ram_obj is not None:
                    ram_obj.precopied = False  # any later save (kept state) has the RAM
        res.stream_bytes = writer.total
        res.save_s = time.monotonic() - t_pause
        chan.send_msg(tp.END, {"bytes": writer.total, "session": hello["session"]})
        events("sent", bytes=writer.total)
        kind, msg = chan.recv_msg(timeout)
        if kind == tp.FAILED:
            raise MigrationError(_remote_failure(msg))
        if kind != tp.LOADED:
            raise tp.ProtocolError(f"expected LOADED or FAILED, got {tp.KIND_NAMES[kind]}")
        res.loaded = msg
        res.paused_s = time.monotonic() - t_pause
        events("loaded", report=msg)
        # The point of no return: once COMMIT is handed to the kernel whole,
        # the destination may run, so the source must not.
        chan.send_msg(tp.COMMIT, {"session": hello["session"]})
        committed = True
        events("committed")
        try:
            kind, _ = chan.recv_msg(timeout)
            if kind != tp.DONE:
                raise tp.ProtocolError(f"expected DONE, got {tp.KIND_NAMES[kind]}")
        except MigtreeError as e:
            res.outcome = "unconfirmed"
            res.error = (f"COMMIT was sent but the destination did not confirm it ({e}); the "
                         "source stays stopped because the destination may be running")
            res.kept_state = _keep_state(build, keep_dir)
            if res.kept_state:
                res.error += f"; its state is kept in {res.kept_state}"
            log.error("%s", res.error)
            return res
        res.outcome = "committed"
        events("done")
        return res
    except Exception as e:  # anything at all before COMMIT: the source runs on
        if committed:  # pragma: no cover - the branch above returns
            raise
        if res.paused_s is None:
            res.paused_s = time.monotonic() - t_pause
        res.outcome, res.error = "resumed", f"{_describe(e)}; the source resumed with its state"
        if pre is not None:
            pre.stop()  # before the guest runs again: no throttle, no dirty log
        resume()
        events("resumed", error=res.error)
        return res
    finally:
        if pre is not None:
            pre.stop()
            res.precopy = pre.report()
            res.precopy["actual_downtime_s"] = res.paused_s
        res.wire_bytes_sent, res.wire_bytes_received = chan.bytes_sent, chan.bytes_received


def _precopy_ram(build: Any, hello: dict[str, Any], notes: list[str]) -> Any:
    """The guest-memory object pre-copy moves, or None (with a note saying
    why the migration is stop-and-copy instead)."""
    from .memory import GuestMemoryObject

    if "precopy" not in (hello.get("features") or []):
        notes.append(f"the destination {hello.get('build')} does not take pre-copy (an older "
                     "release): stop-and-copy")
        return None
    mem = getattr(build.machine, "memory", None)
    for obj in build.root.walk():
        if isinstance(obj, GuestMemoryObject) and (obj is mem or obj.memory is mem):
            if obj.memory.dirty_logging:
                notes.append("guest RAM is already tracked by another migration: "
                             "stop-and-copy")
                return None
            return obj
    notes.append(f"{build.name} has no guest RAM to pre-copy: stop-and-copy")
    return None


def _precopy_failure(e: BaseException, chan: tp.Channel) -> str:
    """What ended a pre-copy pass, in words (the destination's own reason
    when it sent one before closing)."""
    if isinstance(e, tp.RemoteAbort):
        return _remote_failure(e.msg)
    if isinstance(e, tp.PeerClosed):
        try:
            if chan.incoming_ready():
                tp.raise_remote(chan, timeout=1.0)
        except tp.RemoteAbort as r:
            return _remote_failure(r.msg)
        except tp.TransportError:
            pass
    return _describe(e)


#: pages in one run frame (1 MiB of pages plus the 8-byte address)
_RUN_PAGES = tp.DATA_CHUNK // PAGE_SIZE
_ZERO_RUN = bytes(_RUN_PAGES * PAGE_SIZE)


class _Precopy:
    """The source's side of pre-copy: passes over the dirty log of one
    :class:`migtree.memory.GuestMemory`, each ended by a PASS message."""

    def __init__(self, memory: Any, chan: tp.Channel, session: str,
                 opts: PrecopyOptions, throttle: Callable[[float], None] | None,
                 events: Events) -> None:
        self.mem = memory
        self.chan = chan
        self.session = session
        self.opts = opts
        self.throttle_fn = throttle
        self.events = events
        self.bar: Any = None
        self.pass_no = 0
        self.passes: list[dict[str, Any]] = []
        self.sent_bytes = 0  # page bytes sent in all passes
        self.sent_s = 0.0  # seconds spent sending them
        self.throttle = 0.0
        self.converged = False
        self.expected_downtime_s: float | None = None
        self.stopped = False

    @property
    def bandwidth(self) -> float | None:
        """Bytes per second of the last pass that sent at least 256 KiB
        (QEMU also estimates from the last iteration: scattered dirty pages
        go slower than pass 1's long runs, and the final pass is like the
        last ones), else over every pass so far; None before anything was
        sent."""
        for p in reversed(self.passes):
            if p["bytes"] >= 256 << 10 and p["seconds"] > 0:
                return p["bytes"] / p["seconds"]
        if self.sent_bytes == 0 or self.sent_s <= 0:
            return None
        return self.sent_bytes / self.sent_s

    def estimate(self) -> float | None:
        """The pause the pages dirty now would cost, in seconds."""
        dirty = self.mem.dirty_pages() * PAGE_SIZE
        if dirty == 0:
            return 0.0
        bw = self.bandwidth
        return None if bw is None else dirty / bw

    def run_live(self) -> None:
        """Passes while the source runs, until the estimated pause fits the
        limit or the pass bound is reached."""
        o = self.opts
        while True:
            self.send_pass(final=False)
            est = self.estimate()
            self.expected_downtime_s = est
            if est is not None and est <= o.downtime_limit:
                self.converged = True
                return
            if self.pass_no >= o.max_passes:
                return  # paused anyway: the report says what it expected
            if o.auto_converge and self.throttle_fn is not None \
                    and self.pass_no >= o.throttle_after:
                self.throttle = min(o.throttle_max, o.throttle_initial if not self.throttle
                                    else self.throttle + o.throttle_increment)
                self.throttle_fn(self.throttle)
                self.events("throttled", fraction=self.throttle)

    def final_pass(self) -> None:
        """The pages written since the last pass, the source paused (no
        bandwidth cap: this is the pause)."""
        self.send_pass(final=True)

    def send_pass(self, *, final: bool) -> None:
        self.pass_no += 1
        t0 = time.monotonic()
        runs = nbytes = pages = 0
        cap = None if final else self.opts.max_bandwidth
        first = self.pass_no == 1
        entries: list[tuple[int, int]] = []
        chunks: list[bytes] = []
        digest = hashlib.sha256()
        batch = 0

        def flush() -> None:
            nonlocal batch
            if not entries:
                return
            frame = encode_page_frame(entries, chunks)
            digest.update(frame)
            self.chan.send(tp.DATA, frame)
            if self.bar is not None:
                self.bar.update(batch)
            entries.clear()
            chunks.clear()
            batch = 0
            if cap is not None:
                ahead = nbytes / cap - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            if self.chan.incoming_ready():  # the destination gave up mid-pass
                tp.raise_remote(self.chan)

        for gpa, n in self.mem.dirty_runs(_RUN_PAGES):
            data = self.mem.take_dirty(gpa, n)
            pages += n // PAGE_SIZE
            # the destination stages RAM in a zero-filled mapping: pass 1
            # need not send runs that are still all zero
            if first and data == (_ZERO_RUN if n == len(_ZERO_RUN) else bytes(n)):
                continue
            entries.append((gpa, n))
            chunks.append(data)
            runs += 1
            nbytes += n
            batch += n
            if batch >= tp.DATA_CHUNK or len(entries) >= MAX_RUNS_PER_FRAME:
                flush()
        flush()
        self.chan.send_msg(tp.PASS, {"pass": self.pass_no, "runs": runs, "bytes": nbytes,
                                     "final": final, "sha256": digest.hexdigest(),
                                     "session": self.session})
        dt = time.monotonic() - t0
        self.sent_bytes += nbytes
        self.sent_s += dt
        dirty_now = self.mem.dirty_pages() * PAGE_SIZE
        rec = {"pass": self.pass_no, "final": final, "pages": pages, "bytes": nbytes,
               "runs": runs, "seconds": dt,
               # bytes the guest wrote while this pass ran, per second
               "dirty_rate_Bps": (dirty_now / dt) if dt > 0 and not final else None,
               "bandwidth_Bps": (nbytes / dt) if dt > 0 and nbytes else None,
               "dirty_after": dirty_now, "throttle": self.throttle}
        self.passes.append(rec)
        if self.bar is not None and hasattr(self.bar, "status"):
            bw = self.bandwidth
            rate = rec["dirty_rate_Bps"]
            self.bar.status(f"pass {self.pass_no}, dirty {dirty_now / 1e6:.1f} MB"
                            + (f" at {rate / 1e6:.1f} MB/s" if rate is not None else "")
                            + (f", link {bw / 1e6:.0f} MB/s" if bw else ""))
        self.events("pass", **rec)

    def stop(self) -> None:
        """Stop tracking; take the throttle off (idempotent)."""
        if self.stopped:
            return
        self.stopped = True
        self.mem.stop_dirty_log()
        if self.throttle and self.throttle_fn is not None:
            self.throttle_fn(0.0)

    def report(self) -> dict[str, Any]:
        last_live = [p for p in self.passes if not p["final"]]
        return {"passes": self.passes, "pass_count": len(self.passes),
                "converged": self.converged,
                "downtime_limit_s": self.opts.downtime_limit,
                "expected_downtime_s": self.expected_downtime_s,
                "max_passes": self.opts.max_passes,
                "max_bandwidth_Bps": self.opts.max_bandwidth,
                "bandwidth_Bps": self.bandwidth,
                "dirty_rate_Bps": last_live[-1]["dirty_rate_Bps"] if last_live else None,
                "throttle": self.throttle, "ram_bytes": self.mem.size,
                "page_bytes_sent": self.sent_bytes}


class _SourceSaveError(Exception):
    """The source's own filters failed on its state (before anything was
    loaded anywhere): the source resumes."""


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, MigtreeError) else f"{e.__class__.__name__}: {e}"


def _remote_failure(msg: dict[str, Any]) -> str:
    return f"the destination could not load the state ({msg.get('stage')}): {msg.get('error')}"


class _null_progress(contextlib.AbstractContextManager):
    def update(self, n: int) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        return None


def _keep_state(build: Any, keep_dir: str | None) -> str | None:
    from . import stream

    try:
        fd, path = tempfile.mkstemp(prefix=f"migtree-{build.name}-", suffix=".mt",
                                    dir=keep_dir)
        with open(fd, "wb") as fp:
            stream.save(build.root, fp, registry=build.registry, build_name=build.name)
        return path
    except (OSError, MigtreeError) as e:
        log.error("could not keep the source's state in a file: %s", e)
        return None


# -- destination ------------------------------------------------------------------------------

class DataReader:
    """A non-seekable binary file over the DATA frames of a channel, ending at
    END (whose byte count must match); :func:`migtree.stream.read_tree`
    decodes from it while the bytes arrive."""

    def __init__(self, chan: tp.Channel, timeout: float | None,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self._frames = tp.iter_data(chan, timeout)
        self._buf = memoryview(b"")
        self.total = 0
        self.finished = False
        self._on_bytes = on_bytes
        #: the transport error that ended the stream early, if one did (the
        #: CBOR decoder reading from us may report it as bad CBOR instead)
        self.error: MigtreeError | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [bytes(self._buf)]
            self._buf = memoryview(b"")
            while self._next():
                parts.append(bytes(self._buf))
                self._buf = memoryview(b"")
            return b"".join(parts)
        while not self._buf:
            if not self._next():
                return b""
        out = bytes(self._buf[:n])
        self._buf = self._buf[n:]
        return out

    def _next(self) -> bool:
        if self.finished:
            return False
        try:
            chunk = next(self._frames)
        except StopIteration:
            self.finished = True
            return False
        except MigtreeError as e:
            self.error = e
            raise
        self.total += len(chunk)
        if self._on_bytes is not None:
            self._on_bytes(len(chunk))
        self._buf = memoryview(chunk)
        return True

    def drain(self) -> None:
        """Consume what is left up to END (the footer is the stream's last
        item, so normally only END is left)."""
        while self._next():
            if self._buf:
                raise tp.ProtocolError("the source sent bytes after the stream's footer")
        self._buf = memoryview(b"")


class Snapshot:
    """The destination's state before a migration, to put back when the
    source never commits: a stream in a temporary file (RAM included, in
    chunks), taken before HELLO so it costs nothing during the pause."""

    def __init__(self, build: Any) -> None:
        from . import stream

        self.build = build
        self.file = tempfile.TemporaryFile(prefix="migtree-snapshot-")
        stream.save(build.root, self.file, registry=build.registry, build_name=build.name)

    def restore(self) -> None:
        from . import stream

        self.file.seek(0)
        _, tree = stream.read_tree(self.file)
        stream.load(tree, self.build.root, registry=self.build.registry)

    def close(self) -> None:
        self.file.close()


def receive(build: Any, chan: tp.Channel, *, timeout: float = DEFAULT_TIMEOUT,
            events: Events = _noop, explain: bool = False, progress: bool = True,
            snapshot: Snapshot | None = None) -> DestResult:
    """Take an incoming migration into ``build`` over ``chan``.

    On ``"committed"`` the build holds the source's state and may run; on
    any other outcome it holds exactly what it held before. ``events(name,
    **info)`` observes: ``hello``, ``offer``, ``received``, ``filtered``,
    ``loaded``, ``commit``, ``rolled-back``. ``snapshot`` (taken by the
    caller before the source connected) is what a missing COMMIT puts back;
    without one it is taken here, before HELLO.
    """
    from . import stream
    from .engine import Destination, apply_filters, gather_filters

    res = DestResult()
    own_snapshot = snapshot is None
    session = protocol.Session(PROTOCOL)
    chan.validator = session
    nonce = protocol.new_nonce()
    # what the source sends after HELLO must name this destination's session
    for name in ("OFFER", "PASS", "END", "COMMIT", "ABORT"):
        session.expect[name] = nonce
    source_nonce: str | None = None
    staged: _StagedRam | None = None
    try:
        if snapshot is None:
            snapshot = Snapshot(build)
        chan.send_msg(tp.HELLO, {**describe_destination(build), "session": nonce})
        events("hello")
        res.stage = "pre-flight"
        kind, msg = chan.recv_msg(timeout)
        if kind == tp.ABORT:
            res.outcome, res.error = "refused", str(msg.get("error"))
            res.check = msg.get("check")
            return res
        if kind != tp.OFFER:
            raise tp.ProtocolError(f"expected OFFER or ABORT, got {tp.KIND_NAMES[kind]}")
        res.source = {k: msg.get(k) for k in ("build", "backend", "plugins")}
        res.filtered_by = msg["filtered_by"]
        source_nonce = msg["source_session"]
        events("offer", offer=msg)
        if "precopy" in msg:
            res.stage = "precopy"
            staged = _StagedRam(build, msg["precopy"])
            res.precopy = staged.receive(chan, timeout, events)

        res.stage = "stream"
        t0 = time.monotonic()
        with Progress("receiving", stream=None) if progress else _null_progress() as bar:
            reader = DataReader(chan, timeout, bar.update)
            offsets: dict[str, int] = {}
            try:
                header, tree = stream.read_tree(reader, offsets=offsets)
                reader.drain()
            except MigtreeError as e:
                cause = reader.error if reader.error is not None else e
                if isinstance(cause, tp.RemoteAbort):
                    raise MigrationError(f"the source gave up: {cause}") from None
                if cause is not e:
                    raise cause from None  # the connection, not the bytes, was the problem
                raise
        res.stream_bytes = reader.total
        res.timings["receive_decode_s"] = time.monotonic() - t0
        events("received", bytes=reader.total, header=header)

        res.stage = "validate"  # the stream's own layout, before any filter
        from .validate import validate_tree

        validate_tree(tree, build.registry, header=header, offsets=offsets)
        res.stage = "filters"
        t1 = time.monotonic()
        freport = apply_filters(tree, Destination.of_build(build), gather_filters(build),
                                explain=explain)
        res.filters = freport.as_dict()
        res.timings["filters_s"] = time.monotonic() - t1
        events("filtered", report=freport)

        res.stage = "load"
        t2 = time.monotonic()
        events("loading")
        if staged is not None:
            res.stage = "precopy"
            staged.put_into(tree)
            res.stage = "load"
        try:
            lreport = stream.load(tree, build.root, registry=build.registry)
        except MigtreeError as e:
            from .validate import with_offsets

            raise with_offsets(e, offsets) from e
        finally:
            if staged is not None:
                staged.close()  # adopted (it holds the old mapping now) or unused
        res.load = lreport.as_dict()
        res.timings["load_s"] = time.monotonic() - t2
        events("loaded", report=lreport)
    except Exception as e:  # the load is all-or-nothing: nothing changed here
        if staged is not None:
            staged.close()  # pre-copied pages never touched this build's RAM
        res.error = _describe(e)
        if res.outcome == "pending":
            res.outcome = "failed"
        if not isinstance(e, tp.TransportError):
            with contextlib.suppress(tp.TransportError):
                chan.send_msg(tp.FAILED, {"stage": res.stage, "error": res.error,
                                          **({"session": source_nonce} if source_nonce
                                             else {})})
        res.wire_bytes_received = chan.bytes_received
        if own_snapshot and snapshot is not None:
            snapshot.close()
        return res

    # Loaded, not running. Only COMMIT lets it run.
    res.stage = "commit"
    try:
        chan.send_msg(tp.LOADED, {"filters": res.filters, "load": res.load,
                                  "stream_bytes": res.stream_bytes, "timings": res.timings,
                                  "session": source_nonce})
        kind, _ = chan.recv_msg(timeout)
        if kind != tp.COMMIT:
            raise tp.ProtocolError(f"expected COMMIT, got {tp.KIND_NAMES[kind]}")
    except MigtreeError as e:
        snapshot.restore()
        res.outcome = "rolled-back"
        res.error = (f"the source did not commit ({e}); the state this build had before the "
                     "migration was put back")
        events("rolled-back", error=str(e))
        res.wire_bytes_received = chan.bytes_received
        if own_snapshot:
            snapshot.close()
        return res
    if own_snapshot:
        snapshot.close()
    res.outcome = "committed"
    res.stage = None
    events("commit")
    with contextlib.suppress(tp.TransportError):
        chan.send_msg(tp.DONE, {"session": source_nonce})
    res.wire_bytes_received = chan.bytes_received
    return res


def encode_page_frame(runs: list[tuple[int, int]], pages: list[bytes]) -> bytes:
    """One pre-copy DATA frame: the run count, each run's address and
    length, then the runs' pages (docs/cli.md, "The migration protocol")."""
    return b"".join([_RUN_COUNT.pack(len(runs)),
                     *(_RUN_ENTRY.pack(gpa, n) for gpa, n in runs), *pages])


def decode_page_frame(payload: bytes, ram_size: int, *, runs_before: int = 0,
                      where: str = "pre-copy frame") -> list[tuple[int, int]]:
    """A page frame's runs ``(gpa, length)``, every one checked (page-aligned,
    whole pages, inside ``ram_size``, lengths adding up to the frame) before
    the caller writes any; the pages follow the header in the same order."""
    if len(payload) < _RUN_COUNT.size:
        raise tp.ProtocolError(f"{where}: {len(payload)} bytes cannot hold a run count")
    (count,) = _RUN_COUNT.unpack_from(payload)
    head = _RUN_COUNT.size + _RUN_ENTRY.size * count
    if not 1 <= count <= MAX_RUNS_PER_FRAME or head > len(payload):
        raise tp.ProtocolError(f"{where}: {count} runs do not fit a frame of "
                               f"{len(payload)} bytes (1 to {MAX_RUNS_PER_FRAME})")
    out = []
    total = 0
    for i in range(count):
        gpa, n = _RUN_ENTRY.unpack_from(payload, _RUN_COUNT.size + _RUN_ENTRY.size * i)
        if gpa % PAGE_SIZE or n == 0 or n % PAGE_SIZE or gpa + n > ram_size:
            raise tp.ProtocolError(
                f"{where}, run {runs_before + i + 1}: {n} bytes at {gpa:#x} are not "
                f"whole {PAGE_SIZE}-byte pages inside {ram_size:#x} bytes of RAM")
        out.append((gpa, n))
        total += n
    if head + total != len(payload):
        raise tp.ProtocolError(f"{where}: its runs announce {total} bytes of pages, the "
                               f"frame holds {len(payload) - head}")
    return out


class _StagedRam:
    """The destination's side of pre-copy: pages land in a mapping of their
    own, never in the build's RAM, so a migration cut in any pass leaves
    the build as it was; the loaded stream's empty ``ram`` is replaced by
    this mapping, which the guest-memory object adopts at ``post_load``
    (after every device accepted its state)."""

    def __init__(self, build: Any, offer: dict[str, Any]) -> None:
        from .memory import GuestMemory, GuestMemoryObject

        mem = getattr(build.machine, "memory", None)
        own = next((o for o in build.root.walk() if isinstance(o, GuestMemoryObject)
                    and (o is mem or o.memory is mem)), None)
        if own is None:
            raise MigrationError(f"the source pre-copies guest RAM to {offer['path']}; "
                                 f"{build.name} has no guest RAM")
        if own.path != offer["path"] or own.memory.size != offer["size"]:
            raise MigrationError(
                f"the source pre-copies {offer['size']} bytes of guest RAM to "
                f"{offer['path']}; {build.name} has {own.memory.size} bytes at {own.path}: "
                "start it with the same size")
        self.path = offer["path"]
        self.size = offer["size"]
        self.memory = GuestMemory(self.size)
        self.passes: list[dict[str, Any]] = []

    def receive(self, chan: tp.Channel, timeout: float | None,
                events: Events) -> list[dict[str, Any]]:
        """Page runs and PASS messages until the final PASS. Every run is
        checked (page-aligned, inside RAM) before a byte of it is written,
        and every PASS against what arrived."""
        runs = nbytes = 0
        digest = hashlib.sha256()
        try:
            while True:
                kind, payload = chan.recv(timeout)
                if kind == tp.DATA:
                    digest.update(payload)
                    got = decode_page_frame(
                        payload, self.size, runs_before=runs,
                        where=f"pre-copy pass {len(self.passes) + 1}, frame at wire offset "
                              f"{chan.bytes_received - len(payload)}")
                    view = memoryview(payload)
                    pos = _RUN_COUNT.size + _RUN_ENTRY.size * len(got)
                    for gpa, n in got:
                        self.memory.write_pages(gpa, view[pos:pos + n])
                        pos += n
                    runs += len(got)
                    nbytes += pos - _RUN_COUNT.size - _RUN_ENTRY.size * len(got)
                elif kind == tp.PASS:
                    msg = chan.decode(kind, payload)
                    want = len(self.passes) + 1
                    if msg["pass"] != want or msg["runs"] != runs or msg["bytes"] != nbytes:
                        raise tp.ProtocolError(
                            f"pre-copy PASS {msg['pass']} says {msg['runs']} runs of "
                            f"{msg['bytes']} bytes; pass {want} brought {runs} runs of "
                            f"{nbytes} bytes")
                    if msg["sha256"] != digest.hexdigest():
                        # staged pages only: the build's RAM never saw them
                        raise tp.ProtocolError(
                            f"pre-copy pass {want}: checksum mismatch (the pass's frames "
                            f"hash to {digest.hexdigest()[:16]}..., PASS says "
                            f"{msg['sha256'][:16]}...): bytes were damaged in transit")
                    digest = hashlib.sha256()
                    rec = {"pass": want, "runs": runs, "bytes": nbytes, "final": msg["final"]}
                    self.passes.append(rec)
                    events("pass", **rec)
                    runs = nbytes = 0
                    if msg["final"]:
                        return self.passes
                elif kind in (tp.ABORT, tp.FAILED):
                    msg = chan.decode(kind, payload)
                    raise MigrationError(f"the source gave up: {msg.get('error')}")
                else:
                    raise tp.ProtocolError(f"expected DATA or PASS during pre-copy, got "
                                           f"{tp.KIND_NAMES[kind]}")
        except BaseException:
            self.close()
            raise

    def put_into(self, tree: dict[str, Any]) -> None:
        """Replace the stream's (empty) RAM at the pre-copied path with the
        staged pages."""
        node: Any = tree
        for part in [p for p in self.path.split("/") if p]:  # the tree's root is "/"
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or node.get("__type__") != "guest-memory":
            raise MigrationError(f"{self.path}: the stream has no guest-memory object where "
                                 "the source pre-copied RAM")
        ram = node.get("ram")
        if ram is None or not hasattr(ram, "__len__") or len(ram) != 0:
            raise MigrationError(f"{self.path}: field ram: the source pre-copied guest RAM "
                                 "but the stream carries it again")
        node["ram"] = self.memory

    def close(self) -> None:
        if not self.memory.closed:
            with contextlib.suppress(BufferError):
                self.memory.close()


# -- workloads ----------------------------------------------------------------------------------

def select_workloads(build: Any, spec: str | None) -> list[Any]:
    """The workloads to run on ``build``: ``"auto"`` (every registered
    workload whose ``applies(machine)`` is true, by name), ``"none"``, or a
    comma-separated list of names (each must apply)."""
    if spec in (None, "", "none"):
        return []
    registry = build.registry
    if spec == "auto":
        return [w for _, w in sorted(registry.workloads.items()) if w.applies(build.machine)]
    out = []
    for name in [n.strip() for n in spec.split(",") if n.strip()]:
        wl = registry.workloads.get(name)
        if wl is None:
            raise MigrationError(f"no installed plugin registers a workload {name!r} "
                                 f"(installed: {', '.join(sorted(registry.workloads)) or 'none'})")
        if not wl.applies(build.machine):
            raise MigrationError(f"workload {name!r} ({wl.plugin}) does not apply to build "
                                 f"{build.name}: it lacks the devices the workload drives")
        out.append(wl)
    return out


def run_workloads(step: str, build: Any, workloads: list[Any], seed: int = 0) -> dict[str, Any]:
    """``start`` (with ``seed``), ``finish`` or ``check`` every workload; for
    ``check`` the result maps each workload name to its summary."""
    out: dict[str, Any] = {}
    for wl in workloads:
        try:
            if step == "start":
                wl.start(build.machine, seed)
            elif step == "finish":
                wl.finish(build.machine)
            else:
                out[wl.name] = wl.check(build.machine)
        except Exception as e:  # plugin code: report it by workload and plugin
            what = str(e) if isinstance(e, MigtreeError) else f"{e.__class__.__name__}: {e}"
            raise MigrationError(f"workload {wl.name} ({wl.plugin}): {step}: {what}") from e
    return out


# -- drives: disk images a build names ------------------------------------------------------------

#: size of a disk image ``migtree migrate`` creates when the build's is missing
DEFAULT_DRIVE_SIZE = 8 << 20


def iter_path_props(config: dict[str, Any], registry: Any):
    """``(device table, prop name)`` for every property a device type lists
    in ``PATH_PROPS`` (its disk image, typically), children included."""
    def walk(dcfg: Any):
        if not isinstance(dcfg, dict):
            return
        info = registry.types.get(dcfg.get("type")) if isinstance(dcfg.get("type"), str) \
            else None
        if info is not None:
            for prop in getattr(info.cls, "PATH_PROPS", ()):
                if isinstance(dcfg.get(prop), str):
                    yield dcfg, prop
        for child in (dcfg.get("children") or {}).values():
            yield from walk(child)

    for dcfg in config.get("device") or []:
        yield from walk(dcfg)


def pattern_image(path: Any, size: int) -> None:
    """A disk image of ``size`` bytes whose sector N holds N (u32, repeated),
    so a read shows which sector it came from."""
    sectors = size // 512
    block = 2048  # sectors per write
    with open(Path(path), "wb") as f:
        for first in range(0, sectors, block):
            n = min(block, sectors - first)
            f.write(b"".join(struct.pack("<I", s) * 128 for s in range(first, first + n)))
        f.truncate(size)


def create_missing_drives(build_file: Any, size: int, registry: Any) -> list[str]:
    """Create (zero-filled, sparse) every drive ``build_file`` names that does
    not exist yet; returns their paths."""
    path = Path(build_file)
    try:
        config = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return []  # load_build reports it properly
    made = []
    for dcfg, prop in iter_path_props(config, registry):
        target = (path.resolve().parent / dcfg[prop]).resolve()
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                f.truncate(size)
            made.append(str(target))
    return made


def dump_toml(config: dict[str, Any]) -> str:
    """A build configuration back as TOML (the subset build files use:
    tables, arrays of tables, inline tables, strings, integers, booleans)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(f"cannot write {v!r} as TOML")

    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    lines = []
    for k, v in config.items():
        if not isinstance(v, dict | list) or (isinstance(v, list) and
                                              not all(isinstance(x, dict) for x in v)):
            lines.append(f"{key(k)} = {value(v)}")
    for k, v in config.items():
        if isinstance(v, dict):
            lines.append(f"\n[{key(k)}]")
            lines.extend(f"{key(a)} = {value(b)}" for a, b in v.items())
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                lines.append(f"\n[[{key(k)}]]")
                lines.extend(f"{key(a)} = {value(b)}" for a, b in item.items())
    return "\n".join(lines) + "\n"
