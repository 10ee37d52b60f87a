"""Plugins as users meet them: real distributions built by hatchling and
installed by pip into a fresh virtual environment, found through their entry
points, listed by ``migtree plugins --json`` in a subprocess.

Two environments, each created once and cached between sessions (keyed by
the Python version and the requirements; the core and the fixtures are
reinstalled, without dependencies, whenever their sources change):

* ``plugins``: the core (a real, non-editable install) and every distribution
  in ``tests/plugin_fixtures/`` — a good one, one that fails to import, one
  with a misspelt hook, two claiming one type, two declaring one entry-point
  name;
* ``vendor``: the core plus pytest and hypothesis, in which
  ``test_writing_a_plugin_doc_works_as_written`` follows
  ``docs/writing-a-plugin.md`` by running its ``sh`` blocks verbatim.

hatchling (and ``editables``, for ``pip install -e``) is installed into each
environment from the package index first, and builds run with
``PIP_NO_BUILD_ISOLATION=0`` (which, inverted as pip's option is, turns
isolation *off*), so nothing else is fetched while the tests run.
``MIGTREE_TEST_VENVS`` overrides where the environments are kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "core"
FIXTURES = REPO / "tests" / "plugin_fixtures"
TEMPLATE = REPO / "plugins" / "_template"
DOC = REPO / "docs" / "writing-a-plugin.md"

FIXTURE_DISTS = sorted(p for p in FIXTURES.iterdir() if (p / "pyproject.toml").exists())
BUILD_REQS = ["hatchling>=1.21", "editables>=0.3"]


def _core_requirements() -> list[str]:
    return tomllib.loads((CORE / "pyproject.toml").read_text())["project"]["dependencies"]


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(f for f in part.rglob("*") if f.is_file()
                           and "__pycache__" not in f.parts and not f.suffix == ".pyc")
            for f in files:
                h.update(str(f.relative_to(part)).encode())
                h.update(f.read_bytes())
        else:
            h.update(repr(part).encode())
    return h.hexdigest()[:16]


def _cache_root() -> Path:
    root = os.environ.get("MIGTREE_TEST_VENVS")
    path = Path(root) if root else Path(tempfile.gettempdir()) / f"migtree-test-venvs-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str | Path], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def _clean_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MIGTREE_", "PYTHON", "PYTEST_", "COV_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["PIP_NO_BUILD_ISOLATION"] = "0"   # i.e. no isolation: use the venv's hatchling
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


class Venv:
    """A cached virtual environment: ``requirements`` from the index, then
    ``local`` directories installed with ``--no-deps --no-build-isolation``."""

    def __init__(self, name: str, requirements: list[str], local: list[Path]):
        base = _digest(sys.version, requirements)
        self.path = _cache_root() / f"{name}-{base}"
        self.lock = _cache_root() / f"{name}-{base}.lock"
        self.requirements = requirements
        self.local = local
        self.content_key = _digest(*local)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def env(self, **extra: str) -> dict[str, str]:
        env = _clean_env(self.path)
        env.update(extra)
        return env

    def ensure(self) -> Venv:
        with _locked(self.lock):
            base_stamp = self.path / ".migtree-base"
            if not base_stamp.exists():
                shutil.rmtree(self.path, ignore_errors=True)
                _run([sys.executable, "-m", "venv", self.path])
                _run([self.python, "-m", "pip", "install", "--quiet", *self.requirements],
                     env=self.env())
                base_stamp.write_text("ok\n")
            stamp = self.path / ".migtree-content"
            if not stamp.exists() or stamp.read_text() != self.content_key:
                _run([self.python, "-m", "pip", "install", "--quiet", "--no-deps",
                      "--no-build-isolation", "--force-reinstall", *self.local],
                     env=self.env(), cwd=tempfile.gettempdir())
                stamp.write_text(self.content_key)
        return self

    def migtree(self, *args: str, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.path / "bin" / "migtree"), *args], capture_output=True,
                              text=True, env=self.env(**(env or {})),
                              cwd=cwd or tempfile.gettempdir())


@pytest.fixture(scope="session")
def plugin_venv() -> Venv:
    return Venv("plugins", [*BUILD_REQS, *_core_requirements()],
                [CORE, *FIXTURE_DISTS]).ensure()


@pytest.fixture(scope="session")
def vendor_venv() -> Venv:
    return Venv("vendor", [*BUILD_REQS, *_core_requirements(), "pytest>=8", "hypothesis>=6.100"],
                [CORE]).ensure()


def listing(venv: Venv, **env: str) -> tuple[int, dict[str, dict], str]:
    proc = venv.migtree("plugins", "--json", env=env)
    data = json.loads(proc.stdout)
    assert isinstance(data, list)
    return proc.returncode, {p["name"]: p for p in data}, proc.stderr


# -- the fixture distributions ---------------------------------------------------------

def test_every_installed_plugin_is_listed_and_failures_are_named(plugin_venv):
    rc, plugins, stderr = listing(plugin_venv)
    assert rc == 1, "a plugin failed, so the listing exits 1"
    assert list(plugins) == [
        "migtree", "migtree-fixture-broken", "migtree-fixture-clash-a",
        "migtree-fixture-clash-b", "migtree-fixture-dup-a", "migtree-fixture-dup-b",
        "migtree-fixture-good", "migtree-fixture-misspelt"]

    core = plugins["migtree"]
    assert core["error"] is None and core["entry_points"] == {"core": "migtree.builtin"}
    assert {t["name"] for t in core["types"]} == {
        "object", "device", "container", "guest-memory", "machine"}

    broken = plugins["migtree-fixture-broken"]["error"]
    assert broken.startswith("migtree-fixture-broken: failed to import mtfix_broken.plugin "
                             "(entry point 'migtree-fixture-broken'): ModuleNotFoundError: "
                             "No module named 'mtfix_no_such_module' (at ")
    assert re.search(r"mtfix_broken/plugin\.py:5\)$", broken)

    assert plugins["migtree-fixture-misspelt"]["error"] == (
        "migtree-fixture-misspelt: unknown hook 'migtree_register_type' (did you mean "
        "'migtree_register_types'?) (a misspelt hook would otherwise be silently ignored)")
    assert plugins["migtree-fixture-misspelt"]["types"] == []

    assert plugins["migtree-fixture-clash-a"]["error"] is None
    assert [t["name"] for t in plugins["migtree-fixture-clash-a"]["types"]] == [
        "fixture-clash", "fixture-clash-only-a"]
    clash = plugins["migtree-fixture-clash-b"]
    assert clash["error"] == (
        "migtree-fixture-clash-b: migtree_register_types: type 'fixture-clash' registered "
        "twice: by migtree-fixture-clash-a (mtfix_clash_a.plugin.Clash) and by "
        "migtree-fixture-clash-b (mtfix_clash_b.plugin.Clash)")
    assert clash["types"] == [], "the rejected distribution keeps nothing, not even its own type"

    assert plugins["migtree-fixture-dup-a"]["error"] is None
    dup = plugins["migtree-fixture-dup-b"]
    assert dup["entry_points"] == {"fixture-dup": "mtfix_dup_b.plugin"}
    assert dup["error"].startswith("migtree-fixture-dup-b: entry point name 'fixture-dup' in "
                                   "group 'migtree' is also declared by migtree-fixture-dup-a")

    # the rest keep working
    assert plugins["migtree-fixture-good"]["error"] is None
    for name in ("migtree-fixture-broken", "migtree-fixture-misspelt",
                 "migtree-fixture-clash-b", "migtree-fixture-dup-b"):
        assert f"migtree: ERROR: plugin {name}: " in stderr


def test_good_plugin_lists_everything_it_registered(plugin_venv):
    rc, plugins, _ = listing(plugin_venv, MIGTREE_LOAD_PLUGINS="migtree-fixture-good")
    assert rc == 0
    good = plugins["migtree-fixture-good"]
    assert good["version"] == "1.2.3"
    assert good["entry_points"] == {"migtree-fixture-good": "mtfix_good.plugin"}
    assert good["hooks"] == [
        "migtree_object_realized", "migtree_register_backends", "migtree_register_filters",
        "migtree_register_opaque_decoders", "migtree_register_stream_formats",
        "migtree_register_types", "migtree_register_workloads"]
    assert good["types"] == [{"name": "fixture-good", "version": 2, "min_version": 2,
                              "versions": [1, 2], "parent": "device", "abstract": False}]
    assert [(f["name"], f["match"], f["produces"], f["pair"]) for f in good["filters"]] == [
        ("fixture-good-v1-to-v2", "fixture-good@1", "fixture-good@2", "fixture-good-v1-v2"),
        ("fixture-good-v2-to-v1", "fixture-good@2", "fixture-good@1", "fixture-good-v1-v2")]
    assert good["backends"] == [{"name": "fixture-backend",
                                 "description": "a backend that creates no CPUs",
                                 "available": True, "reason": ""}]
    assert good["formats"] == ["fixture-format"]
    assert good["decoders"] == ["fixture-format:fixture-blob"]
    assert good["workloads"] == ["fixture-idle"]


@pytest.mark.parametrize("allow, expected", [
    ("migtree-fixture-good", ["migtree", "migtree-fixture-good"]),
    ("MIGTREE_FIXTURE_GOOD , migtree-fixture-dup-b", ["migtree", "migtree-fixture-dup-b",
                                                      "migtree-fixture-good"]),
    ("", ["migtree"]),
])
def test_allow_list(plugin_venv, allow, expected):
    rc, plugins, stderr = listing(plugin_venv, MIGTREE_LOAD_PLUGINS=allow)
    assert rc == 0 and list(plugins) == expected
    assert all(p["error"] is None for p in plugins.values())
    # dup-b alone has nobody to clash with
    assert "migtree: skipped migtree-fixture-broken: not named in MIGTREE_LOAD_PLUGINS" in stderr


def test_deny_list_and_the_core_cannot_be_denied(plugin_venv):
    bad = ("migtree-fixture-broken,migtree-fixture-misspelt,migtree-fixture-clash-b,"
           "migtree_fixture_dup_b,migtree")
    rc, plugins, stderr = listing(plugin_venv, MIGTREE_DISABLE_PLUGINS=bad)
    assert rc == 0
    assert list(plugins) == ["migtree", "migtree-fixture-clash-a", "migtree-fixture-dup-a",
                             "migtree-fixture-good"]
    assert "migtree: skipped migtree-fixture-dup-b: disabled by MIGTREE_DISABLE_PLUGINS" in stderr
    assert "migtree cannot be disabled" in stderr


def test_text_listing(plugin_venv):
    proc = plugin_venv.migtree("plugins", env={"MIGTREE_LOAD_PLUGINS": "migtree-fixture-good,"
                                                                       "migtree-fixture-broken"})
    assert proc.returncode == 1
    out = proc.stdout
    assert "migtree-fixture-good 1.2.3\n" in out
    assert "  types: fixture-good@1,2\n" in out
    assert ("  filter fixture-good-v1-to-v2: fixture-good@1 -> fixture-good@2, pair "
            "fixture-good-v1-v2\n") in out
    assert "  backend fixture-backend: a backend that creates no CPUs (available)\n" in out
    assert "migtree-fixture-broken 0.1.0  [FAILED]\n" in out
    assert "  error: migtree-fixture-broken: failed to import mtfix_broken.plugin" in out
    assert "skipped migtree-fixture-misspelt: not named in MIGTREE_LOAD_PLUGINS" in out


def test_trace_logs_every_hook_call_with_its_distribution(plugin_venv):
    proc = plugin_venv.migtree("plugins", env={"MIGTREE_LOAD_PLUGINS": "migtree-fixture-good",
                                               "MIGTREE_TRACE_HOOKS": "1"})
    assert proc.returncode == 0
    trace = [line for line in proc.stderr.splitlines() if line.startswith("migtree: INFO: ")]
    calls = [line.split("migtree: INFO: call ", 1)[1] for line in trace if "INFO: call " in line]
    assert calls == [
        "migtree_register_types(register=<register callback>) -> migtree (entry point core)",
        *[f"{hook}(register=<register callback>) -> migtree-fixture-good" for hook in (
            "migtree_register_types", "migtree_register_filters", "migtree_register_backends",
            "migtree_register_stream_formats", "migtree_register_opaque_decoders",
            "migtree_register_workloads")]]
    assert ("migtree: INFO: migtree_register_filters: migtree-fixture-good registered filter "
            "fixture-good-v1-v2") in trace
    assert sum(line.startswith("migtree: INFO: done ") for line in trace) == len(calls)


def test_dynamic_filters_of_an_installed_plugin_reach_the_build(plugin_venv):
    script = """
