"""Every kind of bad input the reader must refuse, as named byte strings.

``CASES`` maps a name to a function returning the stream's bytes.
make_corpus.py writes each to ``NAME.bin`` with the exact error it must give
in ``manifest.json``; test_badinput_corpus.py replays them all.
"""

from __future__ import annotations

import cbor2
from craft import build, footer_for, header, minimal, obj, raw

KIB = 1024


def _flip(data: bytes, at: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[at] ^= 1 << bit
    return bytes(b)


def truncated_in_footer() -> bytes:
    return minimal()[:-1]


def truncated_in_header() -> bytes:
    return minimal()[:40]


def truncated_mid_section() -> bytes:
    body = raw(header(), obj("/"))
    return body + cbor2.dumps(obj("/d", "dev", fields={"a": 1}))[:-2]


def flipped_bit() -> bytes:
    data = minimal()
    return _flip(data, len(data) - 60, 3)  # inside the last section


def wrong_digest() -> bytes:
    data = minimal()
    return _flip(data, len(data) - 1)


def absurd_bytes_length() -> bytes:
    # a field claiming 2**62 bytes, in a stream whose footer is correct
    sec = bytes([0x86, 0x00]) + cbor2.dumps("/") + cbor2.dumps("container") + b"\x01" \
        + b"\xa1" + cbor2.dumps("x") + b"\x5b" + (1 << 62).to_bytes(8, "big") + b"abc"
    return build(sec)


def absurd_array_length() -> bytes:
    sec = bytes([0x86, 0x00]) + cbor2.dumps("/") + cbor2.dumps("container") + b"\x01" \
        + b"\xa1" + cbor2.dumps("x") + b"\x9b" + (1 << 63).to_bytes(8, "big") + b"\x01"
    return build(sec)


def absurd_map_size() -> bytes:
    sec = bytes([0x86, 0x00]) + cbor2.dumps("/") + cbor2.dumps("container") + b"\x01" \
        + b"\xbb" + (1 << 40).to_bytes(8, "big") + cbor2.dumps("x") + b"\x01"
    return build(sec)


def deep_nesting() -> bytes:
    sec = bytes([0x86, 0x00]) + cbor2.dumps("/") + cbor2.dumps("container") + b"\x01" \
        + b"\xa1" + cbor2.dumps("x") + b"\x81" * 100_000 + b"\x00" + b"\x80"
    return build(sec)


def deep_nesting_header() -> bytes:
    return (b"\xa6" + b"\x65magic\x67MIGTREE" + cbor2.dumps("extra")
            + b"\xa1\x61k" * 100_000 + b"\x00")


def wrong_magic() -> bytes:
    return build(obj("/"), hdr=header(magic="MIGTREF")).replace(b"MIGTREF", b"MIGTREF")


def not_a_stream() -> bytes:
    return b"QEVM\x00\x00\x00\x03" + b"\x00" * 64


def empty() -> bytes:
    return b""


def unknown_version() -> bytes:
    return build(obj("/"), hdr=header(version=2))


def header_unknown_key() -> bytes:
    return build(obj("/"), hdr=header(colour="blue"))


def header_bad_schema() -> bytes:
    h = header()
    h["schemas"]["dev@1"] = {"type": "dev", "version": 2, "parent": None, "plugin": None,
                             "fields": []}
    return build(obj("/"), hdr=h)


def no_root_first() -> bytes:
    return build(obj("/d", "dev", fields={"a": 1}))


def missing_parent() -> bytes:
    return build(obj("/"), obj("/a/b", "dev", fields={"a": 1}))


def malformed_path() -> bytes:
    return build(obj("/"), obj("//d", "dev", fields={"a": 1}))


def path_with_slash_at_end() -> bytes:
    return build(obj("/"), obj("/d", "dev", fields={"a": 1}), obj("/d/", "dev"))


def reserved_child_name() -> bytes:
    return build(obj("/"), obj("/__stash__"))


def child_collides_with_field() -> bytes:
    return build(obj("/"), obj("/d", "dev", fields={"a": 1}), obj("/d/a", "dev"))


def duplicate_path() -> bytes:
    return build(obj("/"), obj("/d", "dev", fields={"a": 1}), obj("/d", "dev", fields={"a": 2}))


def type_without_schema() -> bytes:
    return build(obj("/"), obj("/d", "dev", 7, fields={"a": 1}))


def object_node_as_field() -> bytes:
    return build(obj("/", fields={"d": {"__type__": "dev", "__version__": 1, "a": 1}}))


def reserved_field() -> bytes:
    return build(obj("/", fields={"__version__": 3}))


def float_value() -> bytes:
    return build(obj("/", fields={"speed": [1, {"x": 1.5}]}))


def half_float_value() -> bytes:
    return build(bytes([0x86, 0x00]) + cbor2.dumps("/") + cbor2.dumps("container") + b"\x01"
                 + b"\xa1" + cbor2.dumps("h") + b"\xf9\x3c\x00" + b"\x80")


def simple_value() -> bytes:
    return build(bytes([0x86, 0x00]) + cbor2.dumps("/") + cbor2.dumps("container") + b"\x01"
                 + b"\xa1" + cbor2.dumps("s") + b"\xf0" + b"\x80")


def undefined_value() -> bytes:
    return build(bytes([0x86, 0x00]) + cbor2.dumps("/") + cbor2.dumps("container") + b"\x01"
                 + b"\xa1" + cbor2.dumps("u") + b"\xf7" + b"\x80")


def int_key() -> bytes:
    return build(obj("/", fields={"m": {1: 2}}))


def bytes_key() -> bytes:
    return build(obj("/", fields={"m": {b"k": 2}}))


def indefinite_array() -> bytes:
    return build(bytes([0x86, 0x00]) + cbor2.dumps("/") + cbor2.dumps("container") + b"\x01"
                 + b"\xa1" + cbor2.dumps("x") + b"\x9f\x01\xff" + b"\x80")


def duplicate_key() -> bytes:
    return build(bytes([0x86, 0x00]) + cbor2.dumps("/") + cbor2.dumps("container") + b"\x01"
                 + b"\xa2" + cbor2.dumps("x") + b"\x01" + cbor2.dumps("x") + b"\x02" + b"\x80")


def tag(n: int):
    def make() -> bytes:
        return build(obj("/", fields={"t": cbor2.CBORTag(n, 0)}))
    make.__name__ = f"tag_{n}"
    return make


def tag_in_header() -> bytes:
    h = header()
    h["extra"] = {"when": cbor2.CBORTag(1, 0)}
    return build(obj("/"), hdr=h)


def self_describe_tag_prefix() -> bytes:
    return b"\xd9\xd9\xf7" + minimal()


def wrong_count() -> bytes:
    return build(obj("/"), count=5)


def unknown_kind() -> bytes:
    return build(obj("/"), [9, "/x"])


def short_object_section() -> bytes:
    return build([0, "/", "container", 1, {}])


def chunk_without_blob() -> bytes:
    return build(obj("/"), [1, "/", 0, 0, b"x"])


def chunk_out_of_order() -> bytes:
    return build(obj("/", fields={"b": {"$blob": 0}}, sizes=[4]), [1, "/", 0, 2, b"ab"])


def chunk_too_big() -> bytes:
    n = (1 << 20) + 1
    return build(obj("/", fields={"b": {"$blob": 0}}, sizes=[n]), [1, "/", 0, 0, b"x" * n])


def chunk_beyond_size() -> bytes:
    return build(obj("/", fields={"b": {"$blob": 0}}, sizes=[2]), [1, "/", 0, 0, b"abc"])


def blob_missing_chunks() -> bytes:
    return build(obj("/", fields={"b": {"$blob": 0}}, sizes=[2]))


def blob_cut_by_next_object() -> bytes:
    return build(obj("/", fields={"b": {"$blob": 0}}, sizes=[4]), [1, "/", 0, 0, b"ab"],
                 obj("/d", "dev", fields={"a": 1}))


def placeholder_without_size() -> bytes:
    return build(obj("/", fields={"b": {"$blob": 0}}))


def placeholder_bad_index() -> bytes:
    return build(obj("/", fields={"b": {"$blob": 1}}, sizes=[0]))


def footer_in_the_middle() -> bytes:
    body = raw(header(), obj("/"))
    foot = footer_for(body, 1)
    return body + foot + foot


def garbage_between() -> bytes:
    return build(obj("/"), b"\xff")


def no_sections() -> bytes:
    return build()


CASES = {f.__name__: f for f in [
    truncated_in_footer, truncated_in_header, truncated_mid_section, flipped_bit, wrong_digest,
    absurd_bytes_length, absurd_array_length, absurd_map_size, deep_nesting,
    deep_nesting_header, wrong_magic, not_a_stream, empty, unknown_version,
    header_unknown_key, header_bad_schema, no_root_first, missing_parent, malformed_path,
    path_with_slash_at_end, reserved_child_name, child_collides_with_field, duplicate_path,
    type_without_schema, object_node_as_field, reserved_field, float_value, half_float_value,
    simple_value, undefined_value, int_key, bytes_key, indefinite_array, duplicate_key,
    tag(0), tag(1), tag(2), tag(25), tag(28), tag(29), tag(258), tag(55799), tag(999),
    tag(2**32), tag_in_header, self_describe_tag_prefix, wrong_count, unknown_kind,
    short_object_section, chunk_without_blob, chunk_out_of_order, chunk_too_big,
    chunk_beyond_size, blob_missing_chunks, blob_cut_by_next_object,
    placeholder_without_size, placeholder_bad_index, footer_in_the_middle, garbage_between,
    no_sections,
]}
