"""The wave scheduler: plans each engine's residency from aggregated demand, as WavePlanned facts.

It is the single writer of WavePlanned. It folds the catalog (engines, residency, serving pointers,
revision sizes) like every actor, keeps per-engine demand rates in memory (a soft signal, rebuilt from
the next reports after a restart), and answers each ReportDemand — and each pointer move — with the
planner's next wave for the engines concerned (mint/serving/planner.py says how it chooses).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from actors.faults import NO_FAULTS, Faults
from actors.runtime import StoreActor
from events.catalog import RevisionPromoted, RevisionRolledBack
from events.envelope import Record
from events.serving import AdapterLoaded, AdapterLoadFailed, ReportDemand, WavePlanned
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.rows import ENGINES, POLICIES, REVISIONS, EngineRow, PolicyRow, RevisionRow
from mint.home import Home
from mint.projection.store import ProjectionStore
from mint.serving.planner import (
    Capacity,
    Demand,
    EngineView,
    Residency,
    Waiting,
    fold_demand,
    follow_pointer,
    plan_wave,
)

MIB = 1024 * 1024


class WaveScheduler(StoreActor):
    decode_types = frozenset({"ReportDemand"})

    def __init__(self, home: Home, faults: Faults = NO_FAULTS) -> None:
        super().__init__("scheduler", CATALOG_FOLD, home.actor_state("scheduler"), faults)
        self.demand: dict[str, dict[str, Demand]] = defaultdict(dict)
        self.loading: dict[str, set[str]] = defaultdict(set)  # planned loads not yet reported done

    def on_record(self, record: Record, store: ProjectionStore) -> list[Record]:
        if isinstance(record, ReportDemand):
            engine = record.engine
            self.demand[engine] = fold_demand(
                self.demand[engine], record.counts, max(record.interval_s, 1e-3)
            )
            waiting = {
                ref: Waiting(record.counts.get(ref, 1), age)
                for ref, age in record.waiting.items()
                if ref not in self._resident(store, engine)
            }
            return self._plan(store, engine, f"{record.id}/wave", record, waiting, set(record.counts))
        if isinstance(record, AdapterLoaded | AdapterLoadFailed):
            self.loading[record.engine].discard(f"{record.policy}@{record.revision}")
        if isinstance(record, RevisionPromoted | RevisionRolledBack) and record.previous:
            old, new = f"{record.policy}@{record.previous}", f"{record.policy}@{record.revision}"
            planned: list[Record] = []
            for engine in list(self.demand):
                self.demand[engine] = follow_pointer(self.demand[engine], old, new)
                if old in self._resident(store, engine):
                    planned += self._plan(store, engine, f"{record.id}/wave/{engine}", record, {}, set())
            return planned
        return []

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
            return row is not None and row.status == "active" and row.pointer == revision

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
