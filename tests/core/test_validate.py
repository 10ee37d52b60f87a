"""migtree.validate: a stream header's layout description turned back into
a state declaration describes and accepts exactly what the original does,
for every type@version the installed plugins declare."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migtree.plugins import get_registry
from migtree.validate import class_from_schema
from migtree.visitor import node_to_state, schema_of, state_to_node, strategy_for


def _declared():
    out = []
    for info in get_registry().types:
        for v, cls in sorted(info.versions().items()):
            if cls is not None:
                out.append((f"{info.name}@{v}", cls, v))
    return out


DECLARED = _declared()


@pytest.mark.parametrize("label,cls,version", DECLARED, ids=[d[0] for d in DECLARED])
def test_the_rebuilt_declaration_describes_the_same_layout(label, cls, version):
    desc = schema_of(cls, version)
    assert schema_of(class_from_schema(desc, label), version) == desc


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(st.data())
def test_the_rebuilt_declaration_accepts_every_valid_node(data):
    label, cls, version = data.draw(st.sampled_from(DECLARED))
    if getattr(cls, "migtree_visit", None) is not None:
        return  # an irregular layout's own visit; its schema still round-trips above
    state = data.draw(strategy_for(cls, version))
    node = state_to_node(cls, state, version, "/x")
    rebuilt = class_from_schema(schema_of(cls, version), label)
    node_to_state(rebuilt, node, version, "/x")  # raises if it refused a valid node


def test_a_description_it_cannot_read_leaves_the_node_to_the_filters():
    from migtree.validate import validate_tree

    tree = {"__type__": "nobody-knows", "__version__": 3, "x": 1}
    header = {"schemas": {"nobody-knows@3": {"fields": [{"name": "x", "kind": "quux"}]}}}
    assert validate_tree(tree, get_registry(), header=header) == ["nobody-knows@3"]
    deep: dict = {"name": "x", "kind": "optional", "inner": {"kind": "u8"}}
    for _ in range(40):
        deep = {"name": "x", "kind": "optional", "inner": deep}
    header = {"schemas": {"nobody-knows@3": {"fields": [deep]}}}
    assert validate_tree(tree, get_registry(), header=header) == ["nobody-knows@3"]


def test_a_header_that_disagrees_with_the_installed_declaration_is_refused():
    from migtree.validate import StreamStateError, validate_tree

    reg = get_registry()
    info = reg.types.get("apic")
    node = state_to_node(info.cls.STATE, info.cls.STATE(), info.version, "/a")
    tree = {"__type__": "apic", "__version__": info.version, **node}
    fields = schema_of(info.cls.STATE, info.version)
    fields = [dict(fields[0], kind="u64"), *fields[1:]]
    header = {"schemas": {f"apic@{info.version}": {"fields": fields}}}
    with pytest.raises(StreamStateError, match=r"stream offset 7: /: the stream's header "
                                               r"describes apic@3 differently"):
        validate_tree(tree, reg, header=header, offsets={"/": 7})
