"""Damaged real streams never escape as anything but QemuStreamError, and
edits of any integer field round-trip (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migtree_qemu import qevm
from migtree_qemu.errors import QemuStreamError
from migtree_qemu.vmstate import INT_TYPES

pytestmark = pytest.mark.qemu

_SETTINGS = settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])


@pytest.fixture(scope="module")
def data(base_stream) -> bytes:
    return base_stream.read_bytes()


@pytest.fixture(scope="module")
def device_start(data) -> int:
    """Offset of the first FULL section: mutations after it hit device state."""
    s = qevm.loads(data, ram="skip")
    return next(x.offset for x in s.sections if x.kind == qevm.SECTION_FULL)


def _decode(buf: bytes) -> None:
    try:
        qevm.loads(buf, ram="skip")
    except QemuStreamError as e:
        assert e.offset is None or 0 <= e.offset <= len(buf), e
        assert str(e)


@_SETTINGS
@given(cut=st.floats(0, 1))
def test_truncation_anywhere(data, cut):
    _decode(data[: int(len(data) * cut)])


@_SETTINGS
@given(where=st.floats(0, 1), value=st.integers(0, 255), device=st.booleans())
def test_one_byte_changed_anywhere(data, device_start, where, value, device):
    lo = device_start if device else 0
    i = lo + int((len(data) - lo - 1) * where)
    _decode(data[:i] + bytes([value]) + data[i + 1 :])


@_SETTINGS
@given(where=st.floats(0, 1), junk=st.binary(min_size=1, max_size=16))
def test_bytes_inserted_in_device_state(data, device_start, where, junk):
    i = device_start + int((len(data) - device_start) * where)
    _decode(data[:i] + junk + data[i:])


@pytest.fixture(scope="module")
def int_fields(data):
    s = qevm.loads(data, ram="copy")
    out = []
    for sec in s.devices():
        for path, f in sec.state.walk():
            if f.type in INT_TYPES and f.array_len is None:
                out.append((sec.idstr, sec.instance_id, path))
    return out


def _field(s, idstr, instance, path):
    for p, f in s.section(idstr, instance).state.walk():
        if p == path:
            return f
    raise KeyError(path)


@_SETTINGS
@given(st.data())
def test_any_int_field_edit_roundtrips(data, int_fields, hyp):
    s = qevm.loads(data, ram="copy")
    picks = hyp.draw(st.lists(st.sampled_from(int_fields), min_size=1, max_size=5,
                              unique=True))
    wanted = {}
    for idstr, inst, path in picks:
        f = _field(s, idstr, inst, path)
        width, signed = INT_TYPES[f.type]
        lo = -(1 << (8 * width - 1)) if signed else 0
        hi = (1 << (8 * width - 1)) - 1 if signed else (1 << (8 * width)) - 1
        f.value = wanted[(idstr, inst, path)] = hyp.draw(st.integers(lo, hi))
    out = qevm.dumps(s)
    assert len(out) == len(data)  # fixed-width fields: same size
    back = qevm.loads(out, ram="skip")
    for (idstr, inst, path), v in wanted.items():
        assert _field(back, idstr, inst, path).value == v
