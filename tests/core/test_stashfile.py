"""Stash files (migtree.stashfile, docs/filters.md 2.18): the stash of a
stream written in a format with no room for it, kept beside the output and
put back on the way up -- only onto objects whose own state is unchanged.
The real trip through a QEMU that loads and saves is in
tests/qemu/test_qemu_versions.py; here the rules, the file and the CLI."""

from __future__ import annotations

import copy
import json
import os
import stat

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli_convert import MAGIC, registry  # noqa: F401  (the jtree format's fixture)
from test_cli_convert import make_stream as make_mt

from migtree import stashfile, stream
from migtree.cli import main
from migtree.stashfile import StashFileError
from migtree.tree import MAX_KEPT_STASH, STASH_KEY, iter_object_nodes

# -- trees with stashes ------------------------------------------------------------------------

names = st.text("abcdefgh_", min_size=1, max_size=6)
scalars = (st.none() | st.booleans() | st.integers(-2**64, 2**64 - 1) | st.binary(max_size=8)
           | st.text(max_size=8))
values = st.recursive(scalars,
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(names, inner, max_size=3), max_leaves=8)
stashes = st.dictionaries(names, st.dictionaries(names, values, min_size=1, max_size=3),
                          min_size=1, max_size=2)


@st.composite
def trees(draw, depth=0):
    node = {"__type__": draw(st.sampled_from(["dev", "bus", "container"])), "__version__": 1}
    node.update(draw(st.dictionaries(names.map(lambda n: "f_" + n), values, max_size=3)))
    if draw(st.booleans()):
        node[STASH_KEY] = draw(stashes)
    if depth < 2:
        for child in draw(st.lists(names, max_size=3, unique=True)):
            node["c_" + child] = draw(trees(depth=depth + 1))
    return node


def strip(tree):
    out = copy.deepcopy(tree)
    for _, node in iter_object_nodes(out):
        node.pop(STASH_KEY, None)
    return out


@settings(max_examples=150, deadline=None)
@given(trees())
def test_collect_write_read_apply_puts_every_stash_back(tmp_path_factory, tree):
    """The property: a stash file written for a tree, applied to the same
    tree without its stashes, gives the tree back exactly."""
    path = tmp_path_factory.mktemp("s") / "t.stash"
    entries = stashfile.collect(tree, None)
    stashfile.write(str(path), stashfile.encode(entries, stream_format="test", target=None))
    bare = strip(tree)
    done = stashfile.apply(bare, stashfile.read(str(path)), None)
    assert bare == tree
    assert len(done.restored) == len(entries) and not done.changed and not done.absent


def _tree():
    return {"__type__": "container", "__version__": 1,
            "a": {"__type__": "dev", "__version__": 2, "x": 1, "y": [1, 2],
                  STASH_KEY: {"dev-v3-v2": {"z": 7}},
                  "kid": {"__type__": "dev", "__version__": 2, "x": 5}},
            "b": {"__type__": "dev", "__version__": 2, "x": 2,
                  STASH_KEY: {"dev-v3-v2": {"z": 8}}}}


def test_a_changed_object_or_a_missing_one_gets_nothing_and_is_named(tmp_path):
    tree = _tree()
    doc = {"format": "migtree-stash", "version": 1, "stream_format": "t", "target": None,
           "entries": stashfile.collect(tree, None)}
    saved = strip(tree)
    saved["a"]["x"] = 99                       # the destination changed a's own state
    saved["a"]["kid"]["x"] = 6                 # a child's state is not a's
    del saved["b"]                             # and b is gone
    done = stashfile.apply(saved, doc, None)
    assert STASH_KEY not in saved["a"]
    assert done.changed == [("/a", ["dev-v3-v2.z"])]
    assert done.absent == [("/b", ["dev-v3-v2.z"])]
    text = "\n".join(done.lines("f.stash"))
    assert "/a: the object's state changed since the stash was written, so dev-v3-v2.z is " \
           "dropped" in text and "/b: no such object in this stream" in text
    # a child's change does not count against its parent
    saved = strip(tree)
    saved["a"]["kid"]["x"] = 6
    stashfile.apply(saved, doc, None)
    assert saved["a"][STASH_KEY] == {"dev-v3-v2": {"z": 7}}


