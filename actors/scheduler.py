"""The wave scheduler: plans each engine's residency from aggregated demand, as WavePlanned facts.

It is the single writer of WavePlanned. It folds the catalog (engines, residency, serving pointers,
revision sizes) like every actor, keeps per-engine demand rates in memory (a soft signal, rebuilt from
the next reports after a restart), and answers each ReportDemand — and each pointer move — with the
planner's next wave for the engines concerned (mint/serving/planner.py says how it chooses).

It also judges engine hosts' liveness, from a timer beside its loop: an engine whose latest heartbeat
is older than T2 (mint/serving/liveness.py) is declared EngineLost, once per silence and only by the
replica that owns the engine's partition. Every replica that folds the loss re-plans the adapters
the lost engine held or was to load onto the other live engines of its base (each replica writing
the waves of the engines it owns).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

import anyio

from actors.faults import NO_FAULTS, Faults
from actors.progress import passed
from actors.runtime import StoreActor
from events.catalog import RevisionPromoted, RevisionRolledBack
from events.envelope import Record
from events.log import EventLog
from events.serving import AdapterLoaded, AdapterLoadFailed, EngineLost, ReportDemand, WavePlanned
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.rows import (
    CANARIES,
    ENGINES,
    POLICIES,
    REVISIONS,
    CanaryRow,
    EngineRow,
    PolicyRow,
    RevisionRow,
)
from mint.home import Home
from mint.projection.store import ProjectionStore
from mint.serving.liveness import Liveness, heard_age
from mint.serving.planner import (
    Capacity,
    Demand,
    EngineView,
    Residency,
    Waiting,
    demand_config_for,
    fold_demand,
    follow_pointer,
    plan_wave,
)
from mint.serving.sketch import FrequencySketch

MIB = 1024 * 1024


def _slots(store: ProjectionStore, engine: str) -> int:
    """An engine's slots, GPU and host (1 before its registration is folded)."""
    row: EngineRow | None = store.rows.get(ENGINES, engine)
    return row.gpu_slots + row.cpu_slots if row is not None else 1


