"""Wave planning: which adapters one engine loads, keeps, evicts and prefetches next. Pure functions.

The wave policy (cost-aware, after Chameleon, MICRO'25):
- An adapter's *value* is its request rate * the milliseconds of a cold load of its size (Chameleon's
  frequency * size): what keeping it saves. The GPU tier ranks by max(steady, burst) rate, so it follows
  bursts; the host (CPU) cache ranks by the steady rate only, so a flood of one-off requests from the long
  tail cannot flush it (LRU's weakness on a Zipf catalog).
- Hysteresis: a resident adapter's value counts (1 + hysteresis) against a challenger's, so a wobble in
  popularity smaller than that never swaps adapters; loads nobody waits for are capped per wave.
- Pins: operator pins, and adapters whose load is in flight or that requests wait on, are never evicted.
  The hottest adapters (all GPU slots but a transient share) are protected: cold requests are loaded into
  the transient share, displacing the least valuable adapters there.
- Starvation bound: a request for an adapter off the GPU waits for a wave. Adapters whose oldest request
  has waited past the deadline are loaded first, however unpopular; then the others, most valuable first.
- Prefetch: cold adapters deferred to a later wave, and adapters that rank for the host cache but are off
  the engine, are fetched from the store into the host cache while the current wave serves, so the next
  wave loads them in a few ms instead of tens.
- A revision no longer servable (its policy's pointer moved: promotion, rollback, retirement) leaves both
  tiers and is never loaded, pinned or not.

`plan_lru` is the baseline with the same interface: vLLM's `max_loras` GPU LRU over a `max_cpu_loras` LRU,
loading whatever a request waits for at once.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from itertools import chain
from typing import Literal

import msgspec

Tier = Literal["gpu", "cpu"]
Source = Literal["cpu", "store"]  # where a GPU load reads the adapter from
Destination = Literal["cpu", "gone"]  # where an evicted adapter goes ("gone": off the engine, in the store)


class Capacity(msgspec.Struct, frozen=True):
    gpu_slots: int
    cpu_slots: int


class Residency(msgspec.Struct, frozen=True):
    """Adapter refs (`tenant/name@rev`) in each tier of one engine. Loads and prefetches already planned
    count as resident: they hold their slot."""

    gpu: AbstractSet[str] = frozenset()
    cpu: AbstractSet[str] = frozenset()


class Demand(msgspec.Struct, frozen=True):
    """Requests per second for one adapter (see `fold_demand`)."""

    rate: float  # over the steady horizon (minutes): popularity
    burst: float  # over the burst horizon (seconds): a burst shows here first


class Waiting(msgspec.Struct, frozen=True):
    """Requests queued for one adapter that is not on the GPU."""

    count: int
    oldest_s: float  # how long the oldest of them has waited


class CostModel(msgspec.Struct, frozen=True):
    """Milliseconds to bring an adapter of `mib` MiB to the GPU: from the store (fetch + copy) or from the
    host cache (a copy over the bus)."""

    store_ms: float = 20.0
    store_ms_per_mib: float = 0.5
    cpu_ms: float = 1.0
    cpu_ms_per_mib: float = 0.05
    default_mib: float = 16.0  # for an adapter whose size the caller did not give

    def load_ms(self, source: Source, mib: float) -> float:
        if source == "store":
            return self.store_ms + self.store_ms_per_mib * mib
        return self.cpu_ms + self.cpu_ms_per_mib * mib


class PlannerConfig(msgspec.Struct, frozen=True, kw_only=True):
    hysteresis: float = 0.25
    deadline_s: float = 0.25  # the starvation bound
    transient_share: float = 0.25  # GPU slots not protected for the hottest adapters
    max_proactive_loads: int = 8  # loads per wave that no waiting request asked for
    max_prefetches: int = 32  # store -> host cache fetches per wave
    cost: CostModel = CostModel()


class EngineView(msgspec.Struct, frozen=True, kw_only=True):
    """What the scheduler knows about one engine when it plans its next wave."""

    wave: int  # the number the planned wave gets
    capacity: Capacity
    residency: Residency
    # Whether a ref may be served now. Asked only about refs the view names, so a lookup in the catalog
    # projection (is it its policy's serving revision?) fits; `frozenset(...).__contains__` does too.
    servable: Callable[[str], bool]
    demand: Mapping[str, Demand] = {}
    waiting: Mapping[str, Waiting] = {}
    loading: AbstractSet[str] = frozenset()  # GPU loads in flight: never evicted mid-load
    pinned: AbstractSet[str] = frozenset()
    sizes_mib: Mapping[str, float] = {}
    last_used: Mapping[str, float] = {}  # when each resident ref last served a request (LRU only)


class Load(msgspec.Struct, frozen=True):
    ref: str
    source: Source


class Eviction(msgspec.Struct, frozen=True):
    ref: str
    source: Tier
    to: Destination


class Wave(msgspec.Struct, frozen=True):
    """One engine's next residency change. `load` and `prefetch` are in priority order."""

    number: int
    load: tuple[Load, ...] = ()
    keep: tuple[str, ...] = ()  # GPU residents that stay
    evict: tuple[Eviction, ...] = ()
    prefetch: tuple[str, ...] = ()  # store -> host cache, overlapped with serving


