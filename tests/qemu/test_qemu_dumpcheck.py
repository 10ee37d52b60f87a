"""``migtree check --from DUMP_A --to DUMP_B`` on QEMU ``-dump-vmstate`` dumps
(:mod:`migtree_qemu.dumpcheck`).

Small hand-made dumps pin down each kind of difference and how a filter's
declaration bridges it; real dumps of QEMU 5.2, 7.2 and 10.0 (pc and q35)
are compared both ways with ours and with QEMU's own
``scripts/vmstate-static-checker.py`` (from Debian's ``qemu`` source
package, fetched by ``qemu_source.py``): everything that checker reports we
report too, except the findings listed in ``DISAGREEMENTS`` with the reason
(each checked against the dumps).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import qemu_source
from qemu_streams import StreamConfig

from migtree.engine import gather_filters
from migtree.filters import Filter
from migtree_qemu import dumpcheck, qevm
from migtree_qemu.dumpcheck import QemuDumpError, compare, parse_dump, read_description
from migtree_qemu.format import QemuStreamFormat

# -- hand-made dumps -----------------------------------------------------------


def F(name, size=4, *, version=0, exists=False, num=None, struct=None):
    f = {"field": name, "version_id": version, "field_exists": exists, "size": size}
    if num is not None:
        f["num"] = num
    if struct is not None:
        f["Description"] = struct
    return f


def D(name, version=1, fields=(), subs=(), min_version=None):
    d = {"name": name, "version_id": version,
         "minimum_version_id": version if min_version is None else min_version,
         "Fields": list(fields)}
    if subs:
        d["Subsections"] = list(subs)
    return d


def dump(types, machine="pc-i440fx-9.9"):
    doc = {"vmschkmachine": {"Name": machine}}
    for t, d in types.items():
        doc[t] = {"Description": d, "version_id": d["version_id"],
                  "minimum_version_id": d["minimum_version_id"]}
    return doc


def cmp(a, b, filters=()):
    return compare(parse_dump(a, "a.json"), parse_dump(b, "b.json"), filters)


def diffs(report, type_name="tdev"):
    return [(d.kind, d.key, d.status) for d in report.section(type_name).differences]


def never(node, ctx):
    raise AssertionError("a check judges filters by their declarations and never runs one")


def keep(name, tv, drops, **kw):
    """A filter that keeps ``tv`` and declares the parts it drops."""
    return Filter(name=name, match=tv, produces=tv, func=never, drops=drops, **kw)


def test_the_same_description_is_compatible_and_lists_no_difference():
    doc = dump({"tdev": D("tdev", 2, [F("a"), F("s", 8, struct=D("ts", 1, [F("x", 1)]))],
                          [D("tdev/extra", 1, [F("e", 2)])], min_version=1)})
    report = cmp(doc, json.loads(json.dumps(doc)))
    assert report.compatible
    assert report.differences == []
    assert report.section("tdev").status == "same"
    assert report.machine is None
    assert "compatible" in report.format_text().splitlines()[-1]


def test_a_section_the_destination_lacks_and_a_qom_type_it_names_otherwise():
    src = dump({"tdev": D("tdev"), "old-name": D("shared", 2)})
    dst = dump({"new-name": D("shared", 2)})
    report = cmp(src, dst)
    assert diffs(report) == [("section-missing", "", "gap")]
    # streams name sections by vmsd: a QOM type renamed around the same vmsd loads
    assert diffs(report, "old-name") == [("type-missing", "", "ok")]
    assert report.section("old-name").dest_type == "new-name"
    assert not report.compatible


def test_a_type_whose_vmsd_is_another_in_the_destination():
    report = cmp(dump({"tdev": D("tdev")}), dump({"tdev": D("tdev2")}))
    assert diffs(report) == [("section-renamed", "", "gap")]


@pytest.mark.parametrize("src_version, dst_range, kind", [
    (3, (1, 2), "version-too-new"),
    (1, (2, 3), "version-too-old"),
    (2, (1, 3), None),
])
def test_section_versions_against_what_the_destination_loads(src_version, dst_range, kind):
    src = dump({"tdev": D("tdev", src_version, [F("a")], min_version=1)})
    dst = dump({"tdev": D("tdev", dst_range[1], [F("a")], min_version=dst_range[0])})
    report = cmp(src, dst)
    assert diffs(report) == ([(kind, "", "gap")] if kind else [])


def test_fields_are_compared_at_the_version_of_the_stream():
    src = dump({"tdev": D("tdev", 2, [F("a"), F("b")], min_version=1)})
    # c appeared in version 3: QEMU does not read it from a version 2 stream
    later = dump({"tdev": D("tdev", 3, [F("a"), F("b"), F("c", version=3)], min_version=1)})
    assert cmp(src, later).differences == []
    # c from version 2: read from a version 2 stream, which does not have it
    added = dump({"tdev": D("tdev", 3, [F("a"), F("b"), F("c", version=2)], min_version=1)})
    assert diffs(cmp(src, added)) == [("field-added", "c", "gap")]
    # the other way: the source sends c, the destination reads it only from 3
    src_c = dump({"tdev": D("tdev", 2, [F("a"), F("b"), F("c", version=2)], min_version=1)})
    report = cmp(src_c, later)
    assert diffs(report) == [("field-removed", "c", "gap")]
    assert "only from version 3" in report.section("tdev").differences[0].message


@pytest.mark.parametrize("dst_fields, expected", [
    ([F("a"), F("c")], [("field-removed", "b", "gap")]),
    ([F("a"), F("b"), F("c"), F("d", 2)], [("field-added", "d", "gap")]),
    ([F("a"), F("b", 8), F("c")], [("field-size", "b", "gap")]),
    ([F("a"), F("b", struct=D("bs", 1, [F("x")])), F("c")], [("field-changed", "b", "gap")]),
], ids=["removed", "added", "size", "struct-for-plain"])
def test_fields_that_break_loading(dst_fields, expected):
    src = dump({"tdev": D("tdev", 1, [F("a"), F("b"), F("c")])})
    report = cmp(src, dump({"tdev": D("tdev", 1, dst_fields)}))
    assert diffs(report) == expected
    assert not report.compatible


def test_a_field_at_another_place():
    src = dump({"tdev": D("tdev", 1, [F("a"), F("b"), F("c"), F("d"), F("e")])})
    dst = dump({"tdev": D("tdev", 1, [F("a"), F("c"), F("d"), F("e"), F("b")])})
    assert diffs(cmp(src, dst)) == [("field-moved", "b", "gap")]


@pytest.mark.parametrize("dst_fields, expected", [
    ([F("a"), F("b2"), F("c")], [("field-renamed", "b", "ok")]),
    ([F("a"), F("unused"), F("c")], [("field-unused", "b", "ok")]),
    ([F("a"), F("b1", 2), F("b2", 1), F("b3", 1), F("c")], [("fields-regrouped", "b", "ok")]),
], ids=["renamed", "padding", "regrouped"])
def test_fields_named_otherwise_on_the_same_bytes_do_not_break_loading(dst_fields, expected):
    """Names are not on the wire: QEMU reads bytes in order."""
    src = dump({"tdev": D("tdev", 1, [F("a"), F("b"), F("c")])})
    report = cmp(src, dump({"tdev": D("tdev", 1, dst_fields)}))
    assert diffs(report) == expected
    assert report.compatible


def test_arrays_without_an_element_count():
    """Dumps before QEMU 9.1 give an array's element size only ('num' came
    later): a total the other dump gives is compared when it can be."""
    old = dump({"tdev": D("tdev", 1, [F("a"), F("p", 1), F("c")])})  # no 'num' anywhere
    new5 = dump({"tdev": D("tdev", 1, [F("a"), F("unused", 5), F("c"), F("z", 1, num=1)])})
    new1 = dump({"tdev": D("tdev", 1, [F("a"), F("unused", 1), F("c"), F("z", 1, num=1)])})
    assert parse_dump(old).counts is False and parse_dump(new5).counts is True
    # 1-byte elements against 5 bytes of padding: an array of 5 would fit
    report = cmp(old, new5)
    assert ("field-undecidable", "p", "gap") in diffs(report)
    # one element against one byte: taken as the same, as QEMU's checker does
    assert ("field-unused", "p", "ok") in diffs(cmp(old, new1))
    # arrays of one name: element sizes compared, counts only when both give them
    a_old = dump({"tdev": D("tdev", 1, [F("arr", 4)])})
    a_new = dump({"tdev": D("tdev", 1, [F("arr", 4, num=8)])})
    a_new4 = dump({"tdev": D("tdev", 1, [F("arr", 4, num=4)])})
    assert cmp(a_old, a_new).differences == []
    assert diffs(cmp(a_new, a_new4)) == [("field-size", "arr", "gap")]


def test_fields_a_field_exists_test_guards_are_conditional():
    plain = dump({"tdev": D("tdev", 1, [F("a")])})
    guarded = dump({"tdev": D("tdev", 1, [F("a"), F("g", exists=True)])})
    unguarded = dump({"tdev": D("tdev", 1, [F("a"), F("g")])})
    report = cmp(guarded, plain)
    assert diffs(report) == [("field-removed", "g", "conditional")]
    assert report.compatible  # QEMU's way to keep streams compatible: the test decides
    assert diffs(cmp(plain, guarded)) == [("field-added", "g", "conditional")]
    assert diffs(cmp(unguarded, guarded)) == [("field-condition", "g", "conditional")]


def test_structs_are_compared_inside_at_the_destinations_own_version():
    """VMSTATE_STRUCT loads the struct at the destination's vmsd version:
    a field the destination's struct gained in its version 3 is read."""
    src = dump({"tdev": D("tdev", 1, [F("s", 8, struct=D("ts", 2, [F("x"), F("y")]))])})
    dst = dump({"tdev": D("tdev", 1, [F("s", 8, struct=D("ts", 3, [F("x"), F("y"),
                                                                  F("z", version=3)]))])})
    assert diffs(cmp(src, dst)) == [("struct-version", "s", "ok"), ("field-added", "s.z", "gap")]
    renamed = dump({"tdev": D("tdev", 1, [F("s", 8, struct=D("ts2", 2, [F("x"), F("y")]))])})
    assert diffs(cmp(src, renamed)) == [("struct-renamed", "s", "ok")]


