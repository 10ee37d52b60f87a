"""The object model: registry, composition, canonical paths, QEMU's path
resolution."""

from __future__ import annotations

import pytest
from mt_testtypes import Plain, Widget, make_registry

from migtree.errors import AmbiguousPath, PathNotFound, RegistryError, UnknownTypeError
from migtree.qom import Container, Device, canonical_path, new_root, resolve_path


def test_registering_a_name_twice_names_both_registrants():
    reg = make_registry()

    class Impostor(Device):
        TYPE = "test-widget"
        ABSTRACT = False

    with pytest.raises(RegistryError) as e:
        reg.types.register(Impostor, plugin="vendor-b")
    msg = str(e.value)
    assert "test-types" in msg and "vendor-b" in msg and "'test-widget'" in msg


def test_registry_records_parent_abstract_and_versions():
    reg = make_registry()
    info = reg.types.lookup("test-widget")
    assert info.parent == "device" and not info.abstract
    assert list(info.versions()) == [1, 2]
    assert reg.types.lookup("device").abstract
    assert reg.types.is_a("test-widget", "object")
    with pytest.raises(UnknownTypeError, match="abstract"):
        reg.types.create("device")


def test_unknown_type_never_resolves_to_anything_else():
    reg = make_registry()
    with pytest.raises(UnknownTypeError, match="'os.system' is not registered"):
        reg.types.lookup("os.system")


def test_state_class_without_wire_metadata_is_refused_at_registration():
    import attrs

    @attrs.define
    class Bad:
        x: int = 0

    class BadDevice(Device):
        TYPE = "bad"
        ABSTRACT = False
        STATE = Bad

    with pytest.raises(RegistryError, match="'x' has no wire metadata"):
        make_registry().types.register(BadDevice, plugin="p")


def test_containers_and_auto_numbering():
    root, machine = new_root()
    a = machine.add_device(Plain())
    b = machine.add_device(Plain())
    c = machine.add_device(Plain(), "disk0")
    u = machine.add_unattached(Plain())
    assert a.path == "/machine/peripheral-anon/device[0]"
    assert b.path == "/machine/peripheral-anon/device[1]"
    assert c.path == "/machine/peripheral/disk0"
    assert u.path == "/machine/unattached/device[0]"
    machine.child("peripheral-anon").remove_child("device[0]")
    assert machine.add_device(Plain()).path == "/machine/peripheral-anon/device[0]"


def test_child_name_rules():
    root, machine = new_root()
    w = machine.add_device(Widget(), "w")
    with pytest.raises(ValueError, match="collides with a state field"):
        w.add_child("a8", Plain())
    with pytest.raises(ValueError, match="already has a child"):
        machine.add_device(Plain(), "w")
    with pytest.raises(ValueError, match="invalid child name"):
        w.add_child("__type__", Plain())
    with pytest.raises(ValueError, match="invalid child name"):
        w.add_child("a/b", Plain())


def test_absolute_paths_resolve_component_by_component():
    root, machine = new_root()
    w = machine.add_device(Widget(), "vblk0")
    child = w.add_child("virtio-backend", Plain())
    assert resolve_path(root, "/machine/peripheral/vblk0/virtio-backend") is child
    assert resolve_path(root, "/") is root
    with pytest.raises(PathNotFound, match="/machine/peripheral has no child 'nope'"):
        resolve_path(root, "/machine/peripheral/nope/x")


def test_partial_paths_resolve_when_unique_and_list_candidates_when_not():
    root, machine = new_root()
    machine.add_device(Container(), "a").add_child("lapic", Plain())
    machine.add_device(Container(), "b").add_child("lapic", Plain())
    assert canonical_path(resolve_path(root, "a/lapic")) == "/machine/peripheral/a/lapic"
    with pytest.raises(AmbiguousPath) as e:
        resolve_path(root, "lapic")
    assert e.value.candidates == ["/machine/peripheral/a/lapic", "/machine/peripheral/b/lapic"]
    assert "ambiguous" in str(e.value)
    with pytest.raises(PathNotFound, match="matches no object"):
        resolve_path(root, "c/lapic")


def test_virtual_clock_only_moves_forward_and_notifies():
    root, machine = new_root()
    seen = []
    machine.clock_listeners.append(seen.append)
    machine.clock.advance(10)
    machine.clock.set(25)
    assert seen == [10, 25] and machine.state.clock_ns == 25
    with pytest.raises(ValueError):
        machine.clock.set(5)