DEFAULT_PLANNER = PlannerConfig()


# --- demand ---------------------------------------------------------------------------------------


class DemandConfig(msgspec.Struct, frozen=True, kw_only=True):
    steady_s: float = 120.0  # time constant of `Demand.rate`
    burst_s: float = 5.0  # time constant of `Demand.burst`
    tracked: int = 10_000  # entries kept, highest rates first: a million-ref catalog is mostly forgotten
    floor: float = 1e-4  # requests/s under which an entry is forgotten


DEFAULT_DEMAND = DemandConfig()


def fold_demand(
    table: Mapping[str, Demand],
    counts: Mapping[str, int],
    interval_s: float,
    config: DemandConfig = DEFAULT_DEMAND,
) -> dict[str, Demand]:
    """Fold one interval's request counts (an aggregated demand report) into the demand table: two
    exponentially weighted rates per ref, forgetting refs whose demand faded."""
    steady_keep = math.exp(-interval_s / config.steady_s)
    burst_keep = math.exp(-interval_s / config.burst_s)
    folded: dict[str, Demand] = {}
    for ref in chain(table, (ref for ref in counts if ref not in table)):
        observed = counts.get(ref, 0) / interval_s
        before = table.get(ref, _NO_DEMAND)
        rate = observed + (before.rate - observed) * steady_keep
        burst = observed + (before.burst - observed) * burst_keep
        if max(rate, burst) >= config.floor:
            folded[ref] = Demand(rate, burst)
    if len(folded) <= config.tracked:
        return folded
    kept = heapq.nlargest(
        config.tracked, folded, key=lambda ref: (max(folded[ref].rate, folded[ref].burst), ref)
    )
    return {ref: folded[ref] for ref in kept}


def follow_pointer(demand: Mapping[str, Demand], old_ref: str, new_ref: str) -> dict[str, Demand]:
    """A promotion or rollback moves a policy's traffic to another revision; its demand goes along, so the
    next wave brings the new revision in before its requests pile up."""
    moved = {ref: entry for ref, entry in demand.items() if ref != old_ref}
    if old_ref in demand:
        moved[new_ref] = demand[old_ref]
    return moved


_NO_DEMAND = Demand(0.0, 0.0)


# --- the wave planner -----------------------------------------------------------------------------


class _Values:
    """Adapter values for one view: rate * ms of a cold load (what keeping the adapter saves per second)."""

    def __init__(self, view: EngineView, cost: CostModel) -> None:
        self._demand = view.demand
        self._sizes = view.sizes_mib
        self._cost = cost

    def _cold_ms(self, ref: str) -> float:
        return self._cost.load_ms("store", self._sizes.get(ref, self._cost.default_mib))

    def gpu(self, ref: str) -> float:
        demand = self._demand.get(ref, _NO_DEMAND)
        return max(demand.rate, demand.burst) * self._cold_ms(ref)

    def cpu(self, ref: str) -> float:
        return self._demand.get(ref, _NO_DEMAND).rate * self._cold_ms(ref)


def transient_slots(gpu_slots: int, share: float) -> int:
    """GPU slots open to cold requests: at least one, so a waiting request always gets a turn."""
    return min(gpu_slots, max(1, round(gpu_slots * share)))


