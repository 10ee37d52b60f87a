"""A -> B -> A is exact through a B that really loads and saves, for every
filter pair that stashes: the apic version pairs, kvm's kvm-apic <-> apic,
virtio's split <-> merge, and the template's example-device pair. B's side
is the strict input visitor of the intermediate type@version and its output
visitor, with the stash kept by the loaded object and written back
(migtree.testing.load_and_save); states come from hypothesis over each
declaration.

kvm's kvm-apic <-> apic pair is tested live below, between real builds (KVM
in the kernel and the userspace APIC): its two declarations admit states
the other side cannot represent (a register value out of the kernel's
range), so it is not a round trip over *every* declared state, through a
build or not. The QEMU plugin's pairs are not here: their B is a real QEMU,
which keeps no stash, so the stash travels in a stash file beside the
stream (docs/filters.md 2.18), tested through a real QEMU that loads and
saves in tests/qemu/test_qemu_versions.py. The downgrade tests' vendor
(``dg_vendor``) has its pair checked both ways at the end."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from migtree.testing import assert_round_trips, make_registry

TEMPLATE_SRC = Path(__file__).resolve().parents[2] / "plugins" / "_template" / "src"
VBLK = "/machine/peripheral/vblk0"

#: (forward, backward, A's type@version, path)
PAIRS = [
    ("apic-v3-to-v2", "apic-v2-to-v3", "apic@3", "/machine/unattached/device[0]/lapic"),
    ("apic-v2-to-v3", "apic-v3-to-v2", "apic@2", "/machine/unattached/device[0]/lapic"),
    ("apic-v2-to-v1", "apic-v1-to-v2", "apic@2", "/machine/unattached/device[0]/lapic"),
    ("apic-v1-to-v2", "apic-v2-to-v1", "apic@1", "/machine/unattached/device[0]/lapic"),
    ("virtio-blk-pci-split", "virtio-blk-pci-merge", "virtio-blk-pci@1", VBLK),
    ("virtio-blk-pci-merge", "virtio-blk-pci-split", "virtio-pci@1", VBLK),
    ("example-device-v2-to-v1", "example-device-v1-to-v2", "example-device@2",
     "/machine/peripheral/ex0"),
    ("example-device-v1-to-v2", "example-device-v2-to-v1", "example-device@1",
     "/machine/peripheral/ex0"),
]


@pytest.fixture(scope="module")
def registry():
    sys.path.insert(0, str(TEMPLATE_SRC))
    try:
        from migtree_example import plugin as example
    finally:
        sys.path.remove(str(TEMPLATE_SRC))
    return make_registry("migtree-apic", "migtree-kvm", "migtree-virtio",
                         ("migtree-example", example))


@pytest.mark.parametrize("forward,backward,start,path", PAIRS,
                         ids=[f"{p[0]}|{p[1]}" for p in PAIRS])
def test_a_b_a_through_a_loading_b_is_exact(registry, forward, backward, start, path):
    assert_round_trips(registry, forward, backward, start, path=path, max_examples=60,
                       through_load=True)


def test_kvm_userspace_kvm_through_a_loading_userspace_build_is_exact(short_tmp):
    """A (KVM, in-kernel APIC) -> B (userspace APIC, which loads and saves)
    -> A: every lapic's state comes back as A wrote it (B kept the page bits
    and MP state the userspace APIC has no room for, in its stash, and wrote
    them back). The way back leaves one stash entry: the kvm pair's backward
    filter always keeps the timer's load time (plugins/kvm, filters.py), so
    the final node carries ``initial_count_load_time`` beside the state."""
    from mig_helpers import write_build
    from mig_pairs import close, kvm_ok
    from test_downgrade import migrate

    from migtree.build import load_build
    from migtree.plugins import get_registry
    from migtree.tree import iter_object_nodes, save_tree

    if not kvm_ok():
        pytest.skip("needs /dev/kvm (a KVM build is one side of the pair)")
    reg = get_registry()
    kvm = write_build(short_tmp, "kvm", backend="kvm", fallback=None, cpus=2)
    user = write_build(short_tmp, "user", backend="userspace", cpus=2)
    a, b, a2 = load_build(kvm, reg), load_build(user, reg), None
    try:
        lapics = {p: n for p, n in iter_object_nodes(save_tree(a.root))
                  if n["__type__"] == "kvm-apic"}
        assert lapics
        s, r = migrate(short_tmp, a, b)
        assert (s.outcome, r.outcome) == ("committed", "committed"), (s.error, r.error)
        a2 = load_build(kvm, reg)
        s, r = migrate(short_tmp, b, a2)
        assert (s.outcome, r.outcome) == ("committed", "committed"), (s.error, r.error)
        back = {p: n for p, n in iter_object_nodes(save_tree(a2.root))
                if n["__type__"] == "kvm-apic"}
        residue = {p: n.pop("__stash__", None) for p, n in back.items()}
        assert back == lapics
        assert all(set(r) == {"kvm-apic-apic"} and set(r["kvm-apic-apic"]) ==
                   {"initial_count_load_time"} for r in residue.values()), residue
    finally:
        for x in (a, a2):
            if x is not None:
                close(x)


def test_without_the_kept_stash_the_way_back_is_not_exact(registry):
    """The property has teeth: a B that loads and saves but drops the stash
    (what every build did before) loses apic@3 state on the way back."""
    import migtree.testing as T

    original = T.load_and_save

    def forgetful(reg, node, path=T.DEFAULT_PATH):
        out = original(reg, node, path)
        out.pop("__stash__", None)
        return out

    T.load_and_save = forgetful
    try:
        with pytest.raises(AssertionError, match="changed"):
            assert_round_trips(registry, "apic-v3-to-v2", "apic-v2-to-v3", "apic@3",
                               path=PAIRS[0][3], max_examples=60, through_load=True)
    finally:
        T.load_and_save = original


@pytest.mark.parametrize("forward,backward,start", [
    ("dg-device-v2-to-v1", "dg-device-v1-to-v2", "dg-device@2"),
    ("dg-device-v1-to-v2", "dg-device-v2-to-v1", "dg-device@1"),
])
def test_the_downgrade_vendors_pair_round_trips(forward, backward, start):
    """The test vendor's own pair (release 2 has both versions' declarations
    and the pair), over every declared state of either version."""
    import dg_vendor

    assert_round_trips(dg_vendor.release(2), forward, backward, start,
                       path="/machine/peripheral/dg0", max_examples=100)
