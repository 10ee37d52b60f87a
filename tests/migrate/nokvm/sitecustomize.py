"""Put this directory on PYTHONPATH to run migtree as on a machine without
/dev/kvm: the kvm backend reports itself unavailable (the kvm plugin stays
installed, as it would be). Child processes inherit PYTHONPATH, so a whole
``migtree migrate`` sees the same machine. Test use only."""

import os

if os.environ.get("MIGTREE_TEST_NO_KVM"):
    try:
        import migtree_kvm.backend as _backend
    except ImportError:  # nothing to hide
        pass
    else:
        _backend.kvm_available = lambda *a, **k: (
            False, "/dev/kvm cannot be opened (simulated by the test suite)")
