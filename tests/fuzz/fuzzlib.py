"""The fuzzing suite's engine: structure-aware generators for every input
surface, a harness that runs each case in a forked child under a memory and
a time limit, and the classification of what happened.

Outcomes (docs/security.md):

* ``clean``     -- the input was refused with the surface's own error class
  (``MigtreeError`` and subclasses: a message naming what is wrong)
* ``accepted``  -- the input was read (and, where the surface has a writer,
  written back and read again with the same result)
* ``traceback`` -- any other exception escaped, or an accepted input did not
  survive its own round trip (a wrong success)
* ``blow-up``   -- the case needed more memory than its limit (MemoryError, or
  the child was killed for it)
* ``hang``      -- the case ran longer than its time limit

The last three fail the suite. A case that fails is written to
``tests/fuzz/found/<target>/<sha256>.bin``; test_fuzz.py replays every file
there on every run, so what was found once stays fixed.

Generators take a ``random.Random``: the short run in ``./dev test`` draws
them through hypothesis (``st.randoms``), the long run
(``tests/fuzz/run_fuzz.py``) from seeded generators.
"""

from __future__ import annotations

import atexit
import gzip
import hashlib
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "seeds"
FOUND = HERE / "found"

FAILING = ("traceback", "blow-up", "hang")

#: the per-case limits: memory above what the child already maps, and CPU
#: time (the machine is shared, so wall time only stops a case blocked without
#: using the CPU: WALL_FACTOR times the CPU limit)
BASE_MEMORY = 256 << 20
MEMORY_PER_INPUT_BYTE = 64
CASE_SECONDS = 20.0
WALL_FACTOR = 6
#: generated cases above this are drawn again (the limits cases are about --
#: frame sizes, section sizes -- are far below; bigger cases only run slower)
MAX_CASE_BYTES = 2 << 20


# -- outcomes -----------------------------------------------------------------------------------

@dataclass
class Outcome:
    kind: str
    detail: str = ""
    seconds: float = 0.0


class WrongSuccess(Exception):
    """An accepted input that did not survive its own round trip."""


def _child_memory() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def run_case(target: Target, data: bytes, *, seconds: float = CASE_SECONDS,
             memory: int | None = None) -> Outcome:
    """Run ``target`` on ``data`` in a forked child under the limits."""
    limit = memory if memory is not None else BASE_MEMORY + MEMORY_PER_INPUT_BYTE * len(data)
    r, w = os.pipe()
    t0 = time.monotonic()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code, detail = 3, ""
        try:
            os.close(r)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            mem = _child_memory() + limit
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            cpu = max(1, int(seconds))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            try:
                target.run(data)
                code = 0
            except MemoryError:
                code, detail = 12, "MemoryError"
            except target.clean as e:
                code, detail = 10, f"{type(e).__name__}: {e}"
            except BaseException as e:
                code = 11
                detail = "".join(traceback.format_exception(e))[-6000:]
                if isinstance(e, WrongSuccess):
                    detail = f"wrong success: {e}"
        except MemoryError:
            code, detail = 12, "MemoryError"
        except BaseException:
            code, detail = 11, traceback.format_exc()[-6000:]
        try:
            os.write(w, detail.encode("utf-8", "replace")[:16000])
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    deadline = t0 + seconds * WALL_FACTOR
    status = None
    os.set_blocking(r, False)
    while True:
        try:
            b = os.read(r, 65536)
            if b:
                chunks.append(b)
        except BlockingIOError:
            pass
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return Outcome("hang", f"still running after {seconds * WALL_FACTOR:.0f} s",
                           time.monotonic() - t0)
        time.sleep(0.0005)
    try:
        while b := os.read(r, 65536):
            chunks.append(b)
    except BlockingIOError:
        pass
    os.close(r)
    detail = b"".join(chunks).decode("utf-8", "replace")
    took = time.monotonic() - t0
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return Outcome("hang", "CPU time limit", took)
        return Outcome("blow-up", f"killed by signal {sig} (memory limit {limit} bytes)", took)
    code = os.WEXITSTATUS(status)
    kind = {0: "accepted", 10: "clean", 11: "traceback", 12: "blow-up"}.get(code, "traceback")
    return Outcome(kind, detail, took)


def keep(target: Target, data: bytes, outcome: Outcome) -> Path:
    """Store a failing case as a regression input (and what it did)."""
    d = FOUND / target.name
    d.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256(data).hexdigest()[:24]
    p = d / f"{h}.bin"
    p.write_bytes(data)
    (d / f"{h}.txt").write_text(f"{outcome.kind}\n{outcome.detail}\n")
    return p


# -- random values ------------------------------------------------------------------------------