def _kbd(subs, version=3):
    return dump({"tkbd-dev": D("tkbd", version, [
        F("kbd", 56, struct=D("tkbd", 3, [F("write_cmd", 1)], subs))])})


def test_subsections_are_keyed_as_in_the_tree():
    """A subsection's key is its short name (``tree._sub_key``), under the
    struct field it belongs to: ``tkbd/extended_state`` of the ``kbd``
    struct is ``kbd.extended_state``."""
    ext = D("tkbd/extended_state", 0, [F("migration_flags")])
    report = cmp(_kbd([ext]), _kbd([]))
    assert diffs(report, "tkbd-dev") == [("subsection-unknown", "kbd.extended_state", "gap")]
    # QEMU's older underscore style, a subsection of a subsection, and a short
    # name a field already has
    src = dump({"tdev": D("tdev", 1, [F("extra")], [
        D("tdev_sipi", 1, [F("v")]),
        D("tdev/extra", 1, [F("e")], [D("tdev/extra/more", 1, [F("m")])])])})
    dst = dump({"tdev": D("tdev", 1, [F("extra")], [D("tdev/extra", 1, [F("e")])])})
    assert diffs(cmp(src, dst)) == [("subsection-unknown", "sipi", "gap"),
                                    ("subsection-unknown", "tdev/extra.more", "gap")]


