"""The fuzzing suite's long run (docs/security.md, "Fuzzing"):

    .venv/bin/python tests/fuzz/run_fuzz.py --seconds 3600 [--target NAME ...]
        [--seed N] [--report fuzz-report.json] [--segment 600]

Runs the targets of fuzzlib.py round-robin, one case at a time, each in a
forked child under its memory and time limits, until the time is up. Every
case that ends in a traceback, blow-up or hang is kept in
tests/fuzz/found/<target>/ (replayed by test_fuzz.py from then on). Prints a
line per minute and, at the end, the counts per target and outcome; writes
them to --report as JSON. Exit status 1 when anything failing was found.

With --segment S the run is cut into segments of S seconds, each a fresh
interpreter started after the previous one ended (one process at a time), so
a long run picks up fixes made while it runs; the report lists each
segment's counts and the totals.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzzlib


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--target", action="append", default=None,
                    help="a target name (repeatable); default: all")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("--case-seconds", type=float, default=fuzzlib.CASE_SECONDS)
    ap.add_argument("--segment", type=float, default=None)
    args = ap.parse_args(argv)
    if args.segment:
        return _segmented(args)
    all_targets = fuzzlib.targets()
    names = args.target or list(all_targets)
    seed = args.seed if args.seed is not None else int(time.time())
    rnd = random.Random(seed)
    counts = {n: {k: 0 for k in ("clean", "accepted", *fuzzlib.FAILING)} for n in names}
    found: list[dict] = []
    t0 = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    next_line = t0 + 60
    print(f"fuzz: seed {seed}, targets {', '.join(names)}, {args.seconds:.0f} s", flush=True)
    i = 0
    while time.monotonic() - t0 < args.seconds:
        t = all_targets[names[i % len(names)]]
        i += 1
        case_seed = rnd.getrandbits(64)
        try:
            data = t.generate(random.Random(case_seed))
        except Exception as e:
            print(f"fuzz: {t.name}: generator failed ({type(e).__name__}: {e})", flush=True)
            continue
        out = fuzzlib.run_case(t, data, seconds=args.case_seconds)
        counts[t.name][out.kind] += 1
        if out.kind in fuzzlib.FAILING:
            p = fuzzlib.keep(t, data, out)
            first = out.detail.strip().splitlines()[-1:] or [""]
            found.append({"target": t.name, "outcome": out.kind, "file": str(p),
                          "case_seed": case_seed, "last_line": first[0][:300]})
            print(f"fuzz: {t.name}: {out.kind}: {first[0][:200]} -> {p}", flush=True)
        if time.monotonic() > next_line:
            next_line += 60
            total = sum(sum(c.values()) for c in counts.values())
            print(f"fuzz: {time.monotonic() - t0:6.0f} s, {total} cases, "
                  f"{len(found)} failing", flush=True)
    took = time.monotonic() - t0
    report = {"started": started, "seconds": round(took), "seed": seed, "counts": counts,
              "cases": sum(sum(c.values()) for c in counts.values()), "found": found}
    print(json.dumps(report, indent=1), flush=True)
    if args.report:
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if found else 0


def _segmented(args: argparse.Namespace) -> int:
    import subprocess
    import tempfile

    seed = args.seed if args.seed is not None else int(time.time())
    t0 = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    segments = []
    k = 0
    while (left := args.seconds - (time.monotonic() - t0)) > 1:
        with tempfile.NamedTemporaryFile(suffix=".json") as rep:
            cmd = [sys.executable, __file__, "--seconds", str(min(args.segment, left)),
                   "--seed", str(seed + k), "--report", rep.name,
                   "--case-seconds", str(args.case_seconds)]
            for t in args.target or ():
                cmd += ["--target", t]
            subprocess.run(cmd, check=False)
            try:
                segments.append(json.loads(Path(rep.name).read_text()))
            except ValueError:
                print("fuzz: a segment wrote no report", flush=True)
        k += 1
    totals: dict[str, dict[str, int]] = {}
    for seg in segments:
        for name, c in seg["counts"].items():
            for kind, n in c.items():
                totals.setdefault(name, {}).setdefault(kind, 0)
                totals[name][kind] += n
    report = {"started": started, "seconds": round(time.monotonic() - t0), "seed": seed,
              "cases": sum(s["cases"] for s in segments), "counts": totals,
              "found": [f for s in segments for f in s["found"]],
              "segments": [{k: s[k] for k in ("started", "seconds", "cases", "counts")}
                           | {"found": len(s["found"])} for s in segments]}
    print(json.dumps({k: v for k, v in report.items() if k != "segments"}, indent=1),
          flush=True)
    if args.report:
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if report["found"] else 0


if __name__ == "__main__":
    sys.exit(main())
