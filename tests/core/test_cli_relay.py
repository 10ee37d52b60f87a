"""``migtree relay``: the core's part (the target opened as for ``convert
--target``, the format's ``relay`` capability called with the core's own
conversion, the result printed, failures and missing capabilities
reported). A test format relays between files here; QEMU's relay between
real QEMUs is tested in tests/qemu/test_qemu_relay.py."""

from __future__ import annotations

import json

import pytest
from mt_testtypes import make_registry
from test_cli_convert import MAGIC, JtreeFormat, jtree_read, jtree_write, make_stream

from migtree import plugins
from migtree.cli import main
from migtree.errors import StreamError
from migtree.formats import open_stream
from migtree.hookspecs import hookimpl
from migtree.targets import SchemaTarget

TARGET_MAGIC = b'{"relay-target": true,'


class RelayResult:
    def __init__(self, report, notes, size):
        self.report, self.notes, self.size = report, notes, size

    def as_dict(self):
        return {"bytes_out": self.size, "conversion_ms": 1.0}


class RelayingFormat(JtreeFormat):
    """jtree, plus ``read_target`` (a schema dump marked for it) and
    ``relay`` (from a file to a file: the addresses are the format's)."""

    name = "jtree"

    def read_target(self, path):
        data = open(path, "rb").read()
        if not data.startswith(TARGET_MAGIC):
            return None
        target = SchemaTarget(json.loads(data), "relay-target")
        target.format = "jtree"
        return target

    def relay(self, source, destination, *, target, convert, source_control=None,
              destination_control=None, log=None):
        header, tree = open_stream(source)[1:]
        if source_control == "fail":
            err = StreamError("section 'w0', field 'a32': refused here")
            err.recovery = "source: resumed with 'cont'"
            raise err
        report, notes = convert(tree)
        with open(destination, "wb") as f:
            jtree_write(f, header, tree)
        # the notes come as a callable, asked for once the state is sent
        return RelayResult(report, notes(), len(open(destination, "rb").read()))


class Plugin:
    @hookimpl
    def migtree_register_stream_formats(self, register):
        register(RelayingFormat())


@pytest.fixture
def registry(monkeypatch):
    reg = make_registry()
    reg.add_plugin(Plugin(), "relaying-format")
    monkeypatch.setattr(plugins, "_registry", reg)
    return reg


@pytest.fixture
def files(registry, tmp_path, capsys):
    src = tmp_path / "vm.mt"
    src.write_bytes(make_stream())
    assert main(["schema", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(doc))
    target = tmp_path / "target.json"
    target.write_bytes(TARGET_MAGIC + json.dumps(doc).encode()[1:])
    return src, schema, target, tmp_path / "out.jtree"


def test_relay_converts_with_the_cores_conversion_and_reports(files, capsys):
    src, _, target, out = files
    assert main(["relay", "--listen", str(src), "--to", str(out), "--target", str(target),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["bytes_out"] == out.stat().st_size
    assert printed["applications"] == 0
    with open(out, "rb") as f:
        assert f.read(len(MAGIC)) == MAGIC
    with open(out, "rb") as f:
        _, tree = jtree_read(f)
    assert tree["machine"]["peripheral"]["w0"]["a32"] == 0x1234


def test_a_failed_relay_exits_1_naming_where_and_what_became_of_the_source(files, capsys):
    src, _, target, out = files
    assert main(["relay", "--listen", str(src), "--to", str(out), "--target", str(target),
                 "--source-control", "fail"]) == 1
    err = capsys.readouterr().err
    assert "migtree relay: failed: section 'w0', field 'a32': refused here" in err
    assert "migtree relay: source: resumed with 'cont'" in err
    assert not out.exists()


def test_a_target_whose_format_cannot_relay_is_a_usage_error(files, capsys):
    src, schema, _, out = files
    with pytest.raises(SystemExit) as e:
        main(["relay", "--listen", str(src), "--to", str(out), "--target", str(schema)])
    assert e.value.code == 2
    assert "cannot relay a live migration" in capsys.readouterr().err
