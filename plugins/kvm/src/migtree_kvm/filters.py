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
  that load time back, would not compute the same values; and the optional
  ``sipi`` part when forward would not derive the same one from the MP
  state. Forward restores them;
- forward keeps ``mp_state`` when backward would not derive the same one
  from ``sipi`` (``UNINITIALIZED``, ``HALTED``, an explicit ``RUNNABLE``...).

**Waiting for a start-up IPI.** KVM keeps it in the vCPU's MP state, not
in the LAPIC page; ``kvm-apic`` carries that as its optional ``mp_state``
(absent: runnable). The two map onto ``apic@3``'s optional ``sipi`` part
(QEMU's ``apic_sipi`` subsection) both ways:

- forward: ``KVM_MP_STATE_UNINITIALIZED`` or ``KVM_MP_STATE_INIT_RECEIVED``
  (an application processor waiting for INIT/SIPI) become
  ``sipi = {sipi_vector: 0, wait_for_sipi: 1}``, what QEMU's
  ``apic_init_reset`` leaves; every other MP state (runnable, halted...)
  none, as the ``apic`` model has no halted CPU;
- backward: a ``sipi`` part with ``wait_for_sipi`` set becomes
  ``KVM_MP_STATE_INIT_RECEIVED`` (the state in which the kernel accepts a
  start-up IPI, as the model does); none, or ``wait_for_sipi`` 0, runnable.

Through a kernel, then, ``UNINITIALIZED`` comes back as ``INIT_RECEIVED``
(both wait; the kernel's first state also wants an INIT before the SIPI), a
halted vCPU as runnable, and a start-up vector received but not yet taken
(``sipi_vector``) is lost -- KVM keeps that outside the page and the MP state
too. Inside one tree the stash keeps each of them.

A stash only lives in a tree being filtered: state that went through a
build (a kernel or a userspace model) comes back without one, and then the
mapping rules alone apply.

A node that is not what the filter's ``match`` promised, or a value the
other side cannot hold, is a :class:`~migtree.errors.FilterError` naming the
object's path and the field.

**The timer.** Forward takes the timer as (re)loaded at the source
machine's virtual clock at save time (``ctx.source_clock_ns()``, read from
the tree's ``/machine`` node), as QEMU uses ``QEMU_CLOCK_VIRTUAL`` at save
time; called without a context it falls back to ``now_ns`` (default 0).
"""

from __future__ import annotations

from typing import Any

from migtree.errors import FilterError
from migtree.filters import Filter, FilterPair

from .ioctls import KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED
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
#: optional parts of apic@3 beyond QEMU's 19 fields: the apic_sipi subsection
_APIC_OPTIONAL = ("sipi",)
_STATE_KEYS = ("regs", "apicbase")
_RESERVED = ("__type__", "__version__")
_COVERED = covered_mask()
#: MP states in which a vCPU waits for INIT/SIPI: apic@3's ``sipi`` part
_WAITING = (KVM_MP_STATE_UNINITIALIZED, KVM_MP_STATE_INIT_RECEIVED)
#: what QEMU's apic_init_reset leaves in the ``sipi`` part of a waiting AP
_SIPI_WAITING = {"sipi_vector": 0, "wait_for_sipi": 1}


def _sipi_of(mp_state: int | None) -> dict[str, int] | None:
    """Forward: the ``sipi`` part for a vCPU in ``mp_state``."""
    return dict(_SIPI_WAITING) if mp_state in _WAITING else None


def _mp_state_of(sipi: dict[str, Any] | None) -> int | None:
    """Backward: the MP state for an ``apic@3`` ``sipi`` part (None: runnable)."""
    return KVM_MP_STATE_INIT_RECEIVED if sipi is not None and sipi["wait_for_sipi"] else None


def _where(ctx: Any) -> str:
    return getattr(ctx, "path", None) or "<node>"


def _take(node: dict[str, Any], keys: Any, ctx: Any) -> dict[str, Any]:
    """Pop the state keys out of ``node``; what remains is reserved keys,
    children and the stash."""
    missing = [k for k in keys if k not in node]
    if missing:
        raise FilterError(
            f"{_where(ctx)}: {node.get('__type__')}@{node.get('__version__')} node has no "
            f"field {missing[0]!r}"
        )
    return {k: node.pop(k) for k in keys}


def _take_stash(node: dict[str, Any]) -> dict[str, Any]:
    stash = node.get("__stash__")
    if type(stash) is not dict or type(stash.get(PAIR)) is not dict:
        return {}
    mine = stash.pop(PAIR)
    if not stash:
        del node["__stash__"]
    return mine


def _rebuild(
    node: dict[str, Any],
    type_: str,
    version: int,
    fields: dict[str, Any],
    stash: dict[str, Any] | None,
) -> dict[str, Any]:
    """Rewrite ``node`` in place: reserved keys, the fields in order, then
    the children and stash it had, then this filter's stash entry."""
    rest = {k: v for k, v in node.items() if k not in _RESERVED}
    node.clear()
    node["__type__"], node["__version__"] = type_, version
    node.update(fields)
    node.update(rest)
    if stash:
        node.setdefault("__stash__", {})[PAIR] = stash
    return node


def _merge_uncovered(page: bytes, source: bytes) -> bytes:
    """``page``'s covered bits with ``source``'s other bits."""
    return bytes((p & m) | (s & ~m & 0xFF) for p, s, m in zip(page, source, _COVERED, strict=True))


def kvm_apic_to_apic(node: dict[str, Any], ctx: Any = None, *, now_ns: int = 0) -> dict[str, Any]:
    """Rewrite a ``kvm-apic@1`` node into an ``apic@3`` node, in place.

    :param now_ns: the virtual time the timer is taken as loaded at, unless
        the stash holds the original ``initial_count_load_time``.
    """
    native = _take(node, _STATE_KEYS, ctx)
    regs = native["regs"]
    if type(regs) is not bytes or len(regs) != 1024:
        raise FilterError(f"{_where(ctx)}: regs: expected 1024 bytes, got {regs!r:.40}")
    mp_state = node.pop("mp_state", None)
    if mp_state is not None and (type(mp_state) is not int or not 0 <= mp_state <= 0xFFFFFFFF):
        raise FilterError(f"{_where(ctx)}: mp_state: expected a u32, got {mp_state!r:.40}")
    stash = _take_stash(node)
    if ctx is not None and getattr(ctx, "source_clock_ns", None) is not None:
        clock = ctx.source_clock_ns()
        now_ns = clock if clock is not None else now_ns
    try:
        fields = page_to_apic_state(
            regs, native["apicbase"], now_ns=stash.get("initial_count_load_time", now_ns)
        )
    except LapicMappingError as e:
        raise FilterError(f"{_where(ctx)}: {e}") from None
    sipi = _sipi_of(mp_state)
    if sipi is not None:
        fields["sipi"] = sipi
    fields.update(stash)
    page_again = apic_state_to_page({k: fields[k] for k in _FIELD_NAMES})[0]
    kept: dict[str, Any] = {"regs": regs} if page_again != regs else {}
    if _mp_state_of(sipi) != mp_state:
        kept["mp_state"] = mp_state
    return _rebuild(node, "apic", 3, fields, kept)


def apic_to_kvm_apic(node: dict[str, Any], ctx: Any = None) -> dict[str, Any]:
    """Rewrite an ``apic@3`` node into a ``kvm-apic@1`` node, in place."""
    fields = _take(node, _FIELD_NAMES, ctx)
    optional = _take(node, [k for k in _APIC_OPTIONAL if k in node], ctx)
    sipi = optional.get("sipi")
    if sipi is not None and (type(sipi) is not dict or "wait_for_sipi" not in sipi):
        raise FilterError(f"{_where(ctx)}: sipi: expected {{sipi_vector, wait_for_sipi}}, "
                          f"got {sipi!r:.60}")
    stash = _take_stash(node)
    try:
        regs, apicbase = apic_state_to_page(fields)
    except LapicMappingError as e:
        raise FilterError(f"{_where(ctx)}: {e}") from None
    if "regs" in stash:
        regs = _merge_uncovered(regs, stash["regs"])
    # the kernel restarts the timer: keep its load time, and whatever else
    # forward, given back that load time, would not compute again
    load_time = fields["initial_count_load_time"]
    again = page_to_apic_state(regs, apicbase, now_ns=load_time)
    lost = {k: v for k, v in fields.items() if again[k] != v}
    kept = {"initial_count_load_time": load_time, **lost}
    mp_state = _mp_state_of(sipi)
    if "mp_state" in stash and (stash["mp_state"] in _WAITING) == (mp_state is not None):
        mp_state = stash["mp_state"]  # what forward came from, if it still fits
    if _sipi_of(mp_state) != sipi:
        kept["sipi"] = sipi
    native: dict[str, Any] = {"regs": regs, "apicbase": apicbase}
    if mp_state is not None:
        native["mp_state"] = mp_state
    return _rebuild(node, "kvm-apic", 1, native, kept)


def make_forward(*, name: str = FORWARD, **kw: Any) -> Filter:
    """The ``kvm-apic@1 -> apic@3`` filter (``kw``: ``path``, ``priority``, ``dynamic``)."""
    return Filter(
        name=name,
        match=KVM_APIC,
        produces=APIC,
        func=kvm_apic_to_apic,
        pair=PAIR,
        description="in-kernel LAPIC page + APIC base MSR -> QEMU apic VMState "
        "(kvm_get_apic_state); the timer restarts at virtual time 0",
        **kw,
    )


def make_backward(*, name: str = BACKWARD, **kw: Any) -> Filter:
    """The ``apic@3 -> kvm-apic@1`` filter (``kw``: ``path``, ``priority``, ``dynamic``)."""
    return Filter(
        name=name,
        match=APIC,
        produces=KVM_APIC,
        func=apic_to_kvm_apic,
        pair=PAIR,
        description="QEMU apic VMState -> in-kernel LAPIC page + APIC base MSR "
        "(kvm_put_apic_state); the kernel restarts the timer",
        **kw,
    )


def filter_pair() -> FilterPair:
    """Both directions, registered statically by the plugin."""
    return FilterPair(PAIR, make_forward(), make_backward())
