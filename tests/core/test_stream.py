"""The wire format: save -> read_tree -> load round trips, the layout the
specification promises, CDDL validation of real streams, blobs, inputs of
every kind (bytes, files, pipes, an offset inside a file)."""

from __future__ import annotations

import copy
import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import cbor2
import cddl_verifier
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mt_testtypes import Blobby, BlobState, Everything, Plain, Widget, make_registry

from migtree import stream
from migtree.blob import Blob
from migtree.errors import StreamError, UnknownTypeError
from migtree.qom import new_root
from migtree.tree import get_node, save_tree
from migtree.visitor import schema_of, strategy_for

REPO = Path(__file__).resolve().parents[2]
CDDL = Path(stream.__file__).with_name("migtree.cddl")
VALIDATOR = cddl_verifier.Validator(CDDL.read_text())
REG = make_registry()


def build():
    root, machine = new_root()
    w0 = machine.add_device(Widget(), "w0")
    w1 = machine.add_device(Widget(), "w1")
    inner = w0.add_child("inner", Widget())
    b = machine.add_device(Blobby(), "b0")
    plain = machine.add_device(Plain())
    return root, machine, [w0, w1, inner], b, plain


def items_of(data: bytes) -> list:
    dec = cbor2.CBORDecoder(io.BytesIO(data))
    out = []
    while dec.fp.tell() < len(data):
        out.append(dec.decode())
    return out


def assert_valid_cddl(data: bytes) -> None:
    """Validate a whole stream against migtree-stream (bytes .cborseq items)."""
    result = VALIDATOR.validate(cbor2.dumps(data), "migtree-stream")
    assert result.valid, [str(d) for d in result.diagnostics]


# -- round trips ----------------------------------------------------------------

@given(st.lists(strategy_for(Everything, 2), min_size=3, max_size=3),
       strategy_for(BlobState), st.integers(0, 2**63 - 1))
def test_every_state_survives_save_read_tree_load(states, blob_state, clock):
    root, machine, widgets, b, _ = build()
    for w, s in zip(widgets, states, strict=True):
        w.state = s
    b.state = blob_state
    machine.state.clock_ns = clock
    data = stream.save(root, registry=REG)
    header, tree = stream.read_tree(data)
    assert tree == save_tree(root)
    root2, machine2, widgets2, b2, _ = build()
    report = stream.load(tree, root2, registry=REG)
    assert [w.state for w in widgets2] == states
    assert b2.state == blob_state and machine2.state.clock_ns == clock
    assert report.missing == [] and report.unconsumed == []


@settings(max_examples=20)
@given(st.lists(strategy_for(Everything, 2), min_size=3, max_size=3))
def test_real_streams_validate_against_the_cddl(states):
    root, _, widgets, b, _ = build()
    for w, s in zip(widgets, states, strict=True):
        w.state = s
    b.state.data = Blob(os.urandom(1500))
    assert_valid_cddl(stream.save(root, registry=REG, build_name="cddl"))


def test_cddl_rejects_what_the_reader_rejects():
    root, *_ = build()
    items = items_of(stream.save(root, registry=REG))
    for mutate in (lambda it: it[3][4].__setitem__("x", 1.5),          # a float
                   lambda it: it[3].__setitem__(1, "machine"),         # a relative path
                   lambda it: it[0].__setitem__("magic", "MIGTREF"),
                   lambda it: it[-1].__setitem__(2, b"short"),         # footer digest
                   lambda it: it[3][4].__setitem__("k", {1: 2})):      # a non-text key
        bad = copy.deepcopy(items)
        mutate(bad)
        seq = b"".join(cbor2.dumps(i) for i in bad)
        assert not VALIDATOR.validate(cbor2.dumps(seq), "migtree-stream").valid


def test_docs_copy_of_the_cddl_is_the_shipped_one():
    assert (REPO / "docs/migtree.cddl").read_text() == CDDL.read_text()


def test_save_is_deterministic_and_write_tree_matches_save():
    root, *_ = build()
    a = stream.save(root, registry=REG, build_name="x")
    assert a == stream.save(root, registry=REG, build_name="x")
    _, tree = stream.read_tree(a)
    assert stream.write_tree(None, None, tree, REG, build_name="x") == a
    out = io.BytesIO()
    assert stream.save(root, out, registry=REG, build_name="x") is None
    assert out.getvalue() == a