class WaveScheduler(StoreActor):
    decode_types = frozenset({"ReportDemand"})

    def __init__(self, home: Home, faults: Faults = NO_FAULTS, liveness: Liveness | None = None) -> None:
        super().__init__("scheduler", CATALOG_FOLD, home.actor_state("scheduler"), faults)
        self.demand: dict[str, dict[str, Demand]] = defaultdict(dict)
        # Per engine, aged request counts remembered across evictions (sized when the engine is first
        # planned); soft like the demand table.
        self.heat: dict[str, FrequencySketch] = {}
        self.loading: dict[str, set[str]] = defaultdict(set)  # planned loads not yet reported done
        self.liveness = liveness or Liveness.from_env()
        self._store: ProjectionStore | None = None
        self._declared: dict[str, str] = {}  # engine -> the `heard_at` of the silence declared lost

    # -- liveness ---------------------------------------------------------------------------------

    def opened(self, store: ProjectionStore) -> None:
        self._store = store

    async def beside(self, log: EventLog) -> None:
        """The liveness timer. Every heartbeat interval it looks for engines silent past T2 in its
        store; only when it finds one does it ask the log's end and fold up to it, so the silence is
        not just this actor's own lag (asking every time would load the broker for nothing)."""
        while True:
            await anyio.sleep(self.liveness.heartbeat_s)
            store = self._store
            if store is None or not self._silent(store, datetime.now(UTC)):
                continue
            now = datetime.now(UTC)  # before the end is read: every heartbeat until now lies below it
            end = await log.end_offsets()
            mine = {p: offset for p, offset in end.items() if self.ownership.epoch(p) is not None}
            with anyio.move_on_after(self.liveness.lost_after_s):
                await self.progress.reached(mine)
            if not passed(self.progress.position, mine):
                continue  # still behind the log: judge nobody from a stale view
            lost = self.declare_lost(store, now)
            if lost:
                await log.append(lost)

    def _silent(self, store: ProjectionStore, now: datetime) -> list[tuple[EngineRow, float, int]]:
        """Engines up in `store`, silent past T2 at `now`, on partitions this replica owns, and not yet
        declared lost for this silence: each with its age and the epoch to decide under."""
        out = []
        for (data,) in store.query("SELECT data FROM engines WHERE status = 'up'"):
            engine: EngineRow = ENGINES.from_data(data)
            age = heard_age(engine, now)
            epoch = self.ownership.epoch(self.ownership.partition_of(engine.engine))
            if age is None or age <= self.liveness.lost_after_s or epoch is None:
                continue
            if self._declared.get(engine.engine) != engine.heard_at:  # else the loop has yet to fold it
                out.append((engine, age, epoch))
        return out

    def declare_lost(self, store: ProjectionStore, now: datetime) -> list[EngineLost]:
        """EngineLost for each engine `_silent` finds, once per silence (its id names the silence, so
        a second copy is a duplicate every fold skips)."""
        out = []
        for engine, age, epoch in self._silent(store, now):
            self._declared[engine.engine] = engine.heard_at or ""
            out.append(
                EngineLost.create(
                    id=f"{engine.engine}/lost/{engine.incarnation}/{engine.heard_at}",
                    source=self.name,
                    engine=engine.engine,
                    reason=f"no heartbeat for {age:.1f}s (lost after {self.liveness.lost_after_s:g}s)",
                    incarnation=engine.incarnation,
                    epoch=epoch,
                )
            )
        return out

    def _replan_lost(self, store: ProjectionStore, lost: EngineLost) -> list[Record]:
        """Waves placing what the lost engine held, or was to load, on the other live engines of its
        base: each adapter on the engine with the fewest resident, as if its requests had waited
        past the deadline (they are loaded first)."""
        row: EngineRow | None = store.rows.get(ENGINES, lost.engine)
        if row is None or row.status != "lost":
            return []  # a loss of an incarnation already replaced
        demand = self.demand.pop(lost.engine, {})
        asked = set(demand)
        refs = self._resident(store, lost.engine) | set(row.holds) | asked
        self.loading.pop(lost.engine, None)
        servable = self._servable(store, asked)
        targets = {
            other.engine: len(self._resident(store, other.engine))
            for other in self._engines(store)
            if other.engine != lost.engine and other.base_id == row.base_id and other.status == "up"
        }
        if not targets:
            return []
        placed: dict[str, set[str]] = defaultdict(set)
        for ref in sorted(r for r in refs if servable(r)):
            target = min(targets, key=lambda e: (targets[e], e))
            targets[target] += 1
            placed[target].add(ref)
        planned: list[Record] = []
        for target, moved in sorted(placed.items()):
            if not self.ownership.decides(target):
                continue  # its owner folds the same loss and plans it
            for ref in moved & asked:
                before = self.demand[target].get(ref)
                rate, burst = demand[ref].rate, demand[ref].burst
                self.demand[target][ref] = (
                    Demand(rate + before.rate, burst + before.burst) if before else Demand(rate, burst)
                )
            waiting = {ref: Waiting(1, float("inf")) for ref in moved}
            planned += self._plan(store, target, f"{lost.id}/wave/{target}", lost, waiting, moved)
        return planned

    def _engines(self, store: ProjectionStore) -> list[EngineRow]:
        names = [name for (name,) in store.query("SELECT engine FROM engines ORDER BY engine")]
        return [row for name in names if (row := store.rows.get(ENGINES, name)) is not None]

    # -- waves ------------------------------------------------------------------------------------

    def on_record(self, record: Record, store: ProjectionStore) -> list[Record]:
        if isinstance(record, ReportDemand):
            engine = record.engine
            self.demand[engine] = fold_demand(
                self.demand[engine],
                record.counts,
                max(record.interval_s, 1e-3),
                demand_config_for(_slots(store, engine)),
            )
            heat = self._heat(store, engine)
            for ref, count in record.counts.items():
                heat.add(ref, count)
            waiting = {
                ref: Waiting(record.counts.get(ref, 1), age)
                for ref, age in record.waiting.items()
                if ref not in self._resident(store, engine)
            }
            return self._plan(store, engine, f"{record.id}/wave", record, waiting, set(record.counts))
        if isinstance(record, AdapterLoaded | AdapterLoadFailed):
            self.loading[record.engine].discard(f"{record.policy}@{record.revision}")
        if isinstance(record, EngineLost):
            return self._replan_lost(store, record)
        if isinstance(record, RevisionPromoted | RevisionRolledBack) and record.previous:
            old, new = f"{record.policy}@{record.previous}", f"{record.policy}@{record.revision}"
            planned: list[Record] = []
            for engine in list(self.demand):
                self.demand[engine] = follow_pointer(self.demand[engine], old, new)
                if old in self._resident(store, engine):
                    planned += self._plan(store, engine, f"{record.id}/wave/{engine}", record, {}, set())
            return planned
        return []

    def _heat(self, store: ProjectionStore, engine: str) -> FrequencySketch:
        heat = self.heat.get(engine)
        if heat is None:
            heat = self.heat[engine] = FrequencySketch(max(1, _slots(store, engine)))
        return heat

    def _resident(self, store: ProjectionStore, engine: str) -> set[str]:
        rows = store.query(
            "SELECT policy, revision FROM residency WHERE engine = ? AND tier = 'gpu'", (engine,)
        )
        return {f"{p}@{r}" for p, r in rows} | self.loading[engine]

    def _servable(self, store: ProjectionStore, asked: set[str]) -> Callable[[str], bool]:
        def servable(ref: str) -> bool:
            if ref in asked:  # a request pinned this revision, or follows the pointer to it
                return True
            policy, _, revision = ref.partition("@")
            row: PolicyRow | None = store.rows.get(POLICIES, policy)
            if row is None or row.status != "active":
                return False
            if row.pointer == revision:
                return True
            # A running canary's candidate answers (or shadows) its slice whenever the slice has
            # requests: an interval without any does not make it unservable, or it would churn.
            canary: CanaryRow | None = store.rows.get(CANARIES, row.canary) if row.canary else None
            return canary is not None and canary.status == "running" and canary.revision == revision

        return servable

    def _plan(
        self,
        store: ProjectionStore,
        engine: str,
        fact_id: str,
        cause: Record,
        waiting: dict[str, Waiting],
        asked: set[str],
    ) -> list[Record]:
        if not self.ownership.decides(engine):
            return []  # its owner plans it: a wave planned here would only mark loads that never come
        row: EngineRow | None = store.rows.get(ENGINES, engine)
        if row is None or row.status != "up":
            return []
        resident = self._resident(store, engine)
        sizes = {}
        for ref in set(self.demand[engine]) | resident | set(waiting) | asked:
            policy, _, revision = ref.partition("@")
            exported: RevisionRow | None = store.rows.get(REVISIONS, policy, revision)
            if exported is not None:
                sizes[ref] = exported.bytes / MIB
        view = EngineView(
            wave=row.wave + 1,
            capacity=Capacity(row.gpu_slots, row.cpu_slots),
            residency=Residency(gpu=frozenset(resident)),
            servable=self._servable(store, asked),
            demand=self.demand[engine],
            waiting={ref: w for ref, w in waiting.items() if ref in sizes},  # never plan an unknown revision
            loading=frozenset(self.loading[engine]),
            sizes_mib=sizes,
            heat=self._heat(store, engine).estimate,
        )
        wave = plan_wave(view)
        evict = [e.ref for e in wave.evict if e.source == "gpu"]
        load = [entry.ref for entry in wave.load]
        prefetch = [ref for ref in wave.prefetch if ref in sizes]
        if not load and not evict and not prefetch:
            return []
        self.loading[engine].update(load)
        return [
            WavePlanned.create(
                id=fact_id,
                cause=cause,
                source=self.name,
                engine=engine,
                wave=wave.number,
                load=load,
                keep=list(wave.keep),
                evict=evict,
                prefetch=prefetch,
            )
        ]
