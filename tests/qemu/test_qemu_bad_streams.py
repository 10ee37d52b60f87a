"""Damaged streams fail with a clear error naming section, field and offset."""

from __future__ import annotations

import pytest
from qemu_streams import QemuVM, StreamConfig

from migtree_qemu import qevm
from migtree_qemu.errors import (
    QemuBadMagicError,
    QemuFooterError,
    QemuStreamError,
    QemuTruncatedError,
    QemuUnknownSectionTypeError,
    QemuUnknownSubsectionError,
    QemuVersionError,
    QemuVmdescMismatchError,
)
from migtree_qemu.qmp import QMPError
from migtree_qemu.schema import VmstateSchema
from migtree_qemu.vmstate import Field, VMStateObject, qemu_json

pytestmark = pytest.mark.qemu



@pytest.fixture(scope="module")
def good(base_stream):
    data = base_stream.read_bytes()
    s = qevm.loads(data, ram="copy")
    return data, s


def _section(s, idstr):
    return next(x for x in s.sections if x.idstr == idstr and x.kind == qevm.SECTION_FULL)


def _next_offset(s, sec):
    items = s.items
    i = items.index(sec)
    return items[i + 1].offset if i + 1 < len(items) else None


def _with_vmdesc(data: bytes, desc: dict) -> bytes:
    at, _ = qevm.find_vmdesc(data)
    text = qemu_json(desc).encode()
    return data[:at] + b"\x06" + len(text).to_bytes(4, "big") + text


# -- truncation --------------------------------------------------------------

def test_truncated_header(good):
    data, _ = good
    with pytest.raises(QemuTruncatedError) as e:
        qevm.loads(data[:6])
    assert "QEVM header" in str(e.value) and "byte offset 0" in str(e.value)


def test_truncated_in_ram(good):
    data, s = good
    part = s.sections[1]
    cut = part.offset + 5000
    with pytest.raises(QemuTruncatedError) as e:
        qevm.loads(data[:cut])
    err = e.value
    assert err.section == "ram" and err.offset is not None and err.offset <= cut
    assert "section 'ram'" in str(err) and "truncated" in str(err)


def test_truncated_in_device_section_with_reference_vmdesc(good):
    data, s = good
    at, desc = qevm.find_vmdesc(data)
    apic = _section(s, "apic")
    cut = apic.offset + 30  # header is 1+4+1+4+4+4 = 18 bytes; 12 into the fields
    with pytest.raises(QemuTruncatedError) as e:
        qevm.loads(data[:cut], vmdesc=desc)
    err = e.value
    assert err.section == "apic" and err.instance_id == 0
    # apicbase(4) id(1) arb_id(1) tpr(1) spurious_vec(4) log_dest(1) = 12
    assert err.field == "dest_mode" and err.offset == cut
    assert "field 'dest_mode'" in str(err) and f"byte offset {cut}" in str(err)


def test_truncated_vmdesc_says_so(good):
    data, _ = good
    with pytest.raises(QemuTruncatedError) as e:
        qevm.loads(data[:-1])
    msg = str(e.value)
    assert "no VMDESCRIPTION" in msg and "section 'timer'" in msg


# -- magic, version, section type ---------------------------------------------

def test_wrong_magic(good):
    data, _ = good
    with pytest.raises(QemuBadMagicError) as e:
        qevm.loads(b"QEVX" + data[4:])
    assert "0x5145565" in str(e.value) and e.value.offset == 0


def test_file_version_too_new(good):
    data, _ = good
    with pytest.raises(QemuVersionError) as e:
        qevm.loads(data[:4] + (4).to_bytes(4, "big") + data[8:])
    assert "version 4 is too new" in str(e.value) and e.value.offset == 4


def test_ram_section_version_too_new(good):
    data, s = good
    start = s.sections[0]
    # header: type, id(4), len(1), "ram", instance(4), version(4)
    vpos = start.offset + 1 + 4 + 1 + 3 + 4
    assert int.from_bytes(data[vpos:vpos + 4], "big") == 4
    bad = data[:vpos] + (5).to_bytes(4, "big") + data[vpos + 4:]
    with pytest.raises(QemuVersionError) as e:
        qevm.loads(bad)
    assert e.value.section == "ram" and "RAM section version 5" in str(e.value)