# -- layout ----------------------------------------------------------------------

def test_layout_header_sections_footer():
    root, machine, widgets, b, plain = build()
    b.state.data = Blob(b"\xab" * (stream.CHUNK_SIZE * 2 + 7))
    data = stream.save(root, registry=REG, build_name="lab-7")
    assert data[0] in range(0xA1, 0xB8) and data[1:15] == stream.MAGIC_PREFIX
    secs = list(stream.iter_sections(data))
    h = secs[0].header
    assert secs[0].kind == "header" and secs[0].offset == 0
    assert list(h)[:2] == ["magic", "version"] and h["version"] == 1
    assert h["producer"]["name"] == "migtree" and h["producer"]["build"] == "lab-7"
    assert h["plugins"] == {"migtree": None, "test-types": None}
    assert h["schemas"]["test-widget@2"] == {
        "type": "test-widget", "version": 2, "parent": "device", "plugin": "test-types",
        "fields": schema_of(Everything, 2)}
    objects = [s for s in secs if s.kind == "object"]
    assert [s.path for s in objects] == [o.path for o in root.walk()]
    chunks = [s for s in secs if s.kind == "chunk"]
    assert [(c.path, c.index, c.chunk_offset, len(c.data)) for c in chunks] == [
        ("/machine/peripheral/b0", 0, 0, stream.CHUNK_SIZE),
        ("/machine/peripheral/b0", 0, stream.CHUNK_SIZE, stream.CHUNK_SIZE),
        ("/machine/peripheral/b0", 0, 2 * stream.CHUNK_SIZE, 7)]
    blob_obj = next(s for s in objects if s.path == "/machine/peripheral/b0")
    assert blob_obj.fields["data"] == {"$blob": 0} and blob_obj.blob_sizes == [2 * (1 << 20) + 7]
    # chunks follow their object immediately
    i = secs.index(blob_obj)
    assert [s.kind for s in secs[i + 1:i + 4]] == ["chunk"] * 3
    foot = secs[-1]
    assert foot.kind == "footer" and foot.size == stream.FOOTER_SIZE == 45
    assert foot.offset == len(data) - 45 and foot.count == len(secs) - 2
    assert foot.data == hashlib.sha256(data[:-45]).digest()
    # no object section carries a child object or the reserved keys
    for s in objects:
        assert not any(isinstance(v, dict) and "__type__" in v for v in s.fields.values())
        assert "__type__" not in s.fields and "__version__" not in s.fields


def test_blobs_read_back_into_blob_objects_and_spool():
    root, machine, widgets, b, _ = build()
    payload = os.urandom(9 << 20)  # above blob.SPOOL_LIMIT: lands in a temporary file
    b.state.data = Blob(payload)
    data = stream.save(root, registry=REG)
    _, tree = stream.read_tree(data)
    got = get_node(tree, "/machine/peripheral/b0")["data"]
    assert isinstance(got, Blob) and len(got) == len(payload) and got.read() == payload
    assert got._file._rolled  # spooled to disk, not held as one bytes object


def test_empty_blob_has_no_chunks():
    root, machine, widgets, b, _ = build()
    data = stream.save(root, registry=REG)
    assert not [s for s in stream.iter_sections(data) if s.kind == "chunk"]
    _, tree = stream.read_tree(data)
    assert len(get_node(tree, "/machine/peripheral/b0")["data"]) == 0


# -- inputs ------------------------------------------------------------------------

class Pipe(io.RawIOBase):
    """A non-seekable reader that hands out at most 1000 bytes at a time."""

    def __init__(self, data: bytes):
        self._b = io.BytesIO(data)

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, buf):
        n = min(len(buf), 1000)
        chunk = self._b.read(n)
        buf[:len(chunk)] = chunk
        return len(chunk)


