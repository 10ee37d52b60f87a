"""Build real wheels of every distribution, install them into a clean venv and
run the installed ``migtree`` on the examples.

Editable installs hide packaging mistakes (a missing entry point, a module
left out of the wheel, package data not shipped); this catches them.
Usage: python scripts/wheel_smoke.py WORKDIR
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DISTS = ["core", "plugins/apic", "plugins/kvm", "plugins/virtio", "plugins/qemu"]
EXPECTED_PLUGINS = {"migtree", "migtree-apic", "migtree-kvm", "migtree-virtio", "migtree-qemu"}


def run(*cmd: str | Path, cwd: Path | None = None, env: dict | None = None) -> str:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, text=True,
                          capture_output=True)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"wheel smoke: command failed with status {proc.returncode}")
    return proc.stdout


def main() -> None:
    work = Path(sys.argv[1]).resolve()
    shutil.rmtree(work, ignore_errors=True)
    dist = work / "dist"
    for d in DISTS:
        run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, REPO / d)
    wheels = sorted(dist.glob("*.whl"))
    if len(wheels) != len(DISTS):
        raise SystemExit(f"wheel smoke: expected {len(DISTS)} wheels, got {wheels}")

    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", *wheels)

    # Run from a scratch directory so nothing resolves to the source tree.
    scratch = work / "scratch"
    scratch.mkdir()
    shutil.copytree(REPO / "examples", scratch / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGTREE_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    migtree = bin_dir / "migtree"

    print(run(migtree, "--version", env=env).strip())
    listing = json.loads(run(migtree, "plugins", "--json", env=env))
    names = {p["name"] for p in listing}
    broken = [p for p in listing if p.get("error")]
    if not EXPECTED_PLUGINS <= names or broken:
        raise SystemExit(f"wheel smoke: plugins missing or broken: "
                         f"missing={sorted(EXPECTED_PLUGINS - names)} broken={broken}")
    src, dst = "examples/kvm-combined.toml", "examples/userspace-split.toml"
    run(migtree, "save", src, "--create-drives", "8M", "-o", "src.mtree", cwd=scratch, env=env)
    print(run(migtree, "inspect", "src.mtree", cwd=scratch, env=env)[:2000])
    run(migtree, "inspect", "--json", "src.mtree", cwd=scratch, env=env)
    run(migtree, "schema", "apic", cwd=scratch, env=env)
    print(run(migtree, "check", "--from", src, "--to", dst, cwd=scratch, env=env)[:2000])
    print(run(migtree, "explain", "src.mtree", "--to", dst, cwd=scratch, env=env)[:2000])
    run(migtree, "restore", "--create-drives", "8M", dst, "src.mtree", cwd=scratch, env=env)
    # the main job, on the installed wheels: two processes, a real socket
    print(run(migtree, "migrate", src, dst, cwd=scratch, env=env)[-3000:])
    print("wheel smoke: OK")


if __name__ == "__main__":
    main()
