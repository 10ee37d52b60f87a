"""Regenerate the bad-input corpus: NAME.bin for every case in cases.py
(except those over 256 KiB, which test_badinput.py builds in memory) and
manifest.json with the exact error each must give.

    python tests/core/bad_inputs/make_corpus.py

Inputs found by fuzzing are added by hand: save the bytes as NAME.bin and
run this script, which keeps every .bin file it finds and records its error.
Review the diff of manifest.json: a changed message is a behaviour change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cases import CASES  # noqa: E402

from migtree import stream  # noqa: E402
from migtree.errors import MigtreeError  # noqa: E402

MAX_FILE = 256 << 10


def outcome(data: bytes) -> dict[str, str]:
    try:
        stream.read_tree(data)
    except MigtreeError as e:
        return {"error": type(e).__name__, "message": str(e)}
    raise SystemExit("a bad input was accepted")


def main() -> None:
    for name, make in CASES.items():
        data = make()
        if len(data) <= MAX_FILE:
            (HERE / f"{name}.bin").write_bytes(data)
    manifest = {p.stem: outcome(p.read_bytes()) for p in sorted(HERE.glob("*.bin"))}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"{len(manifest)} inputs")


if __name__ == "__main__":
    main()
