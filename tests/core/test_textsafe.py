"""Strings from streams and peers are escaped in human output and exact in
--json (issue 18: a peer could clear the screen and forge report lines)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from migtree.cli import main
from migtree.textsafe import safe, safe_lines, safe_tree

sys.path.insert(0, str(Path(__file__).resolve().parent / "bad_inputs"))

from bad_inputs.craft import build, header, obj

EVIL = "demo\x1b[2J\x1b[H\nsource demo: committed\u202e\x07"


@pytest.mark.parametrize("text, shown", [
    ("a\x1b[2Jb", "a\\x1b[2Jb"), ("x\ny", "x\\ny"), ("\x07\x00\x7f\x9b", "\\x07\\x00\\x7f\\x9b"),
    ("r\u202el", "r\\u202el"), ("caf\u00e9 ok", "caf\u00e9 ok"), ("tab\t", "tab\\t")])
def test_safe_escapes_control_characters_only(text, shown):
    assert safe(text) == shown


def test_safe_lines_keeps_line_breaks_indented():
    assert safe_lines("a\nb\x1b") == "a\n    b\\x1b"
    assert safe_tree({"k\n": ["v\x1b", 1]}) == {"k\\n": ["v\\x1b", 1]}


def _evil_stream(tmp_path: Path) -> Path:
    p = tmp_path / "evil.mt"
    p.write_bytes(build(obj("/"), hdr=header(
        producer={"name": "migtree", "version": "0.1.0", "build": EVIL})))
    return p


def test_inspect_escapes_what_the_stream_names(tmp_path, capsys):
    p = _evil_stream(tmp_path)
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert "demo\\x1b[2J\\x1b[H\\nsource demo: committed\\u202e\\x07" in out
    assert not any(line.startswith("source demo") for line in out.splitlines())


def test_inspect_json_keeps_the_exact_text(tmp_path, capsys):
    p = _evil_stream(tmp_path)
    assert main(["inspect", "--json", str(p)]) == 0
    assert json.loads(capsys.readouterr().out)["header"]["producer"]["build"] == EVIL


def test_reports_escape_what_the_peer_sent(capsys):
    from migtree.commands import _migargs
    from migtree.commands.send import format_report

    report = {"role": "source", "build": "src", "backend": "userspace", "outcome": "resumed",
              "destination": {"build": EVIL, "backend": "x"}, "error": f"refused: {EVIL}"}
    _migargs.print_report(report, False, format_report)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert not any(line.startswith("source demo") for line in out.splitlines())
    _migargs.print_report(report, True, format_report)
    assert json.loads(capsys.readouterr().out)["destination"]["build"] == EVIL


def test_errors_on_stderr_are_escaped(tmp_path, capsys):
    p = tmp_path / "x.mt"
    p.write_bytes(build(obj("/"), obj("/d\x1b[2J", "dev", fields={"a": 1})))
    assert main(["inspect", str(p)]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[2J" in err


def test_explain_escapes_what_the_stream_names(tmp_path, capsys):
    p = _evil_stream(tmp_path)
    build_file = tmp_path / "b.toml"
    build_file.write_text('name = "empty"\n[machine]\ncpus = 0\n')
    main(["explain", str(p), "--to", str(build_file)])
    out = capsys.readouterr().out
    assert "stream " in out and "\\x1b[2J" in out
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert not any(line.startswith("source demo") for line in out.splitlines())