def test_every_kind_of_input_reads_the_same(tmp_path):
    root, machine, widgets, b, _ = build()
    b.state.data = Blob(os.urandom(stream.CHUNK_SIZE + 3))
    data = stream.save(root, registry=REG)
    expect = save_tree(root)
    path = tmp_path / "s.mtree"
    path.write_bytes(data)
    with open(path, "rb") as fp:
        assert stream.read_tree(fp)[1] == expect
    assert stream.read_tree(path)[1] == expect
    assert stream.read_tree(str(path))[1] == expect
    assert stream.read_tree(bytearray(data))[1] == expect
    assert stream.read_tree(memoryview(data))[1] == expect
    assert stream.read_tree(io.BytesIO(data))[1] == expect
    assert stream.read_tree(Pipe(data))[1] == expect
    assert stream.read_tree(io.BufferedReader(Pipe(data)))[1] == expect
    # a stream that starts in the middle of a file: offsets are relative to it
    with open(tmp_path / "embedded", "wb") as fp:
        fp.write(b"junk-before" + data)
    with open(tmp_path / "embedded", "rb") as fp:
        fp.seek(11)
        assert stream.read_tree(fp)[1] == expect


def test_pipe_input_checks_the_checksum_at_the_footer():
    root, *_ = build()
    data = bytearray(stream.save(root, registry=REG))
    secs = list(stream.iter_sections(bytes(data)))
    # flip a bit inside a byte string of an object section: still decodes
    w0 = next(s for s in secs if s.path == "/machine/peripheral/w0")
    at = bytes(data).index(b"\x44\x00\x00\x00\x00", w0.offset) + 1  # fixed: bytes_(4)
    data[at] ^= 0x01
    with pytest.raises(StreamError, match="checksum mismatch"):
        stream.read_tree(Pipe(bytes(data)))
    with pytest.raises(StreamError, match="checksum mismatch"):
        stream.read_tree(bytes(data))


def test_pipe_input_rejects_data_after_the_footer():
    data = stream.save(build()[0], registry=REG) + b"\x00"
    with pytest.raises(StreamError, match="data follows the footer"):
        stream.read_tree(Pipe(data))
    with pytest.raises(StreamError, match="does not end with a footer"):
        stream.read_tree(data)