def test_unknown_section_type(good):
    data, s = good
    apic = _section(s, "apic")
    bad = data[:apic.offset] + b"\x42" + data[apic.offset + 1:]
    with pytest.raises(QemuUnknownSectionTypeError) as e:
        qevm.loads(bad)
    assert "unknown section type 0x42 after section 'kvm-tpr-opt'" in str(e.value)
    assert e.value.offset == apic.offset


# -- footers ---------------------------------------------------------------------

def test_missing_footer(good):
    data, s = good
    apic = _section(s, "apic")
    end = _next_offset(s, apic)
    assert data[end - 5] == 0x7E
    bad = data[:end - 5] + data[end:]
    with pytest.raises(QemuFooterError) as e:
        qevm.loads(bad)
    err = e.value
    assert err.section == "apic" and err.offset == end - 5
    assert "missing section footer" in str(err)


def test_footer_naming_another_section(good):
    data, s = good
    apic = _section(s, "apic")
    end = _next_offset(s, apic)
    bad = data[:end - 4] + (999).to_bytes(4, "big") + data[end:]
    with pytest.raises(QemuFooterError) as e:
        qevm.loads(bad)
    assert "names section id 999" in str(e.value) and e.value.section == "apic"


# -- vmdesc disagreeing with the bytes --------------------------------------------

def _apic_desc(desc):
    return next(d for d in desc["devices"] if d["name"] == "apic")


def test_vmdesc_field_size_disagrees(good):
    data, _ = good
    _, desc = qevm.find_vmdesc(data)
    tpr = next(f for f in _apic_desc(desc)["fields"] if f["name"] == "tpr")
    tpr["type"], tpr["size"] = "uint16", 2
    with pytest.raises(QemuVmdescMismatchError) as e:
        qevm.loads(_with_vmdesc(data, desc))
    err = e.value
    assert err.section == "apic" and "vmdesc disagrees" in str(err)
    assert "+1 bytes" in str(err) or "-1 bytes" in str(err)


def test_vmdesc_type_width_disagrees(good):
    data, _ = good
    _, desc = qevm.find_vmdesc(data)
    tpr = next(f for f in _apic_desc(desc)["fields"] if f["name"] == "tpr")
    tpr["size"] = 2
    with pytest.raises(QemuVmdescMismatchError) as e:
        qevm.loads(_with_vmdesc(data, desc))
    assert e.value.field == "tpr" and "'uint8' took 2 bytes" in str(e.value)


def test_vmdesc_names_another_section(good):
    data, _ = good
    _, desc = qevm.find_vmdesc(data)
    _apic_desc(desc)["name"] = "lapic"
    with pytest.raises(QemuVmdescMismatchError) as e:
        qevm.loads(_with_vmdesc(data, desc))
    assert "describes 'lapic' instance 0, the stream has 'apic'" in str(e.value)


def test_vmdesc_lists_subsection_the_stream_lacks(good):
    data, _ = good
    _, desc = qevm.find_vmdesc(data)
    _apic_desc(desc)["subsections"] = [
        {"vmsd_name": "apic/timer", "version": 1, "fields": [
            {"name": "timer", "type": "timer", "size": 8}]}]
    with pytest.raises(QemuVmdescMismatchError) as e:
        qevm.loads(_with_vmdesc(data, desc))
    err = e.value
    assert err.section == "apic" and err.field == "apic/timer"
    assert "lists subsection 'apic/timer'" in str(err)


def test_section_version_disagrees_with_vmdesc(good):
    data, _ = good
    _, desc = qevm.find_vmdesc(data)
    _apic_desc(desc)["version"] = 4
    with pytest.raises(QemuVmdescMismatchError) as e:
        qevm.loads(_with_vmdesc(data, desc))
    assert "header says version 3, vmdesc says 4" in str(e.value)


# -- subsections -----------------------------------------------------------------

