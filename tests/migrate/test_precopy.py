"""Pre-copy (issue 15): guest RAM moves in passes while the source runs and
writes it; the destination's RAM equals the source's at the pause, byte for
byte; passes are bounded whatever the guest does; a cut in any pass leaves
the source running and unchanged and the destination unchanged.

Source and destination run in this process over a real unix socket (the
destination in a thread) where the test must see both RAMs; the fault cases
use a real ``migtree serve`` process behind the fault proxy, as the fault
matrix does.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mig_helpers import (
    FaultProxy,
    Proc,
    child_cmd,
    frames,
    migtree_cmd,
    start_serve,
    write_build,
)
from mig_pairs import Source, make_pair, reference
from test_faults import assert_destination_unchanged, assert_source_intact

from migtree import migration as M
from migtree import transport as tp
from migtree.build import load_build
from migtree.memory import PAGE_SIZE, GuestMemory
from migtree.plugins import get_registry

SEED = 3
GUARD = 60.0


# -- the dirty log -----------------------------------------------------------------------------

WRITES = st.lists(st.tuples(st.sampled_from(["write", "u8", "u32", "u64", "fill", "view"]),
                            st.integers(0, 16 * PAGE_SIZE - 64), st.integers(1, 3 * PAGE_SIZE)),
                  max_size=30)


@settings(max_examples=60, deadline=None)
@given(WRITES)
def test_dirty_log_sees_every_write_path_and_nothing_else(writes):
    mem = GuestMemory(16 * PAGE_SIZE)
    try:
        mem.start_dirty_log()
        for gpa, n in mem.dirty_runs(4):  # pass 1 takes everything
            mem.take_dirty(gpa, n)
        assert mem.dirty_pages() == 0
        touched: set[int] = set()
        for how, gpa, n in writes:
            n = min(n, mem.size - gpa)
            if how == "write":
                mem.write(gpa, b"\xa5" * n)
            elif how == "fill":
                mem.fill(gpa, n, 7)
            elif how == "view":  # DMA: a device marks after writing through the view
                v = mem.view(gpa, n)
                v[:] = b"\x5a" * n
                v.release()
                mem.mark_dirty(gpa, n)
            else:
                n = {"u8": 1, "u32": 4, "u64": 8}[how]
                getattr(mem, f"write_{how}")(gpa, 0x42)
            touched.update(range(gpa // PAGE_SIZE, (gpa + n - 1) // PAGE_SIZE + 1))
        got = set()
        for gpa, n in mem.dirty_runs(3):
            assert gpa % PAGE_SIZE == 0 and n % PAGE_SIZE == 0 and n <= 3 * PAGE_SIZE
            got.update(range(gpa // PAGE_SIZE, (gpa + n) // PAGE_SIZE))
        assert got == touched
    finally:
        mem.stop_dirty_log()
        mem.close()


def test_virtio_blk_dma_into_guest_ram_is_marked(short_tmp):
    """The device's own read path (disk -> guest RAM through a view) marks
    the pages it wrote."""
    pair = make_pair(short_tmp, src_backend="userspace")
    b = load_build(pair.dst, get_registry())  # virtio-pci + a virtio-blk child
    try:
        dev = next(o for o in b.root.walk() if hasattr(o, "_rw") and hasattr(o, "disk"))
        mem = b.machine.memory
        mem.start_dirty_log()
        for gpa, n in mem.dirty_runs(64):
            mem.take_dirty(gpa, n)
        gpa = 37 * PAGE_SIZE + 512
        assert dev._rw(mem, 8, [(gpa, 4096)], write=False) == 0
        runs = mem.dirty_runs(64)
        assert runs == [(37 * PAGE_SIZE, 2 * PAGE_SIZE)]
        assert mem.read(gpa, 4) == (8).to_bytes(4, "little")  # sector 8 of the pattern
    finally:
        b.machine.memory.stop_dirty_log()
        from mig_pairs import close

        close(b)


FRAMES = st.lists(st.tuples(st.integers(0, 255), st.integers(1, 4)), min_size=1,
                  max_size=20)


@settings(max_examples=100, deadline=None)
@given(FRAMES, st.randoms(use_true_random=False))
def test_page_frames_round_trip_and_any_damage_is_refused(runs, rnd):
    """encode_page_frame -> decode_page_frame gives the runs back and the
    pages where the header says; a frame cut short or grown is refused."""
    ram = 260 * PAGE_SIZE
    spec = [(page * PAGE_SIZE, k * PAGE_SIZE) for page, k in runs]
    pages = [bytes([rnd.randrange(256)]) * n for _, n in spec]
    frame = M.encode_page_frame(spec, pages)
    got = M.decode_page_frame(frame, ram)
    assert got == spec
    pos = 4 + 12 * len(spec)
    for (_, n), data in zip(got, pages, strict=True):
        assert frame[pos:pos + n] == data
        pos += n
    assert pos == len(frame)
    cut = rnd.randrange(len(frame))
    for bad in (frame[:cut], frame + b"\x00"):
        with pytest.raises(tp.ProtocolError):
            M.decode_page_frame(bad, ram)


# -- in-process source and destination -------------------------------------------------------

class Guest:
    """A guest writing its RAM from a thread at random moments, by every
    write path (the workloads' and DMA through a view), until paused; a
    throttle in [0, 1) slows it as auto-converge would."""

    def __init__(self, mem: GuestMemory, seed: int, *, pages_per_burst: int = 4,
                 idle_s: float = 0.002, disk: Path | None = None) -> None:
        self.mem = mem
        self.rng = random.Random(seed)
        self.burst = pages_per_burst
        self.idle_s = idle_s
        self.disk_fd = os.open(disk, os.O_RDONLY) if disk is not None else None
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.parked = threading.Event()
        self.throttle = 0.0
        self.throttles: list[float] = []
        self.writes = 0
        self.at_pause: bytes | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        r, mem = self.rng, self.mem
        pages = mem.size // PAGE_SIZE
        while not self.stop.is_set():
            if self.paused.is_set():
                self.parked.set()
                time.sleep(0.0005)
                continue
            self.parked.clear()
            for _ in range(self.burst):
                gpa = r.randrange(pages) * PAGE_SIZE + r.randrange(PAGE_SIZE - 16)
                how = r.randrange(4)
                if how == 0:
                    mem.write(gpa, r.randbytes(16))
                elif how == 1:
                    mem.write_u64(gpa, r.getrandbits(64))
                elif how == 2 or self.disk_fd is None:
                    mem.fill(gpa, 16, r.randrange(256))
                else:  # DMA: a disk read straight into guest RAM, as virtio-blk does
                    v = mem.view(gpa, 16)
                    try:
                        os.preadv(self.disk_fd, [v], r.randrange(1 << 20))
                    finally:
                        v.release()
                    mem.mark_dirty(gpa, 16)
                self.writes += 1
            time.sleep(self.idle_s + self.throttle * 0.02)

    def start(self) -> Guest:
        self.thread.start()
        return self

    def pause(self) -> None:
        self.paused.set()
        assert self.parked.wait(GUARD)
        self.at_pause = self.mem.read(0, self.mem.size)

    def resume(self) -> None:
        self.paused.clear()

    def set_throttle(self, fraction: float) -> None:
        self.throttle = fraction
        self.throttles.append(fraction)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(GUARD)
        if self.disk_fd is not None:
            os.close(self.disk_fd)


def _fill(mem: GuestMemory, seed: int) -> None:
    """RAM that is not zero, so pass 1 really carries all of it."""
    block = random.Random(seed).randbytes(1 << 16)
    for gpa in range(0, mem.size, len(block)):
        mem.write(gpa, block[:min(len(block), mem.size - gpa)])


def _migrate_in_process(d: Path, opts: M.PrecopyOptions, *, memory: str = "4M",
                        guest_kw: dict | None = None, dst_memory: str | None = None,
                        throttle: bool = False):
    reg = get_registry()
    src = load_build(write_build(d, "src", backend="userspace", cpus=1, memory=memory,
                                 devices=[]), reg)
    dst = load_build(write_build(d, "dst", backend="userspace", cpus=1,
                                 memory=dst_memory or memory, devices=[]), reg)
    _fill(src.machine.memory, 1)
    dst_before = dst.machine.memory.read(0, dst.machine.memory.size)
    listener = tp.Listener(tp.Address.parse(f"unix:{d}/mig.sock"))
    out: dict = {}

    def serve() -> None:
        try:
            chan = listener.accept(timeout=GUARD)
            with chan:
                out["dst"] = M.receive(dst, chan, progress=False, timeout=GUARD)
        except Exception as e:  # reported to the test, not lost in the thread
            out["error"] = e

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    guest = Guest(src.machine.memory, 7, **(guest_kw or {})).start()
    events: list[tuple[str, dict]] = []
    try:
        chan = tp.connect(str(listener.address), timeout=GUARD)
        with chan:
            res = M.send(src, chan, timeout=GUARD, progress=False, precopy=opts,
                         pause=guest.pause, resume=guest.resume,
                         throttle=guest.set_throttle if throttle else None,
                         events=lambda n, **kw: events.append((n, kw)))
        t.join(GUARD)
    finally:
        guest.close()
        listener.close()
    assert "error" not in out, out.get("error")
    return res, out["dst"], src, dst, guest, dst_before, events


def test_destination_ram_equals_the_source_at_the_pause_byte_for_byte(short_tmp):
    """A guest writes pages behind the migration's back at random moments,
    by every write path, DMA from a file included; several passes run."""
    disk = short_tmp / "disk.img"
    M.pattern_image(disk, 1 << 20)
    res, dres, src, dst, guest, _, _ = _migrate_in_process(
        short_tmp, M.PrecopyOptions(downtime_limit=0.3, max_bandwidth=32e6),
        guest_kw={"disk": disk})
    assert res.outcome == "committed", res.error
    assert dres.outcome == "committed", dres.error
    assert res.mode == "precopy" and guest.writes > 0
    assert len(res.precopy["passes"]) >= 2 and res.precopy["passes"][-1]["final"]
    assert guest.at_pause is not None
    assert dst.machine.memory.read(0, dst.machine.memory.size) == guest.at_pause
    # the report's account holds together
    assert res.precopy["page_bytes_sent"] == sum(p["bytes"] for p in res.precopy["passes"])
    assert res.precopy["passes"][0]["bytes"] == src.machine.memory.size
    assert [p["pass"] for p in dres.precopy] == [p["pass"] for p in res.precopy["passes"]]
    assert not src.machine.memory.dirty_logging  # the log is off once it is over


def test_an_idle_guest_converges_after_one_pass_and_sends_ram_about_once(short_tmp):
    res, dres, src, dst, guest, _, _ = _migrate_in_process(
        short_tmp, M.PrecopyOptions(), guest_kw={"pages_per_burst": 0, "idle_s": 0.01})
    assert res.outcome == "committed", res.error
    pc = res.precopy
    assert pc["converged"] and [p["final"] for p in pc["passes"]] == [False, True]
    assert pc["page_bytes_sent"] == src.machine.memory.size  # nothing twice
    assert pc["expected_downtime_s"] <= pc["downtime_limit_s"]
    assert dst.machine.memory.read(0, dst.machine.memory.size) == guest.at_pause


def test_a_guest_faster_than_the_link_stops_after_max_passes_and_says_so(short_tmp):
    """The link is capped at 4 MB/s; the guest dirties far more: no loop,
    max_passes passes, then the pause with the expected downtime reported
    above the limit -- and the RAM still arrives whole."""
    opts = M.PrecopyOptions(downtime_limit=0.001, max_bandwidth=4e6, max_passes=3)
    res, _, _, dst, guest, _, _ = _migrate_in_process(
        short_tmp, opts, memory="1M", guest_kw={"pages_per_burst": 64, "idle_s": 0.0005})
    assert res.outcome == "committed", res.error
    pc = res.precopy
    assert not pc["converged"]
    assert [p["final"] for p in pc["passes"]] == [False, False, False, True]
    assert pc["expected_downtime_s"] > opts.downtime_limit
    assert pc["actual_downtime_s"] == res.paused_s
    assert dst.machine.memory.read(0, dst.machine.memory.size) == guest.at_pause


def test_auto_converge_throttles_the_guest_step_by_step_and_lets_go(short_tmp):
    opts = M.PrecopyOptions(downtime_limit=0.001, max_bandwidth=4e6, max_passes=6,
                            auto_converge=True, throttle_after=2)
    res, _, _, dst, guest, _, events = _migrate_in_process(
        short_tmp, opts, memory="1M", guest_kw={"pages_per_burst": 64, "idle_s": 0.0005},
        throttle=True)
    assert res.outcome == "committed", res.error
    levels = [kw["fraction"] for n, kw in events if n == "throttled"]
    # from pass 2 on, every pass that did not converge raises the throttle
    assert levels == pytest.approx([0.2, 0.3, 0.4, 0.5][:len(levels)]) and levels
    assert guest.throttles == levels + [0.0]  # taken off when the migration ends
    assert res.precopy["throttle"] == levels[-1]
    assert dst.machine.memory.read(0, dst.machine.memory.size) == guest.at_pause


def test_a_destination_of_another_ram_size_fails_in_pass_one_and_nothing_changes(short_tmp):
    res, dres, src, dst, guest, dst_before, _ = _migrate_in_process(
        short_tmp, M.PrecopyOptions(), memory="4M", dst_memory="8M")
    assert dres.outcome == "failed" and dres.stage == "precopy"
    assert "8388608" in dres.error and "/machine/ram" in dres.error
    assert res.outcome == "resumed" and "pre-copy pass" in res.error
    assert "never paused" in res.error and guest.at_pause is None  # the guest never stopped
    assert not src.machine.memory.dirty_logging
    assert dst.machine.memory.read(0, dst.machine.memory.size) == dst_before


def test_a_destination_without_precopy_gets_stop_and_copy(short_tmp, monkeypatch):
    monkeypatch.setattr(M, "FEATURES", ())  # what an older destination announces
    res, dres, _, dst, guest, _, _ = _migrate_in_process(short_tmp, M.PrecopyOptions())
    assert res.outcome == "committed" and res.mode == "stop-and-copy"
    assert any("stop-and-copy" in n for n in res.mode_notes)
    assert res.precopy is None and dres.precopy is None
    assert dst.machine.memory.read(0, dst.machine.memory.size) == guest.at_pause


# -- a hostile source: runs that do not fit ---------------------------------------------------

def _hostile(d: Path, runs: list[bytes], pass_msg: dict | None):
    """A destination thread; this side plays a source that sends ``runs``
    as pass 1 (then ``pass_msg``)."""
    reg = get_registry()
    dst = load_build(write_build(d, "dst", backend="userspace", cpus=1, memory="1M",
                                 devices=[]), reg)
    dst.machine.memory.write(0, b"before")
    before = dst.machine.memory.read(0, dst.machine.memory.size)
    listener = tp.Listener(tp.Address.parse(f"unix:{d}/h.sock"))
    out: dict = {}

    def serve() -> None:
        with listener.accept(timeout=GUARD) as chan:
            out["dst"] = M.receive(dst, chan, progress=False, timeout=GUARD)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with tp.connect(str(listener.address), timeout=GUARD) as chan:
        kind, hello = chan.recv_msg(GUARD)
        assert kind == tp.HELLO and "precopy" in hello["features"]
        chan.send_msg(tp.OFFER, {"protocol": M.PROTOCOL, "build": "evil", "backend": "x",
                                 "plugins": {}, "filtered_by": "destination",
                                 "session": hello["session"], "source_session": "0" * 32,
                                 "precopy": {"path": "/machine/ram", "size": 1 << 20,
                                             "page_size": PAGE_SIZE}})
        digest = hashlib.sha256()
        for r in runs:
            chan.send(tp.DATA, r)
            digest.update(r)
        if pass_msg is not None:
            chan.send_msg(tp.PASS, {"sha256": digest.hexdigest(), **pass_msg,
                                    "session": hello["session"]})
        t.join(GUARD)
    listener.close()
    assert dst.machine.memory.read(0, dst.machine.memory.size) == before
    return out["dst"]


def page_frame(runs: list[tuple[int, int]], data: bytes | None = None) -> bytes:
    """A page frame as docs/cli.md describes it, written here from the text
    (count, then address and length per run, then the pages)."""
    head = struct.pack(">I", len(runs)) + b"".join(struct.pack(">QI", g, n) for g, n in runs)
    return head + (data if data is not None else b"\x01" * sum(n for _, n in runs))


@pytest.mark.parametrize("frame, words", [
    (page_frame([(1 << 20, PAGE_SIZE)]), "inside"),  # past the end of RAM
    (page_frame([(100, PAGE_SIZE)]), "whole 4096-byte pages"),  # not aligned
    (page_frame([(0, 100)]), "whole 4096-byte pages"),  # not whole pages
    (page_frame([(0, PAGE_SIZE)], bytes(10)), "announce 4096 bytes"),  # pages missing
    (page_frame([(0, PAGE_SIZE)], bytes(2 * PAGE_SIZE)), "the frame holds 8192"),
    (struct.pack(">I", 5) + bytes(12), "5 runs do not fit"),
    (b"\x00", "cannot hold a run count"),
])
def test_a_run_that_does_not_fit_is_refused_naming_pass_and_offset(short_tmp, frame, words):
    res = _hostile(short_tmp, [page_frame([(0, PAGE_SIZE)]), frame], None)
    assert res.outcome == "failed" and res.stage == "precopy"
    assert words in res.error and "pass 1, frame at wire offset" in res.error, res.error


def test_a_bad_run_after_good_ones_in_one_frame_writes_none_of_them(short_tmp):
    res = _hostile(short_tmp, [page_frame([(0, PAGE_SIZE), (1 << 20, PAGE_SIZE)])], None)
    assert res.outcome == "failed" and "run 2" in res.error


def test_a_pass_whose_checksum_does_not_match_is_refused(short_tmp):
    res = _hostile(short_tmp, [page_frame([(0, PAGE_SIZE)])],
                   {"pass": 1, "runs": 1, "bytes": PAGE_SIZE, "final": True,
                    "sha256": "0" * 64})
    assert res.outcome == "failed" and "checksum mismatch" in res.error


def test_a_pass_that_lies_about_what_it_brought_is_refused(short_tmp):
    res = _hostile(short_tmp, [page_frame([(0, PAGE_SIZE)])],
                   {"pass": 1, "runs": 2, "bytes": 2 * PAGE_SIZE, "final": True})
    assert res.outcome == "failed" and "brought 1 runs" in res.error


# -- the fault matrix, in the pre-copy phase --------------------------------------------------

@pytest.fixture
def pair(short_tmp):
    return make_pair(short_tmp)


def _serve(pair):
    return start_serve(pair.dst, pair.dir, f"unix:{pair.dir}/d.sock", "--workload",
                       pair.workloads)


@pytest.fixture(scope="module")
def precopy_layout(tmp_path_factory):
    """Where each frame lies in a clean pre-copy migration of the pair (an
    idle source: the same pages every run)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="mt-"))
    try:
        pair = make_pair(d)
        dst, addr = _serve(pair)
        proxy = FaultProxy(d / "p.sock", addr.removeprefix("unix:"))
        src = Source(pair, SEED)
        try:
            res = src.migrate(proxy.address, precopy=M.PrecopyOptions())
        finally:
            src.close()
            proxy.close()
        assert res.outcome == "committed", res.error
        assert dst.wait() == 0
        s2d = frames(bytes(proxy.data["s2d"]))
        kinds = [k for k, *_ in s2d]
        # OFFER, pass 1's runs, PASS, the final PASS (no page dirtied), the stream
        assert kinds[0] == tp.OFFER and kinds.count(tp.PASS) == 2, kinds
        return s2d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _nth(layout, kind, n=0):
    return [(s, e) for k, s, e in layout if k == kind][n]


