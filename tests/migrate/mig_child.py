"""A migtree CLI process that can die or misbehave on cue, for fault tests.

    python mig_child.py [--kill-at EVENT] [--raise-in-filter SUBSTRING]
                        [--dg-release N|N+filters] -- migtree args...

``--kill-at EVENT`` SIGKILLs this process when the migration reports EVENT
(``sent`` on a source: right after the whole stream went out; ``loading`` on
a destination: after the filters, as the load starts). ``--raise-in-filter``
makes every filter whose name contains SUBSTRING raise (a vendor's bug).
``--dg-release`` makes the process an environment with release N of the
test vendor's plugin installed (``dg_vendor``: release 2 carries the filter
pair, release 1 does not; ``1+filters`` backported it). Otherwise it is
exactly ``migtree ARGS``.
"""

from __future__ import annotations

import os
import signal
import sys

import attrs


def main() -> int:
    argv = sys.argv[1:]
    kill_at = raise_in = dg_release = None
    while argv and argv[0].startswith("--") and argv[0] != "--":
        opt, val = argv[0], argv[1]
        argv = argv[2:]
        if opt == "--kill-at":
            kill_at = val
        elif opt == "--raise-in-filter":
            raise_in = val
        elif opt == "--dg-release":
            dg_release = val
        else:
            raise SystemExit(f"unknown option {opt}")
    if argv and argv[0] == "--":
        argv = argv[1:]

    from migtree import build as build_mod
    from migtree import cli, migration

    if dg_release:
        import dg_vendor

        from migtree import plugins

        number, _, extra = dg_release.partition("+")
        plugins._registry = dg_vendor.release(int(number),
                                              with_filters=True if extra else None)

    if kill_at:
        for fn in ("send", "receive"):
            original = getattr(migration, fn)

            def wrapped(*a, _original=original, **k):
                inner = k.get("events") or (lambda *_a, **_k: None)

                def events(name, **info):
                    inner(name, **info)
                    if name == kill_at:
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os.kill(os.getpid(), signal.SIGKILL)

                k["events"] = events
                return _original(*a, **k)

            setattr(migration, fn, wrapped)

    if raise_in:
        load_build = build_mod.load_build

        def boom(node, ctx):
            raise RuntimeError(f"injected bug in {ctx.filter.name}")

        def patched(*a, **k):
            b = load_build(*a, **k)
            b.dynamic_filters = [attrs.evolve(f, func=boom) if raise_in in f.name else f
                                 for f in b.dynamic_filters]
            reg = b.registry
            for name, f in list(reg.filters.items()):
                if raise_in in name:
                    reg.filters[name] = attrs.evolve(f, func=boom)
            return b

        build_mod.load_build = patched

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
