"""`mint sim`: the wave planner against vLLM's LRU on one synthetic trace, in virtual time.

The trace: a catalog of `policies` (a million by default, never materialised: ranks are drawn lazily
from a Zipf law), requests arriving as a Poisson process, bursts (a policy nobody asked for gets a run of
requests), drift (a popular rank and a random catalog policy swap places) and promotions (a popular
policy's serving pointer moves to a new revision, which requests name from then on).

The engine: `gpu_slots` and `cpu_slots` (exclusive tiers, for both policies), transfers on `lanes`
parallel lanes, from the store (tens of ms) or the host cache (a few ms). A request whose adapter is not
on the GPU *stalls* until a load brings it; a *cold* stall waited for bytes from the artifact store.
LRU loads at request time. The wave scheduler plans every `wave_s` from demand folded every `report_s`
(aggregated counts, never one record per request) and the engine's queue of waiting requests.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal

import msgspec

from mint.percentiles import percentile_of_sorted
from mint.serving.planner import (
    DEFAULT_PLANNER,
    TRACKED_PER_SLOT,
    Capacity,
    CostModel,
    Demand,
    DemandConfig,
    EngineView,
    LoadOrigin,
    PlannerConfig,
    Residency,
    Waiting,
    Wave,
    demand_config_for,
    fold_demand,
    follow_pointer,
    no_heat,
    plan_lru,
    plan_urgent,
    plan_wave,
)
from mint.serving.sketch import FrequencySketch

PolicyName = Literal["wave", "lru"]


class TraceSpec(msgspec.Struct, frozen=True, kw_only=True):
    policies: int = 1_000_000
    requests: int = 200_000
    rate_per_s: float = 200.0
    zipf: float = 1.1
    burst_share: float = 0.1  # of requests, in bursts
    burst_size: int = 50  # requests per burst
    burst_s: float = 5.0  # how long a burst lasts
    drift_per_s: float = 0.5  # rank swaps per second
    promotions_per_s: float = 0.2
    diurnal: float = 0.0  # amplitude of a daily cycle of the request rate (0: a flat rate; < 1)
    day_s: float = 250.0  # the cycle's period in virtual seconds (a day, compressed)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.requests < 1 or self.rate_per_s <= 0 or not 0 <= self.burst_share <= 1:
            raise ValueError("a trace needs requests >= 1, rate_per_s > 0 and 0 <= burst_share <= 1")
        if not 0 <= self.diurnal < 1 or self.day_s <= 0:
            raise ValueError(
                f"a trace needs 0 <= diurnal < 1 and day_s > 0, got {self.diurnal}, {self.day_s}"
            )


# The second trace: a flatter popularity law (more of the catalog asked for) and a daily cycle whose
# troughs age the frequency memory and whose peaks bring the tail back at once.
DIURNAL_TRACE = TraceSpec(zipf=0.9, diurnal=0.8)


class EngineSpec(msgspec.Struct, frozen=True, kw_only=True):
    gpu_slots: int = 128
    cpu_slots: int = 1024
    lanes: int = 16  # concurrent transfers (store fetches and host -> GPU copies)
    wave_s: float = 0.05
    report_s: float = 1.0
    cost: CostModel = CostModel()
    tracked_per_slot: int = TRACKED_PER_SLOT  # demand entries kept per engine slot (the rest are forgotten)
    planner: PlannerConfig = DEFAULT_PLANNER

    def __post_init__(self) -> None:
        if self.gpu_slots < 1 or self.cpu_slots < 0 or self.lanes < 1:
            raise ValueError("an engine needs gpu_slots >= 1, cpu_slots >= 0 and lanes >= 1")

    @property
    def demand(self) -> DemandConfig:
        return demand_config_for(self.gpu_slots + self.cpu_slots, self.tracked_per_slot)


class Promotion(msgspec.Struct, frozen=True):
    at: float
    old_ref: str
    new_ref: str


class Trace(msgspec.Struct, frozen=True):
    times: list[float]
    refs: list[str]
    promotions: list[Promotion]
    sizes_mib: dict[str, float]
    duration_s: float


class PolicyResult(msgspec.Struct, frozen=True):
    policy: PolicyName
    requests: int
    hits: int  # the adapter was on the GPU when the request arrived
    cold_stalls: int  # waited for bytes from the store
    warm_stalls: int  # waited, but not for the store: for a copy from the host cache, or for a wave
    p50_wait_ms: float
    p99_wait_ms: float
    p999_wait_ms: float
    loads: int  # to the GPU
    fetches: int  # from the store (loads and prefetches)
    waves: int  # plans made (for LRU: one per on-demand load)
    duration_s: float

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def loads_per_s(self) -> float:
        return self.loads / self.duration_s

    @property
    def fetches_per_s(self) -> float:
        return self.fetches / self.duration_s


class Comparison(msgspec.Struct, frozen=True):
    trace: TraceSpec
    engine: EngineSpec
    wave: PolicyResult
    lru: PolicyResult
    belady_misses: int  # the offline optimum of on-demand loading, on the same trace and engine
    distinct_refs: int  # adapters the trace asks for

    @property
    def stall_ratio(self) -> float:
        """Cold-load stalls of the wave scheduler / LRU's (the goal is <= 0.5)."""
        return self.wave.cold_stalls / max(1, self.lru.cold_stalls)

    @property
    def belady_ratio(self) -> float:
        """What no policy that loads on demand can beat: Belady's misses / LRU's cold-load stalls."""
        return self.belady_misses / max(1, self.lru.cold_stalls)

    @property
    def gap_closed(self) -> float:
        """The share of the way from LRU to Belady's optimum the wave scheduler goes (goal >= 0.75): 1 is
        the optimum of on-demand loading, 0 is LRU, above 1 beats on-demand (prefetch)."""
        return (1.0 - self.stall_ratio) / max(1e-9, 1.0 - self.belady_ratio)

    @property
    def first_request_ratio(self) -> float:
        """Distinct adapters requested / LRU's cold-load stalls: each one's first request misses for a
        policy that learns from requests (unless it was announced, as a promotion's new revision is)."""
        return self.distinct_refs / max(1, self.lru.cold_stalls)

    def summary(self) -> dict[str, float]:
        numbers: dict[str, float] = {
            "policies": self.trace.policies,
            "requests": self.trace.requests,
            "zipf": self.trace.zipf,
            "diurnal": self.trace.diurnal,
            "seed": self.trace.seed,
            "gpu_slots": self.engine.gpu_slots,
            "cpu_slots": self.engine.cpu_slots,
            "virtual_s": self.wave.duration_s,
            "sim_stall_ratio": self.stall_ratio,
            "belady_stall_ratio": self.belady_ratio,
            "gap_closed": self.gap_closed,
            "first_request_ratio": self.first_request_ratio,
        }
        for result in (self.wave, self.lru):
            for name, value in _metrics(result).items():
                numbers[f"{result.policy}_{name}"] = value
        return numbers