NASTY_TEXT = ["", "a", "/", "//", "a/b", "x\n", "\n", "\x1b[2J\x1b[H", "\x1b]0;owned\x07",
              "\x00", "\r", "\u202e", "caf\u00e9", "..", ".", "__type__", "__stash__",
              "a" * 300, "\t", "\x7f", "\ud7ff", "$blob", "$bytes", "ram", "u8", "struct",
              "a\x00b", "-", "[0]", "0000:00:03.0/virtio-blk"]
NASTY_INT = [0, 1, -1, 2, 7, 8, 255, 256, 4095, 4096, 65535, 65536, 2**31 - 1, 2**31, 2**32,
             2**32 - 1, 2**53, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -2**63, -2**64, 10**30,
             1 << 20, (1 << 20) + 1, 1 << 24, 1000000]


def rand_int(rnd: random.Random) -> int:
    c = rnd.random()
    if c < 0.6:
        return rnd.choice(NASTY_INT)
    if c < 0.9:
        return rnd.randint(-3, 300)
    return rnd.getrandbits(rnd.choice([8, 16, 32, 64, 70]))


def rand_text(rnd: random.Random) -> str:
    if rnd.random() < 0.6:
        return rnd.choice(NASTY_TEXT)
    return "".join(chr(rnd.choice([rnd.randint(0, 0x7f), rnd.randint(0, 0x10ffff)]))
                   for _ in range(rnd.randint(0, 12))).encode("utf-8", "replace").decode(
                       "utf-8", "replace")


def rand_value(rnd: random.Random, depth: int = 0, *, cbor: bool = False) -> Any:
    c = rnd.random()
    if depth > 4:
        c *= 0.6
    if c < 0.2:
        return rand_int(rnd)
    if c < 0.35:
        return rand_text(rnd)
    if c < 0.42:
        return rnd.choice([None, True, False])
    if c < 0.48:
        return rnd.choice([1.5, float("nan"), -0.0, 1e308]) if rnd.random() < 0.3 else 0
    if c < 0.55 and cbor:
        return bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 16)))
    if c < 0.8:
        return [rand_value(rnd, depth + 1, cbor=cbor) for _ in range(rnd.randint(0, 4))]
    return {rand_text(rnd): rand_value(rnd, depth + 1, cbor=cbor)
            for _ in range(rnd.randint(0, 4))}


def deep(rnd: random.Random, inner: Any = None) -> Any:
    """A value nested far deeper than any limit (lists or maps)."""
    n = rnd.choice([40, 70, 200, 300, 800])  # json.dumps itself stops near 1000
    v = inner
    for _ in range(n):
        v = [v] if rnd.random() < 0.5 else {"k": v}
    return v


# -- structural mutation of JSON-like documents ---------------------------------------------------

def _nodes(doc: Any, limit: int = 4000) -> list[tuple[Any, Any]]:
    """(container, key) pairs of a document, breadth first, at most limit."""
    out: list[tuple[Any, Any]] = []
    todo = [doc]
    while todo and len(out) < limit:
        c = todo.pop(0) if len(todo) < 64 else todo.pop(random.randrange(len(todo)))
        items = c.items() if isinstance(c, dict) else enumerate(c)
        for k, v in list(items):
            out.append((c, k))
            if isinstance(v, (dict, list)):
                todo.append(v)
    return out


