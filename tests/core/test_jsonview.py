"""The JSON view: readable, and exactly invertible (from_json)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mt_testtypes import Blobby, Widget, make_registry

from migtree import jsonview, stream
from migtree.blob import Blob
from migtree.jsonview import from_json, stream_from_json, stream_to_json, to_json
from migtree.qom import new_root

REG = make_registry()

keys = st.text(max_size=6) | st.sampled_from(["$bytes", "$blob", "$map", "$", "__type__"])
plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=4),
    max_leaves=25)


@given(plain)
def test_round_trip_through_json_text(value):
    text = json.dumps(to_json(value))
    assert from_json(json.loads(text)) == value


def test_forms():
    assert to_json(b"\x00\xff") == {"$bytes": "00ff"}
    assert to_json({"$bytes": "x"}) == {"$map": {"$bytes": "x"}}
    assert to_json([1, True, None, "s"]) == [1, True, None, "s"]
    blob = Blob(b"abc")
    assert to_json(blob) == {"$blob": {"size": 3, "sha256": blob.sha256()}}
    assert to_json(blob, inline_blobs=True)["$blob"]["hex"] == "616263"
    assert from_json(to_json(blob, inline_blobs=True)) == blob
    assert to_json(2**64 - 1) == 2**64 - 1


@pytest.mark.parametrize("doc, message", [
    ({"$blob": {"size": 3, "sha256": "00"}}, "only summarised"),
    ({"$bytes": "zz"}, "is not hex"),
    ({"$bytes": 5}, "must hold a hex string"),
    ({"$what": 1}, "unknown key '\\$what'"),
    ({"$blob": {"size": 4, "hex": "00"}}, "says size 4 but has 1 bytes"),
])
def test_what_cannot_be_inverted_says_why(doc, message):
    with pytest.raises(ValueError, match=message):
        from_json(doc)


def test_non_text_keys_and_unknown_types_are_refused():
    with pytest.raises(ValueError, match="not text"):
        to_json({1: 2})
    with pytest.raises(TypeError, match="no rendering"):
        to_json(object())


def test_a_stream_survives_its_json_view():
    root, machine = new_root()
    w = machine.add_device(Widget(), "w0")
    w.state.var = b"\x01\x02"
    b = machine.add_device(Blobby(), "b0")
    b.state.data = Blob(bytes(range(200)))
    data = stream.save(root, registry=REG, build_name="j")
    header, tree = stream.read_tree(data)
    doc = json.loads(jsonview.dumps(stream_to_json("migtree", header, tree, inline_blobs=True)))
    assert doc["format"] == "migtree"
    assert doc["objects"][:2] == [{"path": "/", "type": "container", "version": 1},
                                  {"path": "/machine", "type": "machine", "version": 1}]
    assert doc["tree"]["machine"]["peripheral"]["w0"]["var"] == {"$bytes": "0102"}
    h2, t2 = stream_from_json(doc)
    assert (h2, t2) == (header, tree)
    assert stream.write_tree(None, None, t2, REG, build_name="j") == data
    summary = stream_to_json("migtree", header, tree)
    blob = summary["tree"]["machine"]["peripheral"]["b0"]["data"]["$blob"]
    assert blob["size"] == 200 and "hex" not in blob


def test_stream_from_json_needs_a_tree():
    with pytest.raises(ValueError, match="no 'tree'"):
        stream_from_json({"header": {}})