def test_unknown_subsection_in_bytes(good):
    data, s = good
    apic = _section(s, "apic")
    end = _next_offset(s, apic) - 5  # before the footer
    name = b"apic/bogus"
    inject = b"\x05" + bytes([len(name)]) + name + (1).to_bytes(4, "big") + b"\0\0\0\0"
    bad = data[:end] + inject + data[end:]
    with pytest.raises(QemuUnknownSubsectionError) as e:
        qevm.loads(bad)
    err = e.value
    assert err.section == "apic" and err.offset == end
    assert "unknown subsection 'apic/bogus'" in str(err) and "apic/bogus" in err.field


def _rtc_with_subsection(s, name, version=1):
    rtc = s.device("mc146818rtc")
    rtc.subsections.append(VMStateObject(name, version, [Field("x", "uint32", 7)]))


def test_unknown_subsection_against_destination_schema(streams, tmp_path):
    """The stream is self-consistent (its vmdesc describes the new
    subsection) but QEMU 7.2 does not know it: the schema check says so, by
    name; QEMU itself refuses the stream."""
    cfg = StreamConfig()
    s = qevm.load(streams(cfg), ram="copy")
    _rtc_with_subsection(s, "mc146818rtc/bogus")
    data = qevm.dumps(s)
    s2 = qevm.loads(data)  # decodes: the vmdesc describes it
    assert s2.device("mc146818rtc").subsection("bogus")["x"] == 7
    schema = VmstateSchema.from_file(streams.dump_vmstate("pc"))
    with pytest.raises(QemuUnknownSubsectionError) as e:
        schema.check(s2)
    err = e.value
    assert err.section == "mc146818rtc" and err.field == "mc146818rtc/bogus"
    assert "mc146818rtc/irq_reinject_on_ack_count" in str(err)  # what it does know
    assert err.offset == s2.device("mc146818rtc").subsections[-1].offset
    _qemu_refuses(streams, cfg, data, tmp_path)


def test_section_version_too_new_against_destination_schema(streams, tmp_path):
    cfg = StreamConfig()
    s = qevm.load(streams(cfg), ram="copy")
    sec = s.section("mc146818rtc")
    sec.version_id = sec.state.version = 99
    data = qevm.dumps(s)
    s2 = qevm.loads(data)
    schema = VmstateSchema.from_file(streams.dump_vmstate("pc"))
    with pytest.raises(QemuVersionError) as e:
        schema.check(s2)
    assert "'mc146818rtc' version 99 is too new: this QEMU loads versions 1..3" in str(e.value)
    assert e.value.offset == sec.offset
    _qemu_refuses(streams, cfg, data, tmp_path)


def test_subsection_version_too_new_against_schema(streams):
    s = qevm.load(streams(StreamConfig()), ram="copy")
    fdc = s.device("fdc")
    fdc["state"].field("drives", index=0).value.subsection("media_rate").version = 7
    s2 = qevm.loads(qevm.dumps(s))
    with pytest.raises(QemuVersionError) as e:
        VmstateSchema.from_file(streams.dump_vmstate("pc")).check(s2)
    assert "'fdrive/media_rate' version 7 is too new" in str(e.value)
    assert e.value.field == "fdrive/media_rate" and e.value.section == "fdc"


def _qemu_refuses(streams, cfg, data, tmp_path):
    path = tmp_path / "bad.qevm"
    path.write_bytes(data)
    vm = QemuVM(cfg.args(streams.root / f"{cfg.name}.qcow2") + ["-S", "-incoming", "defer"],
                tmp_path, "refuses")
    with vm:
        with pytest.raises(QMPError):
            vm.incoming_from_file(path, timeout=60)
    assert "mc146818rtc" in vm.output() or "error" in vm.output().lower()


def test_every_error_is_a_qemu_stream_error():
    for cls in (QemuBadMagicError, QemuFooterError, QemuTruncatedError,
                QemuUnknownSectionTypeError, QemuUnknownSubsectionError,
                QemuVersionError, QemuVmdescMismatchError):
        assert issubclass(cls, QemuStreamError)
