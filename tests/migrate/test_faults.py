"""The fault matrix of a live migration (issue 7): whatever breaks, the
source resumes with exactly the state it had and finishes its work with
nothing lost, and the destination changes nothing -- or, past the commit,
the destination runs and the source stays stopped.

The destination is always a separate process (``migtree serve``, or
``mig_child.py`` around it when it must die or carry a broken filter); the
source runs in this process so the test can compare its state before and
after, except where it must itself be killed.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
from pathlib import Path

import pytest
from mig_helpers import (
    FaultProxy,
    Proc,
    child_cmd,
    frames,
    migtree_cmd,
    plain,
    start_serve,
    state_bytes,
    tree_of,
    wait_for_text,
)
from mig_pairs import Source, kvm_ok, make_pair, reference

from migtree import transport as tp
from migtree.build import load_build
from migtree.plugins import get_registry
from migtree.transport import TlsConfig

SEED = 3


@pytest.fixture
def pair(short_tmp):
    return make_pair(short_tmp)


def fresh_state(path: Path) -> dict:
    b = load_build(path, get_registry())
    return plain(tree_of(state_bytes(b)))


def serve(pair, *extra, **kw):
    return start_serve(pair.dst, pair.dir, f"unix:{pair.dir}/d.sock", "--workload",
                       pair.workloads, *extra, **kw)


def assert_destination_unchanged(pair, dst: Proc, outcomes: set[str]) -> dict:
    rc = dst.wait()
    report = dst.json()
    assert rc == 1, report
    assert report["outcome"] in outcomes, report
    # what the destination holds at the end is what a fresh build holds
    assert plain(tree_of(pair.dir / "dst.final.mt")) == fresh_state(pair.dst)
    return report


def assert_source_intact(src: Source, res, outcomes: set[str]) -> None:
    assert res.outcome in outcomes, res
    assert src.state() == src.before  # byte for byte: the same state
    if src.paused:
        assert src.resumed == 1
        assert src.disk_at_resume == src.disk_at_pause  # the destination wrote nothing
    # it runs on, and finishes as a source that never tried to migrate
    assert src.finish_here() == reference(src.pair.ref_src, src.pair.workloads, src.seed)


# -- the baseline: every check below holds when nothing breaks ------------------------------

def test_clean_migration_commits_and_matches_a_build_that_never_migrated(pair):
    dst, addr = serve(pair)
    src = Source(pair, SEED)
    try:
        res = src.migrate(addr)
    finally:
        src.close()
    assert res.outcome == "committed", res.error
    assert src.paused == 1 and src.resumed == 0
    assert dst.wait() == 0
    report = dst.json()
    assert report["outcome"] == "committed"
    chains = {a["path"]: a["filter"] for a in report["filters"]["applications"]}
    assert chains["/machine/peripheral/vblk0"] == "virtio-blk-pci-split"
    ref = reference(pair.ref_dst, pair.workloads, SEED)
    assert report["workloads"] == ref["checks"]
    assert pair.disk_sha() == ref["disk"]


# -- the connection cut at many points ------------------------------------------------------

@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """Where each frame lies in a clean migration's bytes, both directions."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="mt-cal-"))
    try:
        pair = make_pair(d)
        dst, addr = serve(pair)
        proxy = FaultProxy(d / "p.sock", addr.removeprefix("unix:"))
        src = Source(pair, SEED)
        try:
            res = src.migrate(proxy.address)
        finally:
            src.close()
            proxy.close()
        assert res.outcome == "committed", res.error
        assert dst.wait() == 0
        s2d, d2s = frames(bytes(proxy.data["s2d"])), frames(bytes(proxy.data["d2s"]))
        assert [k for k, *_ in s2d if k != tp.DATA] == [tp.OFFER, tp.END, tp.COMMIT]
        assert [k for k, *_ in d2s] == [tp.HELLO, tp.LOADED, tp.DONE]
        return {"s2d": s2d, "d2s": d2s}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _at(layout, kind, direction="s2d"):
    return next((s, e) for k, s, e in layout[direction] if k == kind)


def _data_span(layout):
    data = [(s, e) for k, s, e in layout["s2d"] if k == tp.DATA]
    return data[0][0], data[-1][1]