def plan_wave(view: EngineView, config: PlannerConfig = DEFAULT_PLANNER) -> Wave:
    """Plan the engine's next wave (see the module docstring for the policy)."""
    servable = view.servable
    gpu = {ref for ref in view.residency.gpu if servable(ref)}
    cpu = {ref for ref in view.residency.cpu if servable(ref) and ref not in gpu}
    waiting = {ref: wait for ref, wait in view.waiting.items() if servable(ref)}
    values = _Values(view, config.cost)

    gpu_target = _choose_gpu(view, config, gpu, waiting, values)
    chosen = set(gpu_target)
    victims = gpu - chosen
    deferred = _by_waiting_priority((ref for ref in waiting if ref not in chosen), waiting, values)
    on_engine = gpu | cpu | chosen
    cpu_target, prefetch = _choose_cpu(view, config, values, on_engine, (cpu - chosen) | victims, deferred)

    loads = [ref for ref in gpu_target if ref not in gpu]
    # Requests are waiting on some loads; the engine should start those first.
    loads.sort(key=lambda ref: ref not in waiting)
    evict = [Eviction(ref, "gpu", "gone") for ref in sorted(set(view.residency.gpu) - gpu)]
    evict += [
        Eviction(ref, "cpu", "gone") for ref in sorted(ref for ref in view.residency.cpu if not servable(ref))
    ]
    evict += [Eviction(ref, "gpu", "cpu" if ref in cpu_target else "gone") for ref in sorted(victims)]
    evict += [Eviction(ref, "cpu", "gone") for ref in sorted(cpu - chosen - cpu_target)]
    return Wave(
        number=view.wave,
        load=tuple(Load(ref, "cpu" if ref in cpu else "store") for ref in loads),
        keep=tuple(sorted(gpu & chosen)),
        evict=tuple(evict),
        prefetch=tuple(prefetch),
    )


def _choose_gpu(
    view: EngineView, config: PlannerConfig, gpu: set[str], waiting: Mapping[str, Waiting], values: _Values
) -> list[str]:
    """The GPU set of the next wave, in the order it was chosen (most binding reason first)."""
    slots = view.capacity.gpu_slots
    chosen: dict[str, None] = {}  # an ordered set

    def take(refs: Iterable[str]) -> None:
        for ref in refs:
            if len(chosen) >= slots:
                return
            chosen.setdefault(ref)

    servable_pins = {ref for ref in view.pinned if view.servable(ref)}
    take(sorted(ref for ref in gpu if ref in view.loading or ref in waiting or ref in servable_pins))
    take(sorted((ref for ref in servable_pins if ref not in gpu), key=lambda ref: (-values.gpu(ref), ref)))
    overdue = [ref for ref, wait in waiting.items() if ref not in gpu and wait.oldest_s >= config.deadline_s]
    take(sorted(overdue, key=lambda ref: (-waiting[ref].oldest_s, ref)))

    def score(ref: str) -> float:
        return values.gpu(ref) * (1.0 + config.hysteresis) if ref in gpu else values.gpu(ref)

    # Only the best `max_proactive_loads` refs nobody waits for can be loaded this wave: rank those, the
    # residents and the waiting refs.
    unasked = (ref for ref in view.demand if ref not in gpu and ref not in waiting and view.servable(ref))
    proactive = heapq.nlargest(config.max_proactive_loads, unasked, key=lambda ref: (score(ref), ref))
    asked = (ref for ref in waiting if ref not in gpu)
    ranked = sorted(chain(gpu, asked, proactive), key=lambda ref: (-score(ref), ref))
    protected = slots - transient_slots(slots, config.transient_share)
    budget = _fill(chosen, ranked, protected, config.max_proactive_loads, gpu, waiting)
    take(_by_waiting_priority((ref for ref in waiting if ref not in gpu), waiting, values))
    _fill(chosen, ranked, slots, budget, gpu, waiting)
    return list(chosen)


