"""migtree plugin for the KVM backend: hook implementations live here (phase 2)."""