#: name -> (direction, where to cut, what the source ends as, what the destination ends as)
CUTS = {
    # cut before the preamble is through: not a migration yet, the
    # destination logs the peer as refused and goes on waiting (or, when the
    # source's preamble got through before the cut, fails at HELLO/OFFER)
    "s2d-nothing": ("s2d", lambda L: 0, {"refused"}, {"waiting", "failed"}),
    "s2d-in-preamble": ("s2d", lambda L: 3, {"refused"}, {"waiting", "failed"}),
    # the source pauses after OFFER is out: whether its second write of the
    # frame saw the cut decides between the two, both safe
    "s2d-offer-header": ("s2d", lambda L: _at(L, tp.OFFER)[0] + 2, {"refused", "resumed"},
                         {"failed"}),
    "s2d-offer-whole": ("s2d", lambda L: _at(L, tp.OFFER)[1], {"resumed"}, {"failed"}),
    "s2d-first-data": ("s2d", lambda L: _data_span(L)[0] + 100, {"resumed"}, {"failed"}),
    "s2d-data-10%": ("s2d", lambda L: _frac(L, 0.10), {"resumed"}, {"failed"}),
    "s2d-data-30%": ("s2d", lambda L: _frac(L, 0.30), {"resumed"}, {"failed"}),
    "s2d-data-50%": ("s2d", lambda L: _frac(L, 0.50), {"resumed"}, {"failed"}),
    "s2d-data-70%": ("s2d", lambda L: _frac(L, 0.70), {"resumed"}, {"failed"}),
    "s2d-data-90%": ("s2d", lambda L: _frac(L, 0.90), {"resumed"}, {"failed"}),
    "s2d-last-data-byte": ("s2d", lambda L: _data_span(L)[1] - 1, {"resumed"}, {"failed"}),
    "s2d-footer-only-missing": ("s2d", lambda L: _data_span(L)[1] - 45, {"resumed"},
                                {"failed"}),
    "s2d-in-end": ("s2d", lambda L: _at(L, tp.END)[0] + 3, {"resumed"}, {"failed"}),
    "d2s-nothing": ("d2s", lambda L: 0, {"refused"}, {"waiting", "failed"}),
    "d2s-in-hello": ("d2s", lambda L: _at(L, tp.HELLO, "d2s")[0] + 40, {"refused"},
                     {"failed"}),
    "d2s-loaded-lost": ("d2s", lambda L: _at(L, tp.LOADED, "d2s")[0], {"resumed"},
                        {"rolled-back"}),  # HELLO's size does not vary; LOADED's does
}


def _frac(layout, f):
    a, b = _data_span(layout)
    return a + int((b - a) * f)


@pytest.mark.parametrize("name", list(CUTS))
def test_connection_cut(pair, layout, name):
    direction, where, src_outcomes, dst_outcomes = CUTS[name]
    n = where(layout)
    dst, addr = serve(pair)
    proxy = FaultProxy(pair.dir / "p.sock", addr.removeprefix("unix:"),
                       **{f"cut_{direction}": n})
    src = Source(pair, SEED)
    try:
        res = src.migrate(proxy.address)
        if "waiting" in dst_outcomes and wait_for_text(dst, "refused a connection"):
            assert dst.p.poll() is None  # still listening for a real source
            dst.kill()
            report = {"error": "closed the connection"}
        else:
            report = assert_destination_unchanged(pair, dst, dst_outcomes - {"waiting"})
        assert_source_intact(src, res, src_outcomes)
    finally:
        src.close()
        proxy.close()
        dst.kill()
    # the error names the cause
    assert any(w in res.error for w in ("closed the connection", "broke")), res.error
    assert any(w in report["error"] for w in ("closed the connection", "broke")), report["error"]
    if res.outcome == "refused":
        assert src.paused == 0  # cut before the source ever paused


def test_cut_after_commit_sent_keeps_both_sides_safe(pair, layout):
    """COMMIT reaches the wire but not the destination: the destination puts
    its previous state back; the source cannot know, so it stays stopped and
    keeps its state in a stream file -- nothing lost, nothing run twice."""
    dst, addr = serve(pair)
    proxy = FaultProxy(pair.dir / "p.sock", addr.removeprefix("unix:"),
                       drop_frame=("s2d", tp.COMMIT))
    src = Source(pair, SEED)
    try:
        res = src.migrate(proxy.address)
        assert_destination_unchanged(pair, dst, {"rolled-back"})
        assert res.outcome == "unconfirmed" and src.resumed == 0
        assert res.kept_state and Path(res.kept_state).exists()
        assert plain(tree_of(res.kept_state)) == plain(tree_of(src.before))
        assert src.state() == src.before
    finally:
        src.close()
        proxy.close()


