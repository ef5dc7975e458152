"""The engine host: one engine's actor. It registers the engine, reconciles the log with what the
engine really holds after a restart, executes the waves planned for it (fetching revisions through the
tiers), serves requests, and reports demand aggregated per interval — never one record per request.

Residency changes as a WavePlanned fact (durable on the log) says; each executed change is then
reported as AdapterLoaded / AdapterEvicted / AdapterLoadFailed with ids derived from the wave, so a
wave repeated after a crash reports nothing twice.

The urgent path: a request that finds its adapter cold does not wait for the scheduler's next wave. The
host asks the same planner the scheduler and the simulator use (`plan_urgent`, over what the engine
holds and this host's own request heat) for a free or evictable slot, appends the AdapterEvicted facts
of what it displaces before unloading it (record before effect), loads, and reports AdapterLoaded;
the scheduler's next wave plans from there. It also reports demand at once, so waves follow.

A host that runs as its own process (`mint actor engine-host`) also heartbeats: an EngineHeartbeat
every interval with its incarnation (this process start), where it serves, the adapters it really
holds and its requests in flight (mint/serving/liveness.py says how readers judge them). If the
scheduler declared it lost while it was silent (a pause, a partition) and it is still here, it
registers again and comes back.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskStatus

from actors.faults import NO_FAULTS, Faults
from actors.runtime import Batch, StoreActor
from events.envelope import Record
from events.log import EventLog
from events.serving import (
    AdapterEvicted,
    AdapterLoaded,
    AdapterLoadFailed,
    EngineHeartbeat,
    EngineLost,
    EngineRegistered,
    ReportDemand,
    RevisionTraffic,
    TrafficObserved,
    WavePlanned,
)
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.rows import POLICIES, RESIDENCY, REVISIONS, PolicyRow, RevisionRow
from mint.evaluation.live import LiveScorers, Tally
from mint.home import Home
from mint.projection.store import ProjectionStore
from mint.serving.engine import Completion, Delta, Engine, EngineError, SamplingParams, closing
from mint.serving.fetch import AdapterFetcher
from mint.serving.models import resolve_model
from mint.serving.planner import Capacity, EngineView, Residency, Waiting, plan_urgent
from mint.serving.sketch import FrequencySketch
from mint.serving.wire import StableAnswer

log = logging.getLogger(__name__)


class ColdLoadTimeout(TimeoutError):
    def __init__(self, ref: str, seconds: float) -> None:
        super().__init__(f"{ref} was not loaded within {seconds:g}s; retry later")
        self.ref = ref
        self.seconds = seconds


def split_ref(ref: str) -> tuple[str, str]:
    policy, _, revision = ref.partition("@")
    return policy, revision


@dataclass(frozen=True)
class Heartbeats:
    """How a host that runs as its own process says it is alive: this process start's `incarnation`,
    the `url` its inference server answers on, one heartbeat every `interval_s`."""

    incarnation: str
    url: str
    interval_s: float = 1.0


class EngineHost(StoreActor):
    def __init__(
        self,
        home: Home,
        engine: Engine,
        engine_id: str,
        fetcher: AdapterFetcher,
        faults: Faults = NO_FAULTS,
        demand_interval_s: float = 1.0,
        load_deadline_s: float = 30.0,
        heartbeats: Heartbeats | None = None,
    ) -> None:
        super().__init__(f"engine-{engine_id}", CATALOG_FOLD, home.actor_state(f"engine-{engine_id}"), faults)
        self.engine = engine
        self.engine_id = engine_id
        self.fetcher = fetcher
        self.demand_interval_s = demand_interval_s
        self.load_deadline_s = load_deadline_s
        self.heartbeats = heartbeats
        self.in_flight = 0  # generations started and not yet ended
        self.silent = False  # set while draining: routers stop choosing this host within T1
        self._demand: Counter[str] = Counter()
        self._traffic: defaultdict[str, Tally] = defaultdict(Tally)
        self._canary_traffic: defaultdict[tuple[str, str], Tally] = defaultdict(Tally)  # (canary, ref)
        self.live = LiveScorers(home.suites, engine.word_token)
        self._waiting_since: dict[str, float] = {}  # cold ref -> when its oldest request began waiting
        self._cold = anyio.Event()  # set when a request waits for a cold adapter: report at once
        self._cold_request = anyio.Event()  # ... and take the urgent path (`_load_urgently_when_asked`)
        self._residency_changed = anyio.Event()
        self._heat = FrequencySketch(max(1, engine.slots + engine.cpu_slots))  # what `plan_urgent` weighs
        self._residency_lock = anyio.Lock()  # one change of residency at a time: a wave or an urgent load
        self._urgent_loads = 0  # numbers this incarnation's urgent loads (their facts' ids)
        self._loading: set[str] = set()
        self._events: EventLog | None = None
        self._store: ProjectionStore | None = None
        self._reconcile: list[Record] = []

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self, log: EventLog, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._events = log
        await log.append([self._registration()])
        await super().run(log, task_status=task_status)

    async def beside(self, log: EventLog) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._report_demand, log)
            tg.start_soon(self._load_urgently_when_asked)
            if self.heartbeats is not None:
                tg.start_soon(self._heartbeat, log, self.heartbeats)

    def _registration(self, cause: EngineLost | None = None) -> EngineRegistered:
        return EngineRegistered.create(
            id=f"{cause.id}/rejoined" if cause else None,
            cause=cause,
            source=self.name,
            engine=self.engine_id,
            base_id=self.engine.base_id,
            kind=self.engine.kind,
            gpu_slots=self.engine.slots,
            cpu_slots=self.engine.cpu_slots,
            incarnation=self.heartbeats.incarnation if self.heartbeats else None,
        )

    def on_record(self, record: Record, store: ProjectionStore) -> list[Record]:
        if (
            isinstance(record, EngineLost)
            and record.engine == self.engine_id
            and self.heartbeats is not None
            and record.incarnation == self.heartbeats.incarnation
        ):
            # Declared lost while silent, yet still here: come back (the scheduler plans from the
            # registration on; what this host holds is in its next heartbeat).
            return [self._registration(record)]
        return []

    async def _heartbeat(self, events: EventLog, heartbeats: Heartbeats) -> None:
        while True:
            if not self.silent:
                # Taken and appended in one step, so a load or eviction reported after it is also
                # after it on the log (one producer keeps the order of its appends on a partition).
                beat = EngineHeartbeat.create(
                    source=self.name,
                    engine=self.engine_id,
                    incarnation=heartbeats.incarnation,
                    base_id=self.engine.base_id,
                    url=heartbeats.url,
                    holds=sorted(self.engine.resident()),
                    in_flight=self.in_flight,
                    interval_s=heartbeats.interval_s,
                )
                try:
                    await events.append([beat])
                except Exception as exc:  # the log may be down a while: the next beat tries again
                    log.warning("%s: heartbeat not appended: %s", self.name, exc)
            await anyio.sleep(heartbeats.interval_s)

    def opened(self, store: ProjectionStore) -> None:
        self._store = store
        self._reconcile = self._reconciliation(store)

    def _reconciliation(self, store: ProjectionStore) -> list[Record]:
        """After a restart the log may say this engine holds adapters it no longer has (a process
        restart empties it): report them evicted, so the scheduler plans from the truth."""
        held = set(self.engine.resident())
        facts: list[Record] = []
        gpu_rows = "SELECT data FROM residency WHERE engine = ? AND tier = 'gpu'"  # the disk cache survives
        for (data,) in store.query(gpu_rows, (self.engine_id,)):
            row = RESIDENCY.from_data(data)
            if f"{row.policy}@{row.revision}" not in held:
                facts.append(
                    AdapterEvicted.create(
                        source=self.name,
                        engine=self.engine_id,
                        policy=row.policy,
                        revision=row.revision,
                        tier=row.tier,
                    )
                )
        return facts

    async def act(self, batch: Batch, store: ProjectionStore) -> list[Record]:
        out: list[Record] = self._reconcile
        self._reconcile = []
        for record in batch.records:
            if isinstance(record, WavePlanned) and record.engine == self.engine_id:
                out += await self._execute(record, store)
        return out

    # -- waves ------------------------------------------------------------------------------------

    async def _execute(self, wave: WavePlanned, store: ProjectionStore) -> list[Record]:
        out: list[Record] = []
        async with self._residency_lock:
            for ref in wave.evict:
                if ref in self.engine.resident():
                    await self.engine.unload(ref)  # drains its in-flight requests first
                    out.append(self._evicted(wave.id, ref))
            for ref in wave.load:
                out.append(await self._load(wave.id, ref, store))
        for ref in wave.prefetch:
            out += await self._prefetch(wave, ref, store)
        return out

    def _evicted(self, plan_id: str, ref: str) -> AdapterEvicted:
        policy, revision = split_ref(ref)
        return AdapterEvicted.create(
            id=f"{plan_id}/evict/{ref}",
            source=self.name,
            engine=self.engine_id,
            policy=policy,
            revision=revision,
            tier="gpu",
        )

    async def _load_urgently_when_asked(self) -> None:
        """The urgent path runs in the host's own task, not in the request that found its adapter cold:
        a load stalled on the artifact store (S3 not answering) then holds no request past its deadline
        (it gets its 503 with Retry-After), and a client that goes away cancels no load. After a load,
        what still waits is planned again at once, as a slot may have come free."""
        while True:
            await self._cold_request.wait()
            self._cold_request = anyio.Event()
            if self._store is not None and await self._load_urgently(self._store) and self._waiting_since:
                self._cold_request.set()

    async def _load_urgently(self, store: ProjectionStore) -> bool:
        """The urgent path (see the module docstring) for every request now waiting on a cold adapter.
        Whether it loaded anything (a load that failed is retried by the next request, not at once)."""
        events = self._events
        if events is None:
            return False
        async with self._residency_lock:
            wave = plan_urgent(self._urgent_view(store))
            if not wave.load:
                return False  # every slot is loading or waited for: the next wave or load frees one
            self._urgent_loads += 1
            plan_id = f"{self.engine_id}/{self.heartbeats.incarnation if self.heartbeats else 'embedded'}"
            plan_id += f"/urgent/{self._urgent_loads}"
            evicted = [self._evicted(plan_id, e.ref) for e in wave.evict if e.source == "gpu"]
            # Shielded: a host stopping mid-load must not leave an adapter unloaded but not reported.
            with anyio.CancelScope(shield=True):
                if evicted:
                    await events.append(evicted)  # durable before the adapters go
                for fact in evicted:
                    await self.engine.unload(f"{fact.policy}@{fact.revision}")  # drains its requests
                self._loading = {load.ref for load in wave.load}
                try:
                    loaded = [
                        await self._load(plan_id, load.ref, store, announce=False) for load in wave.load
                    ]
                finally:
                    self._loading = set()
                await events.append(loaded)
                self._residency_moved()  # a request served by this load finds its AdapterLoaded on the log
            return any(isinstance(fact, AdapterLoaded) for fact in loaded)

    def _urgent_view(self, store: ProjectionStore) -> EngineView:
        now = anyio.current_time()
        gpu = dict.fromkeys(self.engine.resident()).keys()  # an ordered set, as the engine orders it
        cpu = dict.fromkeys(self.engine.host_cached()).keys()
        sizes = {}
        for ref in [*gpu, *cpu, *self._waiting_since]:
            row: RevisionRow | None = store.rows.get(REVISIONS, *split_ref(ref))
            if row is not None:
                sizes[ref] = row.bytes / (1 << 20)
        return EngineView(
            wave=0,  # an urgent load is no wave: its facts' ids say which urgent load it was
            capacity=Capacity(self.engine.slots, self.engine.cpu_slots),
            residency=Residency(gpu, cpu),
            servable=sizes.__contains__,  # never load or keep a revision never exported
            waiting={ref: Waiting(1, now - since) for ref, since in self._waiting_since.items()},
            loading=frozenset(self._loading),
            sizes_mib=sizes,
            heat=self._heat.estimate,
        )

    async def _prefetch(self, wave: WavePlanned, ref: str, store: ProjectionStore) -> list[Record]:
        """Store -> this host's disk cache, so the wave that loads `ref` finds it local."""
        policy, revision = split_ref(ref)
        row: RevisionRow | None = store.rows.get(REVISIONS, policy, revision)
        if row is None or ref in self.engine.resident():
            return []
        began = anyio.current_time()
        try:
            fetched = await self.fetcher.fetch(ref, row.uri, row.sha256, row.rank)
        except Exception as exc:  # a prefetch is advice: a failure is reported, the wave goes on
            log.warning("%s: prefetching %s failed: %s", self.name, ref, exc)
            return []
        if fetched.source == "disk":
            return []  # already local: nothing moved
        return [
            AdapterLoaded.create(
                id=f"{wave.id}/prefetch/{ref}",
                source=self.name,
                engine=self.engine_id,
                policy=policy,
                revision=revision,
                tier="disk",
                ms=(anyio.current_time() - began) * 1000,
                found_in="store",
            )
        ]

    def _residency_moved(self) -> None:
        """Wake the requests waiting for an adapter to be resident."""
        self._residency_changed.set()
        self._residency_changed = anyio.Event()

    async def _load(self, plan_id: str, ref: str, store: ProjectionStore, announce: bool = True) -> Record:
        """Load `ref` and say so in the fact returned; `announce=False` leaves waking the waiting
        requests to the caller (the urgent path does it once the fact is on the log)."""
        policy, revision = split_ref(ref)
        row: RevisionRow | None = store.rows.get(REVISIONS, policy, revision)
        try:
            if row is None:
                raise EngineError(f"{ref} was never exported")
            source = "cpu" if ref in self.engine.host_cached() else None
            began = anyio.current_time()
            fetched = await self.fetcher.fetch(ref, row.uri, row.sha256, row.rank)
            await self.engine.load(fetched.adapter)
            ms = (anyio.current_time() - began) * 1000
        except Exception as exc:  # a bad artifact or a full engine fails this load, not the host
            log.warning("%s: loading %s failed: %s", self.name, ref, exc)
            return AdapterLoadFailed.create(
                id=f"{plan_id}/load/{ref}",
                source=self.name,
                engine=self.engine_id,
                policy=policy,
                revision=revision,
                reason=str(exc),
            )
        if announce:
            self._residency_moved()
        return AdapterLoaded.create(
            id=f"{plan_id}/load/{ref}",
            source=self.name,
            engine=self.engine_id,
            policy=policy,
            revision=revision,
            tier="gpu",
            ms=ms,
            found_in=source or fetched.source,
        )

    # -- serving ----------------------------------------------------------------------------------

    def resolve(self, model: str) -> str:
        """`tenant/name` (follows the serving pointer) or `tenant/name@rev` -> the revision ref."""
        store = self._store
        assert store is not None, "the engine host is not running"
        ref, _ = resolve_model(
            model,
            lambda policy: store.rows.get(POLICIES, policy),
            lambda policy, revision: store.rows.get(REVISIONS, policy, revision) is not None,
        )
        return ref

    async def generate(
        self, model: str, prompt: str, params: SamplingParams, against: StableAnswer | None = None
    ) -> AsyncGenerator[Delta, None]:
        """Stream the completion; count the request, its failure, and (on a sample) its live score,
        for the TrafficObserved reports the evaluator's watch reads. A shadow run comes with the stable
        revision's answer to the same request (`against`): once it ends, both answers are scored with
        the gate suite's live scorer and the pair is counted for the canary's paired verdict. Closing
        it closes the engine's stream at once (its client went away), so the engine stops decoding for
        it."""
        ref = self.resolve(model)
        self._demand[ref] += 1
        self._heat.add(ref)
        policy = self._policy(ref)
        canary = policy.canary if policy else None  # the canary this request is evidence for, if any
        for tally in self._tallies(ref, canary):
            tally.requests += 1
        scorer = self.live.sample(policy.gate, policy.watch) if policy else None
        pair_scorer = self.live.scorer(policy.gate) if policy and policy.gate and against else None
        completion = Completion()
        self.in_flight += 1
        try:
            async with aclosing(self._generate(ref, prompt, params)) as deltas:
                async for delta in deltas:
                    completion.add(delta)
                    yield delta
        except Exception:
            for tally in self._tallies(ref, canary):
                tally.errors += 1
            raise
        finally:
            self.in_flight -= 1
        score = scorer(prompt, completion.text, completion.tokens) if scorer is not None else None
        pair = None
        if pair_scorer is not None and against is not None:
            pair = (
                split_ref(against.ref)[1],
                pair_scorer(prompt, completion.text, completion.tokens),
                pair_scorer(prompt, against.text, against.tokens),
            )
        for tally in self._tallies(ref, canary):
            if score is not None:
                tally.scored += 1
                tally.score_sum += score
            if pair is not None:
                stable, candidate_score, stable_score = pair
                tally.paired[stable].add(candidate_score, stable_score)

    def _tallies(self, ref: str, canary: str | None) -> tuple[Tally, ...]:
        """The tallies of the interval now open that a request counts in: its revision's, and its
        canary's. Looked up again at each count, since a report may have closed the interval the
        request began in."""
        if canary is None:
            return (self._traffic[ref],)
        return self._traffic[ref], self._canary_traffic[canary, ref]

    def _policy(self, ref: str) -> PolicyRow | None:
        assert self._store is not None, "the engine host is not running"
        row: PolicyRow | None = self._store.rows.get(POLICIES, split_ref(ref)[0])
        return row

    async def _generate(self, ref: str, prompt: str, params: SamplingParams) -> AsyncGenerator[Delta, None]:
        if ref not in self.engine.resident():
            self._waiting_since.setdefault(ref, anyio.current_time())
            self._cold.set()
            self._cold_request.set()
            with anyio.move_on_after(self.load_deadline_s):  # an urgent load, or a wave, brings it
                while ref not in self.engine.resident():
                    await self._residency_changed.wait()
            self._waiting_since.pop(ref, None)
            if ref not in self.engine.resident():
                raise ColdLoadTimeout(ref, self.load_deadline_s)
        async with closing(self.engine.generate(prompt, ref, params)) as deltas:
            async for delta in deltas:
                yield delta

    async def _report_demand(self, log: EventLog) -> None:
        while True:
            began = datetime.now(UTC)
            with anyio.move_on_after(self.demand_interval_s):
                await self._cold.wait()  # a cold request does not wait for the interval's end
            self._cold = anyio.Event()
            counts, self._demand = self._demand, Counter()
            traffic, self._traffic = self._traffic, defaultdict(Tally)
            under, self._canary_traffic = self._canary_traffic, defaultdict(Tally)
            canaries: dict[str, dict[str, RevisionTraffic]] = defaultdict(dict)
            for (canary, ref), tally in under.items():
                canaries[canary][ref] = tally.reported()
            now = anyio.current_time()
            waiting = {ref: now - since for ref, since in self._waiting_since.items()}
            interval = (datetime.now(UTC) - began).total_seconds()
            reports: list[Record] = []
            if counts or waiting:
                reports.append(
                    ReportDemand.create(
                        source=self.name,
                        engine=self.engine_id,
                        interval_start=began,
                        interval_s=interval,
                        counts=dict(counts),
                        waiting=waiting,
                    )
                )
            if traffic:
                reports.append(
                    TrafficObserved.create(
                        source=self.name,
                        engine=self.engine_id,
                        interval_start=began,
                        interval_s=interval,
                        traffic={ref: t.reported() for ref, t in traffic.items()},
                        canaries=dict(canaries),
                    )
                )
            if reports:
                await log.append(reports)
