"""Smoke test: the installed plugin is found through its entry point, and its
filter pair round-trips every state (migtree's test kit, a pytest plugin that
comes with migtree)."""

from __future__ import annotations

import pytest

from migtree.testing import assert_round_trips

pytest.importorskip("migtree_example", reason="install the plugin first: pip install -e '.[test]'")

DIST = "migtree-example"


@pytest.fixture
def registry(migtree_registry_factory):
    # a string is an installed distribution, loaded through its entry point
    return migtree_registry_factory(DIST)


def test_found_through_its_entry_point(registry):
    record = registry.plugins[DIST]
    assert record.error is None
    assert record.types == ["example-device@1,2"]
    assert registry.types.lookup("example-device").plugin == DIST
    assert sorted(registry.filters) == ["example-device-v1-to-v2", "example-device-v2-to-v1"]


def test_filter_pair_round_trips(registry):
    # every version-2 state goes down to version 1 and comes back unchanged...
    assert_round_trips(registry, "example-device-v2-to-v1", "example-device-v1-to-v2",
                       "example-device@2")
    # ...and every version-1 state goes up to version 2 and back
    assert_round_trips(registry, "example-device-v1-to-v2", "example-device-v2-to-v1",
                       "example-device@1")
