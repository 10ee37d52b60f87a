"""``migtree migrate SRC.toml DST.toml [--via unix|tcp|file]``: the main job.

It runs a whole live migration on this machine and checks it:

1. a scratch directory gets copies of the builds and of their disk images
   (an image a build names but that does not exist is created there with a
   fixed pattern; the user's own files are never written);
2. the destination starts as its own process (``migtree serve``) and waits;
3. a reference -- the destination build, started and finished with the same
   workload and seed, never migrated, with its own copy of the disks -- is
   computed in this process meanwhile;
4. the source starts as its own process (``migtree send``): it starts the
   workloads (block I/O in flight...), runs the pre-flight check against
   what the destination announced, pauses, streams its state, and waits for
   the destination's acknowledgement; the destination filters and loads the
   stream, acknowledges, gets COMMIT, and finishes the workloads;
5. the report: filters applied per path, bytes sent, how long the source was
   paused, and the verification: the destination's disks, workload outcome
   and device state against the reference's.

Exit status 0 when the migration committed and the verification matched.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from . import _migargs as A

HELP = "migrate a running build to another build, in two processes, and verify the result"
VIAS = ("unix", "tcp", "file")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "migrate", help=HELP, description=HELP + ". The source and the destination run as "
        "separate `migtree send` / `migtree serve` processes on scratch copies of their "
        "disks; a never-migrated run of the destination build is the reference.")
    p.add_argument("source", metavar="SRC.toml", help="the source build")
    p.add_argument("destination", metavar="DST.toml", help="the destination build")
    p.add_argument("--via", choices=VIAS, default="unix",
                   help="transport: unix socket (default), tcp (loopback, plaintext, which "
                        "this command allows explicitly) or file (a rendezvous directory)")
    p.add_argument("--workload", default="auto", metavar="NAMES",
                   help="workloads to run: 'auto' (default: every installed workload that "
                        "applies to both builds), 'none', or comma-separated names")
    p.add_argument("--seed", type=int, default=0, help="the workloads' seed (default 0)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="give up when a side waits this long (default 60)")
    p.add_argument("--keep", action="store_true",
                   help="keep the scratch directory (it is kept anyway when something fails)")
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    A.add_precopy_args(p)
    p.set_defaults(func=run)


# -- scratch directory --------------------------------------------------------------------------

def _prepare(src: Path, dst: Path, scratch: Path, registry: Any) -> dict[str, Any]:
    """Copy the builds into ``scratch`` with their drives replaced by scratch
    copies: ``shared/`` (source and destination, as shared storage) and
    ``ref/`` (the reference). Returns what was made."""
    from ..migration import DEFAULT_DRIVE_SIZE, dump_toml, iter_path_props, pattern_image

    base, shared, ref = scratch / "base", scratch / "shared", scratch / "ref"
    for d in (base, shared, ref):
        d.mkdir()
    drives: dict[Path, str] = {}  # the build's drive (resolved) -> scratch name
    made: list[str] = []
    configs = {}
    for role, path in (("source", src), ("destination", dst)):
        try:
            config = tomllib.loads(path.read_text())
        except FileNotFoundError:
            from ..errors import BuildError

            raise BuildError(f"{path}: no such build file") from None
        except tomllib.TOMLDecodeError as e:
            from ..errors import BuildError

            raise BuildError(f"{path}: not valid TOML: {e}") from None
        for dcfg, prop in iter_path_props(config, registry):
            orig = (path.resolve().parent / dcfg[prop]).resolve()
            if orig not in drives:
                name = f"{len(drives)}-{orig.name}"
                drives[orig] = name
                if orig.is_file():
                    shutil.copyfile(orig, base / name)
                else:
                    pattern_image(base / name, DEFAULT_DRIVE_SIZE)
                    made.append(str(orig.name))
            dcfg[prop] = drives[orig]
        configs[role] = config
    for name in drives.values():
        shutil.copyfile(base / name, shared / name)
        shutil.copyfile(base / name, ref / name)
    (shared / "source.toml").write_text(dump_toml(configs["source"]))
    (shared / "destination.toml").write_text(dump_toml(configs["destination"]))
    (ref / "reference.toml").write_text(dump_toml(configs["destination"]))
    return {"drives": {str(k): v for k, v in drives.items()}, "created": made,
            "source": shared / "source.toml", "destination": shared / "destination.toml",
            "reference": ref / "reference.toml", "shared": shared, "ref": ref}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- child processes ----------------------------------------------------------------------------

class _Child:
    def __init__(self, name: str, args: list[str], scratch: Path) -> None:
        self.name = name
        self.out_path = scratch / f"{name}.out"
        self.err_path = scratch / f"{name}.err"
        env = dict(os.environ)
        env["MIGTREE_PROGRESS"] = "0"
        with open(self.out_path, "wb") as o, open(self.err_path, "wb") as e:
            self.proc = subprocess.Popen([sys.executable, "-m", "migtree", *args], stdout=o,
                                         stderr=e, env=env, cwd=str(scratch))

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def report(self) -> dict[str, Any] | None:
        import json

        try:
            return json.loads(self.out_path.read_text())
        except (OSError, ValueError):
            return None

    def stderr(self) -> str:
        try:
            return self.err_path.read_text()
        except OSError:
            return ""


def _wait_ready(path: Path, child: _Child, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if child.proc.poll() is not None:
            from ..migration import MigrationError

            raise MigrationError(f"the destination exited before it listened:\n"
                                 f"{child.stderr().strip()}")
        if time.monotonic() > deadline:
            from ..migration import MigrationError

            raise MigrationError(f"the destination did not listen within {timeout:.0f}s")
        time.sleep(0.005)
    return path.read_text().strip()


# -- reference ---------------------------------------------------------------------------------

def _reference(prep: dict[str, Any], workload: str, seed: int, registry: Any) -> dict[str, Any]:
    """The destination build, never migrated: start, finish, check; its state."""
    from .. import migration as M
    from .. import stream
    from ..build import load_build

    build = load_build(prep["reference"], registry)
    wls = M.select_workloads(build, workload)
    M.run_workloads("start", build, wls, seed)
    M.run_workloads("finish", build, wls)
    checks = M.run_workloads("check", build, wls)
    state = stream.save(build.root, registry=build.registry, build_name=build.name)
    return {"build": build.name, "workloads": checks, "state": state,
            "workload_names": [w.name for w in wls]}


def _common_workloads(spec: str, prep: dict[str, Any], registry: Any) -> str:
    """``auto`` becomes the names that apply to both builds (so the source
    and the destination run the same ones)."""
    if spec != "auto":
        return spec
    from .. import migration as M
    from ..build import load_build

    names = None
    for key in ("source", "destination"):
        b = load_build(prep[key], registry)
        got = {w.name for w in M.select_workloads(b, "auto")}
        names = got if names is None else names & got
        _close(b)
    return ",".join(sorted(names or ())) or "none"


def _close(build: Any) -> None:
    """Give back what a throwaway build holds (KVM fds, disk fds)."""
    try:
        from migtree_kvm.backend import accel_of  # type: ignore[import-not-found]
    except ImportError:
        return
    accel = accel_of(build.machine)
    if accel is not None:
        accel.close()


# -- verification ------------------------------------------------------------------------------

def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if hasattr(v, "iter_chunks") and hasattr(v, "sha256"):
        return ("blob", len(v), v.sha256())
    return v


def _diff_trees(a: Any, b: Any, path: str = "/", out: list[str] | None = None) -> list[str]:
    out = [] if out is None else out
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            sub = f"{path.rstrip('/')}/{k}" if isinstance(a.get(k, b.get(k)), dict) and \
                "__type__" in a.get(k, b.get(k)) else f"{path}: {k}"
            if k not in a:
                out.append(f"{sub}: only in the reference")
            elif k not in b:
                out.append(f"{sub}: only in the destination")
            else:
                _diff_trees(a[k], b[k], sub, out)
    elif a != b:
        out.append(f"{path}: destination {_short(a)}, reference {_short(b)}")
    return out


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _verify(prep: dict[str, Any], dst_report: dict[str, Any], ref: dict[str, Any],
            dump: Path) -> dict[str, Any]:
    from .. import stream

    v: dict[str, Any] = {"disks": [], "workloads": {}, "state": {}}
    for orig, name in prep["drives"].items():
        got, want = _sha256(prep["shared"] / name), _sha256(prep["ref"] / name)
        v["disks"].append({"drive": Path(orig).name, "destination": got, "reference": want,
                           "match": got == want})
    dst_checks = dst_report.get("workloads") or {}
    for name, want in ref["workloads"].items():
        got = dst_checks.get(name)
        v["workloads"][name] = {"match": _json(got) == _json(want),
                                "summary": _summarise(want),
                                # both sides' results, so a mismatch can be read
                                "destination": _json(got), "reference": _json(want)}
    try:
        _, dtree = stream.read_tree(dump)
        _, rtree = stream.read_tree(ref["state"])
        # the stash the destination keeps (docs/filters.md 2.17) is not device
        # state: a build that never migrated has none; it is reported apart
        diffs = _diff_trees(_plain(_without_stash(dtree)), _plain(rtree))
        count = sum(1 for _ in _walk_objects(rtree))
        v["state"] = {"match": not diffs, "objects": count, "differences": diffs[:20],
                      "more": max(0, len(diffs) - 20)}
    except Exception as e:  # reported, not raised: the report must print
        v["state"] = {"match": False, "objects": 0, "differences": [f"{e}"], "more": 0}
    v["ok"] = all(d["match"] for d in v["disks"]) and \
        all(w["match"] for w in v["workloads"].values()) and v["state"]["match"]
    return v


def _without_stash(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_stash(v) for k, v in node.items() if k != "__stash__"}
    return node


def _json(v: Any) -> Any:
    """``v`` as JSON would carry it (tuples become lists): the destination's
    check came through JSON, the reference's did not."""
    import json

    return json.loads(json.dumps(v, default=str))