def test_subsection_versions_and_fields():
    src = dump({"tdev": D("tdev", 1, [], [D("tdev/a", 2, [F("x")]), D("tdev/b", 1, [F("y")]),
                                         D("tdev/c", 1, [F("z"), F("w")])])})
    dst = dump({"tdev": D("tdev", 1, [], [D("tdev/a", 1, [F("x")]),
                                         D("tdev/b", 3, [F("y")], min_version=2),
                                         D("tdev/c", 1, [F("z")])])})
    assert diffs(cmp(src, dst)) == [("subsection-too-new", "a", "gap"),
                                    ("subsection-too-old", "b", "gap"),
                                    ("field-removed", "c.w", "gap")]
    # dropping a subsection fixes what is inside it; a drop of a field the
    # destination reads (added there) fixes nothing
    dst_more = dump({"tdev": D("tdev", 1, [], [D("tdev/c", 1, [F("z"), F("w"), F("v")])])})
    src_c = dump({"tdev": D("tdev", 1, [], [D("tdev/c", 1, [F("z")])])})
    assert diffs(cmp(src_c, dst_more)) == [("field-added", "c.w", "gap"),
                                           ("field-added", "c.v", "gap")]
    assert cmp(src_c, dst_more, [keep("drop-c", "tdev@1", ("c",))]).compatible
    assert not cmp(src_c, dst_more, [keep("drop-w", "tdev@1", ("c.w", "c.v"))]).compatible


def test_a_filter_declaring_drops_bridges_an_unknown_subsection():
    src, dst = _kbd([D("tkbd/extended_state", 0, [F("flags")])]), _kbd([])
    assert not cmp(src, dst).compatible
    flt = keep("tkbd-drop-extended-state", "tkbd@3", ("kbd.extended_state",),
               plugin="test-plugin")
    report = cmp(src, dst, [flt])
    (d,) = report.section("tkbd-dev").differences
    assert (d.kind, d.status) == ("subsection-unknown", "bridged")
    assert d.bridged_by == [{"filter": "tkbd-drop-extended-state", "plugin": "test-plugin"}]
    assert "drops 'kbd.extended_state'" in d.how
    assert report.compatible
    # a struct is not optional: dropping it fixes nothing (its fields are read)
    assert not cmp(src, dst, [keep("drop-kbd", "tkbd@3", ("kbd",))]).compatible
    # a filter for another version, or one that changes the version, is no such drop
    assert not cmp(src, dst, [keep("other-version", "tkbd@2", ("kbd.extended_state",))]).compatible
    up = Filter(name="tkbd-up", match="tkbd@3", produces="tkbd@4", func=never,
                drops=("kbd.extended_state",))
    assert not cmp(src, dst, [up]).compatible