def test_a_format_anchors_and_fingerprints_its_own_way():
    class Fmt:
        @staticmethod
        def stash_anchor(path, node):
            return f"id {node['id']}" if "id" in node else path

        @staticmethod
        def stash_state(node):
            return [node["x"]]  # names and framing left out

    tree = {"__type__": "container", "__version__": 1,
            "old": {"__type__": "dev", "__version__": 1, "id": 4, "x": 3, "frame": 1,
                    STASH_KEY: {"p": {"f": 1}}}}
    doc = {"entries": stashfile.collect(tree, Fmt)}
    moved = {"__type__": "container", "__version__": 1,
             "new": {"__type__": "dev", "__version__": 1, "id": 4, "x": 3, "frame": 2}}
    assert stashfile.apply(moved, doc, Fmt).restored == [("/new", ["p.f"])]
    assert moved["new"][STASH_KEY] == {"p": {"f": 1}}


def test_an_anchor_the_format_gives_twice_falls_back_to_the_path():
    class Fmt:
        @staticmethod
        def stash_anchor(path, node):
            return "same"

    tree = _tree()
    entries = stashfile.collect(tree, Fmt)
    assert [e["anchor"] for e in entries] == ["/a", "/b"]
    stashfile.encode(entries, stream_format="t", target=None)  # unique: writable
    bare = strip(tree)
    assert len(stashfile.apply(bare, {"entries": entries}, Fmt).restored) == 2
    assert bare == tree


