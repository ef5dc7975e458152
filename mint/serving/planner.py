"""Wave planning: which adapters one engine loads, keeps, evicts and prefetches next. Pure functions.

The wave policy (cost-aware, after Chameleon, MICRO'25):
- An adapter's *value* is its request rate * the milliseconds of a cold load of its size (Chameleon's
  frequency * size): what keeping it saves. The GPU tier ranks by max(steady, burst) rate, so it follows
  bursts; the host (CPU) cache ranks by the steady rate only, so a flood of one-off requests from the long
  tail cannot flush it (LRU's weakness on a Zipf catalog), but keeps a small window of free slots for
  recent GPU victims, which the next rebalance keeps only if they earned it (after W-TinyLFU).
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

Two kinds of wave: a *rebalance* (on each demand report or pointer move) ranks both tiers against the
whole demand table; an *admission* wave (`rebalance=False`, when requests wait between reports) only
places waiting requests, cheaply. `plan_lru` is the baseline with the same interface: vLLM's `max_loras`
GPU LRU over a `max_cpu_loras` LRU, loading whatever a request waits for at once.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from itertools import chain, islice
from typing import Literal, NamedTuple

import msgspec

SlotTier = Literal["gpu", "cpu"]
LoadOrigin = Literal["cpu", "store"]  # where a GPU load reads the adapter from
Destination = Literal["cpu", "gone"]  # where an evicted adapter goes ("gone": off the engine, in the store)


class Capacity(msgspec.Struct, frozen=True):
    gpu_slots: int
    cpu_slots: int


class Residency(msgspec.Struct, frozen=True):
    """Adapter refs (`tenant/name@rev`) in each tier of one engine (the tiers are exclusive). Loads and
    prefetches already planned count as resident: they hold their slot. Each tier iterates least recently
    used first where the caller keeps that order (an engine host's ordered dicts do); only the LRU
    baseline reads it."""

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

    def load_ms(self, source: LoadOrigin, mib: float) -> float:
        if source == "store":
            return self.store_ms + self.store_ms_per_mib * mib
        return self.cpu_ms + self.cpu_ms_per_mib * mib


class PlannerConfig(msgspec.Struct, frozen=True, kw_only=True):
    hysteresis: float = 0.25
    deadline_s: float = 0.25  # the starvation bound
    transient_share: float = 0.25  # GPU slots not protected for the hottest adapters
    host_window_share: float = 0.05  # host slots a rebalance keeps free for admission waves' victims
    max_proactive_loads: int = 8  # loads per wave that no waiting request asked for
    max_prefetches: int = 32  # store -> host cache fetches per wave
    # The urgent path's victim: the least valuable of this many LRU-end residents. 64 of 128 GPU slots
    # measured best in `mint bench sim` (16: more hot adapters leave; 256: recency no longer counts).
    victim_sample: int = 64
    # What one count of heat is worth in requests/s beside the demand table's steady rate: the table's
    # floor, so heat decides only between refs of (nearly) no tracked demand (see `plan_urgent`).
    heat_rate: float = 1e-4
    cost: CostModel = CostModel()


def no_heat(ref: str) -> int:
    """Heat for a caller that keeps none: every ref is as cold as any other."""
    return 0


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
    # Aged request counts per ref, remembered across evictions (a FrequencySketch's `estimate`): what
    # the urgent path and host admission weigh (see `plan_urgent`).
    heat: Callable[[str], int] = no_heat


class Load(msgspec.Struct, frozen=True):
    ref: str
    source: LoadOrigin


class Eviction(msgspec.Struct, frozen=True):
    ref: str
    source: SlotTier
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
    steady_s: float = 600.0  # time constant of `Demand.rate`
    burst_s: float = 5.0  # time constant of `Demand.burst`
    tracked: int = 10_000  # entries kept, highest rates first: a million-ref catalog is mostly forgotten
    floor: float = 1e-4  # requests/s under which an entry is forgotten


DEFAULT_DEMAND = DemandConfig()
# Demand entries an engine keeps per slot (GPU + host). 8 measured best in `mint bench sim`: with 4, the
# flatter diurnal trace's warm middle was forgotten between peaks (0.355 of the gap to Belady closed,
# against 0.429 with 8; the standard trace 0.407 against 0.404); 16 was no better than 8.
TRACKED_PER_SLOT = 8


def demand_config_for(slots: int, per_slot: int = TRACKED_PER_SLOT) -> DemandConfig:
    """The demand table of an engine with `slots` (GPU + host): the scheduler and the simulator fold
    with the same one, so what the sim measures is what serves."""
    return DemandConfig(tracked=max(1, per_slot * slots))


def fold_demand(
    table: Mapping[str, Demand],
    counts: Mapping[str, int],
    interval_s: float,
    config: DemandConfig = DEFAULT_DEMAND,
) -> dict[str, Demand]:
    """Fold one interval's request counts (an aggregated demand report) into the demand table: two
    exponentially weighted rates per ref. Refs whose demand faded under the floor are forgotten, and past
    `tracked` entries the least demanded go."""
    steady_keep = math.exp(-interval_s / config.steady_s)
    burst_keep = math.exp(-interval_s / config.burst_s)
    folded: dict[str, Demand] = {}
    for ref, before in table.items():
        observed = counts.get(ref, 0) / interval_s
        rate = observed + (before.rate - observed) * steady_keep
        burst = observed + (before.burst - observed) * burst_keep
        if rate >= config.floor or burst >= config.floor:
            folded[ref] = Demand(rate, burst)
    for ref, count in counts.items():
        if ref not in table:
            observed = count / interval_s
            folded[ref] = Demand(observed * (1.0 - steady_keep), observed * (1.0 - burst_keep))
    excess = len(folded) - config.tracked
    if excess > 0:
        ranked = ((max(entry.rate, entry.burst), ref) for ref, entry in folded.items())
        for _, ref in heapq.nsmallest(excess, ranked):
            del folded[ref]
    return folded


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
    """Adapter values for one view: rate * ms of a cold load (what keeping the adapter saves per second).
    `everything` values the whole demand table at once (a rebalance ranks it all); otherwise each ref is
    valued when first asked."""

    def __init__(self, view: EngineView, cost: CostModel, *, everything: bool) -> None:
        self._demand = view.demand
        self._sizes = view.sizes_mib
        self._cost = cost
        self.gpu_values: dict[str, float] = {}
        self.cpu_values: dict[str, float] = {}
        if everything:
            for ref, demand in view.demand.items():
                cold_ms = self._cold_ms(ref)
                self.gpu_values[ref] = max(demand.rate, demand.burst) * cold_ms
                self.cpu_values[ref] = demand.rate * cold_ms

    def gpu(self, ref: str) -> float:
        value = self.gpu_values.get(ref)
        if value is None:
            demand = self._demand.get(ref, _NO_DEMAND)
            value = self.gpu_values[ref] = max(demand.rate, demand.burst) * self._cold_ms(ref)
        return value

    def cpu(self, ref: str) -> float:
        value = self.cpu_values.get(ref)
        if value is None:
            value = self.cpu_values[ref] = self._demand.get(ref, _NO_DEMAND).rate * self._cold_ms(ref)
        return value

    def _cold_ms(self, ref: str) -> float:
        return self._cost.load_ms("store", self._sizes.get(ref, self._cost.default_mib))


def _best_servable(
    scored: Iterable[tuple[float, str]], count: int, servable: Callable[[str], bool]
) -> list[str]:
    """The `count` best servable refs of `(value, ref)` pairs. Demand for a retired revision is rare (it
    follows the pointer), so servability is asked of the best few, not of every candidate."""
    if count <= 0:
        return []
    candidates = list(scored)
    best = [ref for _, ref in heapq.nlargest(count, candidates) if servable(ref)]
    if len(best) < min(count, len(candidates)):
        best = [ref for _, ref in sorted(candidates, reverse=True) if servable(ref)][:count]
    return best


class _HostPlan(NamedTuple):
    demoted: set[str]  # GPU victims that stay in the host cache
    dropped: list[str]  # host residents that leave the engine
    prefetch: list[str]


def _transient_slots(gpu_slots: int, share: float) -> int:
    """GPU slots open to cold requests: at least one, so a waiting request always gets a turn."""
    return min(gpu_slots, max(1, round(gpu_slots * share)))


def plan_wave(view: EngineView, config: PlannerConfig = DEFAULT_PLANNER, *, rebalance: bool = True) -> Wave:
    """Plan the engine's next wave (see the module docstring for the policy).

    `rebalance=False` plans an admission wave, for when the engine reports waiting requests between
    demand reports: it places waiting requests only. No loads nobody asked for, and the host cache is left
    as it is (GPU victims and deferred prefetches take free host slots; retired host residents leave at the
    next rebalance), so it costs O(GPU slots + waiting), not O(demand table + host slots)."""
    servable = view.servable
    gpu = {ref for ref in view.residency.gpu if servable(ref)}
    waiting = {ref: wait for ref, wait in view.waiting.items() if servable(ref)}
    values = _Values(view, config.cost, everything=rebalance)

    gpu_target = _choose_gpu(
        view, config, gpu, waiting, values, config.max_proactive_loads if rebalance else 0
    )
    chosen = set(gpu_target)
    victims = gpu - chosen
    deferred = _by_waiting_priority((ref for ref in waiting if ref not in chosen), waiting, values)
    if rebalance:
        plan = _rank_host(
            view, config, values, gpu | chosen | set(view.residency.cpu), victims, chosen, deferred
        )
    else:
        plan = _fill_host(view, config, values, victims, chosen, deferred)

    loads = [ref for ref in gpu_target if ref not in gpu]
    # Requests are waiting on some loads; the engine should start those first.
    loads.sort(key=lambda ref: ref not in waiting)
    retired = sorted(ref for ref in view.residency.gpu if ref not in gpu)
    evict = [Eviction(ref, "gpu", "gone") for ref in retired]
    evict += [Eviction(ref, "gpu", "cpu" if ref in plan.demoted else "gone") for ref in sorted(victims)]
    evict += [Eviction(ref, "cpu", "gone") for ref in plan.dropped]
    return Wave(
        number=view.wave,
        load=tuple(Load(ref, "cpu" if ref in view.residency.cpu else "store") for ref in loads),
        keep=tuple(sorted(gpu & chosen)),
        evict=tuple(evict),
        prefetch=tuple(plan.prefetch),
    )


def _choose_gpu(
    view: EngineView,
    config: PlannerConfig,
    gpu: set[str],
    waiting: Mapping[str, Waiting],
    values: _Values,
    proactive: int,
) -> list[str]:
    """The GPU set of the next wave, most binding reason first: what must stay, pins, overdue requests,
    the protected hottest adapters, waiting requests, then the best of the rest. At most `proactive`
    refs are loaded that no request waits for."""
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

    bonus = 1.0 + config.hysteresis

    def score(ref: str) -> float:
        return values.gpu(ref) * bonus if ref in gpu else values.gpu(ref)

    # Only the best `proactive` refs nobody waits for can be loaded: rank those, the residents and the
    # waiting refs.
    unasked = (
        (value, ref) for ref, value in values.gpu_values.items() if ref not in gpu and ref not in waiting
    )
    best_unasked = _best_servable(unasked, proactive, view.servable) if proactive else []
    asked = (ref for ref in waiting if ref not in gpu)
    ranked = sorted(chain(gpu, asked, best_unasked), key=lambda ref: (-score(ref), ref))
    hot: dict[str, None] = {}
    budget = _fill(
        hot, ranked, slots - _transient_slots(slots, config.transient_share), proactive, gpu, waiting
    )
    take(hot)
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


def _rank_host(
    view: EngineView,
    config: PlannerConfig,
    values: _Values,
    on_engine: AbstractSet[str],
    victims: AbstractSet[str],
    chosen: AbstractSet[str],
    deferred: list[str],
) -> _HostPlan:
    """Re-rank the host cache: its residents not going to the GPU and the GPU's victims (both with the
    hysteresis bonus), deferred cold refs (first: they go to the GPU in a coming wave) and the most
    valuable refs off the engine (prefetched). A window of slots stays free: admission waves demote their
    victims into it, and the next rebalance keeps those that earned a place (W-TinyLFU's window)."""
    retired = sorted(ref for ref in view.residency.cpu if not view.servable(ref))
    staying = [ref for ref in view.residency.cpu if ref not in chosen and view.servable(ref)]
    incumbents = set(staying) | victims
    rank_of_deferred = {ref: rank for rank, ref in enumerate(deferred)}
    fetch_first = [ref for ref in deferred if ref not in on_engine][: config.max_prefetches]
    unasked = (
        (value, ref)
        for ref, value in values.cpu_values.items()
        if value > 0 and ref not in on_engine and ref not in rank_of_deferred
    )
    fetch_next = _best_servable(unasked, config.max_prefetches - len(fetch_first), view.servable)
    bonus = 1.0 + config.hysteresis

    def score(ref: str) -> tuple[int, float, str]:
        if ref in rank_of_deferred:
            return 1, -float(rank_of_deferred[ref]), ref
        value = values.cpu(ref)
        return 0, value * bonus if ref in incumbents else value, ref

    pool = [*incumbents, *fetch_first, *fetch_next]
    window = round(view.capacity.cpu_slots * config.host_window_share)
    overflow = len(pool) - (view.capacity.cpu_slots - window)
    out = set(heapq.nsmallest(overflow, pool, key=score)) if overflow > 0 else set()
    return _HostPlan(
        demoted=set(victims) - out,
        dropped=retired + sorted(ref for ref in staying if ref in out),
        prefetch=[ref for ref in chain(fetch_first, fetch_next) if ref not in out],
    )


def _fill_host(
    view: EngineView,
    config: PlannerConfig,
    values: _Values,
    victims: AbstractSet[str],
    chosen: AbstractSet[str],
    deferred: list[str],
) -> _HostPlan:
    """An admission wave leaves the host cache as it is: deferred cold refs, then the GPU's most valuable
    victims, take its free slots."""
    host = view.residency.cpu
    free = view.capacity.cpu_slots - len(host) + sum(1 for ref in chosen if ref in host)
    off_engine = [ref for ref in deferred if ref not in host and ref not in view.residency.gpu]
    prefetch = off_engine[: max(0, min(free, config.max_prefetches))]
    free -= len(prefetch)
    demoted = sorted(victims, key=lambda ref: (-values.cpu(ref), ref))[: max(0, free)]
    return _HostPlan(demoted=set(demoted), dropped=[], prefetch=prefetch)


# --- the urgent path -------------------------------------------------------------------------------


def plan_urgent(view: EngineView, config: PlannerConfig = DEFAULT_PLANNER) -> Wave:
    """Load what requests wait for now, without waiting for the next wave (whose 50 ms would be the
    p99): each waiting ref, oldest wait first, takes a free GPU slot or the slot of an evictable resident
    (not loading, not waited for, not pinned). Waves still rebalance and prefetch; this only places.

    Which resident goes (W-TinyLFU's idea on an LRU order): of the `victim_sample` least recently used
    evictable residents, the one of least value, where value is the steady demand rate * ms of a cold
    load of its size (Chameleon's frequency * size; the same rate the rebalance ranks the host cache by,
    so the two paths agree on what is worth keeping), and heat (aged request count, remembered across
    evictions, counted per request) ranks the refs the demand table does not track. Heat alone ranked
    worse: its memory is a few tens of seconds and saturates at 15, so on a flat (Zipf 0.9) catalog it
    cannot tell the warm middle from the tail, and it undid the rebalance's choices. Recency alone (LRU)
    throws out a hot adapter after a run of one-off requests; frequency alone keeps a finished burst for
    ever; sampling the LRU end weighs both in O(sample), not O(slots).

    Where it goes (TinyLFU admission): into a free host slot; else into the slot of the host's least
    valuable resident (same sample of its LRU end) only if it is worth more, else off the engine. So a
    flood of one-off requests passes through the GPU without flushing the host cache.

    Refs that find no slot (every resident loading or waited for) stay waiting for the next call."""
    servable, heat = view.servable, view.heat
    gpu_slots, cpu_slots = view.capacity.gpu_slots, view.capacity.cpu_slots
    cost = config.cost

    def value(ref: str) -> float:
        rate = view.demand.get(ref, _NO_DEMAND).rate + heat(ref) * config.heat_rate
        return rate * cost.load_ms("store", view.sizes_mib.get(ref, cost.default_mib))

    wanted = sorted(
        (ref for ref in view.waiting if ref not in view.residency.gpu and servable(ref)),
        key=lambda ref: (-view.waiting[ref].oldest_s, ref),
    )
    held = set(view.loading) | set(view.pinned) | set(view.waiting)
    # Least recently used first; a ref no longer servable goes before any that is.
    evictable = [ref for ref in view.residency.gpu if ref not in held]
    evictable.sort(key=servable)
    host = [ref for ref in view.residency.cpu if ref not in view.waiting]
    free_gpu = gpu_slots - len(view.residency.gpu)
    free_cpu = cpu_slots - len(view.residency.cpu)
    loads: list[Load] = []
    evict: list[Eviction] = []
    for ref in wanted:
        if free_gpu == 0 and not evictable:
            break
        from_cpu = ref in view.residency.cpu
        free_cpu += from_cpu  # the load leaves the host cache: its slot is free for a victim
        if free_gpu > 0:
            free_gpu -= 1
        else:
            victim = _least_valuable(evictable, config.victim_sample, value, servable)
            evictable.remove(victim)
            moves = _demote(victim, value, servable, host, free_cpu > 0, config.victim_sample)
            free_cpu -= len(moves) == 1 and moves[0].to == "cpu"
            evict += moves
        loads.append(Load(ref, "cpu" if from_cpu else "store"))
    keep = tuple(sorted(set(view.residency.gpu) - {e.ref for e in evict if e.source == "gpu"}))
    return Wave(number=view.wave, load=tuple(loads), keep=keep, evict=tuple(evict))


def _least_valuable(
    lru_first: list[str], sample: int, value: Callable[[str], float], servable: Callable[[str], bool]
) -> str:
    """The least valuable of the `sample` least recently used refs (a ref no longer servable first)."""
    head = lru_first[: max(1, sample)]
    return min(head, key=lambda ref: (servable(ref), value(ref)))


def _demote(
    victim: str,
    value: Callable[[str], float],
    servable: Callable[[str], bool],
    host: list[str],
    host_has_room: bool,
    sample: int,
) -> list[Eviction]:
    """The GPU victim's evictions: into the host cache if there is room, or in place of the host's
    least valuable LRU-end resident if it is worth more (TinyLFU admission), else off the engine.

    `host` holds only what was in the host cache before this plan: a victim demoted earlier in the same
    plan is not a candidate to drop, because one wave cannot move a ref gpu -> cpu -> gone."""
    if not servable(victim):
        return [Eviction(victim, "gpu", "gone")]
    if host_has_room:
        return [Eviction(victim, "gpu", "cpu")]
    if host:
        dropped = _least_valuable(host, sample, value, servable)
        if value(victim) > value(dropped) or not servable(dropped):
            host.remove(dropped)
            return [Eviction(dropped, "cpu", "gone"), Eviction(victim, "gpu", "cpu")]
    return [Eviction(victim, "gpu", "gone")]


# --- the LRU baseline -----------------------------------------------------------------------------


def plan_lru(view: EngineView) -> Wave:
    """vLLM's policy: load every adapter a request waits for, now; the least recently used GPU adapter
    makes room and drops to the host cache, whose least recently used adapter drops out. Reads the tiers'
    order (least recently used first). Like vLLM it knows nothing of demand, sizes or serving pointers (a
    stale revision ages out); it honours pins (vLLM's `pin_lora`) and never evicts a load in flight."""
    gpu, cpu, waiting = view.residency.gpu, view.residency.cpu, view.waiting
    wanted = sorted((ref for ref in waiting if ref not in gpu), key=lambda ref: (-waiting[ref].oldest_s, ref))
    free = max(0, view.capacity.gpu_slots - len(gpu))
    evictable = (
        ref for ref in gpu if ref not in view.loading and ref not in view.pinned and ref not in waiting
    )
    victims = list(islice(evictable, max(0, len(wanted) - free)))
    loads = wanted[: free + len(victims)]
    from_cpu = {ref for ref in loads if ref in cpu}
    overflow = len(cpu) - len(from_cpu) + len(victims) - view.capacity.cpu_slots
    host = chain((ref for ref in cpu if ref not in from_cpu), victims)  # least recently used first
    dropped = list(islice(host, max(0, overflow)))
    leaving, gone = set(victims), set(dropped)
    evict = [Eviction(ref, "gpu", "gone" if ref in gone else "cpu") for ref in victims]
    evict += [Eviction(ref, "cpu", "gone") for ref in dropped if ref not in leaving]
    return Wave(
        number=view.wave,
        load=tuple(Load(ref, "cpu" if ref in from_cpu else "store") for ref in loads),
        keep=tuple(ref for ref in gpu if ref not in leaving),
        evict=tuple(evict),
    )
