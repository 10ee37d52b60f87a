"""Untrusted input: every bad stream gives a StreamError (UnknownTypeError
for a type when loading, test_stream.py) with a message naming the offset
and path, never a cbor2 traceback, never unbounded memory, never a hang.

The named cases live in bad_inputs/cases.py; their bytes (the small ones)
and exact errors in bad_inputs/*.bin + manifest.json, replayed here as a
regression corpus. The fuzz tests feed random and mutated streams."""

from __future__ import annotations

import hashlib
import io
import json
import tracemalloc
from pathlib import Path

import cbor2
import pytest
from bad_inputs.craft import build, header, minimal, obj
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mt_testtypes import Blobby, Plain, Widget, make_registry

from migtree import stream
from migtree.blob import Blob
from migtree.errors import StreamError
from migtree.qom import new_root
from migtree.stream import Limits

HERE = Path(__file__).resolve().parent / "bad_inputs"
MANIFEST = json.loads((HERE / "manifest.json").read_text())

import sys  # noqa: E402

sys.path.insert(0, str(HERE))
from cases import CASES  # noqa: E402


class Pipe(io.RawIOBase):
    def __init__(self, data: bytes):
        self._b = io.BytesIO(data)

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, buf):
        chunk = self._b.read(min(len(buf), 4096))
        buf[:len(chunk)] = chunk
        return len(chunk)


def error_of(src, **kw) -> StreamError:
    with pytest.raises(StreamError) as e:
        stream.read_tree(src, **kw)
    return e.value


# -- the named cases and the corpus -------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_named_case(name):
    data = CASES[name]()
    err = error_of(data)
    if name in MANIFEST:
        assert MANIFEST[name] == {"error": "StreamError", "message": str(err)}
    # the same bytes through a pipe: refused too (possibly for another reason
    # found first, since a pipe's checksum is only known at the footer)
    error_of(Pipe(data))


@pytest.mark.parametrize("path", sorted(HERE.glob("*.bin")), ids=lambda p: p.stem)
def test_corpus(path):
    want = MANIFEST[path.stem]
    with pytest.raises(StreamError) as e:
        stream.read_tree(path.read_bytes())
    assert {"error": type(e.value).__name__, "message": str(e.value)} == want
    with pytest.raises(StreamError):
        stream.read_tree(path)  # a file: the same checks, through the windowed reader


def test_manifest_has_no_stale_entries():
    assert set(MANIFEST) == {p.stem for p in HERE.glob("*.bin")}


@pytest.mark.parametrize("name, message", [
    ("truncated_in_header", "offset 0: truncated: the stream ends inside the header"),
    ("flipped_bit", "checksum mismatch"),
    ("absurd_bytes_length", "offset 240: truncated: the stream ends inside section 1"),
    ("deep_nesting", "offset 240: section 1: nested deeper than the limit of 64"),
    ("wrong_magic", "offset 0: not a migtree stream"),
    ("unknown_version", "format version 2 is not supported (this migtree reads version 1)"),
    ("missing_parent", "/a/b at offset 257: no section for its parent /a precedes it"),
    ("duplicate_path", "/d at offset 272: duplicate section for /d (the first is at offset 257)"),
    ("float_value", "/ at offset 240: speed[1].x: float 1.5 is not allowed"),
    ("tag_258", "CBOR tag 258 is not allowed"),
    ("chunk_too_big", "/ at offset 272: chunk data must be 1..1048576 bytes"),
    ("deep_nesting_header", "offset 0: the header: nested deeper than the limit of 64"),
])
def test_the_issue_list_reads_well(name, message):
    assert message in str(error_of(CASES[name]()))


def test_every_truncation_and_every_bit_flip_is_refused():
    data = minimal()
    for n in range(len(data)):
        error_of(data[:n])
    for at in range(len(data)):
        for bit in (0, 7):
            bad = bytearray(data)
            bad[at] ^= 1 << bit
            error_of(bytes(bad))


# -- memory and limits ------------------------------------------------------------------

