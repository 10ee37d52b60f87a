"""The relay's stream handling without live QEMUs: a real stream fed in
chunks of any size, refusals of what the relay does not carry, and the
vmdesc writer's fast path (which the relay's pause depends on)."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migtree_qemu import qevm
from migtree_qemu.relay import QemuRelayError, Relay
from migtree_qemu.vmstate import _STYLES, _qjson, qemu_json

pytestmark = [pytest.mark.qemu]


def _relay(stream: bytes, dump, chunks: list[int] | None = None) -> tuple[bytes, Relay]:
    from migtree.plugins import get_registry
    from migtree.targets import filter_to_target, open_target
    from migtree_qemu.format import registered_decoders

    registry = get_registry()
    target = open_target(str(dump), registry)
    relay = Relay(target, lambda tree: filter_to_target(tree, target, registry),
                  decoders=registered_decoders(registry))
    src = io.BytesIO(stream)
    sizes = iter(chunks or [])

    def recv(view: memoryview) -> int:
        data = src.read(min(len(view), next(sizes, len(view))))
        view[:len(data)] = data
        return len(data)

    out = io.BytesIO()
    relay.run(recv, out.write)
    return out.getvalue(), relay


@pytest.fixture(scope="session")
def running_stream(streams):
    """A 7.2 stream of a VM that ran SeaBIOS (several RAM iterations)."""
    from qemu_streams import StreamConfig

    path = streams(StreamConfig(machine="pc", running=True))
    return path.read_bytes(), streams.dump_vmstate("pc")


@settings(max_examples=8, deadline=None)
@given(chunks=st.lists(st.integers(min_value=1, max_value=70000), min_size=1, max_size=40))
def test_any_chunking_relays_the_same_bytes(running_stream, chunks):
    data, dump = running_stream
    out, relay = _relay(data, dump, chunks)
    assert out == data
    assert relay.result.bytes_in == len(data)


def _first_ram_record(data: bytes) -> int:
    """The offset of the first RAM record after the set-up section (the
    first PART section's body)."""
    with qevm.loads(data, ram="skip") as s:
        part = next(sec for sec in s.sections if sec.kind == qevm.SECTION_PART)
        return part.body_offset


def test_xbzrle_pages_are_refused_naming_the_offset(running_stream):
    data, dump = running_stream
    at = _first_ram_record(data)
    word = struct.unpack_from(">Q", data, at)[0]
    bad = bytearray(data)
    struct.pack_into(">Q", bad, at, (word & ~0xFFF) | qevm.RAM_XBZRLE | (word & qevm.RAM_CONTINUE))
    with pytest.raises(QemuRelayError) as e:
        _relay(bytes(bad), dump)
    assert e.value.offset == at
    assert "XBZRLE" in str(e.value) and "section 'ram'" in str(e.value)


@pytest.mark.parametrize("cmd,words", [(1, "return path"), (3, "postcopy")])
def test_return_path_and_postcopy_commands_are_refused(running_stream, cmd, words):
    data, dump = running_stream
    with qevm.loads(data, ram="skip") as s:
        first = s.sections[0].offset  # right after the configuration section
    command = bytes([qevm.COMMAND]) + struct.pack(">HH", cmd, 0)
    with pytest.raises(QemuRelayError) as e:
        _relay(data[:first] + command + data[first:], dump)
    assert words in str(e.value) and e.value.offset == first


def test_a_stream_cut_short_names_where(running_stream):
    data, dump = running_stream
    at = _first_ram_record(data) + 100
    with pytest.raises(QemuRelayError) as e:
        _relay(data[:at], dump)
    assert "the source closed the stream in the middle of a RAM record" in str(e.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                              max_size=4),
    max_leaves=20)


@given(json_values)
def test_the_vmdesc_writer_fast_path_writes_what_qemus_jsonwriter_does(value):
    slow: list[str] = []
    _qjson(value, slow.append, _STYLES["json-writer"])
    assert qemu_json(value) == "".join(slow)