def _walk_objects(node: dict[str, Any]):
    yield node
    for c in node.values():
        if isinstance(c, dict) and "__type__" in c:
            yield from _walk_objects(c)


def _workload_difference(got: Any, want: Any, limit: int = 12) -> list[str]:
    """Both sides' results where they differ, path by path."""
    diffs = _diff_trees(got, want)
    lines = [f"    {d}" for d in diffs[:limit]]
    if len(diffs) > limit:
        lines.append(f"    ... and {len(diffs) - limit} more")
    if not diffs:  # not a tree difference _diff_trees can name: show both whole
        lines = [f"    destination: {_short(got)}", f"    reference:   {_short(want)}"]
    return lines


def _summarise(check: Any) -> str:
    """A few words about a workload's check, for the report."""
    if not isinstance(check, dict):
        return ""
    parts = []
    for dev, d in check.items():
        if isinstance(d, dict) and isinstance(d.get("requests"), list):
            reqs = d["requests"]
            ok = sum(1 for r in reqs if r.get("status") == 0)
            parts.append(f"{dev}: {len(reqs)} requests, {ok} with status OK")
    return "; ".join(parts)


# -- the command ------------------------------------------------------------------------------

def run(args: Any) -> int:
    from ..plugins import get_registry

    t_start = time.monotonic()
    registry = get_registry()
    scratch = Path(tempfile.mkdtemp(prefix="migtree-"))
    keep = args.keep
    children: list[_Child] = []
    try:
        prep = _prepare(Path(args.source), Path(args.destination), scratch, registry)
        workload = _common_workloads(args.workload, prep, registry)
        if args.via == "unix":
            listen, extra = f"unix:{scratch / 'mig.sock'}", []
        elif args.via == "tcp":
            listen, extra = "tcp:127.0.0.1:0", ["--allow-plaintext"]
        else:
            listen, extra = f"file:{scratch / 'rendezvous'}", []
        common = ["--workload", workload, "--json", "--timeout", str(args.timeout),
                  "--no-progress", *extra]
        ready = scratch / "dst.ready"
        dst = _Child("destination", ["serve", str(prep["destination"]), "--listen", listen,
                                     "--ready-file", str(ready), "--dump-state",
                                     str(scratch / "destination-final.mt"), *common], scratch)
        children.append(dst)
        ref = _reference(prep, workload, args.seed, registry)
        address = _wait_ready(ready, dst, args.timeout)
        src = _Child("source", ["send", str(prep["source"]), "--to", address,
                                "--seed", str(args.seed), *A.precopy_argv(args), *common],
                     scratch)
        children.append(src)
        src_rc = src.wait(args.timeout * 3)
        dst_rc = dst.wait(args.timeout * 3)
        s, d = src.report(), dst.report()
        if s is None or d is None:
            keep = True
            who = src if s is None else dst
            from ..migration import MigrationError

            raise MigrationError(f"the {who.name} process (exit {who.proc.returncode}) wrote "
                                 f"no report; its stderr:\n{who.stderr().strip()}\n"
                                 f"(scratch directory kept: {scratch})")
        verification = None
        if s.get("outcome") == "committed" and d.get("outcome") == "committed":
            verification = _verify(prep, d, ref, scratch / "destination-final.mt")
        ok = src_rc == 0 and dst_rc == 0 and verification is not None and verification["ok"]
        if not ok:
            keep = True
        doc = {"ok": ok, "via": args.via, "address": address, "seed": args.seed,
               "workloads": [] if workload == "none" else workload.split(","),
               "created_drives": prep["created"], "source": s, "destination": d,
               "reference": {"build": ref["build"], "workloads": ref["workloads"]},
               "verification": verification, "total_s": time.monotonic() - t_start,
               "scratch": str(scratch) if keep else None}
        if args.json:
            A.print_json(doc)
        else:
            from ..textsafe import safe_block

            print(safe_block(format_report(doc)))
        return 0 if ok else 1
    except BaseException:
        keep = True
        raise
    finally:
        for c in children:
            c.kill()
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)