def test_done_lost_destination_runs_source_stays_stopped(pair, layout):
    dst, addr = serve(pair)
    proxy = FaultProxy(pair.dir / "p.sock", addr.removeprefix("unix:"),
                       drop_frame=("d2s", tp.DONE))
    src = Source(pair, SEED)
    try:
        res = src.migrate(proxy.address)
    finally:
        src.close()
        proxy.close()
    assert dst.wait() == 0 and dst.json()["outcome"] == "committed"
    assert res.outcome == "unconfirmed" and src.resumed == 0
    assert dst.json()["workloads"] == reference(pair.ref_dst, pair.workloads, SEED)["checks"]


# -- corrupted bytes ------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["ram-chunk", "late-ram-chunk", "first-section"])
def test_corrupted_byte_is_caught(pair, layout, where):
    a, b = _data_span(layout)
    k = {"ram-chunk": (a + b) // 2, "late-ram-chunk": b - 100_000,
         "first-section": a + 40}[where]
    k += 5 if any(s <= k < s + 5 for _, s, _ in layout["s2d"]) else 0  # not a frame header
    dst, addr = serve(pair)
    proxy = FaultProxy(pair.dir / "p.sock", addr.removeprefix("unix:"), flip_s2d=k)
    src = Source(pair, SEED)
    try:
        res = src.migrate(proxy.address)
        report = assert_destination_unchanged(pair, dst, {"failed"})
        assert_source_intact(src, res, {"resumed"})
    finally:
        src.close()
        proxy.close()
    assert report["stage"] == "stream"
    if where != "first-section":  # inside guest RAM only the footer's SHA-256 can tell
        assert "checksum mismatch" in report["error"], report["error"]
    assert "could not load the state" in res.error


# -- processes that die ----------------------------------------------------------------------------

def test_destination_killed_mid_load(pair):
    dst, addr = serve(pair, child=["--kill-at", "loading"])
    src = Source(pair, SEED)
    try:
        res = src.migrate(addr)
        assert dst.wait() == -9
        assert_source_intact(src, res, {"resumed"})
    finally:
        src.close()
    assert "closed the connection" in res.error or "broke" in res.error


def test_source_killed_after_sending(pair):
    dst, addr = serve(pair)
    src = Proc(child_cmd("--kill-at", "sent", "--", "send", str(pair.src), "--to", addr,
                         "--workload", pair.workloads, "--seed", str(SEED)),
               pair.dir, "src")
    assert src.wait() == -9
    report = assert_destination_unchanged(pair, dst, {"rolled-back"})
    assert "did not commit" in report["error"]
    # the disk holds what the source left at its pause: the destination wrote nothing
    assert pair.disk_sha() == reference(pair.ref_src, pair.workloads, SEED, finish=False)["disk"]


# -- a filter that raises; a plugin the destination lacks ----------------------------------------

def test_filter_that_raises(pair):
    dst, addr = serve(pair, child=["--raise-in-filter", "virtio-blk-pci-split"])
    src = Source(pair, SEED)
    try:
        res = src.migrate(addr)
        report = assert_destination_unchanged(pair, dst, {"failed"})
        assert_source_intact(src, res, {"resumed"})
    finally:
        src.close()
    assert report["stage"] == "filters"
    assert "virtio-blk-pci-split" in report["error"] and "injected bug" in report["error"]
    assert "/machine/peripheral/vblk0" in report["error"]
    assert "virtio-blk-pci-split" in res.error


@pytest.mark.skipif(not kvm_ok(), reason="needs a KVM source (kvm-apic), so /dev/kvm")
def test_destination_lacking_a_plugin_is_refused_before_the_source_pauses(pair):
    """Only the destination may filter (--filter-on destination), and it
    lacks the plugin with the chain: refused before the source pauses."""
    dst, addr = serve(pair, env={"MIGTREE_DISABLE_PLUGINS": "migtree-kvm"})
    src = Source(pair, SEED)
    try:
        res = src.migrate(addr, filter_side="destination")
        assert_destination_unchanged(pair, dst, {"refused"})
        assert_source_intact(src, res, {"refused"})
    finally:
        src.close()
    assert src.paused == 0 and "paused" not in src.events
    assert "pre-flight" in res.error and "never paused" in res.error
    assert "/machine/unattached/device[0]/lapic" in res.error
    assert "kvm-apic@1" in res.error and "apic@3" in res.error
    gaps = [e for e in res.check["entries"] if e["status"] == "gap"]
    assert [g["path"] for g in gaps] == ["/machine/unattached/device[0]/lapic",
                                         "/machine/unattached/device[1]/lapic"]