import json
from migtree.build import load_build
b = load_build({"machine": {"backend": "fixture-backend"},
                "device": [{"type": "fixture-good", "id": "g0"}]})
print(json.dumps([[f.name, f.plugin, f.dynamic, f.path] for f in b.dynamic_filters]))
"""
    proc = subprocess.run([str(plugin_venv.python), "-c", script], capture_output=True, text=True,
                          env=plugin_venv.env(MIGTREE_LOAD_PLUGINS="migtree-fixture-good"),
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [["fixture-good-dynamic", "migtree-fixture-good", True,
                                        "/machine/peripheral/g0"]]


# -- docs/writing-a-plugin.md, followed to the letter ------------------------------------

def doc_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", DOC.read_text(), re.M | re.S)


def test_writing_a_plugin_doc_works_as_written(vendor_venv, tmp_path):
    """Run every ``sh`` block of the document, in order, in one shell, in an
    empty directory, with the vendor environment active — the doc's setup step
    (create a venv, install migtree) is what the ``vendor`` environment is.
    Then check what the doc promises: the tests pass, the wheel installs, and
    ``migtree plugins`` lists the renamed plugin."""
    blocks = doc_blocks("sh")
    assert len(blocks) >= 5, "the walkthrough's commands are in ```sh blocks"
    script = "set -euo pipefail\nset -x\n" + "\n".join(blocks)
    work = tmp_path / "work"
    work.mkdir()
    with _locked(vendor_venv.lock):
        try:
            proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                                  cwd=work, env=vendor_venv.env(MIGTREE_SRC=str(REPO)),
                                  timeout=600)
            assert proc.returncode == 0, (
                f"following docs/writing-a-plugin.md failed:\n{proc.stdout[-6000:]}\n"
                f"{proc.stderr[-6000:]}")
            project = work / "migtree-acme"
            # the vendor's own tests ran, through migtree's pytest plugin, and passed
            assert re.search(r"^2 passed", proc.stdout, re.M), proc.stdout[-3000:]
            # every python/toml excerpt in the doc is the code the vendor now has
            texts = [f.read_text() for f in project.rglob("*")
                     if f.is_file() and f.suffix in (".py", ".toml")]
            for lang in ("python", "toml"):
                for block in doc_blocks(lang):
                    assert any(block in t for t in texts), (
                        f"this {lang} block of the doc is not in the renamed template:\n{block}")
            # the installed plugin is the wheel, not the editable checkout
            rc, plugins, _ = listing(vendor_venv)
            assert rc == 0
            acme = plugins["migtree-acme"]
            assert acme["version"] == "0.1.0"
            assert acme["entry_points"] == {"migtree-acme": "migtree_acme.plugin"}
            assert [t["name"] for t in acme["types"]] == ["acme-widget"]
            assert acme["types"][0]["versions"] == [1, 2]
            assert [f["name"] for f in acme["filters"]] == ["acme-widget-v1-to-v2",
                                                            "acme-widget-v2-to-v1"]
            where = _run([vendor_venv.python, "-c",
                          "import migtree_acme; print(migtree_acme.__file__)"],
                         env=vendor_venv.env(), cwd=tempfile.gettempdir()).stdout
            assert "site-packages" in where and str(work) not in where
            assert not list(project.rglob("*.orig")), "the rename step leaves no backups"
            assert "example" not in (project / "pyproject.toml").read_text().replace(
                "An example", "")
        finally:
            subprocess.run([str(vendor_venv.python), "-m", "pip", "uninstall", "-y", "-q",
                            "migtree-acme"], capture_output=True, env=vendor_venv.env())