def _metrics(result: PolicyResult) -> dict[str, float]:
    return {
        "hit_ratio": result.hit_ratio,
        "cold_stalls": result.cold_stalls,
        "warm_stalls": result.warm_stalls,
        "p50_wait_ms": result.p50_wait_ms,
        "p99_wait_ms": result.p99_wait_ms,
        "p999_wait_ms": result.p999_wait_ms,
        "loads_per_s": result.loads_per_s,
        "fetches_per_s": result.fetches_per_s,
    }


# --- the trace ------------------------------------------------------------------------------------


class ZipfSampler:
    """Ranks 1..n with P(k) proportional to k**-exponent: O(1) per draw, no table (rejection-inversion,
    Hormann & Derflinger 1996, as in Apache Commons RNG's RejectionInversionZipfSampler)."""

    def __init__(self, n: int, exponent: float, rng: random.Random) -> None:
        if n < 1 or exponent <= 0:
            raise ValueError(f"a Zipf law needs n >= 1 and exponent > 0, got n={n}, exponent={exponent}")
        self._n = n
        self._exponent = exponent
        self._rng = rng
        self._h_integral_x1 = self._h_integral(1.5) - 1.0
        self._h_integral_n = self._h_integral(n + 0.5)
        self._s = 2.0 - self._h_integral_inverse(self._h_integral(2.5) - self._h(2.0))

    def draw(self) -> int:
        while True:
            u = self._h_integral_n + self._rng.random() * (self._h_integral_x1 - self._h_integral_n)
            x = self._h_integral_inverse(u)
            k = min(max(int(x + 0.5), 1), self._n)
            if k - x <= self._s or u >= self._h_integral(k + 0.5) - self._h(k):
                return k

    def _h(self, x: float) -> float:
        return math.exp(-self._exponent * math.log(x))

    def _h_integral(self, x: float) -> float:
        log_x = math.log(x)
        return _expm1_over((1.0 - self._exponent) * log_x) * log_x

    def _h_integral_inverse(self, x: float) -> float:
        t = max(-1.0, x * (1.0 - self._exponent))
        return math.exp(_log1p_over(t) * x)