def test_text_mode_files_are_refused_clearly(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(stream.save(build()[0], registry=REG))
    with open(path) as fp, pytest.raises(TypeError, match="binary file"):
        stream.read_tree(fp)


def test_a_file_read_keeps_the_callers_position_semantics(tmp_path):
    data = stream.save(build()[0], registry=REG)
    path = tmp_path / "s"
    path.write_bytes(data)
    with open(path, "rb") as fp:
        h1 = stream.read_tree(fp)[0]
    assert h1["magic"] == "MIGTREE"


# -- writing -----------------------------------------------------------------------

def test_write_tree_keeps_stash_extra_and_given_schemas():
    root, *_ = build()
    _, tree = stream.read_tree(stream.save(root, registry=REG))
    node = get_node(tree, "/machine/peripheral/w1")
    node["__stash__"] = {"pair": {"dropped": b"\x01", "n": [1, 2]}}
    tree["machine"]["peripheral"]["foreign"] = {"__type__": "qemu-thing", "__version__": 4,
                                                "raw": b"\x00\x01"}
    with pytest.raises(UnknownTypeError, match="qemu-thing@4"):
        stream.write_tree(None, None, tree, REG)
    entry = {"type": "qemu-thing", "version": 4, "parent": None, "plugin": None,
             "fields": [{"name": "raw", "kind": "bytes"}]}
    data = stream.write_tree(None, {"source": "qemu 7.2", "id": b"\x07"}, tree, REG,
                             schemas={"qemu-thing@4": entry})
    header, back = stream.read_tree(data)
    assert back == tree
    assert header["extra"] == {"source": "qemu 7.2", "id": b"\x07"}
    assert header["schemas"]["qemu-thing@4"] == entry
    assert_valid_cddl(data)


@pytest.mark.parametrize("bad, message", [
    (1.5, "float 1.5 is not allowed"),
    ({1: 2}, "map key 1 is not text"),
    ({"$blob": 0}, "reserved for blob placeholders"),
    ({3, 4}, "set is not allowed"),
])
def test_write_tree_refuses_what_no_reader_accepts(bad, message):
    root, *_ = build()
    tree = save_tree(root)
    get_node(tree, "/machine/peripheral/w0")["extra"] = bad
    with pytest.raises(StreamError, match=message) as e:
        stream.write_tree(None, None, tree, REG)
    assert e.value.path == "/machine/peripheral/w0"


def test_save_refuses_a_blob_whose_length_lies():
    class Liar:
        def __len__(self):
            return 10

        def iter_chunks(self, size):
            yield b"12345"

    root, machine, widgets, b, _ = build()
    b.state.data = Liar()
    with pytest.raises(StreamError, match="its length was 10 but its chunks gave 5"):
        stream.save(root, registry=REG)


def test_save_rechunks_a_source_with_big_chunks():
    class Big:
        def __len__(self):
            return 3 * stream.CHUNK_SIZE

        def iter_chunks(self, size):
            yield b"\x01" * (3 * stream.CHUNK_SIZE)

    root, machine, widgets, b, _ = build()
    b.state.data = Big()
    data = stream.save(root, registry=REG)
    sizes = [len(s.data) for s in stream.iter_sections(data) if s.kind == "chunk"]
    assert sizes == [stream.CHUNK_SIZE] * 3


# -- load --------------------------------------------------------------------------

def test_load_names_an_unregistered_type_and_changes_nothing():
    root, machine, widgets, *_ = build()
    widgets[0].state.a8 = 9
    _, tree = stream.read_tree(stream.save(root, registry=REG))
    tree["machine"]["peripheral"]["w1"]["__type__"] = "no-such-device"
    root2, machine2, widgets2, *_ = build()
    with pytest.raises(UnknownTypeError) as e:
        stream.load(tree, root2, registry=REG)
    assert str(e.value) == ("/machine/peripheral/w1: type 'no-such-device' is not registered "
                            "by any installed plugin; nothing was loaded")
    assert widgets2[0].state.a8 == 0


def test_load_of_a_registered_but_absent_type_is_a_load_error():
    from migtree.errors import LoadError

    root, *_ = build()
    _, tree = stream.read_tree(stream.save(root, registry=REG))
    tree["machine"]["peripheral"]["w1"]["__type__"] = "test-blobby"
    with pytest.raises(LoadError, match="the tree holds test-blobby@2"):
        stream.load(tree, build()[0], registry=REG)


def test_gc_state_is_restored():
    import gc

    gc.disable()
    try:
        stream.read_tree(stream.save(build()[0], registry=REG))
        assert not gc.isenabled()
    finally:
        gc.enable()
    stream.read_tree(stream.save(build()[0], registry=REG))
    assert gc.isenabled() and gc.get_freeze_count() == 0
    # an application that froze objects itself keeps them frozen
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        stream.read_tree(stream.save(build()[0], registry=REG))
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_cli_free_import_has_no_side_effects():
    # reading a stream needs no plugin: a fresh interpreter with plugins disabled
    root, *_ = build()
    data = stream.save(root, registry=REG)
    code = ("import sys; from migtree import stream; h, t = stream.read_tree(sys.stdin.buffer);"
            "print(sorted(h['schemas']))")
    env = {**os.environ, "MIGTREE_LOAD_PLUGINS": ""}
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True,
                         env=env, check=True).stdout.decode()
    assert "test-widget@2" in out


def test_the_fixture_plugins_format_reads_its_own_streams():
    """tests/plugin_fixtures/good registers a stream format: its reader reads
    ``FIXT`` + a migtree stream and refuses anything else."""
    sys.path.insert(0, str(REPO / "tests" / "plugin_fixtures" / "good" / "src"))
    try:
        from mtfix_good.plugin import GoodFormat
    finally:
        sys.path.pop(0)
    root, *_ = build()
    data = stream.save(root, registry=REG, build_name="x")
    fmt = GoodFormat()
    assert fmt.sniff(b"FIXT" + data)
    assert fmt.read(io.BytesIO(b"FIXT" + data)) == stream.read_tree(data)
    with pytest.raises(StreamError, match="no FIXT magic"):
        fmt.read(io.BytesIO(data))
