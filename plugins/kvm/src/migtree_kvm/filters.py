"""The filter pair between ``kvm-apic@1`` and the userspace ``apic@3``.

Forward, ``kvm-apic-to-apic``: the register page and APIC base MSR become
QEMU's ``apic`` VMState v3 fields, as QEMU's ``kvm_get_apic_state`` does
(:func:`migtree_kvm.lapic_map.page_to_apic_state`). Backward,
``apic-to-kvm-apic``: the fields become a page and an MSR value, as
``kvm_put_apic_state`` does (:func:`~migtree_kvm.lapic_map.apic_state_to_page`).
What each direction cannot carry is described in ``lapic_map``'s docstring
and the plugin's README.

**The stash.** So that A -> B -> A is the identity inside one tree, each
direction keeps in ``node["__stash__"]["kvm-apic-apic"]`` exactly what the
other direction would not reproduce, and consumes it when it is there:

- forward keeps the original page when its bits outside
  :func:`~migtree_kvm.lapic_map.covered_mask` are not what the backward
  direction writes (version, PPR, TMCCT, APR, reserved bits...); backward
  then takes those bits from it;
- backward always keeps ``initial_count_load_time`` (the kernel restarts
  the timer, so the phase is dropped every time), and the other fields the
  page does not carry (``arb_id``, ``next_time``, ``timer_expiry``, a
  ``count_shift`` that disagrees with ``divide_conf``) when forward, given
  that load time back, would not compute the same values; forward restores
  them.

A stash only lives in a tree being filtered: state that went through a
build (a kernel or a userspace model) comes back without one, and then the
mapping rules alone apply.

**The timer.** A filter sees one node, not the source machine's virtual
clock, so forward takes the timer as (re)loaded at virtual time
``now_ns = 0`` where QEMU uses its virtual clock at save time (the
destination's clock would be no better: it is not the source's until the
load). For builds whose clock starts at 0 and has not moved before the save
the two agree.
"""

from __future__ import annotations

from typing import Any

from migtree.filters import Filter, FilterPair

from .lapic_map import (
    APIC_FIELDS,
    LapicMappingError,
    apic_state_to_page,
    covered_mask,
    page_to_apic_state,
)

PAIR = "kvm-apic-apic"
FORWARD = "kvm-apic-to-apic"
BACKWARD = "apic-to-kvm-apic"
KVM_APIC = "kvm-apic@1"
APIC = "apic@3"

_FIELD_NAMES = [name for name, _, _ in APIC_FIELDS]
_STATE_KEYS = ("regs", "apicbase")
_COVERED = covered_mask()


def _split(node: dict[str, Any], keys: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Take the state keys out of ``node``; what remains is reserved keys and children."""
    missing = [k for k in keys if k not in node]
    if missing:
        raise LapicMappingError(f"{node.get('__type__')} node has no {', '.join(missing)}")
    return {k: node.pop(k) for k in keys}


def _take_stash(node: dict[str, Any]) -> dict[str, Any] | None:
    stash = node.get("__stash__")
    if not isinstance(stash, dict) or PAIR not in stash:
        return None
    mine = stash.pop(PAIR)
    if not stash:
        del node["__stash__"]
    return mine


def _put_stash(node: dict[str, Any], value: dict[str, Any]) -> None:
    node.setdefault("__stash__", {})[PAIR] = value


def _merge_uncovered(page: bytes, source: bytes) -> bytes:
    """``page``'s covered bits with ``source``'s other bits."""
    return bytes((p & m) | (s & ~m & 0xFF) for p, s, m in zip(page, source, _COVERED, strict=True))


def kvm_apic_to_apic(node: dict[str, Any], now_ns: int = 0) -> dict[str, Any]:
    """Rewrite a ``kvm-apic@1`` node into an ``apic@3`` node, in place.

    :param now_ns: the virtual time the timer is taken as loaded at, unless
        the stash holds the original ``initial_count_load_time``.
    """
    native = _split(node, _STATE_KEYS)
    regs, apicbase = bytes(native["regs"]), native["apicbase"]
    stash = _take_stash(node) or {}
    load_time = stash.get("initial_count_load_time", now_ns)
    fields = page_to_apic_state(regs, apicbase, now_ns=load_time)
    fields.update(stash)
    if apic_state_to_page(fields)[0] != regs:
        _put_stash(node, {"regs": regs})
    node.update(fields)
    node["__type__"], node["__version__"] = "apic", 3
    return node


def apic_to_kvm_apic(node: dict[str, Any]) -> dict[str, Any]:
    """Rewrite an ``apic@3`` node into a ``kvm-apic@1`` node, in place."""
    fields = _split(node, _FIELD_NAMES)
    stash = _take_stash(node)
    regs, apicbase = apic_state_to_page(fields)
    if stash is not None:
        regs = _merge_uncovered(regs, stash["regs"])
    # the kernel restarts the timer: keep its load time, and whatever else
    # forward, given back that load time, would not compute again
    load_time = fields["initial_count_load_time"]
    again = page_to_apic_state(regs, apicbase, now_ns=load_time)
    lost = {k: v for k, v in fields.items() if again[k] != v}
    _put_stash(node, {"initial_count_load_time": load_time, **lost})
    node["regs"], node["apicbase"] = regs, apicbase
    node["__type__"], node["__version__"] = "kvm-apic", 1
    return node


def make_forward(*, name: str = FORWARD, **kw: Any) -> Filter:
    """The ``kvm-apic@1 -> apic@3`` filter (``kw``: ``path``, ``priority``, ``dynamic``)."""
    return Filter(
        name=name,
        match=KVM_APIC,
        produces=APIC,
        func=lambda node, ctx: kvm_apic_to_apic(node),
        description="in-kernel LAPIC page + APIC base MSR -> QEMU apic VMState "
        "(kvm_get_apic_state); the timer restarts at now",
        **kw,
    )


def make_backward(*, name: str = BACKWARD, **kw: Any) -> Filter:
    """The ``apic@3 -> kvm-apic@1`` filter (``kw``: ``path``, ``priority``, ``dynamic``)."""
    return Filter(
        name=name,
        match=APIC,
        produces=KVM_APIC,
        func=lambda node, ctx: apic_to_kvm_apic(node),
        description="QEMU apic VMState -> in-kernel LAPIC page + APIC base MSR "
        "(kvm_put_apic_state); the kernel restarts the timer",
        **kw,
    )


def filter_pair() -> FilterPair:
    """Both directions, registered statically by the plugin."""
    return FilterPair(PAIR, make_forward(), make_backward())