def mutate_doc(rnd: random.Random, doc: Any, *, keys: list[str] = (), cbor: bool = False,
               edits: int | None = None) -> Any:
    """Apply a few structural edits to a JSON-like document in place (the
    root itself may be replaced: use the return value)."""
    for _ in range(edits if edits is not None else rnd.choice([1, 1, 2, 3, 5])):
        if not isinstance(doc, (dict, list)) or rnd.random() < 0.01:
            doc = rand_value(rnd, cbor=cbor)
            continue
        nodes = _nodes(doc)
        if not nodes:
            if isinstance(doc, dict):
                doc[rnd.choice(list(keys) or NASTY_TEXT)] = rand_value(rnd, cbor=cbor)
            else:
                doc.append(rand_value(rnd, cbor=cbor))
            continue
        c, k = rnd.choice(nodes)
        v = c[k]
        op = rnd.random()
        if op < 0.3:  # replace the value
            if isinstance(v, int) and not isinstance(v, bool) and rnd.random() < 0.7:
                c[k] = rand_int(rnd)
            elif isinstance(v, str) and rnd.random() < 0.6:
                c[k] = rnd.choice([v + rand_text(rnd), rand_text(rnd), v + "\n",
                                   v.upper(), v[: len(v) // 2]])
            else:
                c[k] = rand_value(rnd, cbor=cbor)
        elif op < 0.4:  # delete
            del c[k]
        elif op < 0.5 and isinstance(c, dict):  # add a key
            c[rnd.choice(list(keys) + [rand_text(rnd)] if keys else NASTY_TEXT)] = \
                rand_value(rnd, cbor=cbor)
        elif op < 0.6:  # change the type
            c[k] = rnd.choice([[v], {"x": v}, str(v)[:40], None, {}, [], 0])
        elif op < 0.7 and isinstance(c, list):  # repeat an element many times
            n = rnd.choice([2, 10, 100, 1000, 20000])
            c[k:k + 1] = [v] * n
        elif op < 0.75:
            c[k] = deep(rnd, v if rnd.random() < 0.5 else None)
        elif op < 0.85 and isinstance(v, (dict, list)):  # copy a subtree elsewhere
            c2, k2 = rnd.choice(nodes)
            c2[k2] = json.loads(json.dumps(v, default=str)) if not cbor else v
        elif op < 0.9 and isinstance(c, list) and len(c) > 1:
            j = rnd.randrange(len(c))
            c[k], c[j] = c[j], c[k]
        else:  # key renamed
            if isinstance(c, dict):
                nk = rnd.choice(list(keys) + [rand_text(rnd)] if keys else NASTY_TEXT)
                c[nk] = c.pop(k)
    return doc


def mutate_bytes(rnd: random.Random, data: bytes, *, lo: int = 0) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.choice([1, 1, 2, 4, 8])):
        if len(b) <= lo:
            b += bytes([rnd.getrandbits(8)])
            continue
        at = rnd.randrange(lo, len(b))
        op = rnd.random()
        if op < 0.35:
            b[at] ^= 1 << rnd.randrange(8)
        elif op < 0.55:
            b[at] = rnd.choice([0, 1, 0x7F, 0x80, 0xFF, rnd.getrandbits(8)])
        elif op < 0.65:
            b[at:at] = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 8)))
        elif op < 0.75:
            del b[at:at + rnd.randint(1, 16)]
        elif op < 0.85:  # an interesting 4- or 8-byte integer
            n = rnd.choice([4, 8])
            v = rnd.choice([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 0x10000, 2**64 - 1, 4096])
            b[at:at + n] = (v % (1 << (8 * n))).to_bytes(n, "big")
        elif op < 0.93:  # duplicate a chunk
            n = rnd.randint(1, 64)
            b[at:at] = b[at:at + n] * rnd.choice([1, 2, 16])
        else:
            del b[at:]
    return bytes(b)


# -- targets ------------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    what: str
    seeds: Callable[[], list[bytes]]
    mutate: Callable[[random.Random, bytes], bytes]
    run: Callable[[bytes], None]
    clean: tuple[type[BaseException], ...] = field(default=())
    _seeds: list[bytes] | None = None

    def generate(self, rnd: random.Random) -> bytes:
        if self._seeds is None:
            self._seeds = self.seeds()
        seed = rnd.choice(self._seeds)
        for _ in range(5):
            try:
                out = self.mutate(rnd, seed)
            except RecursionError:  # the generator nested too deep for json/cbor2
                continue
            if len(out) <= MAX_CASE_BYTES:
                return out
        return seed


def _errors() -> tuple[type[BaseException], ...]:
    from migtree.errors import MigtreeError
    return (MigtreeError,)


# migtree CBOR streams -------------------------------------------------------------------------

def _migtree_seeds() -> list[bytes]:
    from migtree import stream
    sys.path.insert(0, str(HERE.parent / "core" / "bad_inputs"))
    import craft
    out = [craft.minimal()]
    out.append(craft.build(craft.obj("/"),
                           *[craft.obj(f"/d{i}", "dev", fields={"a": i}) for i in range(40)]))
    from migtree.testing import make_registry
    sys.path.insert(0, str(HERE.parent / "core"))
    from mt_testtypes import Blobby, Plain, Widget

    from migtree.blob import Blob
    from migtree.qom import new_root
    reg = make_registry()
    root, machine = new_root()
    w = machine.add_device(Widget(), "w0")
    w.state.name = "fuzz"
    w.add_child("inner", Widget())
    b = machine.add_device(Blobby(), "b0")
    b.state.data = Blob(bytes(range(256)) * 3)
    machine.add_device(Plain())
    out.append(stream.save(root, registry=reg))
    return out


def _cbor_items(data: bytes) -> list[Any]:
    import cbor2
    fp = io.BytesIO(data)
    items = []
    while fp.tell() < len(data):
        items.append(cbor2.load(fp))
    return items


def _refoot(body_items: list[Any], count: int | None = None) -> bytes:
    import cbor2
    body = b"".join(cbor2.dumps(i) for i in body_items)
    n = len(body_items) - 1 if count is None else count
    return body + b"\x83\x02\x1b" + struct.pack(">Q", n) + b"\x58\x20" + \
        hashlib.sha256(body).digest()