#: name -> (where to cut, whether the source must never have paused)
PRECOPY_CUTS = {
    # pass 1, while the source runs: it hears of the cut in the pass and
    # never pauses
    "first-run": (lambda L: _nth(L, tp.DATA, 0)[0] + 100, True),
    "mid-pass-1": (lambda L: (_nth(L, tp.DATA, 0)[0] + _nth(L, tp.PASS, 0)[0]) // 2, True),
    # in pass 1's PASS: the kernel may take the whole frame before the cut is
    # seen, so the source may already have paused for the final pass
    "pass-1-end": (lambda L: _nth(L, tp.PASS, 0)[0] + 3, None),
    # the final pass, the source paused: it resumes
    "final-pass": (lambda L: _nth(L, tp.PASS, 1)[0] + 3, False),
}


def test_a_byte_flipped_in_a_page_of_pass_1_is_caught(pair, precopy_layout):
    """Inside guest RAM only a checksum can tell: the pass's SHA-256."""
    a, b = _nth(precopy_layout, tp.DATA, 0)
    k = b - 1000  # page bytes, well past the frame's run table
    dst, addr = _serve(pair)
    proxy = FaultProxy(pair.dir / "p.sock", addr.removeprefix("unix:"), flip_s2d=k)
    src = Source(pair, SEED)
    try:
        res = src.migrate(proxy.address, precopy=M.PrecopyOptions())
        report = assert_destination_unchanged(pair, dst, {"failed"})
        assert_source_intact(src, res, {"resumed"})
    finally:
        src.close()
        proxy.close()
        dst.kill()
    assert report["stage"] == "precopy" and "checksum mismatch" in report["error"]
    # the destination hangs up mid-stream: the source hears its FAILED or
    # only the hang-up, depending on what it was doing then
    assert any(w in res.error for w in ("checksum mismatch", "closed the connection",
                                        "broke")), res.error


@pytest.mark.parametrize("name", list(PRECOPY_CUTS))
def test_cut_during_a_precopy_pass_leaves_both_sides_as_they_were(pair, precopy_layout,
                                                                  name):
    where, never_paused = PRECOPY_CUTS[name]
    n = where(precopy_layout)
    dst, addr = _serve(pair)
    proxy = FaultProxy(pair.dir / "p.sock", addr.removeprefix("unix:"), cut_s2d=n)
    src = Source(pair, SEED)
    try:
        res = src.migrate(proxy.address, precopy=M.PrecopyOptions())
        assert_destination_unchanged(pair, dst, {"failed"})
        assert res.mode == "precopy"
        assert not src.build.machine.memory.dirty_logging
        assert_source_intact(src, res, {"resumed"})
    finally:
        src.close()
        proxy.close()
        dst.kill()
    assert any(w in res.error for w in ("closed the connection", "broke")), res.error
    if never_paused:
        assert src.paused == 0 and "pre-copy pass 1 failed" in res.error
        assert "never paused" in res.error
    elif never_paused is False:
        assert src.paused == 1 and src.resumed == 1


# -- the command line --------------------------------------------------------------------------

def test_send_options_reach_the_migration_and_its_report(pair):
    dst, addr = _serve(pair)
    src = Proc(migtree_cmd("send", str(pair.src), "--to", addr, "--workload", pair.workloads,
                           "--seed", str(SEED), "--json", "--downtime-limit", "250",
                           "--max-bandwidth", "64M", "--max-passes", "4"), pair.dir, "src")
    assert src.wait() == 0, src.stderr
    assert dst.wait() == 0, dst.stderr
    s = src.json()
    pc = s["precopy"]
    assert s["mode"] == "precopy" and s["outcome"] == "committed"
    assert pc["downtime_limit_s"] == 0.25 and pc["max_passes"] == 4
    assert pc["max_bandwidth_Bps"] == 64 << 20  # binary units, as every size in migtree
    assert 2 <= pc["pass_count"] <= 5 and pc["passes"][-1]["final"]
    assert pc["actual_downtime_s"] == s["paused_s"]


def test_send_refuses_a_nonsense_downtime_limit(pair):
    p = Proc(migtree_cmd("send", str(pair.src), "--to", "unix:/nonexistent", "--downtime-limit",
                         "0"), pair.dir, "src")
    assert p.wait() != 0
    assert "downtime limit must be positive" in p.stderr


def test_cut_in_a_later_pass_with_the_guest_writing_leaves_both_sides_as_they_were(short_tmp):
    """Pass 1 carries all 4 MiB (RAM is not zero); the cut falls 200 kB into
    pass 2 while the guest keeps dirtying pages: the source never pauses and
    runs on with the log off, the destination's RAM is untouched."""
    reg = get_registry()
    src = load_build(write_build(short_tmp, "src", backend="userspace", cpus=1, memory="4M",
                                 devices=[]), reg)
    dst = load_build(write_build(short_tmp, "dst", backend="userspace", cpus=1, memory="4M",
                                 devices=[]), reg)
    _fill(src.machine.memory, 1)
    dst_before = dst.machine.memory.read(0, dst.machine.memory.size)
    listener = tp.Listener(tp.Address.parse(f"unix:{short_tmp}/d.sock"))
    out: dict = {}

    def serve() -> None:
        with listener.accept(timeout=GUARD) as chan:
            out["dst"] = M.receive(dst, chan, progress=False, timeout=GUARD)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    proxy = FaultProxy(short_tmp / "p.sock", f"{short_tmp}/d.sock",
                       cut_s2d=(4 << 20) + 200_000)
    guest = Guest(src.machine.memory, 5, pages_per_burst=64, idle_s=0.0005).start()
    try:
        with tp.connect(proxy.address, timeout=GUARD) as chan:
            res = M.send(src, chan, timeout=GUARD, progress=False,
                         precopy=M.PrecopyOptions(downtime_limit=1e-6, max_passes=8),
                         pause=guest.pause, resume=guest.resume)
        t.join(GUARD)
    finally:
        guest.close()
        proxy.close()
        listener.close()
    assert res.outcome == "resumed" and guest.at_pause is None  # never paused
    failed_in = int(res.error.split("pre-copy pass ")[1].split()[0])
    assert failed_in >= 2 and "never paused" in res.error
    assert [p["pass"] for p in res.precopy["passes"]][:1] == [1]
    assert not src.machine.memory.dirty_logging
    assert out["dst"].outcome == "failed" and out["dst"].stage == "precopy"
    assert dst.machine.memory.read(0, dst.machine.memory.size) == dst_before


# -- processes that die during pre-copy ---------------------------------------------------------

def test_destination_killed_after_pass_1(pair):
    dst, addr = start_serve(pair.dst, pair.dir, f"unix:{pair.dir}/d.sock", "--workload",
                            pair.workloads, child=["--kill-at", "pass"])
    src = Source(pair, SEED)
    try:
        res = src.migrate(addr, precopy=M.PrecopyOptions())
        assert dst.wait() == -9
        assert not src.build.machine.memory.dirty_logging
        assert_source_intact(src, res, {"resumed"})
    finally:
        src.close()
    assert "closed the connection" in res.error or "broke" in res.error, res.error


def test_source_killed_after_pass_1(pair):
    """``migtree send`` (pre-copy by default) dies after its first pass: the
    destination never loaded anything, its RAM staging is dropped, its
    state is what it was, and the shared disk is as the source left it."""
    dst, addr = _serve(pair)
    src = Proc(child_cmd("--kill-at", "pass", "--", "send", str(pair.src), "--to", addr,
                         "--workload", pair.workloads, "--seed", str(SEED)),
               pair.dir, "src")
    assert src.wait() == -9
    report = assert_destination_unchanged(pair, dst, {"failed"})
    assert report["stage"] == "precopy"
    assert pair.disk_sha() == reference(pair.ref_src, pair.workloads, SEED, finish=False)["disk"]


def test_loaded_lost_after_precopy_puts_the_destinations_own_ram_back(pair):
    """The destination adopted the pre-copied RAM at load; LOADED never
    reaches the source, so no COMMIT comes: the destination puts back the
    state (RAM included) it had before, the source resumes."""
    dst, addr = _serve(pair)
    proxy = FaultProxy(pair.dir / "p.sock", addr.removeprefix("unix:"),
                       drop_frame=("d2s", tp.LOADED))
    src = Source(pair, SEED)
    try:
        res = src.migrate(proxy.address, precopy=M.PrecopyOptions())
        report = assert_destination_unchanged(pair, dst, {"rolled-back"})
        assert_source_intact(src, res, {"resumed"})
    finally:
        src.close()
        proxy.close()
        dst.kill()
    assert report["precopy"] and report["precopy"][-1]["final"]
    assert src.paused == 1 and src.resumed == 1