def _fill(
    chosen: dict[str, None],
    ranked: list[str],
    limit: int,
    budget: int,
    gpu: AbstractSet[str],
    waiting: Mapping[str, Waiting],
) -> int:
    """Add ranked refs to `chosen` up to `limit`; a ref that is neither resident nor waited for costs one
    unit of the proactive-load budget. Returns the budget left."""
    for ref in ranked:
        if len(chosen) >= limit:
            break
        if ref in chosen:
            continue
        if ref not in gpu and ref not in waiting:
            if budget == 0:
                continue
            budget -= 1
        chosen[ref] = None
    return budget


def _by_waiting_priority(refs: Iterable[str], waiting: Mapping[str, Waiting], values: _Values) -> list[str]:
    return sorted(refs, key=lambda ref: (-values.gpu(ref), -waiting[ref].count, -waiting[ref].oldest_s, ref))


def _choose_cpu(
    view: EngineView,
    config: PlannerConfig,
    values: _Values,
    on_engine: AbstractSet[str],
    incumbents: AbstractSet[str],
    deferred: list[str],
) -> tuple[set[str], list[str]]:
    """The host cache of the next wave and the prefetches that fill it. `on_engine`: refs that are or will
    be on the engine without a fetch; `incumbents`: refs that are and may stay in the host cache (host
    residents not going to the GPU, and the GPU's victims)."""
    # Deferred cold refs go to the GPU in a coming wave: fetch them now, ahead of anything else.
    fetch_first = [ref for ref in deferred if ref not in on_engine][: config.max_prefetches]
    wanted = set(fetch_first)
    unasked = (
        ref
        for ref in view.demand
        if ref not in on_engine and ref not in wanted and values.cpu(ref) > 0 and view.servable(ref)
    )
    fetch_next = heapq.nlargest(
        config.max_prefetches - len(fetch_first), unasked, key=lambda ref: (values.cpu(ref), ref)
    )

    def score(ref: str) -> float:
        if ref in wanted:
            return math.inf
        return values.cpu(ref) * (1.0 + config.hysteresis) if ref in incumbents else values.cpu(ref)

    pool = [*incumbents, *fetch_first, *fetch_next]
    overflow = len(pool) - view.capacity.cpu_slots
    dropped = (
        set(heapq.nsmallest(overflow, pool, key=lambda ref: (score(ref), ref))) if overflow > 0 else set()
    )
    target = {ref for ref in pool if ref not in dropped}
    return target, [ref for ref in chain(fetch_first, fetch_next) if ref in target]


# --- the LRU baseline -----------------------------------------------------------------------------


def plan_lru(view: EngineView) -> Wave:
    """vLLM's policy: load every adapter a request waits for, now; the least recently used GPU adapter
    makes room and drops to the host cache, whose least recently used adapter drops out. Like vLLM it
    knows nothing of demand, sizes or serving pointers (a stale revision ages out); it honours pins
    (vLLM's `pin_lora`) and never evicts a load in flight."""
    gpu, cpu, waiting = view.residency.gpu, view.residency.cpu, view.waiting
    wanted = sorted((ref for ref in waiting if ref not in gpu), key=lambda ref: (-waiting[ref].oldest_s, ref))
    free = max(0, view.capacity.gpu_slots - len(gpu))

    def recency(ref: str) -> tuple[float, str]:
        return view.last_used.get(ref, -math.inf), ref

    victims: list[str] = []
    if len(wanted) > free:
        evictable = (
            ref for ref in gpu if ref not in view.loading and ref not in view.pinned and ref not in waiting
        )
        victims = heapq.nsmallest(len(wanted) - free, evictable, key=recency)
    loads = wanted[: free + len(victims)]
    from_cpu = {ref for ref in loads if ref in cpu}
    overflow = len(cpu) - len(from_cpu) + len(victims) - view.capacity.cpu_slots
    host = chain((ref for ref in cpu if ref not in from_cpu), victims)
    dropped = set(heapq.nsmallest(overflow, host, key=recency)) if overflow > 0 else set()
    leaving = set(victims)
    evict = [Eviction(ref, "gpu", "gone" if ref in dropped else "cpu") for ref in sorted(victims)]
    evict += [Eviction(ref, "cpu", "gone") for ref in sorted(dropped - leaving)]
    return Wave(
        number=view.wave,
        load=tuple(Load(ref, "cpu" if ref in from_cpu else "store") for ref in loads),
        keep=tuple(sorted(ref for ref in gpu if ref not in leaving)),
        evict=tuple(evict),
    )