def _mutate_migtree(rnd: random.Random, data: bytes) -> bytes:
    c = rnd.random()
    if c < 0.25:
        return mutate_bytes(rnd, data)
    items = _cbor_items(data)[:-1]  # the footer is recomputed
    if c < 0.33:  # many tiny sections
        n = rnd.choice([1000, 20000])
        items = items[:2] + [[0, f"/t{i}", "container", 1, {}, []] for i in range(n)]
    elif c < 0.4:  # a header schema of a wrong shape
        hdr = items[0]
        for entry in hdr.get("schemas", {}).values():
            for f in entry.get("fields", []):
                if rnd.random() < 0.5:
                    f["kind"] = rnd.choice([{"a": 1}, [1], ["u8"], None, 3, "u9", deep(rnd)])
    elif c < 0.5 and len(items) > 1:  # a path with a nasty name
        i = rnd.randrange(1, len(items))
        if isinstance(items[i], list) and len(items[i]) > 1 and isinstance(items[i][1], str):
            items[i][1] = items[i][1] + rnd.choice(["\n", "\x1b[2J", "/\n", "\x00", "/x\n"])
    else:
        items = mutate_doc(rnd, items, cbor=True,
                           keys=["kind", "fields", "name", "schemas", "$blob", "length",
                                 "element", "inner", "struct", "max_length", "since"])
        if not isinstance(items, list) or not items:
            items = [items]
    try:
        out = _refoot(items) if rnd.random() < 0.9 else _refoot(items, rand_int(rnd) % 2**64)
    except Exception:
        return data
    return out


def _run_migtree(data: bytes) -> None:
    from migtree import jsonview, stream
    header, tree = stream.read_tree(data)
    # what the reader accepted must render (inspect --json) and come back the same
    doc = jsonview.stream_to_json("migtree", header, tree, inline_blobs=True)
    text = jsonview.dumps(doc)
    h2, t2 = jsonview.stream_from_json(json.loads(text))
    if jsonview.dumps(jsonview.stream_to_json("migtree", h2, t2, inline_blobs=True)) != text:
        raise WrongSuccess("the JSON view did not round-trip")
    stream.read_tree(io.BufferedReader(_Pipe(data)))  # the streaming path agrees