def format_report(doc: dict[str, Any]) -> str:
    s, d, v = doc["source"], doc["destination"], doc["verification"]
    lines = [f"migrated {s['build']} ({s['backend']}) -> {d['build']} ({d['backend']}) "
             f"via {doc['via']}: {s['outcome']}"]
    for n in s.get("notes") or []:
        lines.append(f"  note: {s['build']}: {n}")
    if doc["created_drives"]:
        lines.append(f"  disks created for the run: {', '.join(doc['created_drives'])} "
                     "(in a scratch directory)")
    if doc["workloads"]:
        lines.append(f"workloads: {', '.join(doc['workloads'])} (seed {doc['seed']}), started "
                     "on the source, finished on the destination")
    check = s.get("check") or {}
    entries = check.get("entries") or []
    filtered = sum(1 for e in entries if e.get("status") == "filtered")
    if check:
        lines.append(f"pre-flight: {'compatible' if check.get('compatible') else 'REFUSED'} "
                     f"({len(entries)} source objects, {filtered} to be filtered)")
    if s.get("error"):
        lines.append(f"source: {s['error']}")
    if d.get("error") and d.get("error") != s.get("error"):
        lines.append(f"destination ({d.get('stage')}): {d['error']}")
    if s.get("source_filters"):
        lines.append("filters applied on the source (the destination lacks them):")
        lines.extend(A.format_filters(s["source_filters"]))
    lines.append("filters applied (per path):")
    lines.extend(A.format_filters(d.get("filters")))
    if d.get("load") is not None:
        lines.extend(A.format_stash(d["load"], indent=""))
    lines.append(f"bytes sent: {s.get('stream_bytes', 0):,} (stream), "
                 f"{s.get('wire_bytes_sent', 0):,} on the wire")
    lines.extend(A.format_precopy(s))
    if s.get("paused_s") is not None:
        t = (s.get("loaded") or {}).get("timings") or {}
        parts = [f"save+send {s['save_s'] * 1000:.0f} ms" if s.get("save_s") else None,
                 f"destination receive+decode {t['receive_decode_s'] * 1000:.0f} ms"
                 if "receive_decode_s" in t else None,
                 f"filters {t['filters_s'] * 1000:.0f} ms" if "filters_s" in t else None,
                 f"load {t['load_s'] * 1000:.0f} ms" if "load_s" in t else None]
        lines.append(f"source paused: {s['paused_s'] * 1000:.1f} ms ("
                     + ", ".join(p for p in parts if p) + ")")
    if v is not None:
        lines.append(f"verification against {doc['reference']['build']} that never migrated "
                     f"(same workloads, same seed, its own disk copies):")
        for disk in v["disks"]:
            lines.append(f"  disk {disk['drive']}: "
                         + (f"identical (sha256 {disk['reference'][:16]}...)" if disk["match"]
                            else f"DIFFERENT (destination {disk['destination'][:16]}..., "
                                 f"reference {disk['reference'][:16]}...)"))
        for name, w in v["workloads"].items():
            lines.append(f"  workload {name}: {'identical' if w['match'] else 'DIFFERENT'}"
                         + (f" ({w['summary']})" if w["summary"] else ""))
            if not w["match"]:
                lines.extend(_workload_difference(w.get("destination"), w.get("reference")))
        st = v["state"]
        if st["match"]:
            lines.append(f"  device state: identical ({st['objects']} objects, guest RAM "
                         "included)")
        else:
            lines.append("  device state: DIFFERENT")
            lines.extend(f"    {x}" for x in st["differences"])
            if st["more"]:
                lines.append(f"    ... and {st['more']} more")
        lines.append("verified: the migrated machine is the one that never moved"
                     if v["ok"] else "NOT verified")
    else:
        lines.append("no verification: the migration did not commit")
    if doc.get("scratch"):
        lines.append(f"scratch directory kept: {doc['scratch']}")
    lines.append(f"done in {doc['total_s']:.1f} s")
    return "\n".join(lines)
