"""The evaluator actor: the gate between an exported revision and serving, and the watch over what
serves.

It evaluates every export of a policy that has a gate, and every RequestEvaluation, on an engine of
its own: candidate and baseline (the revision served, or the base model when nothing is) answer the
same prompts with the same seeds, and the policy's gate turns both scores into a verdict. The catalog
actor promotes on that verdict (auto) or a person does (manual).

It also folds the engines' TrafficObserved reports into live counters per served revision; when a
revision's error rate or sampled live score regresses past its policy's watch, it appends a Rollback
with the evidence, which the catalog actor decides like any other.

It decides canaries the same way: each traffic report of a canary's candidate or stable revision
re-judges the canary over its window (mint/evaluation/canary.py), and a verdict becomes a
PromoteCanary or AbortCanary carrying its numbers. A canary that sees no traffic is still aborted at
its deadline: a clock beside the loop checks the running ones each second.

An evaluation runs in `act`, before the checkpoint moves past the record that asked for it: a crash
repeats it, and the fact's id derives from that record, so the log keeps one verdict. The price: while
it runs (about a second on the tiny base) the watch reads no new traffic reports; they wait in the
mailbox, so none is lost, and a rollback is at most one evaluation late.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskGroup, TaskStatus

from actors.faults import NO_FAULTS, Faults, InjectedCrash
from actors.runtime import Batch, StoreActor
from events.catalog import (
    AbortCanary,
    CanaryAborted,
    CanaryPromoted,
    CanaryStarted,
    CommandRejected,
    PromoteCanary,
    Rollback,
)
from events.envelope import Record
from events.evaluation import EvaluationCompleted, EvaluationFailed, RequestEvaluation
from events.log import EventLog
from events.serving import TrafficObserved
from events.training import RevisionExported
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.rows import (
    CANARIES,
    CANARY_TRAFFIC,
    POLICIES,
    REVISIONS,
    TRAFFIC,
    CanaryRow,
    PolicyRow,
    RevisionRow,
    TrafficRow,
)
from mint.evaluation.canary import canary_verdict, seen_under
from mint.evaluation.gate import judge
from mint.evaluation.runner import run_suite
from mint.evaluation.suites import REWARD_PREFIX, load_suite, suite_path
from mint.evaluation.watch import regression
from mint.home import Home
from mint.projection.store import ProjectionStore
from mint.serving.engine import Engine
from mint.serving.fetch import AdapterFetcher

log = logging.getLogger(__name__)
SOURCE = "evaluator"
DEADLINE_CHECK_S = 1.0  # how often the clock looks for canaries past their max_duration_s

EngineFactory = Callable[[str], Engine]  # base id -> an engine of the evaluator's own on that base


def torch_engines(home: Home) -> EngineFactory:
    def build(base_id: str) -> Engine:
        from mint.serving.torch_engine import TorchEngine  # torch loads with the first evaluation

        return TorchEngine(home.base(base_id), slots=2, cpu_slots=0)

    return build


class EvaluatorActor(StoreActor):
    decode_types = frozenset({"RequestEvaluation"})
    # A request or an export its partition's previous owner left unanswered is evaluated by the next.
    redecide_types = frozenset({"RequestEvaluation", "RevisionExported"})

    def __init__(
        self,
        home: Home,
        fetcher: AdapterFetcher,
        engines: EngineFactory | None = None,
        faults: Faults = NO_FAULTS,
    ) -> None:
        super().__init__("evaluator", CATALOG_FOLD, home.actor_state("evaluator"), faults)
        self.home = home
        self.fetcher = fetcher
        self.build_engine = engines or torch_engines(home)
        self._engines: dict[str, Engine] = {}
        self._tg: TaskGroup | None = None
        self._store: ProjectionStore | None = None
        self._running: set[str] = set()  # ids of the canaries running, for the deadline clock

    # -- deciding ---------------------------------------------------------------------------------

    def on_record(self, record: Record, store: ProjectionStore) -> list[Record]:
        if isinstance(record, RequestEvaluation):
            refusal = self._refusal(record, store)
            if refusal is None:
                return []
            return [CommandRejected.refusing(record, SOURCE, *refusal)]
        if isinstance(record, TrafficObserved):
            return self._watch(record, store) + self._judge_canaries(record, store)
        if isinstance(record, CanaryStarted):
            self._running.add(record.canary)
        elif isinstance(record, CanaryPromoted | CanaryAborted):
            self._running.discard(record.canary)
        return []

    # -- canaries ---------------------------------------------------------------------------------

    def opened(self, store: ProjectionStore) -> None:
        self._store = store
        self._running = {r[0] for r in store.query("SELECT canary FROM canaries WHERE status = 'running'")}

    def _judge_canaries(self, report: TrafficObserved, store: ProjectionStore) -> list[Record]:
        policies = {ref.partition("@")[0] for ref in report.traffic}
        out: list[Record] = []
        for name in sorted(policies):
            policy: PolicyRow | None = store.rows.get(POLICIES, name)
            if policy is not None and policy.canary is not None:
                out.extend(self._judge(store.rows.get(CANARIES, policy.canary), store, report.at, report))
        return out

    def _judge(
        self, canary: CanaryRow, store: ProjectionStore, now: datetime, cause: Record | None
    ) -> list[Record]:
        if canary.status != "running":
            return []
        candidate = seen_under(
            store.rows.get(CANARY_TRAFFIC, canary.canary, canary.revision), paired_against=canary.stable
        )
        stable = seen_under(store.rows.get(CANARY_TRAFFIC, canary.canary, canary.stable))
        elapsed = (now - datetime.fromisoformat(canary.started_at)).total_seconds()
        verdict = canary_verdict(canary.rules, candidate, stable, elapsed)
        if verdict is None:
            return []
        # One verdict per canary: promotion and abort share the id, so a later report (or the clock)
        # reaching a verdict again repeats the id, and the log (or the catalog's dedupe) keeps the first.
        kind = PromoteCanary if verdict.promote else AbortCanary
        return [
            kind.create(
                id=f"{canary.canary}/verdict",
                cause=cause,
                source=SOURCE,
                policy=canary.policy,
                canary=canary.canary,
                reason=verdict.reason,
                evidence=verdict.evidence,
            )
        ]

    async def beside(self, log: EventLog) -> None:
        while True:
            await anyio.sleep(DEADLINE_CHECK_S)
            store = self._store
            if store is None or not self._running:
                continue
            now = datetime.now(UTC)
            late = [
                record
                for canary in sorted(self._running)
                for record in self._judge(store.rows.get(CANARIES, canary), store, now, None)
                if isinstance(record, AbortCanary)
            ]
            if late:
                await log.append(late)

    def _refusal(self, command: RequestEvaluation, store: ProjectionStore) -> tuple[str, str] | None:
        policy: PolicyRow | None = store.rows.get(POLICIES, command.policy)
        if policy is None or policy.status != "active":
            return f"policy {command.policy!r} is not registered and active", "policy"
        if store.rows.get(REVISIONS, command.policy, command.revision) is None:
            return f"{command.policy}@{command.revision} was never exported", "revision"
        suite = command.suite or (policy.gate.suite if policy.gate else None)
        if suite is None:
            return "name a suite: the policy has no gate to take one from", "suite"
        if not suite.startswith(REWARD_PREFIX) and not suite_path(self.home.suites, suite).is_file():
            return (
                f"suite {suite!r}: not built in (reward:SPEC) and no file "
                f"{suite_path(self.home.suites, suite)}",
                "suite",
            )
        return None

    def _watch(self, report: TrafficObserved, store: ProjectionStore) -> list[Record]:
        out: list[Record] = []
        for ref in report.traffic:
            policy_name, _, revision = ref.partition("@")
            policy: PolicyRow | None = store.rows.get(POLICIES, policy_name)
            if policy is None or policy.watch is None or policy.pointer != revision:
                continue  # only what serves now is watched; pinned old revisions roll nothing back
            traffic: TrafficRow | None = store.rows.get(TRAFFIC, policy_name, revision)
            row: RevisionRow | None = store.rows.get(REVISIONS, policy_name, revision)
            if traffic is None:
                continue
            found = regression(policy.watch, traffic, row.eval_score if row else None)
            if found is None:
                continue
            # One rollback per serving of a revision: the id names the serving, so later reports of
            # the same regression repeat the id and the log (or the catalog's dedupe) keeps one.
            out.append(
                Rollback.create(
                    id=f"watch/{ref}/{len(policy.served)}",
                    cause=report,
                    source=SOURCE,
                    policy=policy_name,
                    reason=found.reason,
                    evidence=found.evidence,
                )
            )
        return out

    # -- evaluating -------------------------------------------------------------------------------

    async def run(self, log: EventLog, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with AsyncExitStack() as stack:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._close_engines)
            try:
                await super().run(log, task_status=task_status)
            finally:
                self._tg.cancel_scope.cancel()

    async def _close_engines(self) -> None:
        engines, self._engines = self._engines, {}
        for engine in engines.values():
            await engine.aclose()

    async def _engine(self, base_id: str) -> Engine:
        if base_id not in self._engines:
            assert self._tg is not None, "the evaluator is not running"
            engine = await anyio.to_thread.run_sync(self.build_engine, base_id)
            await self._tg.start(engine.serve)
            self._engines[base_id] = engine
        return self._engines[base_id]

    async def act(self, batch: Batch, store: ProjectionStore) -> list[Record]:
        # A command was decided once, in on_record: what it did not refuse, it evaluates now.
        refused = {f.command_id for f in batch.decided if isinstance(f, CommandRejected)}
        out: list[Record] = []
        for record in batch.records:
            if isinstance(record, RequestEvaluation) and record.id not in refused:
                policy: PolicyRow = store.rows.get(POLICIES, record.policy)
                suite = record.suite or (policy.gate.suite if policy.gate else "")
                out.append(await self._evaluate(store, record, record.policy, record.revision, suite))
            elif isinstance(record, RevisionExported):
                gated: PolicyRow | None = store.rows.get(POLICIES, record.policy)
                if gated is not None and gated.gate is not None and gated.status == "active":
                    out.append(
                        await self._evaluate(store, record, record.policy, record.revision, gated.gate.suite)
                    )
        return out

    async def _evaluate(
        self, store: ProjectionStore, cause: Record, policy_name: str, revision: str, suite_name: str
    ) -> Record:
        policy: PolicyRow = store.rows.get(POLICIES, policy_name)
        candidate: RevisionRow = store.rows.get(REVISIONS, policy_name, revision)
        served = policy.pointer if policy.pointer != revision else None
        baseline: RevisionRow | None = store.rows.get(REVISIONS, policy_name, served) if served else None
        ident = f"{cause.id}/evaluation"
        try:
            engine = await self._engine(candidate.base_id)
            suite = load_suite(suite_name, self.home.suites, engine.word_token)
            refs = [row for row in (candidate, baseline) if row is not None]
            for row in refs:
                ref = f"{row.policy}@{row.revision}"
                if ref not in engine.resident():
                    fetched = await self.fetcher.fetch(ref, row.uri, row.sha256, row.rank)
                    await engine.load(fetched.adapter)
            try:
                scores = await run_suite(
                    engine, suite, f"{policy_name}@{revision}", f"{policy_name}@{served}" if served else None
                )
            finally:
                for row in refs:
                    await engine.unload(f"{row.policy}@{row.revision}")
        except InjectedCrash:
            raise  # chaos testing: crash as a real fault would, and evaluate again after the restart
        except Exception as exc:  # a missing artifact, a bad suite, a base that is gone: on the record
            log.warning("evaluating %s@%s failed: %s", policy_name, revision, exc)
            return EvaluationFailed.create(
                id=ident,
                cause=cause,
                source=SOURCE,
                policy=policy_name,
                revision=revision,
                suite=suite_name,
                reason=f"{type(exc).__name__}: {exc}",
            )
        verdict, detail = judge(policy.gate, scores.candidate, scores.baseline, served or "the base model")
        return EvaluationCompleted.create(
            id=ident,
            cause=cause,
            source=SOURCE,
            policy=policy_name,
            revision=revision,
            suite=suite.name,
            suite_version=suite.version,
            score=round(scores.candidate, 6),
            verdict=verdict,
            baseline_revision=served,
            baseline_score=round(scores.baseline, 6),
            delta=round(scores.candidate - scores.baseline, 6),
            samples=scores.samples,
            detail=detail,
        )