def test_a_chain_of_version_filters_bridges_the_version_and_answers_for_the_fields():
    src = dump({"tdev": D("tdev", 3, [F("a"), F("n", version=3)],
                          [D("tdev/extra", 1, [F("e")])], min_version=1)})
    dst = dump({"tdev": D("tdev", 1, [F("a")])})
    chain = [Filter(name="t-3-2", match="tdev@3", produces="tdev@2", func=never),
             Filter(name="t-2-1", match="tdev@2", produces="tdev@1", func=never)]
    report = cmp(src, dst, chain)
    head, field, sub = report.section("tdev").differences
    assert (head.kind, head.status) == ("version-too-new", "bridged")
    assert [b["filter"] for b in head.bridged_by] == ["t-3-2", "t-2-1"]
    assert "tdev@3 -> tdev@1 via t-3-2 -> t-2-1" in head.how
    # the filters declare tdev@1: the field n is theirs to take out
    assert (field.kind, field.key, field.status) == ("field-removed", "n", "bridged")
    # an optional part is not: the subsection needs a drop at tdev@1
    assert (sub.kind, sub.key, sub.status) == ("subsection-unknown", "extra", "gap")
    fixed = cmp(src, dst, chain + [keep("t-drop-extra", "tdev@1", ("extra",))])
    assert fixed.compatible
    # without the chain the version is a gap with the engine's own words
    bare = cmp(src, dst).section("tdev").differences[0]
    assert bare.status == "gap" and "no chain of filters turns tdev@3 into tdev@1" in bare.how


def test_a_missing_section_is_bridged_by_a_chain_to_a_vmsd_the_destination_has():
    src, dst = dump({"old-dev": D("olddev", 1)}), dump({"new-dev": D("newdev", 1)})
    assert not cmp(src, dst).compatible
    ren = Filter(name="old-to-new", match="olddev@1", produces="newdev@1", func=never)
    report = cmp(src, dst, [ren])
    assert diffs(report, "old-dev") == [("section-missing", "", "bridged")]


def test_the_machine_type():
    src = dump({"tdev": D("tdev")}, machine="pc-i440fx-7.2")
    dst = dump({"tdev": D("tdev")}, machine="pc-i440fx-5.2")
    report = cmp(src, dst)
    assert (report.machine.kind, report.machine.status) == ("machine-type", "gap")
    assert not report.compatible
    mapping = keep("test-machine-map", "qemu-machine@1", ("machine_type",))
    assert cmp(src, dst, [mapping]).machine.bridged_by[0]["filter"] == "test-machine-map"
    # the check hook adds the mapping the destination brings (as convert --target)
    hooked = dumpcheck.check(parse_dump(src), parse_dump(dst), [])
    assert hooked.machine.status == "bridged" and hooked.compatible
    # which maps within one family only
    q35 = dump({"tdev": D("tdev")}, machine="pc-q35-5.2")
    across = dumpcheck.check(parse_dump(src), parse_dump(q35), [])
    assert across.machine.status == "gap"
    assert any("one versioned family" in n for n in across.notes)


def test_a_vmsd_some_qemu_registers_by_hand_is_not_reported_missing():
    report = cmp(dump({"ps2-kbd": D("ps2kbd", 3)}), dump({"tdev": D("tdev")}))
    assert diffs(report, "ps2-kbd") == [("section-undescribed", "", "ok")]


def test_sections_no_dump_describes_are_said_so_not_reported_as_differences():
    report = cmp(dump({"tdev": D("tdev")}), dump({"tdev": D("tdev"), "piix3-ide": D("ide", 3)}))
    assert {"cpu", "apic", "timer", "ram", "globalstate"} <= set(report.undescribed)
    assert "ide" not in report.undescribed  # the destination describes it
    assert report.only_in_destination == ["ide"]
    assert report.differences == []
    assert "not described by either dump" in report.format_text()


def test_the_json_report():
    src = dump({"tdev": D("tdev", 2, [F("a"), F("b")], min_version=1), "same": D("same")})
    dst = dump({"tdev": D("tdev", 1, [F("a")]), "same": D("same")}, machine="pc-i440fx-5.2")
    doc = json.loads(json.dumps(cmp(src, dst).as_dict()))
    assert doc["compatible"] is False
    assert doc["same"] == ["same"]
    (sec,) = doc["sections"]
    assert sec["type"] == "tdev" and sec["destination"]["version"] == 1
    assert [d["kind"] for d in sec["differences"]] == ["version-too-new", "field-removed"]
    assert doc["machine_type"]["kind"] == "machine-type"
    assert sum(doc["counts"].values()) == 3


# -- reading dumps -----------------------------------------------------------------------


def test_read_description_recognises_dumps_and_nothing_else():
    assert read_description(b"QEVM\x00\x00\x00\x03") is None
    assert read_description(b'{"types": {"a": {"version": 1}}}') is None
    assert read_description(b"[1, 2]") is None
    got = read_description(json.dumps(dump({"tdev": D("tdev")})).encode())
    assert got.machine == "pc-i440fx-9.9" and list(got.entries) == ["tdev"]


