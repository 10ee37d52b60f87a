"""``migtree relay``: live migrations between real QEMUs of different versions,
converted in flight, and every way one can fail safely.

Each test starts real QEMUs (the host's 7.2; 5.2 and 10.0 from the
project's chroots, skipped with the reason when they cannot be had), runs
the real ``migtree relay`` CLI between them and migrates over unix sockets.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import qemu_relay as qr
from qemu_streams import StreamConfig, make_disk, qemu_build, wait_guest_ran, wait_serial

pytestmark = [pytest.mark.qemu]

#: what a Linux guest prints when a device broke under it
KERNEL_ERRORS = ("I/O error", "Oops", "BUG:", "Call Trace", "timed out", "Kernel panic")


def _config(version: str, machine: str, guest=None, memory: int = 64) -> StreamConfig:
    return StreamConfig(machine=machine, accel="tcg", smp=1, running=True, qemu=version,
                        memory=memory, guest=guest)


def _dump(cfg: StreamConfig, workdir: Path) -> Path:
    import qemu_streams

    return qemu_streams.dump_vmstate(workdir, cfg.machine, cfg.qemu)


def _live_migration(tmp_path: Path, src_cfg: StreamConfig, dst_cfg: StreamConfig,
                    *, observe: bool = False, relay_extra: tuple[str, ...] = ()):
    """Source running its guest -> migtree relay -> destination; returns
    (source vm, destination vm, relay result JSON, relay stderr, proxies).
    The caller stops the VMs."""
    for cfg in (src_cfg, dst_cfg):
        qemu_build(cfg.qemu)  # skips, saying why, when that QEMU cannot be had
    socks = qr.short_dir()
    disk = make_disk(tmp_path / "disk.qcow2")
    src_serial, dst_serial = tmp_path / "src.serial", tmp_path / "dst.serial"
    dump = _dump(dst_cfg, tmp_path)
    src = qr.qemu_vm(src_cfg, src_cfg.args(disk, src_serial)
                     + qr.control_args(socks / "src-qmp.sock"), tmp_path, "src").start()
    dst = qr.qemu_vm(dst_cfg, qr.destination_args(dst_cfg, disk, dst_serial,
                                                  f"unix:{socks}/dst.sock")
                     + qr.control_args(socks / "dst-qmp.sock"), tmp_path, "dst").start()
    src.serial, dst.serial = src_serial, dst_serial
    try:
        if src_cfg.guest:
            wait_serial(src, src_serial, "MIGTREE-IO ", count=10)
        else:
            wait_guest_ran(src)
        relay_to, source_uri, proxies = f"unix:{socks}/dst.sock", f"unix:{socks}/relay.sock", []
        if observe:  # independent observers of both sides of the relay
            proxies = [qr.RecordingProxy(f"{socks}/dst-proxy.sock", f"{socks}/dst.sock")]
            relay_to = f"unix:{socks}/dst-proxy.sock"
        proc, out, err = qr.start_relay(f"unix:{socks}/relay.sock", relay_to, dump, tmp_path,
                                        "--source-control", str(socks / "src-qmp.sock"),
                                        "--destination-control",
                                        str(socks / "dst-qmp.sock"), *relay_extra)
        if observe:
            proxies.insert(0, qr.RecordingProxy(f"{socks}/src-proxy.sock",
                                                f"{socks}/relay.sock"))
            source_uri = f"unix:{socks}/src-proxy.sock"
        src.qmp.execute("migrate", uri=source_uri)
        info = qr.wait_migration_end(src)
        proc.wait(timeout=300)
        for p in proxies:
            p.join()
        result = qr.parse_relay_json(out) if proc.returncode == 0 else {}
        return src, dst, info, proc.returncode, result, err.read_text(errors="replace"), proxies
    except BaseException:
        src.stop()
        dst.stop()
        raise


def _guest_goes_on(dst, serial: Path) -> str:
    """The Linux guest's disk I/O loop goes on on the destination: five new
    progress lines, no fresh boot, no kernel error."""
    text = wait_serial(dst, serial, "MIGTREE-IO ", count=5, timeout=180)
    assert "MIGTREE-INIT" not in text, "the guest booted afresh on the destination"
    bad = [m for m in KERNEL_ERRORS if m in text]
    assert not bad, f"kernel errors on the destination: {bad}\n{text[-2000:]}"
    return text


@pytest.mark.parametrize("src_version,src_machine,dst_version,dst_machine,held", [
    # the rollback: 10.0 -> 7.2, the VM on a 7.2 machine type
    ("10.0", "pc-i440fx-7.2", "7.2", "pc-i440fx-7.2", []),
    # 10.0's own machine type: mapped in the configuration section as it
    # passes, and its switchover-start command held back (7.2 knows neither)
    ("10.0", "pc-i440fx-10.0", "7.2", "pc-i440fx-7.2", ["switchover-start"]),
    # an upgrade across two majors
    ("5.2", "pc-i440fx-5.2", "10.0", "pc-i440fx-5.2", []),
], ids=["10.0-to-7.2", "10.0-machine-to-7.2", "5.2-to-10.0"])
def test_a_running_linux_guest_goes_live_to_another_qemu_version(
        tmp_path, guest_artifacts, src_version, src_machine, dst_version, dst_machine, held):
    src_cfg = _config(src_version, src_machine, guest_artifacts, memory=128)
    dst_cfg = _config(dst_version, dst_machine, guest_artifacts, memory=128)
    src, dst, info, rc, result, err, _ = _live_migration(tmp_path, src_cfg, dst_cfg)
    try:
        assert rc == 0, err
        assert result["commands_held"] == held
        assert info["status"] == "completed", info
        assert result["destination_status"] == "running", result
        assert dst.qmp.execute("query-status")["status"] == "running"
        # pre-copy went through in iterations, RAM as it came
        assert result["ram_sections"] >= 3 and result["pages"] > 0, result
        # everything the source sent went through the relay
        assert result["bytes_in"] >= info["ram"]["transferred"] > 0
        _guest_goes_on(dst, dst.serial)
    finally:
        src.stop()
        dst.stop()


def test_same_version_relay_is_byte_transparent(tmp_path, guest_artifacts):
    """7.2 -> 7.2 through the relay: the destination receives exactly the
    bytes the source sent (observed by proxies on both sides), and the
    guest goes on."""
    cfg = _config("7.2", "pc-i440fx-7.2", guest_artifacts, memory=128)
    src, dst, info, rc, result, err, proxies = _live_migration(tmp_path, cfg, cfg,
                                                               observe=True)
    try:
        assert rc == 0, err
        sent, received = proxies
        assert sent.size > 0 and sent.size == received.size
        assert sent.digest.hexdigest() == received.digest.hexdigest()
        assert result["bytes_in"] == sent.size
        _guest_goes_on(dst, dst.serial)
    finally:
        src.stop()
        dst.stop()


# -- failures: the source keeps (or gets back) its guest, the destination
#    never runs a half-loaded one, the relay names what and where ------------

def _failure_setup(tmp_path: Path, dump: Path | None = None, memory: int = 64,
                   filled: bool = False, dst_disk: bool = True):
    cfg = _config("7.2", "pc-i440fx-7.2", memory=memory)
    dst_cfg = cfg if dst_disk else StreamConfig(machine=cfg.machine, running=True,
                                                memory=memory, disk=False)
    qemu_build(None)
    socks = qr.short_dir()
    disk = make_disk(tmp_path / "disk.qcow2")
    dump = dump or _dump(cfg, tmp_path)
    src_ram = qr.filled_ram_args(memory, tmp_path, True) if filled else []
    dst_ram = qr.filled_ram_args(memory, tmp_path, False) if filled else []
    src = qr.qemu_vm(cfg, cfg.args(disk) + src_ram + qr.control_args(socks / "src-qmp.sock"),
                     tmp_path, "src").start()
    dst = qr.qemu_vm(cfg, qr.destination_args(dst_cfg, disk, None, f"unix:{socks}/dst.sock")
                     + dst_ram + qr.control_args(socks / "dst-qmp.sock"),
                     tmp_path, "dst").start()
    wait_guest_ran(src)
    proc, out, err = qr.start_relay(f"unix:{socks}/relay.sock", f"unix:{socks}/dst.sock",
                                    dump, tmp_path,
                                    "--source-control", str(socks / "src-qmp.sock"),
                                    "--destination-control", str(socks / "dst-qmp.sock"))
    return src, dst, proc, err, f"unix:{socks}/relay.sock"


def _destination_never_ran(dst) -> None:
    """The destination QEMU quit (its incoming migration failed) or still
    waits for one; it never ran the guest."""
    if dst.proc.poll() is None:
        try:
            status = dst.qmp.execute("query-status")["status"]
        except Exception:  # it is quitting
            dst.proc.wait(timeout=30)
            return
        assert status == "inmigrate", status
    else:
        assert "load of migration failed" in dst.output() or dst.proc.returncode != 0


def _source_runs(src) -> None:
    qr.wait_running(src, timeout=30)
    assert src.qmp.execute("query-status")["running"] is True


@pytest.mark.parametrize("capability,said", [
    ("return-path", "return path (capability return-path, or postcopy); the relay carries"),
    ("postcopy-ram", "the relay carries plain pre-copy only"),
    ("multifd", "multifd (capability multifd) is not relayed"),
])
def test_a_refused_capability_fails_the_source_migrate_before_its_guest_stops(
        tmp_path, capability, said):
    src, dst, proc, err, uri = _failure_setup(tmp_path)
    try:
        src.qmp.execute("migrate-set-capabilities",
                        capabilities=[{"capability": capability, "state": True}])
        src.qmp.execute("migrate", uri=uri)
        info = qr.wait_migration_end(src)
        assert proc.wait(timeout=60) == 1
        text = err.read_text()
        assert said in text, text
        assert info["status"] == "failed"
        assert not qr.events(src, "STOP"), "the source stopped its guest"
        _source_runs(src)
        _destination_never_ran(dst)
    finally:
        src.stop()
        dst.stop()


def test_a_conversion_refused_at_the_end_resumes_the_source(tmp_path):
    """The target's RTC loads only an older version than the stream has:
    the device state cannot be converted (no filter), which is known only
    after the source stopped its guest. The relay names the section and
    why, the destination never gets the device state, the source runs
    again."""
    cfg = _config("7.2", "pc-i440fx-7.2")
    qemu_build(None)
    doc = json.loads(_dump(cfg, tmp_path).read_text())
    rtc = next(v for k, v in doc.items() if isinstance(v, dict)
               and v.get("Description", {}).get("name") == "mc146818rtc")
    rtc["Description"]["version_id"] = 1
    rtc["Description"]["minimum_version_id"] = 1
    bad = tmp_path / "rtc-too-old.json"
    bad.write_text(json.dumps(doc))
    src, dst, proc, err, uri = _failure_setup(tmp_path, bad)
    try:
        src.qmp.execute("migrate", uri=uri)
        qr.wait_migration_end(src)
        assert proc.wait(timeout=120) == 1
        text = err.read_text()
        assert "mc146818rtc" in text, text
        assert "resumed" in text or "still running" in text, text
        _source_runs(src)
        _destination_never_ran(dst)
    finally:
        src.stop()
        dst.stop()


def test_the_destination_dying_fails_the_source_migrate_and_the_guest_runs_on(tmp_path):
    src, dst, proc, err, uri = _failure_setup(tmp_path)
    try:
        dst.proc.send_signal(signal.SIGKILL)
        dst.proc.wait(timeout=30)
        src.qmp.execute("migrate", uri=uri)
        info = qr.wait_migration_end(src)
        assert proc.wait(timeout=60) == 1
        assert info["status"] == "failed", info
        assert "Broken pipe" in err.read_text() or "reset" in err.read_text(), err.read_text()
        _source_runs(src)
    finally:
        src.stop()
        dst.stop()


def test_the_source_dying_mid_stream_leaves_the_destination_unstarted(tmp_path):
    src, dst, proc, err, uri = _failure_setup(tmp_path, memory=64, filled=True)
    try:
        # slow the source down so that it is still sending RAM when killed
        src.qmp.execute("migrate-set-parameters", **{"max-bandwidth": 8 << 20})
        src.qmp.execute("migrate", uri=uri)
        src.qmp.wait_until("query-migrate",
                           lambda r: r.get("ram", {}).get("transferred", 0) > (4 << 20),
                           timeout=60, interval=0.05)
        src.proc.send_signal(signal.SIGKILL)
        src.proc.wait(timeout=30)
        assert proc.wait(timeout=60) == 1
        text = err.read_text()
        assert "the source closed the stream in the middle of" in text, text
        assert "section 'ram'" in text and "byte offset" in text, text
        _destination_never_ran(dst)
        time.sleep(0)  # nothing else to wait for
    finally:
        src.qmp = None  # killed: nothing to say 'quit' to
        src.stop()
        dst.stop()


def test_a_destination_that_cannot_load_the_stream_gets_the_source_resumed(tmp_path):
    """The destination lacks the virtio-blk disk the source has: the
    conversion passes (the dump describes device classes, not the devices
    a command line makes), everything is sent, and the destination QEMU
    refuses the stream and quits. The relay, watching it, says so and
    resumes the source."""
    src, dst, proc, err, uri = _failure_setup(tmp_path, dst_disk=False)
    try:
        src.qmp.execute("migrate", uri=uri)
        qr.wait_migration_end(src)
        assert proc.wait(timeout=120) == 1
        text = err.read_text()
        assert "the destination did not start" in text, text
        assert "resumed" in text or "still running" in text, text
        _source_runs(src)
        _destination_never_ran(dst)
    finally:
        src.stop()
        dst.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("transport", ["tcp", "exec"])
def test_tcp_and_exec_sources_and_destinations(tmp_path, transport):
    """The relay over TCP on both sides, and as the command of the source's
    exec: migration (stdin) writing to the destination's unix socket."""
    cfg = _config("7.2", "pc-i440fx-7.2")
    qemu_build(None)
    socks = qr.short_dir()
    disk = make_disk(tmp_path / "disk.qcow2")
    dump = _dump(cfg, tmp_path)
    dst_addr = (f"tcp:127.0.0.1:{_free_port()}" if transport == "tcp"
                else f"unix:{socks}/dst.sock")
    src = qr.qemu_vm(cfg, cfg.args(disk), tmp_path, "src").start()
    dst = qr.qemu_vm(cfg, qr.destination_args(cfg, disk, None, dst_addr), tmp_path,
                     "dst").start()
    proc = None
    try:
        wait_guest_ran(src)
        if transport == "tcp":
            listen = f"tcp:127.0.0.1:{_free_port()}"
            proc, out, err = qr.start_relay(listen, dst_addr, dump, tmp_path)
            uri = listen
        else:
            out = tmp_path / "relay.out"
            uri = ("exec:" + " ".join([*qr.MIGTREE, "relay", "--listen", "-", "--to", dst_addr,
                                       "--target", str(dump), "--json"])
                   + f" > {out} 2> {tmp_path / 'relay.err'}")
        src.qmp.execute("migrate", uri=uri)
        info = qr.wait_migration_end(src)
        assert info["status"] == "completed", info
        if proc is not None:
            assert proc.wait(timeout=60) == 0
        qr.wait_running(dst, timeout=60)
        deadline = time.monotonic() + 30
        while not out.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.1)
        result = json.loads(out.read_text())
        assert result["bytes_in"] == result["bytes_out"] > 0
    finally:
        src.stop()
        dst.stop()