def _log1p_over(x: float) -> float:
    """log1p(x) / x, continuous at 0."""
    return math.log1p(x) / x if abs(x) > 1e-8 else 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))


def _expm1_over(x: float) -> float:
    """expm1(x) / x, continuous at 0."""
    return math.expm1(x) / x if abs(x) > 1e-8 else 1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))


_RANKS_MIB = (8.0, 16.0, 32.0, 64.0)  # adapter sizes by LoRA rank (a 7B-class base, a few target modules)


class _Catalog:
    """Who holds each popularity rank (drift swaps them) and each policy's serving revision. Only the
    policies the trace touches are ever named."""

    def __init__(self) -> None:
        self._policy_at: dict[int, int] = {}  # rank -> policy id, where drift moved it (else rank - 1)
        self._refs: dict[int, str] = {}
        self._revisions: dict[int, int] = {}
        self.sizes_mib: dict[str, float] = {}

    def policy_at(self, rank: int) -> int:
        return self._policy_at.get(rank, rank - 1)

    def swap(self, rank_a: int, rank_b: int) -> None:
        policy_a, policy_b = self.policy_at(rank_a), self.policy_at(rank_b)
        self._policy_at[rank_a], self._policy_at[rank_b] = policy_b, policy_a

    def ref(self, policy: int) -> str:
        ref = self._refs.get(policy)
        if ref is None:
            ref = self._name(policy)
        return ref

    def promote(self, policy: int) -> tuple[str, str]:
        old = self.ref(policy)
        self._revisions[policy] = self._revisions.get(policy, 1) + 1
        del self._refs[policy]
        return old, self.ref(policy)

    def _name(self, policy: int) -> str:
        ref = f"t{policy % 1000}/p{policy}@r{self._revisions.get(policy, 1)}"
        self._refs[policy] = ref
        # A revision keeps its policy's LoRA rank; a multiplicative hash spreads ranks over policies.
        self.sizes_mib[ref] = _RANKS_MIB[(policy * 2654435761 >> 16) % len(_RANKS_MIB)]
        return ref


_BASE, _BURST, _DRIFT, _PROMOTE = range(4)  # trace event kinds, in tie-break order


def make_trace(spec: TraceSpec) -> Trace:
    """The request trace for `spec`: the same seed gives the same trace."""
    rng = random.Random(spec.seed)
    zipf = ZipfSampler(spec.policies, spec.zipf, rng)
    catalog = _Catalog()
    duration = spec.requests / spec.rate_per_s
    bursts = int(spec.requests * spec.burst_share) // spec.burst_size if spec.burst_size > 0 else 0
    base = spec.requests - bursts * spec.burst_size

    arrivals = _poisson(rng, base / duration, base, spec.diurnal, spec.day_s)
    events: list[tuple[float, int, int]] = [(t, _BASE, 0) for t in arrivals]
    for _ in range(bursts):
        start = rng.uniform(0.0, max(0.0, duration - spec.burst_s))
        policy = rng.randrange(spec.policies)
        events += [(start + rng.uniform(0.0, spec.burst_s), _BURST, policy) for _ in range(spec.burst_size)]
    events += [(t, _DRIFT, 0) for t in _poisson_until(rng, spec.drift_per_s, duration)]
    events += [(t, _PROMOTE, 0) for t in _poisson_until(rng, spec.promotions_per_s, duration)]
    events.sort()

    times: list[float] = []
    refs: list[str] = []
    promotions: list[Promotion] = []
    for at, kind, policy in events:
        if kind == _BASE:
            times.append(at)
            refs.append(catalog.ref(catalog.policy_at(zipf.draw())))
        elif kind == _BURST:
            times.append(at)
            refs.append(catalog.ref(policy))
        elif kind == _DRIFT:
            catalog.swap(zipf.draw(), rng.randint(1, spec.policies))
        else:
            old, new = catalog.promote(catalog.policy_at(zipf.draw()))
            promotions.append(Promotion(at, old, new))
    return Trace(times, refs, promotions, catalog.sizes_mib, duration)


