"""Filters between the ``apic`` schema versions (see :mod:`migtree_apic.state`).

``apic-v2-v3`` (QEMU's VMState conversion):

* forward, ``apic@2 -> apic@3``: the interleaved ``isr_tmr_irr`` words become
  the three arrays ``isr``, ``tmr``, ``irr``; ``timer`` is renamed
  ``timer_expiry`` (same meaning: the pending expiry in ns, or -1);
* backward, ``apic@3 -> apic@2``: the inverse. Version 2 has no ``apic_sipi``
  subsection, so an optional ``sipi`` part is dropped into the node's stash
  (``__stash__["apic-v2-v3"]``), where the forward filter finds it again: a
  v3 -> v2 -> v3 round trip is the identity. A real v2 destination never sees
  it: an application processor waiting for its start-up IPI is then taken as
  running, as QEMU's ``apic_pre_load`` does when the subsection is absent.

``apic-v1-v2`` (QEMU added the timer to the hand-written save):

* forward, ``apic@1 -> apic@2``: ``timer`` is -1 (no pending expiry: QEMU's
  ``apic_load_old`` does not restore the timer from a version 1 stream, so
  the guest's next timer write re-arms it), unless the stash holds one;
* backward, ``apic@2 -> apic@1``: ``timer`` goes to the stash, unless it is
  -1 (what the way up gives anyway), so v1 -> v2 -> v1 leaves no stash.

Each filter is a plain ``func(node, ctx)``: it checks the fields it moves and
raises :class:`~migtree.errors.FilterError` naming the path and the field
when the node is not what its ``match`` promised; value ranges are the input
visitor's business on load. The result lists the fields in the order QEMU
writes them, reserved keys first, children and the stash after.
"""

from __future__ import annotations

from typing import Any

from migtree.errors import FilterError
from migtree.filters import Filter, FilterPair

from .state import FIELD_ORDER

PAIR_V1_V2 = "apic-v1-v2"
PAIR_V2_V3 = "apic-v2-v3"
_STASH = "__stash__"
_WORD_KEYS = ("isr", "tmr", "irr")


def _take(node: dict[str, Any], key: str, ctx: Any) -> Any:
    try:
        return node.pop(key)
    except KeyError:
        raise FilterError(f"{ctx.path}: {node.get('__type__')}@{node.get('__version__')} "
                          f"node has no field {key!r}") from None


def _words(value: Any, key: str, ctx: Any) -> list[Any]:
    if type(value) is not list or len(value) != 8:
        raise FilterError(f"{ctx.path}: {key}: expected an array of 8 items, got {value!r}")
    return value


def _stash_put(node: dict[str, Any], ctx: Any, key: str, value: Any) -> None:
    node.setdefault(_STASH, {}).setdefault(ctx.stash_key, {})[key] = value


def _stash_take(node: dict[str, Any], ctx: Any, key: str) -> tuple[bool, Any]:
    stash = node.get(_STASH)
    if type(stash) is not dict or type(stash.get(ctx.stash_key)) is not dict:
        return False, None
    mine = stash[ctx.stash_key]
    if key not in mine:
        return False, None
    value = mine.pop(key)
    if not mine:
        del stash[ctx.stash_key]
    if not stash:
        del node[_STASH]
    return True, value


def _ordered(node: dict[str, Any], version: int) -> dict[str, Any]:
    node["__version__"] = version
    fields = FIELD_ORDER[version]
    out = {"__type__": node.pop("__type__"), "__version__": node.pop("__version__")}
    for name in fields:
        if name in node:
            out[name] = node.pop(name)
    out.update(node)  # children and the stash keep their order, after the fields
    return out


def v2_to_v3(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
    words = _words(_take(node, "isr_tmr_irr", ctx), "isr_tmr_irr", ctx)
    for i, w in enumerate(words):
        if type(w) is not dict or set(w) != set(_WORD_KEYS):
            raise FilterError(f"{ctx.path}: isr_tmr_irr[{i}]: expected "
                              f"{{isr, tmr, irr}}, got {w!r}")
    for k in _WORD_KEYS:
        node[k] = [w[k] for w in words]
    node["timer_expiry"] = _take(node, "timer", ctx)
    found, sipi = _stash_take(node, ctx, "sipi")
    if found:
        node["sipi"] = sipi
    return _ordered(node, 3)


def v3_to_v2(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
    isr, tmr, irr = (_words(_take(node, k, ctx), k, ctx) for k in _WORD_KEYS)
    node["isr_tmr_irr"] = [{"isr": a, "tmr": b, "irr": c}
                           for a, b, c in zip(isr, tmr, irr, strict=True)]
    node["timer"] = _take(node, "timer_expiry", ctx)
    if "sipi" in node:
        _stash_put(node, ctx, "sipi", node.pop("sipi"))
    return _ordered(node, 2)


def v1_to_v2(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
    if "timer" in node:
        raise FilterError(f"{ctx.path}: apic@1 node has a field 'timer', which version 1 "
                          "does not have")
    found, timer = _stash_take(node, ctx, "timer")
    if not found:
        timer = -1
        note = getattr(ctx, "note_default", None)  # recorded by `migtree explain`
        if note is not None:
            note("timer", timer)
    node["timer"] = timer
    return _ordered(node, 2)


def v2_to_v1(node: dict[str, Any], ctx: Any) -> dict[str, Any]:
    timer = _take(node, "timer", ctx)
    if timer != -1:  # -1 is what the way up gives anyway: stashing it would leave a residue
        _stash_put(node, ctx, "timer", timer)
    return _ordered(node, 1)


V2_TO_V3 = Filter(
    name="apic-v2-to-v3", match="apic@2", produces="apic@3", func=v2_to_v3, pair=PAIR_V2_V3,
    description="QEMU's VMState conversion: isr/tmr/irr arrays, timer -> timer_expiry")
V3_TO_V2 = Filter(
    name="apic-v3-to-v2", match="apic@3", produces="apic@2", func=v3_to_v2, pair=PAIR_V2_V3,
    description="back to the hand-written layout; the sipi part goes to the stash")
V1_TO_V2 = Filter(
    name="apic-v1-to-v2", match="apic@1", produces="apic@2", func=v1_to_v2, pair=PAIR_V1_V2,
    description="add the timer (-1: version 1 did not save it)")
V2_TO_V1 = Filter(
    name="apic-v2-to-v1", match="apic@2", produces="apic@1", func=v2_to_v1, pair=PAIR_V1_V2,
    description="drop the timer into the stash")

# each direction already carries its pair's name, so it stashes under the
# pair's key even when used on its own (FilterPair sets the same name)
PAIRS = (
    FilterPair(PAIR_V1_V2, V1_TO_V2, V2_TO_V1),
    FilterPair(PAIR_V2_V3, V2_TO_V3, V3_TO_V2),
)
