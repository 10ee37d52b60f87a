"""The command itself: version, usage errors, error formatting; and the
README's promise that CI runs exactly its test command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from migtree import __version__
from migtree.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"migtree {__version__}"


def test_no_command_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: migtree" in capsys.readouterr().err


def test_errors_are_one_line_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "migtree", "build", "show", "/nonexistent.toml"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("migtree: error: ")
    assert "Traceback" not in proc.stderr
    assert "/nonexistent.toml" in proc.stderr


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    assert len(blocks) >= 2, "the README gives two commands"
    test_command = blocks[1].strip()
    ci = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] in (test_command, f"exec {test_command}")


def test_a_reader_leaving_early_is_not_an_error():
    """`migtree inspect S | head`: a command whose stdout closes early exits
    quietly, with no traceback."""
    code = (
        "import sys\n"
        "from migtree import cli\n"
        "make = cli.build_parser\n"
        "def build_parser():\n"
        "    parser = make()\n"
        "    def write(args):\n"
        "        raise BrokenPipeError(32, 'Broken pipe')\n"
        "    parser.set_defaults(func=write)\n"
        "    return parser\n"
        "cli.build_parser = build_parser\n"
        "sys.exit(cli.main([]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stderr == ""