def _poisson(rng: random.Random, rate: float, count: int, diurnal: float, day_s: float) -> list[float]:
    """`count` arrivals at `rate` on average, modulated by (1 + diurnal * sin(2 pi t / day_s)): drawn at
    the peak rate and thinned (Lewis & Shedler), so a flat rate draws exactly as before."""
    times: list[float] = []
    now = 0.0
    peak = rate * (1.0 + diurnal)
    while len(times) < count:
        now += rng.expovariate(peak)
        if not diurnal or rng.random() * (1.0 + diurnal) <= 1.0 + diurnal * math.sin(
            2 * math.pi * now / day_s
        ):
            times.append(now)
    return times


def _poisson_until(rng: random.Random, rate: float, until: float) -> list[float]:
    times, now = [], 0.0
    while rate > 0:
        now += rng.expovariate(rate)
        if now >= until:
            break
        times.append(now)
    return times


# --- the engine -----------------------------------------------------------------------------------


_NOTHING: Mapping[str, Any] = MappingProxyType({})


class _Engine:
    """One engine's tiers in virtual time: what is where, when each transfer lands, who waits, and the
    tallies. It executes waves; which waves is the scheduler's business. Each tier is a dict kept in
    least-recently-used-first order (the LRU baseline reads it)."""

    def __init__(self, spec: EngineSpec, sizes_mib: dict[str, float]) -> None:
        self.spec = spec
        self.sizes_mib = sizes_mib
        self.gpu: dict[str, float] = {}  # ref -> when it becomes usable
        self.cpu: dict[str, float] = {}  # ref -> when its bytes have arrived
        self.fetched_at: dict[str, float] = {}  # when a GPU resident's bytes had arrived from the store
        self.in_flight: set[str] = set()  # GPU loads that may still be running
        self.lanes = [0.0] * spec.lanes  # when each transfer lane is next free (a heap)
        self.waiting: dict[str, list[float]] = {}  # ref -> arrival times, oldest first
        self.waits: list[float] = []
        self.hits = self.cold = self.warm = self.loads = self.fetches = self.waves = 0

    def arrive(self, now: float, ref: str) -> None:
        """A request for `ref`: a hit, a stall on a load in flight, or it waits for a load."""
        ready = self.gpu.get(ref)
        if ready is None:
            self.waiting.setdefault(ref, []).append(now)
        elif ready <= now:
            self.hits += 1
            self.waits.append(0.0)
        else:
            self._stalled(ready - now, self.fetched_at[ref] > now)

    def next_landing(self) -> float:
        """When the first load in flight lands (a slot may then be evictable), if requests wait."""
        if not self.waiting:
            return math.inf
        return min((self.gpu[ref] for ref in self.in_flight if ref in self.gpu), default=math.inf)

    def touch(self, ref: str) -> None:
        """Mark a GPU resident most recently used."""
        self.gpu[ref] = self.gpu.pop(ref)

    def view(
        self,
        now: float,
        servable: Callable[[str], bool],
        demand: Mapping[str, Demand] = _NOTHING,
        sizes_mib: Mapping[str, float] = _NOTHING,
        heat: Callable[[str], int] = no_heat,
    ) -> EngineView:
        self.in_flight = {ref for ref in self.in_flight if self.gpu.get(ref, now) > now}
        return EngineView(
            wave=self.waves + 1,
            capacity=Capacity(self.spec.gpu_slots, self.spec.cpu_slots),
            residency=Residency(self.gpu.keys(), self.cpu.keys()),
            waiting={
                ref: Waiting(len(arrivals), now - arrivals[0]) for ref, arrivals in self.waiting.items()
            },
            loading=self.in_flight,
            servable=servable,
            demand=demand,
            sizes_mib=sizes_mib,
            heat=heat,
        )

    def apply(self, now: float, wave: Wave) -> None:
        self.waves += 1
        for eviction in wave.evict:
            if eviction.source == "gpu":
                del self.gpu[eviction.ref]
                if eviction.to == "cpu":
                    self.cpu[eviction.ref] = now
            else:
                del self.cpu[eviction.ref]
        for load in wave.load:
            self._load(now, load.ref, load.source == "cpu")
        for ref in wave.prefetch:
            # Prefetches use idle transfer lanes only: they never delay a load.
            if self.lanes[0] <= now:
                self.cpu[ref] = self._transfer(now, self._seconds(ref, "store"))
                self.fetches += 1

    def result(self, policy: PolicyName, duration_s: float) -> PolicyResult:
        waits = sorted(self.waits)
        return PolicyResult(
            policy=policy,
            requests=len(waits),
            hits=self.hits,
            cold_stalls=self.cold,
            warm_stalls=self.warm,
            p50_wait_ms=percentile_of_sorted(waits, 0.50) * 1000,
            p99_wait_ms=percentile_of_sorted(waits, 0.99) * 1000,
            p999_wait_ms=percentile_of_sorted(waits, 0.999) * 1000,
            loads=self.loads,
            fetches=self.fetches,
            waves=self.waves,
            duration_s=duration_s,
        )

    def _load(self, now: float, ref: str, from_cpu: bool) -> None:
        if from_cpu:
            fetched = self.cpu.pop(ref)
            ready = self._transfer(max(now, fetched), self._seconds(ref, "cpu"))
        else:
            ready = fetched = self._transfer(now, self._seconds(ref, "store"))
            self.fetches += 1
        self.loads += 1
        self.gpu[ref] = ready
        self.fetched_at[ref] = fetched
        self.in_flight.add(ref)
        for arrived in self.waiting.pop(ref, ()):
            self._stalled(ready - arrived, fetched > arrived)

    def _stalled(self, wait: float, cold: bool) -> None:
        self.waits.append(wait)
        if cold:
            self.cold += 1
        else:
            self.warm += 1

    def _seconds(self, ref: str, source: LoadOrigin) -> float:
        return self.spec.cost.load_ms(source, self.sizes_mib.get(ref, self.spec.cost.default_mib)) / 1000

    def _transfer(self, start: float, duration: float) -> float:
        """Run a transfer on the first free lane; returns when it ends."""
        begin = max(start, heapq.heappop(self.lanes))
        heapq.heappush(self.lanes, begin + duration)
        return begin + duration