class _Pipe(io.RawIOBase):
    """A non-seekable source (as stdin or a socket)."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), 7919)
        chunk = self._b.read(n)
        buf[: len(chunk)] = chunk
        return len(chunk)


# the JSON view --------------------------------------------------------------------------------

def _json_seeds() -> list[bytes]:
    from migtree import jsonview, stream
    out = []
    for s in _migtree_seeds():
        try:
            h, t = stream.read_tree(s)
        except Exception:
            continue
        out.append(jsonview.dumps(jsonview.stream_to_json("migtree", h, t,
                                                          inline_blobs=True)).encode())
    return out


def _mutate_json_text(rnd: random.Random, data: bytes) -> bytes:
    if rnd.random() < 0.15:
        return mutate_bytes(rnd, data)
    doc = mutate_doc(rnd, json.loads(data), keys=["__type__", "__version__", "$bytes", "$blob",
                                                 "tree", "header", "objects", "format"])
    return json.dumps(doc, default=str).encode()


def _run_json(data: bytes) -> None:
    from migtree import jsonview
    from migtree.errors import MigtreeError
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise MigtreeError(f"not JSON: {e}") from None
    jsonview.stream_from_json(doc)


# QEMU streams ---------------------------------------------------------------------------------

def _qemu_seeds() -> list[bytes]:
    from migtree_qemu import qevm
    sys.path.insert(0, str(HERE.parent / "qemu"))
    import test_qemu_codec_synthetic as syn
    out = [qevm.dumps(syn._stream()), qevm.dumps(syn._stream(("x-ignore-shared",)))]
    out.append(gzip.decompress((SEEDS / "pc-tcg-smp1-m16.qevm.gz").read_bytes()))
    return out


def _with_vmdesc(data: bytes, desc: Any) -> bytes:
    from migtree_qemu import qevm
    found = qevm.find_vmdesc(data)
    if found is None:
        return data
    at, _ = found
    text = json.dumps(desc, separators=(",", ":"), default=str).encode()
    return data[: at + 1] + len(text).to_bytes(4, "big") + text


def _nested_empty_structs(levels: int, n: int) -> dict[str, Any]:
    obj: dict[str, Any] = {"vmsd_name": "e", "version": 1, "fields": []}
    for _ in range(levels):
        obj = {"vmsd_name": "e", "version": 1,
               "fields": [{"name": "a", "array_len": n, "type": "struct", "size": 0,
                           "struct": obj}]}
    return obj


def _mutate_qemu(rnd: random.Random, data: bytes) -> bytes:
    from migtree_qemu import qevm
    c = rnd.random()
    found = qevm.find_vmdesc(data)
    if c < 0.3 or found is None:
        return mutate_bytes(rnd, data, lo=rnd.choice([0, len(data) // 2]))
    at, desc = found
    if c < 0.35 and desc.get("devices"):  # the memory bomb shape
        d = rnd.choice(desc["devices"])
        d["fields"] = [{"name": "bomb", "array_len": rnd.choice([16, 1000, 65535]),
                        "type": "struct", "size": 0,
                        "struct": _nested_empty_structs(rnd.randint(1, 6), 1000)}] + \
            d.get("fields", [])
    elif c < 0.45:  # a section name with a control character, in stream and vmdesc alike
        sections = [d for d in desc.get("devices", []) if isinstance(d.get("name"), str)]
        if sections:
            d = rnd.choice(sections)
            old = d["name"].encode()
            new = (d["name"] + rnd.choice(["\n", "\x1b[2J", "/", "\x00", " "])).encode()
            head = data[:at].replace(bytes([len(old)]) + old, bytes([len(new)]) + new, 1)
            d["name"] = new.decode()
            return _with_vmdesc(head + data[at:], desc)
    else:
        desc = mutate_doc(rnd, desc, keys=["name", "type", "size", "index", "array_len",
                                           "struct", "vmsd_name", "version", "fields",
                                           "subsections", "instance_id", "page_size",
                                           "devices"])
    return _with_vmdesc(data, desc)


def _run_qemu(data: bytes) -> None:
    from migtree_qemu import qevm
    s = qevm.loads(data, ram="copy")
    out = qevm.dumps(s)
    if out != data:
        at = next((i for i, (a, b) in enumerate(zip(data, out, strict=False)) if a != b),
                  min(len(data), len(out)))
        raise WrongSuccess(f"accepted, but written back differently ({len(data)} bytes in, "
                           f"{len(out)} out, first difference at {at})")


def _qemu_clean() -> tuple[type[BaseException], ...]:
    from migtree_qemu.errors import QemuStreamError
    return (*_errors(), QemuStreamError)


# QEMU streams through the tree: convert's path (read, to tree, edited metadata, write, read)

def _run_qemu_tree(data: bytes) -> None:
    """``data`` is a migtree stream made by convert from a QEMU stream, maybe
    with edited stash metadata: writing it as QEMU must fail cleanly or give
    bytes the QEMU reader accepts."""
    from migtree import stream
    from migtree_qemu import qevm
    from migtree_qemu.format import QemuStreamFormat as QemuFormat
    _, tree = stream.read_tree(data)
    out = io.BytesIO()
    QemuFormat().write(out, None, tree)
    qevm.loads(out.getvalue(), ram="copy")


def _qemu_tree_seeds() -> list[bytes]:
    from migtree import stream
    from migtree_qemu.format import QemuStreamFormat as QemuFormat
    out = []
    for q in _qemu_seeds()[:1]:
        header, tree = QemuFormat().read(io.BytesIO(q), paths={})
        buf = io.BytesIO()
        stream.write_tree(buf, header["extra"], tree, schemas=header["schemas"])
        out.append(buf.getvalue())
    return out


def _mutate_qemu_tree(rnd: random.Random, data: bytes) -> bytes:
    items = _cbor_items(data)[:-1]
    stashes = [(i, it) for i, it in enumerate(items)
               if isinstance(it, list) and len(it) > 4 and isinstance(it[4], dict)]
    if not stashes:
        return data
    _, it = rnd.choice(stashes)
    it[4] = mutate_doc(rnd, it[4], cbor=True, keys=["__stash__", "vmsd_name", "version", "name",
                                                     "type", "size", "array_len", "keys",
                                                     "instance_id", "section_id"])
    if not isinstance(it[4], dict):
        it[4] = {}
    try:
        return _refoot(items)
    except Exception:
        return data


# the protocol messages ------------------------------------------------------------------------

def _protocol_seeds() -> list[bytes]:
    from migtree import migration
    from migtree.build import load_build
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "b.toml"
        p.write_bytes(_build_seeds()[0])
        (Path(d) / "disk.img").write_bytes(bytes(1 << 20))
        b = load_build(p)
        hello = migration.describe_destination(b)
        from migtree.build import close_objects
        close_objects(b.root)
    n = "0123456789abcdef" * 2
    app = {"filter": "f", "plugin": "p", "kind": "static", "path": "/machine/x",
           "before": "a@1", "after": "b@1", "reason": "destination"}
    msgs = [("HELLO", {**hello, "session": n}),
            ("OFFER", {"protocol": migration.PROTOCOL, "build": "x", "backend": "userspace",
                       "plugins": {"migtree": "0.1"}, "session": n, "source_session": n,
                       "filtered_by": "source"}),
            ("LOADED", {"filters": {"destination": "d", "nodes": 3, "applications": [app],
                                    "chains": {"/machine/x": ["f"]}},
                        "load": {"objects": 3}, "stream_bytes": 100,
                        "timings": {"load_s": 0.1}, "session": n}),
            ("FAILED", {"stage": "load", "error": "no"}),
            ("ABORT", {"error": "no", "check": {}}),
            ("OFFER", {"protocol": migration.PROTOCOL, "build": "x", "backend": "userspace",
                       "plugins": {}, "session": n, "source_session": n,
                       "filtered_by": "destination",
                       "precopy": {"path": "/machine/ram", "size": 1 << 20,
                                   "page_size": 4096}}),
            ("PASS", {"pass": 1, "runs": 2, "bytes": 8192, "final": False,
                      "sha256": "ab" * 32, "session": n}),
            ("END", {"bytes": 10, "session": n}), ("COMMIT", {"session": n}),
            ("DONE", {"session": n})]
    return [json.dumps({"kind": k, "msg": m}, default=str).encode() for k, m in msgs]


def _mutate_protocol(rnd: random.Random, data: bytes) -> bytes:
    doc = json.loads(data)
    if rnd.random() < 0.1:
        doc["kind"] = rnd.choice(["HELLO", "OFFER", "LOADED", "FAILED", "ABORT", "END",
                                  "COMMIT", "DONE", "DATA", "PASS"])
    doc["msg"] = mutate_doc(rnd, doc["msg"], keys=["protocol", "build", "backend", "plugins",
                                                   "types", "objects", "filters", "error",
                                                   "stage", "check", "load", "bytes", "nonce",
                                                   "session", "precopy", "features", "pass",
                                                   "runs", "final"])
    if rnd.random() < 0.1:
        return mutate_bytes(rnd, json.dumps(doc, default=str).encode())
    return json.dumps(doc, default=str).encode()


def _run_protocol(data: bytes) -> None:
    from migtree import transport as tp
    from migtree.errors import MigtreeError
    try:
        doc = json.loads(data)
        kind = {v: k for k, v in tp.KIND_NAMES.items()}[doc["kind"]]
        payload = json.dumps(doc["msg"]).encode()
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise MigtreeError(f"not a case: {e}") from None
    msg = tp.decode_msg(kind, payload)
    from migtree import migration, protocol
    # what a side does with a message is only ever done after this check
    protocol.Session(migration.PROTOCOL)(kind, msg)
    _use_message(doc["kind"], msg)


def _use_message(kind: str, msg: dict) -> None:
    """What the two sides read from an accepted message: the source's
    pre-flight on HELLO and its report on LOADED must not fail on it."""
    from migtree.commands import _migargs
    from migtree.commands.send import format_report
    from migtree.errors import MigtreeError
    if kind == "HELLO":
        from migtree.engine import Destination, SchemaDumpError, filters_from_declarations
        try:
            Destination.of_schema(msg["destination"] or {}, name=msg["build"])
            filters_from_declarations(msg["filters"])
        except SchemaDumpError as e:
            raise MigtreeError(str(e)) from None
    if kind == "LOADED":
        report = {"role": "source", "build": "b", "backend": "x", "outcome": "committed",
                  "destination": {"build": "d"}, "loaded": msg}
        with open(os.devnull, "w") as null:
            import contextlib
            with contextlib.redirect_stdout(null):
                _migargs.print_report(report, False, format_report)


# a whole session against a hostile destination ------------------------------------------------

_BUILD: list[Any] = []
_TMP: list[Any] = []


def _source_build() -> Any:
    """One build for every case (made in the parent, inherited by the forks)."""
    if not _BUILD:
        from migtree.build import load_build
        d = tempfile.mkdtemp(prefix="migtree-fuzz-")
        _TMP.append(d)
        owner = os.getpid()
        # the forked cases inherit this handler; only the process that made
        # the directory removes it
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(d, ignore_errors=True))
        p = Path(d) / "b.toml"
        p.write_bytes(_build_seeds()[0])
        (Path(d) / "disk.img").write_bytes(bytes(1 << 20))
        _BUILD.append(load_build(p))
    return _BUILD[0]


def _session_seeds() -> list[bytes]:
    from migtree import migration
    b = _source_build()
    hello = {**migration.describe_destination(b), "session": "$D"}
    app = {"filter": "f", "plugin": "p", "kind": "static", "path": "/machine/x",
           "before": "a@1", "after": "b@1", "reason": "destination"}
    loaded = {"filters": {"destination": "d", "nodes": 3, "applications": [app],
                          "chains": {"/machine/x": ["f"]}},
              "load": {"objects": 3}, "stream_bytes": "$N", "timings": {"load_s": 0.1},
              "session": "$S"}
    return [json.dumps({"hello": hello, "loaded": loaded, "done": {"session": "$S"}},
                       default=str).encode()]


def _mutate_session(rnd: random.Random, data: bytes) -> bytes:
    doc = json.loads(data)
    key = rnd.choice(["hello", "loaded", "loaded", "done"])
    doc[key] = mutate_doc(rnd, doc[key], keys=["session", "filters", "applications", "path",
                                               "before", "after", "load", "timings",
                                               "stream_bytes", "protocol", "destination",
                                               "build", "plugins"])
    return json.dumps(doc, default=str).encode()


def _run_session(data: bytes) -> None:
    """``migtree send`` against a destination that answers with the case's
    HELLO, LOADED and DONE: send must never raise, a Python exception must
    never be what it reports, and its report must render."""
    import socket
    import threading

    from migtree import migration
    from migtree import transport as tp
    from migtree.commands import _migargs
    from migtree.commands.send import format_report
    from migtree.errors import MigtreeError
    try:
        doc = json.loads(data)
        hello, loaded, done = doc["hello"], doc["loaded"], doc["done"]
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise MigtreeError(f"not a case: {e}") from None
    build = _source_build()
    a, b = socket.socketpair()
    src, dst = tp.SocketChannel(a, "source"), tp.SocketChannel(b, "destination")
    nonce = "0123456789abcdef" * 2

    def fill(v: Any, subst: dict[str, Any]) -> Any:
        if isinstance(v, str) and v in subst:
            return subst[v]
        if isinstance(v, dict):
            return {k: fill(x, subst) for k, x in v.items()}
        if isinstance(v, list):
            return [fill(x, subst) for x in v]
        return v

    def destination() -> None:
        try:
            dst.start(10)
            dst.send_msg(tp.HELLO, fill(hello, {"$D": nonce}))
            kind, offer = dst.recv_msg(10)
            if kind != tp.OFFER:
                return
            n = 0
            while True:
                kind, payload = dst.recv(10)
                if kind != tp.DATA:
                    break
                n += len(payload)
            subst = {"$S": offer.get("source_session"), "$N": n}
            dst.send_msg(tp.LOADED, fill(loaded, subst))
            kind, _ = dst.recv_msg(10)
            if kind == tp.COMMIT:
                dst.send_msg(tp.DONE, fill(done, subst))
        except (MigtreeError, OSError, ValueError, TypeError):
            pass  # the source's side is what is tested
        finally:
            dst.close()

    th = threading.Thread(target=destination, daemon=True)
    th.start()
    src.start(10)
    # an unconfirmed commit keeps the source's state in a file (no state is
    # lost): keep it in the case's directory, check it is there, remove it
    res = migration.send(build, src, timeout=10, progress=False, keep_dir=_TMP[0])
    src.close()
    th.join(20)
    if res.outcome == "unconfirmed":
        if not (res.kept_state and os.path.getsize(res.kept_state) > 0):
            raise WrongSuccess("an unconfirmed commit did not keep the source's state")
        os.unlink(res.kept_state)
    report = {"role": "source", "build": build.name, "backend": build.backend.name,
              **res.as_dict()}
    with open(os.devnull, "w") as null:
        import contextlib
        with contextlib.redirect_stdout(null):
            _migargs.print_report(report, False, format_report)
            json.dumps(report, default=str)
    if res.outcome == "committed" and (res.loaded or {}).get("session") is None:
        raise WrongSuccess("committed on a LOADED without this session's nonce")
    err = res.error or ""
    for name in ("TypeError", "KeyError", "AttributeError", "IndexError", "ValueError",
                 "RecursionError", "OverflowError"):
        if f"{name}:" in err:  # send() caught a Python exception and reported it
            raise WrongSuccess(f"send reported a Python exception: {err[:300]}")
    if res.outcome not in ("committed", "refused", "resumed", "unconfirmed"):
        raise WrongSuccess(f"unknown outcome {res.outcome}")


# build files ----------------------------------------------------------------------------------

def _build_seeds() -> list[bytes]:
    examples = HERE.parent.parent / "examples"
    return [(examples / "userspace-split.toml").read_bytes()]


def _mutate_build(rnd: random.Random, data: bytes) -> bytes:
    import tomllib

    from migtree.migration import dump_toml
    if rnd.random() < 0.2:
        return mutate_bytes(rnd, data)
    doc = mutate_doc(rnd, tomllib.loads(data.decode()),
                     keys=["name", "machine", "backend", "cpus", "memory", "device", "type",
                           "id", "drive", "serial", "bus", "children", "props"])
    try:
        return dump_toml(doc if isinstance(doc, dict) else {"x": doc}).encode()
    except Exception:
        return data


def _run_build(data: bytes) -> None:
    from migtree.build import load_build
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "b.toml"
        p.write_bytes(data)
        (Path(d) / "disk.img").write_bytes(bytes(1 << 20))  # the drive the seed names
        from migtree.build import close_objects
        close_objects(load_build(p).root)


# target files (check --to, convert --target) ---------------------------------------------------

def _target_seeds() -> list[bytes]:
    return [gzip.decompress((SEEDS / "vmstate-pc-small.json.gz").read_bytes())]


def _run_target(data: bytes) -> None:
    from migtree.plugins import get_registry
    from migtree.targets import open_target
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.json"
        p.write_bytes(data)
        open_target(str(p), get_registry())
        reg = get_registry()
        from migtree.formats import formats
        for fmt in formats(reg).values():
            rd = getattr(fmt, "read_description", None)
            if rd is not None:
                desc = rd(data)
                if desc is not None and hasattr(fmt, "check"):
                    fmt.check(desc, desc, [])


def _mutate_target(rnd: random.Random, data: bytes) -> bytes:
    if rnd.random() < 0.1:
        return mutate_bytes(rnd, data)
    doc = mutate_doc(rnd, json.loads(data), keys=["Description", "Fields", "Subsections",
                                                 "name", "version_id", "minimum_version_id",
                                                 "field", "version_id", "field_exists",
                                                 "size", "vmschkmachine"])
    return json.dumps(doc, default=str).encode()


# stash files ----------------------------------------------------------------------------------

def _stash_tree() -> dict[str, Any]:
    return {"__type__": "container", "__version__": 1,
            "a": {"__type__": "dev", "__version__": 2, "x": 1, "y": [1, 2], "b": b"\x00\x01",
                  "__stash__": {"dev-v3-v2": {"z": 7, "w": {"n": [1, "t"]}}},
                  "kid": {"__type__": "dev", "__version__": 2, "x": 5,
                          "__stash__": {"p": {"q": None}}}},
            "b": {"__type__": "dev", "__version__": 2, "x": 2}}


def _stash_seeds() -> list[bytes]:
    from migtree import stashfile
    tree = _stash_tree()
    return [stashfile.encode(stashfile.collect(tree, None), stream_format="qemu",
                             target="T")]


def _mutate_stash(rnd: random.Random, data: bytes) -> bytes:
    import cbor2
    if rnd.random() < 0.3:
        return mutate_bytes(rnd, data)
    doc = cbor2.loads(data)
    doc = mutate_doc(rnd, doc, keys=["format", "version", "stream_format", "target", "entries",
                                     "anchor", "path", "state", "stash", "/a", "/a/kid"],
                     cbor=True)
    try:
        return cbor2.dumps(doc)
    except Exception:
        return data


def _run_stash(data: bytes) -> None:
    """convert --stash-from: read the file (every check), then put it back
    on a tree; a stash that goes back must be the file's own."""
    from migtree import stashfile
    with tempfile.NamedTemporaryFile(suffix=".stash") as f:
        f.write(data)
        f.flush()
        doc = stashfile.read(f.name)
    tree = _stash_tree()
    for node in (tree["a"], tree["a"]["kid"]):
        node.pop("__stash__")
    done = stashfile.apply(tree, doc, None)
    entries = {e["anchor"]: e["stash"] for e in doc["entries"]}
    for path, _ in done.restored:
        node = tree
        for part in path.strip("/").split("/"):
            node = node[part] if part else node
        if node.get("__stash__") != entries[path]:
            raise WrongSuccess(f"{path}: put back a stash that is not the file's")
    "\n".join(done.lines("f"))


