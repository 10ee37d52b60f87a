"""Every hook a migtree plugin can implement. These docstrings are the hook
documentation: ``docs/plugin-hooks.md`` repeats each signature and the test
suite fails when the two disagree or a hook has no ``test_hook_<name>`` test.

A plugin is a module (named by a ``migtree`` entry point) with functions
decorated by ``migtree.hookimpl``::

    from migtree import hookimpl

    @hookimpl
    def migtree_register_types(register):
        register(MyDevice)

Registration hooks hand the plugin a ``register`` callback: the core
validates what it is given and remembers which distribution gave it, so a
duplicate or a bad declaration is reported by plugin name. Each plugin's
registration hooks are called for that plugin alone, distributions in load
order (``migtree`` first, then by name); a registration hook returns nothing
(returning a value is an error, as is calling ``register`` after the hook
returned), and a failure anywhere rejects the whole distribution. See
``docs/plugin-hooks.md`` and :mod:`migtree.plugins`.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("migtree")
hookimpl = pluggy.HookimplMarker("migtree")


@hookspec
def migtree_register_types(register):
    """Register object types (devices, containers, machines).

    :param register: call ``register(cls)`` once per type, where ``cls`` is a
        :class:`migtree.qom.Object` subclass that sets its own ``TYPE`` and,
        if it has state, ``STATE`` (an attrs class declared with
        :mod:`migtree.fields`), ``VERSION``, ``MIN_VERSION`` and ``HISTORY``.
        A name registered twice is an error naming both plugins.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def migtree_register_filters(register):
    """Register tree filters statically (available to every migration).

    :param register: call ``register(flt)`` with a :class:`migtree.filters.Filter`
        (or a :class:`migtree.filters.FilterPair` to register both directions
        of a reversible pair). Filter names are unique across plugins.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def migtree_register_backends(register):
    """Register machine backends a build config can ask for (``backend = "kvm"``).

    :param register: call ``register(backend)`` with a
        :class:`migtree.build.Backend`: a name, a one-line description, an
        ``available()`` check returning ``(ok, reason)``, and
        ``create_cpus(machine, count, registry)`` which adds the per-vCPU objects.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def migtree_register_stream_formats(register):
    """Register foreign stream formats (e.g. QEMU's ``QEVM``) that ``inspect``,
    ``convert`` and ``restore`` can read and write.

    :param register: call ``register(fmt)`` with a
        :class:`migtree.formats.StreamFormat`: a name, ``sniff(head: bytes) -> bool``,
        ``read(fp) -> (header, tree)`` and optionally ``write(fp, header, tree)``.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def migtree_register_opaque_decoders(register):
    """Register decoders for state another format keeps as an opaque blob
    (QEMU's ``virtio`` section): the plugin that knows the device turns the
    bytes into nodes, and back.

    :param register: call ``register(decoder)`` with a
        :class:`migtree.formats.OpaqueDecoder`: the ``format`` it serves
        (``"qemu"``), the ``key`` it claims (e.g. a QEMU vmsd name such as
        ``"virtio-blk"``), ``decode(data: bytes, context) -> dict`` and
        ``encode(node: dict, context) -> bytes``, where ``encode(decode(b)) == b``.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def migtree_register_workloads(register):
    """Register workloads that ``migtree migrate`` runs on a source build to
    put its devices in an interesting state (I/O in flight, interrupts
    pending) and that the destination finishes after the migration.

    :param register: call ``register(workload)`` with a
        :class:`migtree.build.Workload`: a name, ``applies(machine) -> bool``,
        ``start(machine, seed)`` (on the source: leave work in flight),
        ``finish(machine)`` (on the destination, or on a reference build that
        never migrated) and ``check(machine) -> dict`` (a summary of the
        outcome, compared between the destination and the reference).
        Workload names are unique across plugins.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def migtree_object_realized(obj, register_filter):
    """Called for every object when a build instantiates it: a plugin may
    register a filter for the migrations this build takes part in (the
    proposal's userspace APIC registering kvm-apic -> apic).

    :param obj: the :class:`migtree.qom.Object` just placed in the build;
        ``obj.path`` is final.
    :param register_filter: call ``register_filter(flt)`` to add a
        :class:`migtree.filters.Filter` (or a
        :class:`migtree.filters.FilterPair`) that applies to migrations into
        this build only. The core stamps it ``dynamic=True`` with the
        plugin's distribution name (``explain`` reports it as such); its name
        must not be a static filter's.
    :return: ignored.

    .. versionadded:: 0.1
    """