def simulate_lru(trace: Trace, spec: EngineSpec) -> PolicyResult:
    """vLLM's policy: each request for an adapter off the GPU loads it at once (a wave of one)."""
    engine = _Engine(spec, trace.sizes_mib)
    retry_at = math.inf  # when a load in flight frees a slot for a request that found none

    def plan(now: float) -> float:
        engine.apply(now, plan_lru(engine.view(now, _always)))
        return engine.next_landing()

    for now, ref in zip(trace.times, trace.refs, strict=True):
        while retry_at <= now:
            retry_at = plan(retry_at)
        engine.arrive(now, ref)
        if ref in engine.waiting:
            retry_at = plan(now)
        if ref in engine.gpu:
            engine.touch(ref)
    while engine.waiting and retry_at < math.inf:
        retry_at = plan(retry_at)
    return engine.result("lru", trace.duration_s)


def _always(ref: str) -> bool:
    return True


def simulate_wave(trace: Trace, spec: EngineSpec) -> PolicyResult:
    """The wave scheduler: a request for an adapter off the GPU takes the urgent path at once
    (`plan_urgent`); every `wave_s` after demand news (a report, a promotion) a rebalancing wave ranks
    both tiers and prefetches. Heat is counted per request, as an engine host counts it."""
    engine = _Engine(spec, trace.sizes_mib)
    sketch = FrequencySketch(spec.gpu_slots + spec.cpu_slots)
    retired: set[str] = set()
    demand: dict[str, Demand] = {}
    counts: dict[str, int] = {}
    next_report = spec.report_s
    news = False
    retry_at = math.inf
    promotions = iter(trace.promotions)
    promotion = next(promotions, None)

    def servable(ref: str) -> bool:
        return ref not in retired

    def view(now: float) -> EngineView:
        return engine.view(now, servable, demand, trace.sizes_mib, sketch.estimate)

    def urgent(now: float) -> None:
        nonlocal retry_at
        engine.apply(now, plan_urgent(view(now), spec.planner))
        retry_at = engine.next_landing()

    def wave(now: float) -> None:
        nonlocal demand, counts, next_report, news
        if now >= next_report:
            demand = fold_demand(demand, counts, spec.report_s, spec.demand)
            counts = {}
            next_report += spec.report_s
            news = True
        if news:
            engine.apply(now, plan_wave(view(now), spec.planner))
            news = False
            if engine.waiting:
                urgent(now)

    def promote(event: Promotion) -> None:
        # The scheduler follows the serving pointer: the policy's demand and its queued requests (they
        # named the policy) move to the new revision; the old one is no longer servable.
        nonlocal demand, news
        retired.add(event.old_ref)
        demand = follow_pointer(demand, event.old_ref, event.new_ref)
        counts[event.new_ref] = counts.get(event.new_ref, 0) + counts.pop(event.old_ref, 0)
        queued = engine.waiting.pop(event.old_ref, [])
        if queued:
            engine.waiting[event.new_ref] = sorted(queued + engine.waiting.get(event.new_ref, []))
            urgent(event.at)
        news = True

    next_wave = spec.wave_s

    def catch_up(until: float) -> None:
        nonlocal promotion, next_wave
        while True:
            promotion_at = promotion.at if promotion is not None else math.inf
            at = min(next_wave, promotion_at, retry_at)
            if at > until:
                return
            if promotion is not None and promotion_at == at:
                promote(promotion)
                promotion = next(promotions, None)
            elif retry_at == at:
                urgent(at)
            else:
                wave(next_wave)
                next_wave += spec.wave_s

    for now, ref in zip(trace.times, trace.refs, strict=True):
        catch_up(now)
        counts[ref] = counts.get(ref, 0) + 1
        sketch.add(ref)
        engine.arrive(now, ref)
        if ref in engine.waiting:
            urgent(now)
        if ref in engine.gpu:
            engine.touch(ref)
    while engine.waiting:
        catch_up(min(retry_at, next_wave))
    return engine.result("wave", trace.duration_s)