@pytest.mark.parametrize("how", ["bytes", "pipe", "file"])
def test_an_absurd_length_prefix_allocates_nothing(how, tmp_path):
    data = CASES["absurd_bytes_length"]()
    src = {"bytes": lambda: data, "pipe": lambda: Pipe(data),
           "file": lambda: tmp_path.joinpath("a").open("rb")}
    tmp_path.joinpath("a").write_bytes(data)
    s = src[how]()
    tracemalloc.start()
    try:
        with pytest.raises(StreamError, match="truncated"):
            stream.read_tree(s)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes for a {len(data)}-byte stream claiming 2**62 bytes"


def test_an_oversized_item_stops_at_the_section_limit_when_streaming():
    # 3 MiB of real bytes behind a 2**40 length prefix, read from a pipe with a
    # 256 KiB section limit: the reader never buffers more than the limit
    big = bytes([0x86, 0x00]) + cbor2.dumps("/") + cbor2.dumps("container") + b"\x01" \
        + b"\xa1" + cbor2.dumps("x") + b"\x5b" + (1 << 40).to_bytes(8, "big")
    data = build(big) + b"\x00" * (3 << 20)
    tracemalloc.start()
    try:
        err = error_of(Pipe(data), limits=Limits(max_section_size=256 << 10))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "offset 240: the item here is longer than the limit of 262144 bytes" in str(err)
    assert peak < 2 << 20


def test_total_size_limit():
    data = minimal()
    lim = Limits(max_total_size=len(data) - 1)
    assert "above the limit" in str(error_of(data, limits=lim))
    assert "longer than the limit" in str(error_of(Pipe(data), limits=lim))
    stream.read_tree(data, limits=Limits(max_total_size=len(data)))


def _big_section(fields):
    return build(obj("/", fields=fields))


@pytest.mark.parametrize("limits, fields, message", [
    (Limits(max_array_length=10), {"a": [0] * 11},
     "a: an array of 11 items exceeds the limit of 10"),
    (Limits(max_map_size=6), {"m": dict.fromkeys("abcdefg", 1)},
     "m: a map of 7 entries exceeds the limit of 6"),
    (Limits(max_map_size=3), {}, "offset 0: header: a map of 5 entries exceeds the limit of 3"),
    (Limits(max_str_length=12), {"s": "x" * 13},
     "s: text of 13 characters exceeds the limit of 12"),
    (Limits(max_str_length=12), {"a-much-longer-key": 1},
     "a map key exceeds the limit of 12 characters"),
    (Limits(max_bytes_length=4), {"b": [b"12345"]}, "b[0]: 5 bytes exceed the limit of 4"),
    (Limits(max_section_size=20), {"b": b"x" * 30}, "above the limit of 20"),
])
def test_length_limits(limits, fields, message):
    assert message in str(error_of(_big_section(fields), limits=limits))
    stream.read_tree(_big_section(fields))  # within the default limits


def test_section_count_limit():
    data = build(obj("/"), obj("/a"), obj("/b"))
    assert "more than 2 sections" in str(error_of(data, limits=Limits(max_sections=2)))


def test_limits_must_be_positive_and_depth_bounded():
    with pytest.raises(ValueError, match="max_depth"):
        Limits(max_depth=0)
    with pytest.raises(ValueError, match="at most 256"):
        Limits(max_depth=100_000)
    value: list = [1]
    for _ in range(200):
        value = [value]
    # 200 levels: past the default 64, within a raised limit, no RecursionError
    deep = build(obj("/", fields={"x": value}))
    assert "nested deeper than the limit of 64" in str(error_of(deep))
    assert stream.read_tree(deep, limits=Limits(max_depth=256))[1]["x"] == value


def test_depth_limit_is_configurable():
    deep = {"a": [[[[1]]]]}
    assert "nested deeper than the limit of 4" in str(
        error_of(_big_section(deep), limits=Limits(max_depth=4)))


# -- tags ----------------------------------------------------------------------------------

def test_every_tag_cbor2_knows_is_rejected():
    """Probe cbor2's built-in tags (0..70000 and three huge numbers): each is
    rejected by our decoder configuration, none is decoded."""
    from migtree.stream import _SEMANTIC_REJECT, _reject_tag_hook, _TagRejected

    for n in [*range(70000), 2**32, 2**63, 2**64 - 1]:
        enc = cbor2.dumps(cbor2.CBORTag(n, 0))
        with pytest.raises(cbor2.CBORDecodeError) as e:
            cbor2.loads(enc, semantic_decoders=_SEMANTIC_REJECT, tag_hook=_reject_tag_hook)
        assert isinstance(e.value.__cause__ or e.value.__context__, _TagRejected), n