@pytest.mark.skipif(not kvm_ok(), reason="needs a KVM source (kvm-apic), so /dev/kvm")
def test_destination_lacking_a_plugin_gets_the_state_filtered_by_the_source(pair):
    """The rule (docs/cli.md, "Who runs the filters"): the source has the
    kvm plugin's static kvm-apic -> apic filter the destination lacks, so it
    filters before sending; the destination runs nothing and ends as a build
    that never migrated."""
    dst, addr = serve(pair, env={"MIGTREE_DISABLE_PLUGINS": "migtree-kvm"})
    src = Source(pair, SEED)
    try:
        res = src.migrate(addr)
    finally:
        src.close()
    assert res.outcome == "committed", res.error
    assert res.filtered_by == "source"
    on_source = {a["path"]: a["before"] for a in res.source_filters["applications"]}
    assert on_source["/machine/unattached/device[0]/lapic"] == "kvm-apic@1"
    assert dst.wait() == 0
    report = dst.json()
    assert report["filtered_by"] == "source"
    assert report["filters"]["applications"] == []
    ref = reference(pair.ref_dst, pair.workloads, SEED)
    assert report["workloads"] == ref["checks"]
    assert pair.disk_sha() == ref["disk"]


def test_protocol_version_mismatch_refused_up_front(pair, monkeypatch):
    from migtree import migration

    dst, addr = serve(pair)
    spoken = migration.PROTOCOL
    monkeypatch.setattr(migration, "PROTOCOL", 99)  # this source speaks another version
    src = Source(pair, SEED)
    try:
        res = src.migrate(addr)
        assert_destination_unchanged(pair, dst, {"refused"})
        assert_source_intact(src, res, {"refused"})
    finally:
        src.close()
    assert f"protocol {spoken}" in res.error and src.paused == 0


# -- TLS: a client without a valid certificate ---------------------------------------------------

def _tls_serve(pair, certs):
    return start_serve(pair.dst, pair.dir, "tls:127.0.0.1:0", "--workload", pair.workloads,
                       "--cert", certs.server.cert, "--key", certs.server.key,
                       "--ca", certs.ca)


@pytest.mark.parametrize("client", ["no-certificate", "untrusted-ca"])
def test_tls_client_without_a_valid_certificate_is_refused(pair, certs, client):
    dst, addr = _tls_serve(pair, certs)
    host, port = tp.Address.parse(addr).host, tp.Address.parse(addr).port
    ctx = ssl.create_default_context(cafile=certs.ca)
    if client == "untrusted-ca":
        ctx.load_cert_chain(certs.rogue_client.cert, certs.rogue_client.key)
    # the intruder tries to push a stream of its own
    with pytest.raises((ssl.SSLError, OSError)):
        with socket.create_connection((host, port), timeout=30) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(tp.PREAMBLE + struct.pack(">BI", tp.OFFER, 2) + b"{}")
                if not s.recv(1):
                    raise ConnectionError("closed")
    # the destination logged the refusal and still waits for the real source
    src = Source(pair, SEED)
    try:
        good = TlsConfig(certs.client.cert, certs.client.key, certs.ca, server_name="localhost")
        res = src.migrate(addr, tls=good)
    finally:
        src.close()
    assert res.outcome == "committed", res.error
    assert dst.wait() == 0
    report = dst.json()
    assert len(report["refused_peers"]) == 1
    assert "refused a connection from 127.0.0.1" in dst.stderr
    # nothing of the intruder's was read into the tree: the state is the real source's
    assert report["workloads"] == reference(pair.ref_dst, pair.workloads, SEED)["checks"]


# -- the security rules, as the command line applies them ----------------------------------------

def test_cli_refuses_plaintext_off_loopback(pair):
    p = Proc(migtree_cmd("serve", str(pair.dst), "--listen", "tcp:0.0.0.0:0",
                         "--allow-plaintext"), pair.dir, "srv")
    assert p.wait() == 1
    assert "non-loopback" in p.stderr and "mutual TLS" in p.stderr
    p = Proc(migtree_cmd("send", str(pair.src), "--to", "tcp:192.0.2.1:4444",
                         "--allow-plaintext"), pair.dir, "snd")
    assert p.wait() == 1
    assert "non-loopback" in p.stderr
    assert "Traceback" not in p.stderr