def belady_misses(refs: list[str], capacity: int) -> int:
    """Misses of Belady's MIN (evict the adapter needed furthest in the future) with `capacity` slots:
    the fewest store loads of any policy that loads on demand, knowing the whole trace. An adapter needed
    later than everything cached is served in passing, displacing nothing: that only lowers the bound."""
    next_use = [0] * len(refs)
    seen: dict[str, int] = {}
    for at in range(len(refs) - 1, -1, -1):
        next_use[at] = seen.get(refs[at], len(refs))
        seen[refs[at]] = at
    cached: dict[str, int] = {}  # ref -> its next use
    furthest: list[tuple[int, str]] = []  # (-next use, ref), with stale entries skipped on pop
    misses = 0
    for at, ref in enumerate(refs):
        misses += ref not in cached
        cached[ref] = next_use[at]
        heapq.heappush(furthest, (-next_use[at], ref))
        while len(cached) > capacity:
            use, victim = heapq.heappop(furthest)
            if cached.get(victim) == -use:
                del cached[victim]
    return misses


def compare(trace_spec: TraceSpec, engine_spec: EngineSpec, say: Callable[[str], None] = print) -> Comparison:
    """Both policies on the same trace (same seed)."""
    say(f"trace: {trace_spec.requests:,} requests, {trace_spec.policies:,} policies, zipf {trace_spec.zipf}")
    trace = make_trace(trace_spec)
    say("simulating LRU")
    lru = simulate_lru(trace, engine_spec)
    say("simulating the wave scheduler")
    wave = simulate_wave(trace, engine_spec)
    belady = belady_misses(trace.refs, engine_spec.gpu_slots + engine_spec.cpu_slots)
    return Comparison(trace_spec, engine_spec, wave, lru, belady, len(set(trace.refs)))
