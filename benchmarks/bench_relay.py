"""``migtree relay`` against a native QEMU migration, measured in the same run.

For guests of 128 MiB and 1 GiB (RAM filled with random bytes, so every page
travels as data, not as a zero page; SeaBIOS idle, TCG), over unix sockets:

* native: QEMU 7.2 -> QEMU 7.2 directly (the baseline);
* relay, same version: QEMU 7.2 -> migtree relay -> QEMU 7.2 (what the
  relay itself costs);
* relay, rollback: QEMU 10.0 (machine pc-i440fx-7.2) -> migtree relay ->
  QEMU 7.2 (the case QEMU refuses natively), when the 10.0 chroot exists.

Printed per row: the downtime (the destination's QMP ``RESUME`` event minus
the source's ``STOP`` event: both QEMUs run on this host, same clock), the
added downtime against native, the throughput (the source's RAM bytes
transferred over its ``total-time``) and its ratio to native, the relay's
conversion time (its last source byte to its last destination byte) and
its peak RSS.  The migrations run with ``max-bandwidth`` raised to 8 GiB/s
(QEMU's default throttle would hide any difference).  Targets from the
issue: added downtime <= 50 ms, throughput >= 0.9x native.

    PYTHONPATH=tests/qemu python benchmarks/bench_relay.py [--sizes 128,1024] [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "qemu"))

import qemu_relay as qr
import qemu_streams
from qemu_streams import StreamConfig, make_disk, wait_guest_ran

from migtree_qemu import versions

BANDWIDTH = 8 << 30


def one(workdir: Path, src_version: str, mib: int, relay: bool) -> qr.Migration:
    machine = "pc-i440fx-7.2"
    src_cfg = StreamConfig(machine=machine, running=True, qemu=src_version, memory=mib,
                           disk=True)
    dst_cfg = StreamConfig(machine=machine, running=True, qemu="7.2", memory=mib, disk=True)
    socks = qr.short_dir()
    disk = make_disk(workdir / "disk.qcow2")
    src = qr.qemu_vm(src_cfg, src_cfg.args(disk) + qr.filled_ram_args(mib, workdir, True)
                     + qr.control_args(socks / "src-qmp.sock"), workdir, "src").start()
    dst = qr.qemu_vm(dst_cfg, qr.destination_args(dst_cfg, disk, None, f"unix:{socks}/dst.sock")
                     + qr.filled_ram_args(mib, workdir, False), workdir, "dst").start()
    try:
        wait_guest_ran(src)
        src.qmp.execute("migrate-set-parameters", **{"max-bandwidth": BANDWIDTH})
        uri = f"unix:{socks}/dst.sock"
        proc = None
        if relay:
            dump = qemu_streams.dump_vmstate(workdir, machine, "7.2")
            proc, out, err = qr.start_relay(f"unix:{socks}/relay.sock", uri, dump, workdir,
                                            "--source-control", str(socks / "src-qmp.sock"))
            uri = f"unix:{socks}/relay.sock"
        info, down = qr.migrate(src, dst, uri)
        result: dict = {}
        if proc is not None:
            proc.wait(timeout=120)
            result = qr.parse_relay_json(out)
        if info["status"] != "completed":
            raise RuntimeError(f"migration {info['status']}: {info.get('error-desc')}")
        return qr.Migration(info["status"], down, info["total-time"] / 1e3,
                            info["ram"]["transferred"], result)
    finally:
        src.stop()
        dst.stop()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="128,1024", help="guest sizes in MiB")
    ap.add_argument("--repeat", type=int, default=2, help="runs per row (median printed)")
    args = ap.parse_args(argv)
    have_10 = True
    try:
        versions.find("10.0")
    except versions.QemuVersionUnavailable:
        have_10 = False
    rows = [("native 7.2 -> 7.2", "7.2", False), ("relay 7.2 -> 7.2", "7.2", True)]
    if have_10:
        rows.append(("relay 10.0 -> 7.2", "10.0", True))
    print(f"{'guest':>6} {'path':<20} {'downtime ms':>11} {'added ms':>9} {'MiB/s':>8} "
          f"{'x native':>8} {'convert ms':>10} {'relay RSS MiB':>13}")
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        for mib in (int(s) for s in args.sizes.split(",")):
            native = None
            # rows interleaved, so that a change in the machine's load (it is
            # shared) falls on all of them alike
            measured: dict[str, list[qr.Migration]] = {name: [] for name, _, _ in rows}
            for _ in range(args.repeat):
                for name, version, relay in rows:
                    measured[name].append(one(Path(tmp), version, mib, relay))
            for name, _version, _relay in rows:
                runs = measured[name]
                down = statistics.median(r.downtime_ms for r in runs)
                thr = statistics.median(r.throughput for r in runs)
                if native is None:
                    native = (down, thr)
                conv = [r.relay.get("conversion_ms") for r in runs if r.relay]
                rss = [r.relay.get("peak_rss_kib", 0) / 1024 for r in runs if r.relay]
                print(f"{mib:>5}M {name:<20} {down:>11.1f} {down - native[0]:>+9.1f} "
                      f"{thr / (1 << 20):>8.1f} {thr / native[1]:>8.2f} "
                      f"{statistics.median(conv) if conv else 0:>10.1f} "
                      f"{max(rss) if rss else 0:>13.1f}", flush=True)
    if not have_10:
        print("QEMU 10.0 is not available here (python -m migtree_qemu.versions ensure 10.0): "
              "the rollback row is left out")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
