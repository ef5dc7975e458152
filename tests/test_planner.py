"""The wave planner and the LRU baseline: pure functions from an engine's view to its next wave."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from mint.serving.planner import (
    Capacity,
    Demand,
    DemandConfig,
    EngineView,
    Eviction,
    Load,
    PlannerConfig,
    Residency,
    Waiting,
    Wave,
    fold_demand,
    follow_pointer,
    plan_lru,
    plan_urgent,
    plan_wave,
)


def _view(
    gpu: Iterable[str] = (),
    cpu: Iterable[str] = (),
    *,
    slots: tuple[int, int] = (4, 4),
    rates: Mapping[str, float] | None = None,
    demand: Mapping[str, Demand] | None = None,
    waiting: Mapping[str, Waiting] | None = None,
    pinned: Iterable[str] = (),
    loading: Iterable[str] = (),
    retired: Iterable[str] = (),
    heat: Mapping[str, int] | None = None,
) -> EngineView:
    """A view; `rates` gives a steady demand (rate = burst) per ref. Tiers keep the given order (least
    recently used first)."""
    gone = frozenset(retired)
    steady = {ref: Demand(rate, rate) for ref, rate in (rates or {}).items()}
    return EngineView(
        wave=7,
        capacity=Capacity(*slots),
        residency=Residency(dict.fromkeys(gpu).keys(), dict.fromkeys(cpu).keys()),
        servable=lambda ref: ref not in gone,
        demand={**steady, **(demand or {})},
        waiting=waiting or {},
        pinned=frozenset(pinned),
        loading=frozenset(loading),
        heat=lambda ref: (heat or {}).get(ref, 0),
    )


def _evicted(wave: Wave, source: str) -> dict[str, str]:
    return {eviction.ref: eviction.to for eviction in wave.evict if eviction.source == source}


def _loaded(wave: Wave) -> dict[str, str]:
    return {load.ref: load.source for load in wave.load}


def test_cold_requests_fill_free_slots_and_keep_within_capacity() -> None:
    waiting = {f"t/cold{i}@r1": Waiting(1, 0.01) for i in range(10)}
    wave = plan_wave(_view(["t/a@r1"], slots=(4, 4), rates={"t/a@r1": 1.0}, waiting=waiting))
    assert wave.number == 7
    assert wave.keep == ("t/a@r1",)
    assert len(wave.load) == 3 and set(_loaded(wave)) <= set(waiting)
    assert all(load.source == "store" for load in wave.load)
    # The deferred ones are fetched into the host cache, ready for the next wave.
    assert len(wave.prefetch) == 4 and set(wave.prefetch) <= set(waiting) - set(_loaded(wave))


def test_pinned_adapters_are_never_evicted() -> None:
    pinned = ["t/p1@r1", "t/p2@r1"]
    waiting = {f"t/hot{i}@r1": Waiting(50, 0.9) for i in range(6)}
    rates = {ref: 100.0 for ref in waiting}
    wave = plan_wave(_view([*pinned, "t/x@r1"], slots=(3, 2), rates=rates, waiting=waiting, pinned=pinned))
    assert set(pinned) <= set(wave.keep)
    assert set(_evicted(wave, "gpu")) == {"t/x@r1"}
    # A pin that is not resident is loaded.
    wave = plan_wave(_view(["t/x@r1"], slots=(2, 2), pinned=["t/p1@r1"]))
    assert _loaded(wave) == {"t/p1@r1": "store"}


def test_a_revision_no_longer_served_leaves_in_the_next_wave() -> None:
    old, new = "acme/chat@r1", "acme/chat@r2"
    rates = {old: 50.0, new: 50.0, "t/side@r1": 40.0}
    wave = plan_wave(_view([old], ["t/side@r1", "t/stale@r3"], rates=rates, retired=[old, "t/stale@r3"]))
    assert _evicted(wave, "gpu") == {old: "gone"}
    assert _evicted(wave, "cpu") == {"t/stale@r3": "gone"}
    assert _loaded(wave)[new] == "store"
    # Even pinned and waited for, a retired revision is neither kept nor loaded.
    wave = plan_wave(
        _view(
            [old], rates=rates, retired=[old, "t/gone@r1"], pinned=[old], waiting={"t/gone@r1": Waiting(3, 9)}
        )
    )
    assert old not in wave.keep and "t/gone@r1" not in _loaded(wave) and "t/gone@r1" not in wave.prefetch


def test_a_long_waiting_unpopular_adapter_is_loaded_past_the_deadline() -> None:
    config = PlannerConfig(deadline_s=0.25, transient_share=0.25)
    hot = [f"t/hot{i}@r1" for i in range(4)]
    rates = {ref: 100.0 for ref in hot} | {f"t/busy{i}@r1": 10.0 for i in range(5)}
    crowd = {f"t/busy{i}@r1": Waiting(5, 0.1) for i in range(5)}  # popular cold requests, more than fit
    lonely = {"t/lonely@r1": Waiting(1, 0.1)}
    wave = plan_wave(_view(hot, slots=(4, 4), rates=rates, waiting=crowd | lonely), config)
    assert "t/lonely@r1" not in _loaded(wave), "within the deadline the popular go first"
    lonely = {"t/lonely@r1": Waiting(1, 0.3)}
    wave = plan_wave(_view(hot, slots=(4, 4), rates=rates, waiting=crowd | lonely), config)
    assert list(_loaded(wave)) == ["t/lonely@r1"]


def test_hot_adapters_are_protected_from_a_flood_of_cold_requests() -> None:
    hot = [f"t/hot{i}@r1" for i in range(6)]
    rates = {ref: 10.0 + i for i, ref in enumerate(hot)}
    flood = {f"t/tail{i}@r1": Waiting(1, 0.01) for i in range(20)}
    wave = plan_wave(_view([*hot, "t/one-off@r1", "t/one-off@r2"], slots=(8, 8), rates=rates, waiting=flood))
    assert set(hot) <= set(wave.keep)
    assert set(_evicted(wave, "gpu")) == {"t/one-off@r1", "t/one-off@r2"}
    assert len(wave.load) == 2


def test_hysteresis_a_small_wobble_does_not_swap_adapters() -> None:
    config = PlannerConfig(hysteresis=0.25)
    resident, challenger = "t/a@r1", "t/b@r1"
    wobble = _view([resident], [challenger], slots=(1, 1), rates={resident: 1.0, challenger: 1.2})
    wave = plan_wave(wobble, config)
    assert wave.keep == (resident,) and not wave.load and not wave.evict
    shift = _view([resident], [challenger], slots=(1, 1), rates={resident: 1.0, challenger: 1.5})
    wave = plan_wave(shift, config)
    assert wave.load == (Load(challenger, "cpu"),)
    assert wave.evict == (Eviction(resident, "gpu", "cpu"),)


def test_cost_aware_bigger_adapters_are_worth_more_at_the_same_rate() -> None:
    small, big = "t/small@r1", "t/big@r1"
    view = _view([small], [big], slots=(1, 1), rates={small: 1.0, big: 1.0})
    view = msgspec.structs.replace(view, sizes_mib={small: 8.0, big: 128.0})
    assert _loaded(plan_wave(view)) == {big: "cpu"}


def test_prefetch_goes_to_the_host_cache() -> None:
    hot = ["t/h1@r1", "t/h2@r1"]
    rates = {"t/h1@r1": 9.0, "t/h2@r1": 9.0, "t/next@r1": 2.0, "t/later@r1": 1.0}
    wave = plan_wave(_view(hot, ["t/later@r1"], slots=(2, 2), rates=rates))
    assert wave.prefetch == ("t/next@r1",)
    assert not wave.load and set(wave.keep) == set(hot)
    assert "t/next@r1" not in _evicted(wave, "cpu")


def test_the_host_cache_resists_one_off_requests() -> None:
    # A GPU victim that was asked for once does not push a steadily used adapter out of the host cache.
    steady = [f"t/s{i}@r1" for i in range(4)]
    rates = {ref: 0.5 for ref in steady}
    demand = {"t/once@r1": Demand(0.01, 0.2), "t/new@r1": Demand(0.0, 0.0)}
    config = PlannerConfig(host_window_share=0.0, transient_share=1.0)
    view = _view(
        ["t/once@r1"], steady, slots=(1, 4), rates=rates, demand=demand, waiting={"t/new@r1": Waiting(1, 0.0)}
    )
    wave = plan_wave(view, config)
    assert _loaded(wave) == {"t/new@r1": "store"}
    assert _evicted(wave, "gpu") == {"t/once@r1": "gone"} and not _evicted(wave, "cpu")


def test_an_admission_wave_only_places_waiting_requests() -> None:
    rates = {"t/a@r1": 1.0, "t/hot@r1": 50.0}
    view = _view(
        ["t/a@r1"], ["t/c1@r1", "t/c2@r1"], slots=(2, 3), rates=rates, waiting={"t/w@r1": Waiting(1, 0.0)}
    )
    admission = plan_wave(view, rebalance=False)
    assert _loaded(admission) == {"t/w@r1": "store"}, "no load nobody asked for"
    assert not admission.evict and not admission.prefetch
    rebalance = plan_wave(view)
    assert _loaded(rebalance) == {"t/hot@r1": "store", "t/w@r1": "store"}


def test_loads_in_flight_and_loads_that_requests_wait_on_are_kept() -> None:
    view = _view(
        ["t/loading@r1", "t/waited@r1"],
        slots=(2, 2),
        rates={"t/hot@r1": 100.0},
        loading=["t/loading@r1"],
        waiting={"t/waited@r1": Waiting(2, 0.01)},
    )
    assert set(plan_wave(view).keep) == {"t/loading@r1", "t/waited@r1"}


def test_the_plan_is_deterministic_whatever_the_iteration_order() -> None:
    refs = [f"t/p{i}@r1" for i in range(40)]
    rates = {ref: float(i % 5) for i, ref in enumerate(refs)}  # many ties
    waiting = {ref: Waiting(1, 0.05) for ref in refs[20:30]}
    forward = _view(refs[:8], refs[8:16], slots=(8, 8), rates=rates, waiting=waiting)
    backward = _view(
        reversed(refs[:8]),
        reversed(refs[8:16]),
        slots=(8, 8),
        rates=dict(reversed(rates.items())),
        waiting=dict(reversed(waiting.items())),
    )
    assert plan_wave(forward) == plan_wave(forward) == plan_wave(backward)
    assert plan_wave(forward, rebalance=False) == plan_wave(backward, rebalance=False)


# --- demand ---------------------------------------------------------------------------------------


def test_demand_tracks_a_steady_rate_and_a_burst() -> None:
    config = DemandConfig(steady_s=60.0, burst_s=5.0)
    table: dict[str, Demand] = {}
    for _ in range(600):
        table = fold_demand(table, {"t/steady@r1": 2}, 1.0, config)
    assert abs(table["t/steady@r1"].rate - 2.0) < 0.01
    for _ in range(5):
        table = fold_demand(table, {"t/steady@r1": 2, "t/burst@r1": 20}, 1.0, config)
    burst = table["t/burst@r1"]
    assert burst.burst > 10 > burst.rate, "a burst shows in the burst rate first"


def test_demand_forgets_faded_refs_and_stays_bounded() -> None:
    config = DemandConfig(steady_s=60.0, tracked=10, floor=0.01)
    table = fold_demand({}, {f"t/p{i}@r1": i + 1 for i in range(50)}, 1.0, config)
    assert set(table) == {f"t/p{i}@r1" for i in range(40, 50)}, "the most demanded stay"
    for _ in range(1000):
        table = fold_demand(table, {}, 1.0, config)
    assert table == {}


def test_demand_follows_the_serving_pointer() -> None:
    table = {"acme/chat@r1": Demand(3.0, 4.0), "t/other@r1": Demand(1.0, 1.0)}
    moved = follow_pointer(table, "acme/chat@r1", "acme/chat@r2")
    assert moved == {"acme/chat@r2": Demand(3.0, 4.0), "t/other@r1": Demand(1.0, 1.0)}


# --- the LRU baseline -----------------------------------------------------------------------------


def test_lru_loads_on_demand_evicting_the_least_recently_used() -> None:
    view = _view(
        ["t/old@r1", "t/mid@r1"],
        ["t/c-old@r1", "t/c-new@r1"],
        slots=(2, 2),
        waiting={"t/w@r1": Waiting(1, 0)},
    )
    wave = plan_lru(view)
    assert wave.load == (Load("t/w@r1", "store"),)
    assert wave.keep == ("t/mid@r1",)
    # The GPU victim drops to the host cache, whose least recently used adapter drops out.
    assert wave.evict == (Eviction("t/old@r1", "gpu", "cpu"), Eviction("t/c-old@r1", "cpu", "gone"))
    hit_in_cache = _view(["t/a@r1"], ["t/c@r1"], slots=(1, 1), waiting={"t/c@r1": Waiting(1, 0)})
    assert plan_lru(hit_in_cache).load == (Load("t/c@r1", "cpu"),)
    assert plan_lru(hit_in_cache).evict == (Eviction("t/a@r1", "gpu", "cpu"),)


def test_lru_honours_pins_and_loads_in_flight() -> None:
    view = _view(
        ["t/pin@r1", "t/loading@r1"],
        slots=(2, 0),
        pinned=["t/pin@r1"],
        loading=["t/loading@r1"],
        waiting={"t/w@r1": Waiting(1, 0)},
    )
    wave = plan_lru(view)
    assert not wave.load and not wave.evict, "nothing can make room: the request waits"


# --- invariants, for any view ---------------------------------------------------------------------

_REFS = [f"t/p{i}@r{1 + i % 2}" for i in range(24)]


@st.composite
def _views(draw: st.DrawFn) -> EngineView:
    gpu_slots = draw(st.integers(1, 6))
    cpu_slots = draw(st.integers(0, 6))
    refs = draw(st.permutations(_REFS))
    gpu = refs[: draw(st.integers(0, gpu_slots))]
    cpu = refs[len(gpu) : len(gpu) + draw(st.integers(0, cpu_slots))]
    rate = st.floats(0, 50, allow_nan=False)
    demand = draw(st.dictionaries(st.sampled_from(_REFS), st.builds(Demand, rate, rate), max_size=16))
    wait = st.builds(Waiting, st.integers(1, 9), st.floats(0, 2, allow_nan=False))
    waiting = draw(st.dictionaries(st.sampled_from(_REFS), wait, max_size=8))
    retired = frozenset(draw(st.lists(st.sampled_from(_REFS), max_size=6)))
    return EngineView(
        wave=draw(st.integers(1, 99)),
        capacity=Capacity(gpu_slots, cpu_slots),
        residency=Residency(dict.fromkeys(gpu).keys(), dict.fromkeys(cpu).keys()),
        servable=lambda ref: ref not in retired,
        demand=demand,
        waiting=waiting,
        loading=frozenset(draw(st.lists(st.sampled_from(gpu), max_size=2)) if gpu else ()),
        pinned=frozenset(draw(st.lists(st.sampled_from(_REFS), max_size=3))),
        sizes_mib=draw(st.dictionaries(st.sampled_from(_REFS), st.floats(1, 256), max_size=8)),
    )


def _check_tiers(view: EngineView, wave: Wave) -> None:
    """What holds for any wave of any policy: it names residents correctly and fits the engine."""
    gpu, cpu = set(view.residency.gpu), set(view.residency.cpu)
    loaded, from_gpu, from_cpu = _loaded(wave), _evicted(wave, "gpu"), _evicted(wave, "cpu")
    assert wave.number == view.wave
    assert len(wave.evict) == len({(e.ref, e.source) for e in wave.evict}), "each eviction once"
    assert set(wave.keep) <= gpu and not set(loaded) & gpu
    assert set(wave.keep) | set(from_gpu) == gpu and not set(wave.keep) & set(from_gpu)
    assert set(from_cpu) <= cpu - set(loaded)
    assert all((source == "cpu") == (ref in cpu) for ref, source in loaded.items())
    assert len(wave.keep) + len(loaded) <= view.capacity.gpu_slots
    assert not set(wave.prefetch) & (gpu | cpu | set(loaded))
    host_after = (cpu - set(from_cpu) - set(loaded)) | {r for r, to in from_gpu.items() if to == "cpu"}
    assert len(host_after | set(wave.prefetch)) <= view.capacity.cpu_slots
    assert view.loading & gpu <= set(wave.keep) | {r for r in from_gpu if not view.servable(r)}


@settings(max_examples=200, deadline=None)
@given(_views(), st.booleans())
def test_every_wave_keeps_the_invariants(view: EngineView, rebalance: bool) -> None:
    wave = plan_wave(view, rebalance=rebalance)
    _check_tiers(view, wave)
    gpu = set(view.residency.gpu)
    servable_pins = {ref for ref in view.pinned if view.servable(ref)}
    assert servable_pins & gpu <= set(wave.keep), "pins stay"
    placed = set(wave.keep) | set(_loaded(wave)) | set(wave.prefetch)
    placed |= {r for r, to in _evicted(wave, "gpu").items() if to == "cpu"}
    assert all(view.servable(ref) for ref in placed), "a retired revision goes nowhere but out"
    assert {ref for ref in gpu if not view.servable(ref)} <= set(_evicted(wave, "gpu"))
    if rebalance:
        assert {ref for ref in view.residency.cpu if not view.servable(ref)} <= set(_evicted(wave, "cpu"))
    else:
        assert set(_loaded(wave)) <= set(view.waiting) | servable_pins, "admission waves load what is asked"
    # The starvation bound: overdue requests are loaded whenever what must stay leaves room.
    overdue = {
        ref
        for ref, wait in view.waiting.items()
        if view.servable(ref) and ref not in gpu and wait.oldest_s >= PlannerConfig().deadline_s
    }
    must_stay = {ref for ref in gpu if view.servable(ref) and (ref in view.loading or ref in view.waiting)}
    must_stay |= servable_pins
    if len(must_stay) + len(overdue) <= view.capacity.gpu_slots:
        assert overdue <= set(_loaded(wave))
    assert plan_wave(view, rebalance=rebalance) == wave


@settings(max_examples=200, deadline=None)
@given(_views(), st.dictionaries(st.sampled_from(_REFS), st.integers(0, 15)))
def test_every_urgent_plan_keeps_the_invariants_and_places_all_it_can(
    view: EngineView, heat: dict[str, int]
) -> None:
    view = msgspec.structs.replace(view, heat=lambda ref: heat.get(ref, 0))
    wave = plan_urgent(view)
    _check_tiers(view, wave)
    gpu = set(view.residency.gpu)
    held = gpu & (view.pinned | view.loading | set(view.waiting))
    assert held <= set(wave.keep), "pins, loads in flight and waited-for adapters stay"
    wanted = {ref for ref in view.waiting if ref not in gpu and view.servable(ref)}
    assert set(_loaded(wave)) <= wanted and not wave.prefetch
    room = view.capacity.gpu_slots - len(gpu) + len(gpu - held)
    assert len(wave.load) == min(len(wanted), max(0, room)), "it loads all it can, at once"
    assert plan_urgent(view) == wave


def test_an_urgent_plan_never_drops_a_victim_it_demoted_itself() -> None:
    """Found by the property above in CI: two loads into a full GPU over a one-slot host cache. The
    first victim went gpu -> cpu, then the second victim, worth more, took its host slot, so one wave
    moved a ref gpu -> cpu -> gone. The host slot is now contested only by what was there before."""
    view = _view(
        ["a", "b"],
        slots=(2, 1),
        demand={"a": Demand(1.0, 0.0)},
        waiting={"x": Waiting(1, 0.0), "y": Waiting(1, 0.0)},
    )
    wave = plan_urgent(view)
    _check_tiers(view, wave)
    assert set(_loaded(wave)) == {"x", "y"}
    assert not _evicted(wave, "cpu"), "nothing was in the host cache to drop"
    assert sorted(_evicted(wave, "gpu").values()) == ["cpu", "gone"]


def test_the_urgent_path_loads_into_a_free_slot_at_once() -> None:
    wave = plan_urgent(_view(["a"], slots=(2, 2), waiting={"x": Waiting(1, 0.0)}))
    assert _loaded(wave) == {"x": "store"} and wave.keep == ("a",) and not wave.evict


def test_the_urgent_path_displaces_the_coldest_of_the_least_recently_used() -> None:
    # a is least recently used but hot; b is the coldest; c was used last (outside a sample of 2).
    view = _view(
        ["a", "b", "c"],
        slots=(3, 4),
        waiting={"x": Waiting(1, 0.0)},
        heat={"a": 9, "b": 1, "c": 0},
    )
    wave = plan_urgent(view, PlannerConfig(victim_sample=2))
    assert _loaded(wave) == {"x": "store"} and _evicted(wave, "gpu") == {"b": "cpu"}


def test_the_urgent_path_admits_a_victim_to_a_full_host_cache_only_if_it_is_hotter() -> None:
    cold_victim = _view(["a"], ["h"], slots=(1, 1), waiting={"x": Waiting(1, 0.0)}, heat={"a": 1, "h": 5})
    wave = plan_urgent(cold_victim)
    assert _evicted(wave, "gpu") == {"a": "gone"} and not _evicted(wave, "cpu"), "h stays in the host"
    hot_victim = _view(["a"], ["h"], slots=(1, 1), waiting={"x": Waiting(1, 0.0)}, heat={"a": 7, "h": 5})
    wave = plan_urgent(hot_victim)
    assert _evicted(wave, "gpu") == {"a": "cpu"} and _evicted(wave, "cpu") == {"h": "gone"}


def test_the_urgent_path_waits_when_nothing_is_evictable() -> None:
    view = _view(["a", "b"], slots=(2, 2), waiting={"x": Waiting(3, 0.1)}, pinned=["a"], loading=["b"])
    wave = plan_urgent(view)
    assert not wave.load and not wave.evict and wave.keep == ("a", "b")


@settings(max_examples=100, deadline=None)
@given(_views())
def test_every_lru_wave_keeps_the_invariants(view: EngineView) -> None:
    wave = plan_lru(view)
    _check_tiers(view, wave)
    gpu = set(view.residency.gpu)
    assert view.pinned & gpu <= set(wave.keep)
    wanted = set(view.waiting) - gpu
    assert set(_loaded(wave)) <= wanted
    evictable = gpu - view.pinned - view.loading - set(view.waiting)
    room = view.capacity.gpu_slots - len(gpu) + len(evictable)
    assert len(wave.load) == min(len(wanted), max(0, room)), "it loads all it can, at once"