@pytest.mark.parametrize("doc, message", [
    ({"vmschkmachine": {}}, "entry 'vmschkmachine': expected {\"Name\": MACHINE-TYPE}"),
    ({"vmschkmachine": {"Name": "m"}, "tdev": []}, "entry 'tdev': expected an object, got list"),
    ({"vmschkmachine": {"Name": "m"}, "tdev": {"version_id": 1}},
     "entry 'tdev': no 'Description'"),
    ({"vmschkmachine": {"Name": "m"}, "tdev": {"version_id": "1", "Description": D("tdev")}},
     "entry 'tdev': 'version_id' must be a non-negative integer, got \"1\""),
    ({"vmschkmachine": {"Name": "m"}, "tdev": {"version_id": 1, "Description": D(
        "tdev", 1, [F("kbd", struct={"name": "k", "version_id": 1, "Fields": [{"field": "x"}]})])}},
     "entry 'tdev': Description (vmsd 'tdev').Fields[0] (field 'kbd').Description (vmsd 'k')"
     ".Fields[0] (field 'x'): no 'size'"),
    ({"vmschkmachine": {"Name": "m"}, "tdev": {"version_id": 1, "Description": D(
        "tdev", 1, [], [{"name": "tdev/s", "version_id": 1,
                         "Fields": [F("f") | {"field_exists": "yes"}]}])}},
     "entry 'tdev': Description (vmsd 'tdev').Subsections[0] (vmsd 'tdev/s').Fields[0] "
     "(field 'f'): 'field_exists' must be true or false, got \"yes\""),
])
def test_a_malformed_dump_is_an_error_naming_the_entry(doc, message):
    with pytest.raises(QemuDumpError) as e:
        read_description(json.dumps(doc).encode())
    assert str(e.value) == message


def test_descriptions_nested_without_end_are_refused():
    inner = D("deep", 1, [F("x")])
    for _ in range(dumpcheck.MAX_DEPTH + 1):
        inner = D("deep", 1, [F("s", struct=inner)])
    with pytest.raises(QemuDumpError, match=f"nested more than {dumpcheck.MAX_DEPTH} deep"):
        read_description(json.dumps(dump({"tdev": inner})).encode())


def test_a_dump_cut_short_is_an_error_not_a_stranger():
    data = json.dumps(dump({"tdev": D("tdev")})).encode()
    with pytest.raises(QemuDumpError, match="not valid JSON"):
        read_description(data[:-10])


# -- the command ---------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch):
    """The installed plugins, with the QEMU format answering for descriptions
    (through dumpcheck's functions until QemuStreamFormat has the methods)."""
    from migtree.plugins import get_registry

    reg = get_registry()
    fmt = reg.formats["qemu"]
    if not _native():
        monkeypatch.setattr(fmt, "read_description", dumpcheck.read_description, raising=False)
        monkeypatch.setattr(fmt, "check", dumpcheck.check, raising=False)
    return reg


def _native() -> bool:
    return all(callable(getattr(QemuStreamFormat, m, None))
               for m in ("read_description", "check"))


def _write(tmp_path, name, doc):
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return str(p)