def targets() -> dict[str, Target]:
    clean = _errors()
    qclean = _qemu_clean()
    ts = [
        Target("migtree-stream", "migtree CBOR stream: read_tree (bytes and pipe), JSON view",
               _migtree_seeds, _mutate_migtree, _run_migtree, clean),
        Target("migtree-json", "inspect --json documents: stream_from_json",
               _json_seeds, _mutate_json_text, _run_json, clean),
        Target("qemu-stream", "QEMU stream: qevm.loads, dumps must give the same bytes",
               _qemu_seeds, _mutate_qemu, _run_qemu, qclean),
        Target("qemu-convert", "migtree tree of a QEMU stream with edited metadata: the "
               "QEMU writer, then the QEMU reader on what it wrote",
               _qemu_tree_seeds, _mutate_qemu_tree, _run_qemu_tree, qclean),
        Target("protocol", "migration protocol messages: decode_msg and their schemas",
               _protocol_seeds, _mutate_protocol, _run_protocol, clean),
        Target("session", "migtree send against a destination with edited HELLO, LOADED "
               "and DONE: never raises, never reports a Python exception, report renders",
               _session_seeds, _mutate_session, _run_session, clean),
        Target("build-file", "build .toml files: load_build",
               _build_seeds, _mutate_build, _run_build, clean),
        Target("target-file", "check --to / convert --target descriptions (-dump-vmstate)",
               _target_seeds, _mutate_target, _run_target, qclean),
        Target("stash-file", "convert --stash-from files: read (every check), put back",
               _stash_seeds, _mutate_stash, _run_stash, clean),
    ]
    return {t.name: t for t in ts}
