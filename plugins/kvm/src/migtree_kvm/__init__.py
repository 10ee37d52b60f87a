"""migtree-kvm: a migtree backend over the real ``/dev/kvm``.

:mod:`migtree_kvm.ioctls` wraps the KVM ioctls; :mod:`migtree_kvm.lapic_map`
maps the in-kernel LAPIC's register page to QEMU's ``apic`` VMState fields
and back.
"""