def test_cli_refuses_loopback_plaintext_without_the_flag(pair):
    p = Proc(migtree_cmd("serve", str(pair.dst), "--listen", "tcp:127.0.0.1:0"), pair.dir,
             "srv")
    assert p.wait() == 1
    assert "--allow-plaintext" in p.stderr


# -- every transport, both sides as `migtree` processes ------------------------------------------

@pytest.mark.parametrize("via", ["unix", "tcp", "tls", "file"])
def test_serve_and_send_over(pair, certs, via):
    listen = {"unix": f"unix:{pair.dir}/d.sock", "tcp": "tcp:127.0.0.1:0",
              "tls": "tls:127.0.0.1:0", "file": f"file:{pair.dir}/rv"}[via]
    extra: list[str] = []
    if via == "tcp":
        extra = ["--allow-plaintext"]
    tls_dst = tls_src = []
    if via == "tls":
        tls_dst = ["--cert", certs.server.cert, "--key", certs.server.key, "--ca", certs.ca]
        tls_src = ["--cert", certs.client.cert, "--key", certs.client.key, "--ca", certs.ca,
                   "--server-name", "localhost"]
    dst, addr = start_serve(pair.dst, pair.dir, listen, "--workload", pair.workloads,
                            *extra, *tls_dst)
    src = Proc(migtree_cmd("send", str(pair.src), "--to", addr, "--workload", pair.workloads,
                           "--seed", str(SEED), "--json", *extra, *tls_src), pair.dir, "src")
    assert src.wait() == 0, src.stderr
    assert dst.wait() == 0, dst.stderr
    s, d = src.json(), dst.json()
    assert s["outcome"] == d["outcome"] == "committed"
    assert s["stream_bytes"] == d["stream_bytes"]
    assert s["mode"] == "precopy"  # the default with a destination of this release
    # guest RAM went over, page by page, before the stream
    assert s["precopy"]["page_bytes_sent"] == sum(p["bytes"] for p in d["precopy"]) > 0
    assert s["paused_s"] is not None
    assert d["workloads"] == reference(pair.ref_dst, pair.workloads, SEED)["checks"]


def test_send_report_text(pair):
    dst, addr = serve(pair)
    src = Proc(migtree_cmd("send", str(pair.src), "--to", addr, "--workload", pair.workloads,
                           "--seed", str(SEED)), pair.dir, "src")
    assert src.wait() == 0, src.stderr
    assert dst.wait() == 0
    out = src.stdout
    assert "committed" in out and "virtio-blk-pci-split" in out and "paused for" in out


def test_no_traceback_when_the_destination_is_not_there(pair):
    p = Proc(migtree_cmd("send", str(pair.src), "--to", f"unix:{pair.dir}/nobody.sock"),
             pair.dir, "snd")
    assert p.wait() == 1
    assert "cannot connect" in p.stderr and "Traceback" not in p.stderr


def test_json_reports_are_json(pair):
    dst, addr = serve(pair)
    src = Proc(migtree_cmd("send", str(pair.src), "--to", addr, "--json"), pair.dir, "src")
    assert src.wait() == 0
    # the source started no workload, so the destination's finish has nothing to
    # pick up: the migration committed, the workload failed, and the JSON says so
    assert dst.wait() == 1
    s, d = json.loads(src.stdout), json.loads(dst.stdout)
    assert s["outcome"] == d["outcome"] == "committed"
    assert "virtio-blk-io" in d["workload_error"]



def test_source_device_that_fails_to_save(pair):
    """A device's pre_save raises (a plugin bug) halfway through the stream:
    the destination is told, drops what it got; the source resumes."""
    dst, addr = serve(pair)
    src = Source(pair, SEED)
    dev = next(o for o in src.build.root.walk() if o.TYPE == "virtio-blk-pci")

    def broken() -> None:
        raise RuntimeError("injected pre_save bug")

    dev.pre_save = broken
    try:
        res = src.migrate(addr)
        del dev.pre_save  # the bug is gone; the source runs on
        report = assert_destination_unchanged(pair, dst, {"failed"})
        assert_source_intact(src, res, {"resumed"})
    finally:
        src.close()
    assert "RuntimeError: injected pre_save bug" in res.error
    assert "the source gave up" in report["error"] and "injected pre_save bug" in report["error"]
