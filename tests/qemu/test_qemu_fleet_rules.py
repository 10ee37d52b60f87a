"""The rules for a fleet's devices across QEMU 5.2, 7.2 and 10.0 (e1000e's
TIMADJ, the PIC's LTIM, virtio-gpu's blob resources and scanout
framebuffers, slirp's instance ids) and the target's field alignment.

Without QEMU: small sections and dumps built here, the engine run on them;
every pair is property-tested (drop then restore is the identity for every
value the drop accepts) and every refusal names its field and value.  With
the real QEMUs: each conversion is accepted by the loading QEMU where the
stream without the rule is refused (session-scoped streams; a few seconds
each).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migtree.engine import Misfit, apply_filters
from migtree.errors import FilterError
from migtree_qemu import compat, qevm
from migtree_qemu.target import QemuTarget, _align, _logical_fields
from migtree_qemu.vmstate import qemu_json

U8 = {"type": "uint8", "size": 1}
U32 = {"type": "uint32", "size": 4}


def _f(name, t=U8, **kw):
    return {"name": name, **t, **kw}


def _d(name, size, **kw):
    return {"field": name, "version_id": 0, "field_exists": False, "size": size, **kw}


def _section(layout, idstr, instance=0, **values):
    return {"__type__": layout["vmsd_name"], "__version__": layout["version"],
            "__qemu__": {"idstr": idstr, "instance_id": instance, "section_id": 1,
                         "layout": qemu_json(layout)}, **values}


def _tree(machine, **sections):
    m = {"__type__": "qemu-machine", "__version__": 1, "__qemu__": {
        "qevm_version": 3, "configuration": {"machine": machine, "subsections": {}},
        "page_size": 4096, "vmdesc": True, "vmdesc_keys": ["page_size", "devices"],
        "vmdesc_style": "json-writer", "order": []},
        "qemu": {"__type__": "container", "__version__": 1, **sections}}
    return {"__type__": "container", "__version__": 1, "machine": m}


def _target(machine, *descs):
    doc = {"vmschkmachine": {"Name": machine}}
    for d in descs:
        doc[d["name"]] = {"Description": d}
    return QemuTarget.from_dump(doc)


def _convert(tree, target):
    return apply_filters(tree, target.destination(tree),
                         compat.static_filters() + target.filters(), explain=True)


def _misfits(target, tree):
    target.destination(tree)
    out = []
    for node in tree["machine"]["qemu"].values():
        if isinstance(node, dict) and "__qemu__" in node:
            out += target.shape("/x", node)
    return out


# -- the field alignment ---------------------------------------------------------------


def _sf(name, size, count=None, type_="uint32"):
    return {"name": name, "type": type_, "size": size,
            **({"array_len": count} if count else {})}


def test_e1000_unused_padding_of_old_versions_is_not_a_misfit():
    # e1000 v2: VMSTATE_UNUSED_TEST(is_version_1, 4) is not sent, VMSTATE_UNUSED(4)
    # is (QEMU names it unused[1] in the stream); the dump lists both as 'unused'
    ours = _logical_fields([_sf("unused[1]", 4, type_="unused_buffer"),
                            _sf("rxbuf_size", 4), _sf("eecd_state.bitnum_in", 2, type_="uint16")])
    theirs = [_d("unused", 4, field_exists=True), _d("unused", 4), _d("rxbuf_size", 4),
              _d("eecd_state.bitnum_in", 2)]
    assert _align(ours, theirs) == []


def test_e1000e_padding_lines_up_with_the_bools_both_ways():
    # QEMU 10.0 sends 1 + 5 bytes of padding where 7.2 has itr_intr_pending and
    # eitr_intr_pending[5]; a 7.2 dump gives no element count, a 10.0 dump does
    ten = _logical_fields([_sf("unused[0]", 1, type_="unused_buffer"),
                           _sf("core.eitr", 9, 5, "struct") | {"struct": {"vmsd_name": "t"}},
                           _sf("unused[1]", 5, type_="unused_buffer")])
    seven = [_d("core.itr_intr_pending", 1),
             _d("core.eitr", 32, Description={"name": "t"}),
             _d("core.eitr_intr_pending", 1)]
    assert _align(ten, seven) == []
    seven_stream = _logical_fields([_sf("core.itr_intr_pending", 1, type_="bool"),
                                    _sf("core.eitr", 9, 5, "struct") | {"struct": {}},
                                    _sf("core.eitr_intr_pending", 1, 5, "bool")])
    ten_dump = [_d("unused", 1), _d("core.eitr", 32, num=5, Description={"name": "t"}),
                _d("unused", 5)]
    assert _align(seven_stream, ten_dump) == []


def test_a_vmstateinfo_of_its_own_takes_any_size_and_a_real_extra_field_is_reported():
    ours = _logical_fields([_sf("sense_len", 4), _sf("requests", 1, type_="scsi-requests"),
                            _sf("core.timadj", 8, type_="int64")])
    theirs = [_d("sense_len", 4), _d("requests", 0)]
    assert [f.name for f in _align(ours, theirs)] == ["core.timadj"]


@given(st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=12),
       st.data())
def test_renamed_fields_align_and_an_inserted_field_of_a_new_size_is_the_misfit(sizes, data):
    theirs = [_d(f"t{i}", s) for i, s in enumerate(sizes)]
    ours = [_sf(f"s{i}", s) for i, s in enumerate(sizes)]
    assert _align(_logical_fields(ours), theirs) == []
    at = data.draw(st.integers(0, len(ours)))
    extra = ours[:at] + [_sf("extra", 3)] + ours[at:]
    assert [f.name for f in _align(_logical_fields(extra), theirs)] == ["extra"]


# -- e1000e core.timadj ----------------------------------------------------------------

MAC = 0xB610 >> 2  # up to TIMADJH
E1000E = {"vmsd_name": "e1000e", "version": 1, "fields": [
    _f("core.mac", U32, array_len=MAC), {"name": "core.tx", "type": "struct", "size": 1,
                                         "array_len": 2, "struct": {"vmsd_name": "tx",
                                                                    "version": 1,
                                                                    "fields": [_f("x")]}},
    _f("core.timadj", {"type": "int64", "size": 8})]}
E1000E_DUMP = {"name": "e1000e", "version_id": 1, "minimum_version_id": 1,
               "Fields": [_d("core.mac", 4), _d("core.tx", 32, Description={
                   "name": "tx", "version_id": 1, "Fields": [_d("x", 1)]}),
                   _d("core.timadj", 8, field_exists=True)]}
E1000E_OLD_DUMP = dict(E1000E_DUMP, Fields=E1000E_DUMP["Fields"][:2])


def _e1000e_tree(machine, mac, timadj):
    return _tree(machine, nic=_section(E1000E, "0000:00:02.0/e1000e", **{
        "core.mac": mac, "core.tx": [{"x": 0}, {"x": 0}], "core.timadj": timadj}))


def _mac_from(regs):
    mac = [0] * MAC
    for i, v in regs.items():
        mac[i] = v
    return mac


#: the MAC registers: any values at a few indices (TIMINCA and SYSTIM among
#: the candidates), 0 elsewhere
_MAC = st.dictionaries(
    st.one_of(st.integers(0, MAC - 1),
              st.sampled_from([compat.E1000E_SYSTIML, compat.E1000E_SYSTIMH,
                               compat.E1000E_TIMINCA])),
    st.integers(0, 2**32 - 1), max_size=12).map(_mac_from)


@given(_MAC)
def test_timadj_down_and_up_is_the_identity_while_the_clock_never_ran(mac):
    for i in (compat.E1000E_SYSTIML, compat.E1000E_SYSTIMH):
        mac[i] = 0
    mac[compat.E1000E_TIMINCA] &= ~compat.E1000E_TIMINCA_INCVALUE_MASK
    tree = _e1000e_tree("pc-q35-10.0", mac, 0)
    original = copy.deepcopy(tree)
    report = _convert(tree, _target("pc-q35-7.2", E1000E_OLD_DUMP))
    nic = tree["machine"]["qemu"]["nic"]
    assert "core.timadj" not in nic and "timadj" not in nic["__qemu__"]["layout"]
    assert "qemu-field-e1000e-core-timadj-drop" in {a.filter for a in report.applications}
    _convert(tree, _target("pc-q35-10.0", E1000E_DUMP))
    assert tree == original


@given(_MAC, st.integers(-2**63, 2**63 - 1), st.integers(0, 2))
def test_timadj_is_refused_naming_the_clock_when_the_guest_started_it(mac, timadj, which):
    if which == 0:
        timadj = timadj or 1
    elif which == 1:
        mac[compat.E1000E_TIMINCA] |= 1
    else:
        mac[compat.E1000E_SYSTIML] |= 1
    with pytest.raises(FilterError) as e:
        _convert(_e1000e_tree("pc-q35-10.0", mac, timadj), _target("pc-q35-7.2",
                                                                    E1000E_OLD_DUMP))
    msg = str(e.value)
    assert "core.timadj (field core.timadj)" in msg
    assert f"core.timadj={timadj}" in msg
    assert f"core.mac[TIMINCA]=0x{mac[compat.E1000E_TIMINCA]:08x}" in msg


def test_timadj_is_added_as_zero_for_a_machine_type_that_reads_it():
    layout = dict(E1000E, fields=E1000E["fields"][:2])
    tree = _tree("pc-q35-7.2", nic=_section(layout, "0000:00:02.0/e1000e", **{
        "core.mac": [0] * MAC, "core.tx": [{"x": 0}, {"x": 0}]}))
    report = _convert(tree, _target("pc-q35-10.0", E1000E_DUMP))
    assert tree["machine"]["qemu"]["nic"]["core.timadj"] == 0
    assert [a.defaulted for a in report.applications
            if a.filter.endswith("timadj-restore")] == [{"core.timadj": 0}]


# -- i8259/ltim and virtio-gpu/blob --------------------------------------------------------

PIC = {"vmsd_name": "i8259", "version": 1, "fields": [_f("elcr")],
       "subsections": [{"vmsd_name": "i8259/ltim", "version": 1, "fields": [_f("ltim")]}]}
PIC_DUMP = {"name": "i8259", "version_id": 1, "minimum_version_id": 1,
            "Fields": [_d("elcr", 1)],
            "Subsections": [{"name": "i8259/ltim", "version_id": 1, "Fields": [_d("ltim", 1)]}]}
PIC_OLD = dict(PIC_DUMP, Subsections=[])


@given(st.integers(0, 255))
def test_ltim_is_dropped_only_at_zero_and_refused_naming_its_value(elcr):
    tree = _tree("pc-i440fx-10.0", pic=_section(PIC, "i8259", elcr=elcr, ltim={"ltim": 0}))
    original = copy.deepcopy(tree)
    _convert(tree, _target("pc-i440fx-7.2", PIC_OLD))
    assert "ltim" not in tree["machine"]["qemu"]["pic"]
    _convert(tree, _target("pc-i440fx-10.0", PIC_DUMP))
    assert tree == original
    tree = _tree("pc-i440fx-10.0", pic=_section(PIC, "i8259", elcr=elcr, ltim={"ltim": 8}))
    with pytest.raises(FilterError, match=r"ltim \(subsection i8259/ltim\): ltim=0x08: the "
                                          r"guest set ICW1.LTIM"):
        _convert(tree, _target("pc-i440fx-7.2", PIC_OLD))


GPU_SUB = {"vmsd_name": "virtio-gpu/blob", "version": 1,
           "fields": [{"name": "virtio-gpu/blob", "type": "blob", "size": 4}]}


def _gpu_layout(size, blob=False):
    return {"vmsd_name": "virtio-gpu", "version": 1,
            "fields": [{"name": "virtio-gpu", "type": "virtio-gpu", "size": size}],
            "subsections": [GPU_SUB] if blob else []}


GPU_DUMP = {"name": "virtio-gpu", "version_id": 1, "minimum_version_id": 1,
            "Fields": [_d("virtio-gpu", 0)],
            "Subsections": [{"name": "virtio-gpu/blob", "version_id": 1,
                             "Fields": [_d("virtio-gpu/blob", 0)]}]}
GPU_OLD = dict(GPU_DUMP, Subsections=[])


def _be(*words, width=4):
    return b"".join(w.to_bytes(width, "big") for w in words)


def test_an_empty_blob_list_is_dropped_and_blob_resources_are_refused():
    field = _be(0, 0, 1) + bytes(40)
    tree = _tree("pc-q35-8.2", gpu=_section(_gpu_layout(len(field), True), "0000:00:05.0/gpu",
                                            **{"virtio-gpu": field,
                                               "blob": {"virtio-gpu/blob": bytes(4)}}))
    original = copy.deepcopy(tree)
    _convert(tree, _target("pc-q35-7.2", GPU_OLD))
    assert "blob" not in tree["machine"]["qemu"]["gpu"]
    _convert(tree, _target("pc-q35-8.2", GPU_DUMP))  # 8.2: scanouts without fb
    assert tree == original
    tree["machine"]["qemu"]["gpu"]["blob"] = {"virtio-gpu/blob": _be(7, 4096, 0, 0)}
    with pytest.raises(FilterError, match=r"blob \(subsection virtio-gpu/blob\): virtio-gpu/"
                                          r"blob holds blob resources \(the first is "
                                          r"resource_id=7"):
        _convert(tree, _target("pc-q35-7.2", GPU_OLD))


# -- virtio-gpu's scanout framebuffers -----------------------------------------------------


@st.composite
def _gpu_fields(draw):
    """A virtio-gpu field as QEMU >= 9.0 writes it on a machine type >= 9.0:
    2D resources, then the scanouts with their framebuffers."""
    out = b""
    ids = []
    for rid in draw(st.lists(st.integers(1, 2**32 - 1), max_size=2, unique=True)):
        w, h = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        n = draw(st.integers(0, 2))
        out += _be(rid, w, h, draw(st.integers(0, 200)), n)
        out += b"".join(_be(draw(st.integers(0, 2**64 - 1)), width=8) + _be(4096)
                        for _ in range(n))
        out += draw(st.binary(min_size=4 * w * h, max_size=4 * w * h))
        ids.append(rid)
    out += _be(0)
    n = draw(st.integers(1, 4))
    out += _be(draw(st.integers(0, 1)), n)
    fbs = []
    for _ in range(n):
        rid = draw(st.sampled_from([0, *ids]))
        scanout = _be(rid) + draw(st.binary(min_size=36, max_size=36))
        fb = _be(draw(st.integers(0, 2**32 - 1)), *(draw(st.integers(0, 2**32 - 1))
                                                     for _ in range(4)))
        fb += _be(0 if rid else draw(st.integers(0, 2**32 - 1)))
        out += scanout + fb
        fbs.append(fb)
    return out, fbs


GPU_DUMP_10 = dict(GPU_DUMP, Subsections=[])


@given(_gpu_fields())
def test_scanout_framebuffers_down_and_up_are_the_identity(gpu):
    field, fbs = gpu
    tree = _tree("pc-i440fx-10.0", gpu=_section(_gpu_layout(len(field)), "0000:00:05.0/gpu",
                                                **{"virtio-gpu": field}))
    original = copy.deepcopy(tree)
    _convert(tree, _target("pc-i440fx-7.2", GPU_OLD))
    node = tree["machine"]["qemu"]["gpu"]
    assert len(node["virtio-gpu"]) == len(field) - 24 * len(fbs)
    assert f'"size": {len(field) - 24 * len(fbs)}' in node["__qemu__"]["layout"]
    _convert(tree, _target("pc-i440fx-10.0", GPU_DUMP_10))
    assert tree == original


@given(_gpu_fields())
def test_a_stream_without_framebuffers_gets_zeros_the_legacy_path(gpu):
    field, fbs = gpu
    tree = _tree("pc-i440fx-10.0", gpu=_section(_gpu_layout(len(field)), "0000:00:05.0/gpu",
                                                **{"virtio-gpu": field}))
    _convert(tree, _target("pc-i440fx-7.2", GPU_OLD))
    tree["machine"]["qemu"]["gpu"].pop("__stash__")
    _convert(tree, _target("pc-i440fx-10.0", GPU_DUMP_10))
    assert compat._gpu_fb_get(tree["machine"]["qemu"]["gpu"]) == (bytes(24),) * len(fbs)


def test_a_scanout_inside_its_resource_is_refused_naming_the_offset():
    field = _be(9, 2, 1, 1, 0) + bytes(8) + _be(0) + _be(1, 1) + _be(9) + bytes(36)
    field += _be(0x20028888, 4, 2, 1, 8, 4)
    tree = _tree("pc-i440fx-10.0", gpu=_section(_gpu_layout(len(field)), "0000:00:05.0/gpu",
                                                **{"virtio-gpu": field}))
    with pytest.raises(FilterError, match=r"scanout 0 shows resource 9 from fb.offset=4"):
        _convert(tree, _target("pc-i440fx-7.2", GPU_OLD))


# -- slirp's instance ids --------------------------------------------------------------------

SLIRP = {"size": 131, "fields": [{"name": "data", "size": 131, "type": "buffer"}]}
SLIRP_V = 4


def _slirps(datas, numbered):
    nodes = {}
    for i, data in enumerate(datas):
        node = {"__type__": "slirp", "__version__": SLIRP_V,
                "__qemu__": {"idstr": "slirp", "instance_id": i if numbered else 0,
                             "section_id": 10 + i, "layout": qemu_json(SLIRP)},
                "data": data}
        if i and not numbered:
            node["__qemu__"]["occurrence"] = i
        nodes[f"slirp{i}"] = node
    return nodes


OLD_QEMU = _target("pc-q35-7.2")
NEW_QEMU = _target("pc-q35-7.2", {"name": "virtio-gpu", "version_id": 1,
                                  "Subsections": [{"name": "virtio-gpu/blob"}]})


def _wire(tree):
    return [compat.slirp_wire_id(n) for n in tree["machine"]["qemu"].values()
            if isinstance(n, dict) and n.get("__type__") == "slirp"]


_DATA = st.binary(min_size=131, max_size=131).map(lambda b: b"\x00" + b[1:])


@given(st.lists(_DATA, min_size=1, max_size=5))
def test_slirp_renumbered_down_and_back_is_the_identity(datas):
    tree = _tree("pc-q35-7.2", **_slirps(datas, numbered=True))
    original = copy.deepcopy(tree)
    _convert(tree, OLD_QEMU)
    assert _wire(tree) == [0] * len(datas)
    assert not _misfits(OLD_QEMU, tree)
    _convert(tree, NEW_QEMU)
    assert tree == original


@given(st.lists(_DATA, min_size=1, max_size=5))
def test_an_old_qemus_slirps_get_their_netdevs_numbers_and_back(datas):
    tree = _tree("pc-q35-7.2", **_slirps(datas, numbered=False))
    original = copy.deepcopy(tree)
    _convert(tree, NEW_QEMU)
    assert _wire(tree) == list(range(len(datas)))
    _convert(tree, OLD_QEMU)
    assert tree == original


def test_the_targets_version_for_slirp_comes_from_what_its_dump_describes():
    # QEMU 10.0 running pc-q35-7.2 says 7.2 by its machine type; its dump has 8.2's parts
    assert compat.slirp_target_version((7, 2), NEW_QEMU.vmsds) == (8, 2)
    assert compat.slirp_target_version((7, 2), OLD_QEMU.vmsds) == (7, 2)
    assert compat.slirp_target_version((10, 0), {}) == (10, 0)
    tree = _tree("pc-q35-7.2", **_slirps([bytes(131)] * 2, numbered=False))
    [m] = _misfits(NEW_QEMU, tree)
    assert m == Misfit("instance_id", "required", m.reason) and "netdev 1" in m.reason


def test_a_later_netdevs_guestfwd_connections_are_refused_naming_the_byte():
    tree = _tree("pc-q35-7.2", **_slirps([bytes(131), b"\x2a" + bytes(130)], numbered=True))
    with pytest.raises(FilterError, match=r"slirp instance 1: data\[0\]=0x2a: this netdev's "
                                          r"slirp holds guestfwd connections"):
        _convert(tree, OLD_QEMU)


def test_the_wire_id_is_what_is_written_the_identity_what_finds_the_node():
    from migtree_qemu.qevm import Section
    from migtree_qemu.tree import tree_to_stream

    tree = _tree("pc-q35-7.2", **_slirps([bytes(131)] * 3, numbered=True))
    tree["machine"]["__qemu__"]["order"] = [["FULL", 10 + i, "slirp", i, True]
                                            for i in range(3)]
    _convert(tree, OLD_QEMU)
    stream = tree_to_stream(tree)
    assert [s.instance_id for s in stream.items if isinstance(s, Section)] == [0, 0, 0]


# -- with the real QEMUs ------------------------------------------------------------------------

pytestmark_qemu = pytest.mark.qemu


@pytest.fixture(scope="module")
def mx():
    import qemu_streams
    import qemu_versions_matrix

    qemu_streams.need_qemu()
    return qemu_versions_matrix


@pytest.fixture(scope="module")
def own_root(tmp_path_factory):
    """Streams with devices of this file's own, one directory per device set
    (a stream's name does not say its extra devices)."""
    return tmp_path_factory.mktemp("fleet-rules")


def _instances(path: Path) -> list[int]:
    with qevm.load(path, ram="skip") as s:
        return [sec.instance_id for sec in s.items
                if getattr(sec, "idstr", None) == "slirp"]


@pytestmark_qemu
def test_qemu_72_takes_a_10_0_fleets_slirps_renumbered(streams, mx):
    cell = mx.run_cell("10.0", "pc-q35-7.2", "7.2", streams.root, devices="fleet")
    assert cell.native.result == "refused"
    assert "Unknown savevm section or instance 'slirp' 1" in cell.native.detail
    assert cell.converted.result == "accepted", cell.converted.short()
    assert mx.describe_changes(cell.changes) == "slirp-instance-id dropped"
    src = mx.make_stream(mx.source_config("10.0", "pc-q35-7.2", devices="fleet"), streams.root)
    out = streams.root / f"{src.stem}-to-7.2-pc-q35-7.2.qevm"
    assert _instances(src) == [0, 1, 2] and _instances(out) == [0, 0, 0]


@pytestmark_qemu
def test_qemu_10_0_gets_a_7_2_fleets_slirps_numbered(streams, mx):
    cell = mx.run_cell("7.2", "pc-q35-7.2", "10.0", streams.root, devices="fleet")
    assert cell.converted.result == "accepted", cell.converted.short()
    assert mx.describe_changes(cell.changes) == "slirp-instance-id restored"
    src = mx.make_stream(mx.source_config("7.2", "pc-q35-7.2", devices="fleet"), streams.root)
    out = streams.root / f"{src.stem}-to-10.0-pc-q35-7.2.qevm"
    assert _instances(src) == [0, 0, 0] and _instances(out) == [0, 1, 2]


def _custom(mx, root, version, machine, loader, target_machine, extra, monkeypatch=None):
    """Make the stream, convert it for *loader* running *target_machine*,
    load it there: (outcome, applied filter names)."""
    root = root / extra[-1].split(",")[0]
    root.mkdir(exist_ok=True)
    src = dataclasses.replace(mx.source_config(version, machine), extra=extra)
    stream = mx.make_stream(src, root)
    dump = mx.qemu_streams.dump_vmstate(root, target_machine, loader)
    out = root / f"{src.name}-to-{loader}-{target_machine}.qevm"
    refused, apps, _ = mx.convert(stream, dump, out)
    assert refused is None, refused.short()
    dst = dataclasses.replace(src, machine=target_machine, qemu=loader)
    tag = f"{out.stem}-{len(apps)}"
    return mx.try_load(dst, out, root, tag), {a.filter for a in apps}


GPU = ("-device", "virtio-gpu-pci")


@pytestmark_qemu
def test_qemu_7_2_takes_10_0s_virtio_gpu_without_its_framebuffers_and_refuses_them(
        own_root, mx, monkeypatch):
    fb = "qemu-bytes-virtio-gpu-virtio-gpu-scanout-fb-drop"
    outcome, applied = _custom(mx, own_root, "10.0", "pc-i440fx-10.0", "7.2", "pc-i440fx-7.2",
                               GPU)
    assert outcome.result == "accepted", outcome.short()
    assert fb in applied
    monkeypatch.setattr(compat, "PART_RULES", tuple(r for r in compat.PART_RULES
                                                    if r.kind != "bytes"))
    outcome, applied = _custom(mx, own_root, "10.0", "pc-i440fx-10.0", "7.2", "pc-i440fx-7.2",
                               GPU)
    assert fb not in applied
    assert outcome.result == "refused"
    assert "virtio-gpu" in outcome.detail, outcome.detail


@pytestmark_qemu
def test_qemu_10_0_on_its_newest_machine_takes_7_2s_virtio_gpu_with_zero_framebuffers(
        own_root, mx):
    outcome, applied = _custom(mx, own_root, "7.2", "pc-i440fx-7.2", "10.0", "pc-i440fx-10.0",
                               GPU)
    assert outcome.result == "accepted", outcome.short()
    assert "qemu-bytes-virtio-gpu-virtio-gpu-scanout-fb-restore" in applied
    root = own_root / "virtio-gpu-pci"
    stream = mx.make_stream(dataclasses.replace(mx.source_config("7.2", "pc-i440fx-7.2"),
                                                extra=GPU), root)
    renamed = mx.naive_conversion(stream, "pc-i440fx-10.0", "10.0", root / "renamed.qevm")
    dst = dataclasses.replace(mx.source_config("10.0", "pc-i440fx-10.0"), extra=GPU)
    native = mx.try_load(dst, renamed, root, "renamed")
    assert native.result == "refused" and "virtio-gpu" in native.detail, native.short()


NIC = ("-netdev", "user,id=n1,restrict=on", "-device", "e1000e,netdev=n1")


@pytestmark_qemu
def test_qemu_10_0_on_a_machine_type_that_reads_timadj_takes_7_2s_e1000e(own_root, mx):
    outcome, applied = _custom(mx, own_root, "7.2", "pc-i440fx-7.2", "10.0", "pc-i440fx-8.0",
                               NIC)
    assert outcome.result == "accepted", outcome.short()
    assert "qemu-field-e1000e-core-timadj-restore" in applied
    root = own_root / "e1000e"
    stream = mx.make_stream(dataclasses.replace(mx.source_config("7.2", "pc-i440fx-7.2"),
                                                extra=NIC), root)
    renamed = mx.naive_conversion(stream, "pc-i440fx-8.0", "10.0", root / "renamed.qevm")
    dst = dataclasses.replace(mx.source_config("10.0", "pc-i440fx-8.0"), extra=NIC)
    native = mx.try_load(dst, renamed, root, "renamed")
    assert native.result == "refused" and "e1000e" in native.detail, native.short()