def test_the_file_is_private_and_a_failed_write_keeps_the_old_one(tmp_path):
    path = tmp_path / "x.stash"
    old = os.umask(0)
    try:
        stashfile.write(str(path), stashfile.encode(stashfile.collect(_tree(), None),
                                                    stream_format="t", target="T"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stashfile.read(str(path))["target"] == "T"


def test_what_the_reader_would_refuse_is_refused_before_writing():
    for stash, message in [({"p": {"f": 2**64}}, "CBOR tag 2"),
                           ({"p": {"f": object()}}, "cannot be kept in a stash file"),
                           ({"p": {"f": b"x" * MAX_KEPT_STASH}}, "an object keeps")]:
        entries = [{"anchor": "/", "path": "/", "state": bytes(32), "stash": stash}]
        with pytest.raises(StashFileError, match=message):
            stashfile.encode(entries, stream_format="t", target=None)


def _doc(**change):
    doc = {"format": "migtree-stash", "version": 1, "stream_format": "t", "target": None,
           "entries": [{"anchor": "/a", "path": "/a", "state": bytes(32),
                        "stash": {"p": {"f": 1}}}]}
    doc.update(change)
    return doc


def _entry(**change):
    return _doc(entries=[{**_doc()["entries"][0], **change}])


@pytest.mark.parametrize("data,message", [
    (b"\xff\x00", "not a stash file (bad CBOR"),
    (cbor2.dumps(_doc()) + b"\x00", "not a stash file (1 bytes after the document)"),
    (cbor2.dumps(cbor2.CBORTag(1, 0)), "CBOR tag 1"),
    (cbor2.dumps({"format": "migtree", "version": 1}), 'format: not a stash file'),
    (cbor2.dumps(_doc(version=2)), "version: 2: this migtree reads version 1"),
    (cbor2.dumps(_doc(extra=1)), "extra: unknown key"),
    (cbor2.dumps(_doc(entries={})), "entries: must be an array"),
    (cbor2.dumps(_doc(stream_format=3)), "stream_format: must be a string"),
    (cbor2.dumps(_entry(state=b"short")), "entries[0].state: must be a 32-byte SHA-256"),
    (cbor2.dumps(_entry(stash={"p": 1})), "entries[0].stash: must map each pair's name"),
    (cbor2.dumps(_entry(stash={})), "entries[0].stash: must map each pair's name"),
    (cbor2.dumps(_entry(anchor=1)), "entries[0]: anchor and path must be strings"),
    (cbor2.dumps(_doc(entries=[_doc()["entries"][0]] * 2)), "anchor '/a' appears twice"),
    (cbor2.dumps(_doc(entries=[{"anchor": "/a"}])), "entries[0]: must be a map of anchor"),
    (cbor2.dumps(_entry(stash={"p": {"f": b"x" * (MAX_KEPT_STASH + 1)}})),
     f"above the {MAX_KEPT_STASH} an object keeps"),
    (cbor2.dumps([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
     "not a stash file (bad CBOR"),
])
def test_a_bad_stash_file_is_refused_naming_the_part(tmp_path, data, message):
    path = tmp_path / "bad.stash"
    path.write_bytes(data)
    with pytest.raises(StashFileError) as e:
        stashfile.read(str(path))
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_an_oversized_or_missing_stash_file_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.stash"
    with open(big, "wb") as f:
        f.truncate(stashfile.MAX_FILE_SIZE + 1)
    with pytest.raises(StashFileError, match="above the 16777216 a stash file may have"):
        stashfile.read(str(big))
    with pytest.raises(StashFileError, match="cannot read the stash file"):
        stashfile.read(str(tmp_path / "none.stash"))


# -- migtree convert ---------------------------------------------------------------------------


def _jtree(path):
    doc = json.loads(path.read_bytes()[len(MAGIC):])
    return doc


def _write_jtree(path, doc):
    path.write_bytes(MAGIC + json.dumps(doc).encode())


def test_convert_keeps_the_stash_beside_a_format_without_room_and_puts_it_back(
        registry, tmp_path, capsys):  # noqa: F811
    mt = tmp_path / "a.mt"
    mt.write_bytes(make_mt())
    a = tmp_path / "a.jtree"
    assert main(["convert", str(mt), "-o", str(a)]) == 0
    doc = _jtree(a)
    w0 = doc["tree"]["machine"]["peripheral"]["w0"]
    w0[STASH_KEY] = {"test-widget-v3-v2": {"extra": 7}}  # as a filter down would leave it
    _write_jtree(a, doc)
    b = tmp_path / "b.jtree"
    capsys.readouterr()
    assert main(["convert", str(a), "-o", str(b)]) == 0
    out = capsys.readouterr().out
    assert f"stash: 1 entry at 1 object(s) kept in {b}.stash" in out
    assert "test-widget-v3-v2.extra" in out
    # the destination loads b and saves it again, keeping no stash
    saved = _jtree(b)
    del saved["tree"]["machine"]["peripheral"]["w0"][STASH_KEY]
    _write_jtree(b, saved)
    back = tmp_path / "back.mt"
    assert main(["convert", str(b), "--stash-from", f"{b}.stash", "-o", str(back)]) == 0
    assert "/machine/peripheral/w0: put back test-widget-v3-v2.extra" in capsys.readouterr().out
    tree = stream.read_tree(back)[1]
    assert tree["machine"]["peripheral"]["w0"][STASH_KEY] == {"test-widget-v3-v2": {"extra": 7}}
    # the destination changed w0: the stash does not go back
    saved["tree"]["machine"]["peripheral"]["w0"]["a32"] += 1
    _write_jtree(b, saved)
    assert main(["convert", str(b), "--stash-from", f"{b}.stash", "-o", str(back)]) == 0
    assert "w0: the object's state changed since the stash was written" in \
        capsys.readouterr().out
    assert STASH_KEY not in stream.read_tree(back)[1]["machine"]["peripheral"]["w0"]


def test_convert_stash_usage_and_bad_files(registry, tmp_path, capsys):  # noqa: F811
    mt = tmp_path / "a.mt"
    mt.write_bytes(make_mt())
    out = tmp_path / "o.mt"
    with pytest.raises(SystemExit) as e:
        main(["convert", str(mt), "-o", str(out), "--stash-file", str(tmp_path / "s")])
    assert e.value.code == 2
    assert "--stash-file: a migtree stream carries the stash itself" in capsys.readouterr().err
    bad = tmp_path / "bad.stash"
    bad.write_bytes(b"\x00\x01")
    assert main(["convert", str(mt), "--stash-from", str(bad), "-o", str(out)]) == 1
    assert f"{bad}: not a stash file" in capsys.readouterr().err
    assert not out.exists()
    # no room and no file to keep it in (stdout): a warning names what is lost
    doc = {"__type__": "container", "__version__": 1,
           "d": {"__type__": "container", "__version__": 1, STASH_KEY: {"p": {"f": 1}}}}
    j = tmp_path / "s.jtree"
    _write_jtree(j, {"schemas": {}, "tree": doc})
    assert main(["convert", str(j), "-o", "-", "--to", "jtree"]) == 0
    assert "has no room for the stash (p.f); it is not kept" in capsys.readouterr().err
