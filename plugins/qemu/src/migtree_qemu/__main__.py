"""``python -m migtree_qemu``: look at QEMU streams without the migtree CLI.

    python -m migtree_qemu inspect FILE [--json]
    python -m migtree_qemu diff A B
    python -m migtree_qemu check FILE --vmstate DUMP.json
    python -m migtree_qemu roundtrip FILE [-o OUT]

Exit status 0 on success (``diff``: 0 when equal, 1 when they differ),
1 with a one-line error for a bad stream, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import qevm
from .errors import QemuStreamError
from .format import _paths_beside
from .inspect import diff_trees, format_diff, format_summary, summary
from .schema import VmstateSchema
from .tree import stream_to_tree


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m migtree_qemu")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inspect", help="sections, fields, opaque parts, RAM")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    d = sub.add_parser("diff", help="what differs between two streams, by path and field")
    d.add_argument("a")
    d.add_argument("b")
    c = sub.add_parser("check", help="would the QEMU of this -dump-vmstate load it?")
    c.add_argument("file")
    c.add_argument("--vmstate", required=True)
    r = sub.add_parser("roundtrip", help="decode and re-encode; say if byte-identical")
    r.add_argument("file")
    r.add_argument("-o", "--output")
    args = p.parse_args(argv)
    try:
        if args.cmd == "inspect":
            s = qevm.load(args.file, ram="skip")
            info = summary(s)
            print(json.dumps(info, indent=1) if args.json else format_summary(info))
            return 0
        if args.cmd == "diff":
            trees = []
            for name in (args.a, args.b):
                paths = _paths_beside(name)  # QOM paths when a walk was saved beside
                with qevm.load(name) as s:
                    trees.append(stream_to_tree(s, paths=paths(s) if paths else None))
            entries = diff_trees(*trees)
            print(format_diff(entries))
            return 1 if entries else 0
        if args.cmd == "check":
            s = qevm.load(args.file, ram="skip")
            unchecked = VmstateSchema.from_file(args.vmstate).check(s)
            print(f"ok; not covered by the dump: {', '.join(unchecked) or 'none'}")
            return 0
        with qevm.load(args.file) as s:
            data = qevm.dumps(s)
        with open(args.file, "rb") as f:
            same = f.read() == data
        if args.output:
            with open(args.output, "wb") as f:
                f.write(data)
        print("byte-identical" if same else "DIFFERENT")
        return 0 if same else 1
    except QemuStreamError as e:
        print(f"migtree_qemu: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"migtree_qemu: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