# -- fuzzing ---------------------------------------------------------------------------------

def _valid_stream() -> bytes:
    reg = make_registry()
    root, machine = new_root()
    w = machine.add_device(Widget(), "w0")
    w.state.name = "fuzz"
    w.add_child("inner", Widget())
    b = machine.add_device(Blobby(), "b0")
    b.state.data = Blob(bytes(range(256)) * 3)
    machine.add_device(Plain())
    return stream.save(root, registry=reg)


VALID = _valid_stream()


def _refoot(data: bytes) -> bytes:
    """Recompute the footer over the mutated body so the mutation reaches
    the decoder instead of stopping at the checksum."""
    if len(data) < 45:
        return data
    body = data[:-45]
    return body + data[-45:-32] + hashlib.sha256(body).digest()


def _read_all_ways(data: bytes) -> None:
    for src in (data, Pipe(data)):
        try:
            stream.read_tree(src)
        except StreamError:
            pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
@example(b"\xa5" + stream.MAGIC_PREFIX)
@example(b"\xa5" + stream.MAGIC_PREFIX + b"\x67version\x02")
def test_fuzz_random_bytes(data):
    _read_all_ways(data)
    _read_all_ways(b"\xa5" + stream.MAGIC_PREFIX + data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "cut"]),
                          st.integers(0, len(VALID) - 1), st.integers(0, 255)),
                min_size=1, max_size=4),
       st.booleans())
def test_fuzz_mutated_valid_streams(edits, refoot):
    data = bytearray(VALID)
    for op, at, val in edits:
        if not data:
            break
        at %= len(data)
        if op == "flip":
            data[at] ^= 1 << (val % 8)
        elif op == "set":
            data[at] = val
        elif op == "insert":
            data[at:at] = bytes([val])
        elif op == "delete":
            del data[at:at + 1 + val % 4]
        else:
            del data[at:]
    data = bytes(data)
    _read_all_ways(_refoot(data) if refoot else data)


@settings(max_examples=200)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
                    | st.binary(max_size=8),
                    lambda c: st.lists(c, max_size=4)
                    | st.dictionaries(st.text(max_size=4) | st.integers(), c, max_size=4),
                    max_leaves=20))
def test_fuzz_structured_sections(value):
    """Well-formed CBOR of any shape where a section or its fields belong."""
    for sections in ([value], [obj("/"), value], [obj("/", fields={"f": value})],
                     [obj("/", fields=value if isinstance(value, dict) else {"v": value})]):
        _read_all_ways(build(*sections))
    _read_all_ways(build(obj("/"), hdr=header(extra={"x": value})))


@pytest.mark.parametrize("bad", [1.5, {2: 1}, {b"k": 1}, {"$blob": 0}, cbor2.CBORSimpleValue(99),
                                 {"__type__": "x"}])
def test_a_bad_value_deep_in_a_batch_is_found_and_named(bad):
    """Sections are value-checked in batches (stream._census); the precise
    checker must still name the one bad section among thousands."""
    sections = [obj("/")] + [obj(f"/n{i}", "dev", fields={"a": i, "s": [{"x": [1, 2]}]})
                             for i in range(2500)]
    if isinstance(bad, dict) and "__type__" in bad:
        sections[1700][4]["obj"] = bad  # an object node as a field value
    else:
        sections[1700][4]["s"][0]["x"].append(bad)
    err = error_of(build(*sections))
    assert err.path == "/n1699"


def test_census_accepts_plain_batches_and_sees_nested_keys():
    from migtree.stream import _census

    assert _census([{"a": [1, {"b": b"x", "c": [None, True, "s"]}]}] * 3)
    assert not _census([{"a": 1}, {"a": [{"k": {3: 4}}]}])
    assert not _census([{"a": [[[1.0]]]}])
    assert not _census([{"__version__": 1}])
    assert _census([{"a": {"__version__": 1}}])  # only the fields map reserves it