def test_cli_check_a_drop_filter_turns_the_gap_into_bridged_and_the_status_into_0(
        registry, monkeypatch, tmp_path, capsys):
    from migtree.cli import main

    a = _write(tmp_path, "a.json", _kbd([D("tkbd/extended_state", 0, [F("flags")])]))
    b = _write(tmp_path, "b.json", _kbd([]))
    assert main(["check", "--from", a, "--to", b]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"check {a} -> {b}\n")
    assert ("\n    GAP      kbd.extended_state: subsection 'tkbd/extended_state' (version 0) is "
            "unknown to the destination") in out
    assert "[no filter for tkbd@3 drops 'kbd.extended_state']" in out
    assert "\nNOT compatible: 1 section(s) with gaps" in out
    flt = keep("tkbd-drop-extended-state", "tkbd@3", ("kbd.extended_state",))
    monkeypatch.setitem(registry.filters, flt.name, flt)
    assert main(["check", "--from", a, "--to", b]) == 0
    out = capsys.readouterr().out
    assert ("[bridged: filter tkbd-drop-extended-state (<in-process>) drops "
            "'kbd.extended_state']") in out
    assert "\ncompatible (0 gap(s)" in out
    assert main(["check", "--from", a, "--to", b, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["compatible"] is True and doc["checked_by"]["format"] == "qemu"
    (d,) = doc["sections"][0]["differences"]
    assert d["status"] == "bridged" and d["bridged_by"][0]["filter"] == flt.name


def test_cli_check_refuses_a_malformed_dump_naming_the_entry(registry, tmp_path, capsys):
    from migtree.cli import main

    good = _write(tmp_path, "good.json", dump({"tdev": D("tdev")}))
    bad = _write(tmp_path, "bad.json", {"vmschkmachine": {"Name": "m"},
                                        "tdev": {"version_id": 1, "Description": {"name": "tdev"}}})
    assert main(["check", "--from", bad, "--to", good]) == 1
    err = capsys.readouterr().err
    assert err == (f"migtree: error: {bad}: qemu description: entry 'tdev': Description (vmsd "
                   "'tdev'): no 'version_id'\n")
    schema = _write(tmp_path, "schema.json", {"types": {"tdev": {"version": 1}}})
    assert main(["check", "--from", good, "--to", schema]) == 1
    assert (f"{good} is a qemu description and {schema} is a schema dump: compare a "
            "description with a description of the same format") in capsys.readouterr().err


# -- real QEMU dumps, and QEMU's own checker -------------------------------------------

PAIRS = [("5.2", "7.2"), ("7.2", "10.0"), ("5.2", "10.0"),
         ("10.0", "7.2"), ("7.2", "5.2"), ("10.0", "5.2")]
MACHINES = ["pc", "q35"]

#: what the checker reports as an error and we report as not breaking
#: loading, by our kind, and why (QEMU's loader, migration/vmstate.c)
NOT_BREAKING = {
    "type-missing": "a stream names a section by its vmsd, not by the QOM type; the "
                    "destination creates the device under its own type name",
    "section-undescribed": "QEMU 5.2 registers its PS/2 devices and 5.2 and 7.2 their PIIX "
                           "IDE by hand: their dumps do not list vmsds their streams carry "
                           "(test_sections_no_dump_describes_are_those_a_real_stream_has)",
    "struct-version": "VMSTATE_STRUCT loads a struct at the destination's own version "
                      "(no version is sent for it): only its fields count, and they are "
                      "compared",
    "struct-renamed": "a struct's vmsd name is not sent",
    "field-renamed": "field names are not sent: the same size at the same place loads",
    "field-unused": "VMSTATE_UNUSED reads and discards (or writes zeros for) the same "
                    "number of bytes",
    "fields-regrouped": "the same bytes in another split load the same",
}

#: checker findings we do not report, on purpose: (type, pattern) -> reason;
#: each is checked against the dumps in _check_disagreement
DISAGREEMENTS = {
    ("e1000e", r'expected field "core\.e?itr_guest_value", got "core\.e?itr_guest_value"'):
        "the checker's false positive: QEMU 10.0 replaced the bool fields "
        "core.itr_intr_pending (1 byte) and core.eitr_intr_pending (an array of 5) by unused "
        "padding of 1 and 5 bytes; a 7.2 or 5.2 dump gives the array's element size only, so "
        "the checker pairs 1 byte with the 5 of padding, loses count, and reports a rename "
        "two fields later. We report the 5 bytes where they are, as undecidable from such a "
        "dump (field-undecidable at core.eitr_intr_pending / unused).",
    ("am53c974", r'expected field "esp", got "esp\.mig_version_id"'):
        "the checker's false positive: esp.mig_version_id is in vmsd pciespscsi from version "
        "2, and QEMU reads a field only from its version on; a version 1 stream (5.2) does "
        "not have it and the destination does not read it. The checker compares field lists "
        "without the stream's version.",
    ("dc390", r'expected field "esp", got "esp\.mig_version_id"'):
        "as for am53c974 (the same vmsd pciespscsi)",
}

_LINES = [
    ("machine", r'Warning: checking incompatible machine types: "(?P<a>[^"]*)", "(?P<b>[^"]*)"'),
    ("missing", r'Section "(?P<T>[^"]+)" does not exist in dest'),
    ("version", r'Section "(?P<T>[^"]+)" (?:Description "(?P<D>[^"]+)": )?(?P<min>minimum )?'
                r"version error: \d+ [<>] \d+"),
    ("expected", r'Section "(?P<T>[^"]+)", Description "(?P<D>[^"]+)": expected field '
                 r'"(?P<X>[^"]+)", (?:got "(?P<Y>[^"]+)"; skipping rest|while dest has no '
                 r"further fields)"),
    ("unused", r'Section "(?P<T>[^"]+)", Description "(?P<D>[^"]+)": unused size mismatch '
               r'near " (?P<X>[^"]+)"'),
    ("subsection", r'Section "(?P<T>[^"]+)", Description "(?P<D>[^"]+)": Subsection '
                   r'"(?P<S>[^"]+)" not found'),
    ("nodesc", r'Section "(?P<T>[^"]+)", Description "(?P<D>[^"]+)", Field "(?P<X>[^"]+)": '
               r"missing description"),
    ("descname", r'Section "(?P<T>[^"]+)": Description "(?P<D>[^"]+)" missing, got '
                 r'"(?P<E>[^"]+)" instead; skipping'),
    ("entry", r'Section "(?P<T>[^"]+)" Description "(?P<D>[^"]+)": Entry "(?P<E>[^"]+)" '
              r"missing"),
    ("size", r'Section "(?P<T>[^"]+)" (?:Description "(?P<D>[^"]+)" )?(?:Field "(?P<X>[^"]+)" )?'
             r"size mismatch: \d+ , \d+"),
]
#: the checker's minimum-version message for a section prints "Section X "
#: and nothing else (an indentation slip in check_version): the next
#: message follows on the same line
_DANGLING = re.compile(r'^Section "[^"]+" (?=Section ")')
_FIELD_KINDS = {"field-removed", "field-added", "field-moved", "field-size", "field-changed",
                "field-condition", "field-renamed", "field-unused", "fields-regrouped",
                "field-undecidable"}


def parse_checker(out: str) -> list[tuple[str, dict[str, str], str]]:
    found = []
    for raw in out.splitlines():
        line = raw.strip()
        while _DANGLING.match(line):
            line = _DANGLING.sub("", line, count=1)
        for kind, rx in _LINES:
            m = re.fullmatch(rx, line)
            if m:
                found.append((kind, m.groupdict(), raw))
                break
        else:
            raise AssertionError(f"a checker message this test does not know: {raw!r}")
    return found


def ours_for(kind: str, g: dict[str, str], report) -> list:
    """Our differences that report what the checker's message says."""
    if kind == "machine":
        return [report.machine] if report.machine is not None else []
    try:
        sec = report.section(g["T"])
    except KeyError:
        return []
    ds = sec.differences

    def at(d, names):
        k = d.key.split("#")[0]
        return any(k == n or k.endswith("." + n) or (
            d.kind in NOT_BREAKING and f"'{n}'" in d.message) for n in names)

    if kind == "missing":
        return [d for d in ds if d.kind in ("section-missing", "type-missing",
                                            "section-undescribed")]
    if kind == "version":
        if g["D"] is None or g["D"] == sec.vmsd:
            return [d for d in ds if d.key == "" and d.kind in (
                "version-too-new", "version-too-old", "section-renamed")]
        return [d for d in ds if d.kind in ("struct-version", "subsection-too-new",
                                            "subsection-too-old") and f"'{g['D']}'" in d.message]
    if kind in ("expected", "unused"):
        names = [n for n in (g["X"], g.get("Y")) if n]
        return [d for d in ds if d.within == g["D"] and d.kind in _FIELD_KINDS and at(d, names)]
    if kind == "subsection":
        return [d for d in ds if d.kind == "subsection-unknown" and f"'{g['S']}'" in d.message]
    if kind == "nodesc":
        return [d for d in ds if d.kind == "field-changed" and at(d, [g["X"]])]
    if kind == "descname":
        return [d for d in ds if d.kind in ("struct-renamed", "section-renamed")]
    if kind == "entry":
        want = {"Subsections": "subsection-unknown", "Fields": "field-removed"}.get(g["E"])
        return [d for d in ds if d.kind == want and d.within == g["D"]]
    if kind == "size":
        return [d for d in ds if d.kind == "field-size" and at(d, [g["X"]])]
    raise AssertionError(kind)


@pytest.fixture(scope="session", params=["bookworm", "trixie"])
def checker(request):
    """QEMU's checker as Debian 12 (QEMU 7.2) and 13 (QEMU 10.0) ship it."""
    try:
        return qemu_source.static_checker(request.param)
    except qemu_source.SourceUnavailable as e:
        pytest.skip(f"QEMU's source package is unavailable here: {e}")


def run_checker(script: Path, src: Path, dst: Path) -> str:
    proc = subprocess.run([sys.executable, str(script), "-s", str(src), "-d", str(dst)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert not proc.stderr, proc.stderr
    return proc.stdout


def _check_disagreement(key, report, src, dst) -> None:
    """The reason given in DISAGREEMENTS holds for these dumps."""
    type_name = key[0]
    if type_name == "e1000e":
        undecided = [d for d in report.section("e1000e").differences
                     if d.kind == "field-undecidable"]
        assert any("core.eitr_intr_pending" in d.message for d in undecided), undecided
        old = src if not src.counts else dst
        new = dst if old is src else src
        fields = {f["field"]: f for f in old.entries["e1000e"]["Description"]["Fields"]}
        assert fields["core.eitr_intr_pending"]["size"] == 1
        assert "num" not in fields["core.eitr_intr_pending"]
        assert {"field": "unused", "version_id": 0, "field_exists": False, "size": 5} in \
            new.entries["e1000e"]["Description"]["Fields"]
    else:
        (mig,) = [f for f in dst.entries[type_name]["Description"]["Fields"]
                  if f["field"] == "esp.mig_version_id"]
        assert mig["version_id"] > src.entries[type_name]["Description"]["version_id"]
        assert not [d for d in report.section(type_name).differences
                    if d.key == "esp.mig_version_id"]


@pytest.mark.qemu
@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("pair", PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_everything_qemus_checker_finds_we_find(streams, checker, pair, machine):
    a, b = (streams.dump_vmstate(machine, qemu=v) for v in pair)
    out = run_checker(checker, a, b)
    found = parse_checker(out)
    src, dst = dumpcheck.load_dump(a), dumpcheck.load_dump(b)
    report = compare(src, dst)
    assert len(found) > 1 and report.differences  # these versions differ
    unmatched, severity = [], []
    for kind, g, raw in found:
        ours = ours_for(kind, g, report)
        if not ours:
            unmatched.append(raw)
        elif all(d.status == "ok" for d in ours):
            severity.append((raw, {d.kind for d in ours}))
    explained = {}
    for raw in unmatched:
        keys = [k for k in DISAGREEMENTS
                if f'Section "{k[0]}"' in raw and re.search(k[1], raw)]
        assert keys, f"QEMU's checker reports what we do not: {raw}"
        explained[keys[0]] = raw
    for key in explained:
        _check_disagreement(key, report, src, dst)
    for raw, kinds in severity:
        assert kinds <= set(NOT_BREAKING), (raw, kinds)


@pytest.mark.qemu
@pytest.mark.parametrize("pair", PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_what_the_installed_filters_bridge_they_declare(streams, pair):
    """With the installed filters (and the destination's machine-type
    mapping) a difference changes only its status, and each bridge is a
    declaration that covers it."""
    from migtree.plugins import get_registry

    installed = gather_filters(get_registry())
    a, b = (streams.dump_vmstate("pc", qemu=v) for v in pair)
    src, dst = dumpcheck.load_dump(a), dumpcheck.load_dump(b)
    bare = compare(src, dst)
    report = dumpcheck.check(src, dst, installed)
    by_name = {f.name: f for f in installed}
    by_name.update({f.name: f for f in gather_filters(
        None, extra=dumpcheck.destination_filters(src, dst)[0])})
    assert report.machine.status == "bridged"  # pc-i440fx-A -> pc-i440fx-B
    for sec, plain in zip(report.sections, bare.sections, strict=True):
        assert [(d.kind, d.key) for d in sec.differences] == \
            [(d.kind, d.key) for d in plain.differences]
        for d, p in zip(sec.differences, plain.differences, strict=True):
            if d.status != "bridged":
                assert d.status == p.status
                continue
            assert p.status in ("gap", "conditional")
            (who,) = d.bridged_by
            f = by_name[who["filter"]]
            assert f.plugin == who["plugin"]
            assert (f.match.type, f.produces.type) == (sec.vmsd, sec.vmsd)
            assert f.match.lo <= sec.version <= f.match.hi
            assert any((d.key == k and d.kind in ("subsection-unknown", "subsection-too-new",
                                                  "subsection-too-old", "field-removed"))
                       or d.key.startswith(k + ".") for k in f.drops)
    if pair in (("7.2", "5.2"), ("10.0", "5.2")):  # newer subsections QEMU 5.2 lacks
        assert report.counts()["bridged"] > 1


@pytest.mark.qemu
@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("version", ["5.2", "7.2", "10.0"])
def test_sections_no_dump_describes_are_those_a_real_stream_has(streams, version, machine):
    """Every section a real stream carries is described by that QEMU's dump
    or listed in UNDESCRIBED (what the report says is in no dump)."""
    stream = streams(StreamConfig(machine=machine, qemu=version))
    own = dumpcheck.load_dump(streams.dump_vmstate(machine, qemu=version))
    with qevm.load(stream, ram="skip") as s:
        vmsds = {sec.state.vmsd_name for sec in s.devices()}
    outside = vmsds - set(own.vmsds())
    assert {"cpu", "apic", "timer", "globalstate"} <= outside
    assert outside <= set(dumpcheck.UNDESCRIBED)


def _cli() -> list[str]:
    """The real ``migtree`` command; until QemuStreamFormat has
    ``read_description``/``check``, the same entry point (migtree.cli:main)
    in a fresh process with dumpcheck's functions as those methods."""
    if _native():
        return [str(Path(sys.executable).with_name("migtree"))]
    boot = ("import sys; from migtree_qemu import dumpcheck; "
            "from migtree_qemu.format import QemuStreamFormat as F; "
            "F.read_description = lambda self, data: dumpcheck.read_description(data); "
            "F.check = lambda self, a, b, filters: dumpcheck.check(a, b, filters); "
            "from migtree.cli import main; sys.exit(main())")
    return [sys.executable, "-c", boot]


@pytest.mark.qemu
def test_the_real_cli_on_real_dumps(streams):
    new, old = streams.dump_vmstate("pc", qemu="7.2"), streams.dump_vmstate("pc", qemu="5.2")
    proc = subprocess.run([*_cli(), "check", "--from", str(new), "--to", str(old)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"check {new} -> {old}"
    assert any(line.startswith("GAP      virtio-iommu-device (vmsd virtio-iommu@2; destination "
                               "loads 1..1)") for line in lines)
    assert any(line.startswith("not described by either dump") for line in lines)
    assert any(line.startswith("NOT compatible:") for line in lines)
    proc = subprocess.run([*_cli(), "check", "--from", str(new), "--to", str(old), "--json"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["compatible"] is False
    assert doc["source"]["machine"] == "pc-i440fx-7.2"
    proc = subprocess.run([*_cli(), "check", "--from", str(new), "--to", str(new)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "\ncompatible (0 gap(s)" in proc.stdout
