"""The catalog fold: one small handler per fact type. The live projector, the catalog actor's
decision state and `mint replay` all run these same handlers, so replay equals live by construction.

Tenancy needs no check here: a record whose names cross its tenant does not decode (events/envelope.py),
and a fact only a decider may write reaches a handler only when it is sealed (events/authority.py)."""

from __future__ import annotations

from typing import TypeVar

from msgspec.structs import replace

from events.catalog import (
    CanaryAborted,
    CanaryPromoted,
    CanaryStarted,
    CommandRejected,
    PolicyConfigured,
    PolicyRegistered,
    PolicyRetired,
    RevisionPromoted,
    RevisionRolledBack,
)
from events.envelope import Record
from events.evaluation import EvaluationCompleted, EvaluationFailed
from events.names import parse_model_ref
from events.serving import (
    AdapterEvicted,
    AdapterLoaded,
    AdapterLoadFailed,
    EngineHeartbeat,
    EngineLost,
    EngineRegistered,
    PairedScores,
    RevisionTraffic,
    TrafficObserved,
    WavePlanned,
)
from events.system import ActorRestarted
from events.training import (
    RevisionExported,
    RunClaimed,
    RunHeartbeat,
    StepCompleted,
    TrainingFailed,
    TrainingFinished,
    TrainingStarted,
)
from mint.catalog.rows import (
    CANARIES,
    CANARY_TRAFFIC,
    CATALOG_TABLES,
    ENGINES,
    EVALUATIONS,
    LOAD_FAILURES,
    POLICIES,
    REJECTIONS,
    RESIDENCY,
    RESTARTS,
    REVISIONS,
    RUNS,
    SERVING_MOVES,
    STEPS,
    TRAFFIC,
    WAVES,
    CanaryRow,
    CanaryTrafficRow,
    EngineRow,
    EvaluationRow,
    LoadFailureRow,
    PolicyRow,
    RejectionRow,
    ResidencyRow,
    RestartRow,
    RevisionRow,
    RunRow,
    ServingMove,
    StepRow,
    TrafficRow,
    WaveRow,
)
from mint.projection.store import Fold, Poison, Rows


def _at(fact: Record) -> str:
    return fact.at.isoformat()


def _policy(fact: Record, rows: Rows, policy: str) -> PolicyRow:
    row: PolicyRow | None = rows.get(POLICIES, policy)
    if row is None:
        raise Poison(f"policy: {policy!r} is not registered")
    return row


def policy_registered(fact: PolicyRegistered, rows: Rows) -> None:
    if rows.get(POLICIES, fact.policy) is not None:
        return  # a second registration decided under another command id: the first one stands
    tenant, name = fact.policy.split("/", 1)
    at = _at(fact)
    rows.put(
        POLICIES,
        PolicyRow(
            fact.policy,
            tenant,
            name,
            fact.base_id,
            fact.promotion,
            "active",
            None,
            (),
            at,
            at,
            gate=fact.gate,
            watch=fact.watch,
            canary_rules=fact.canary,
        ),
    )


def policy_configured(fact: PolicyConfigured, rows: Rows) -> None:
    row = _policy(fact, rows, fact.policy)
    rows.put(
        POLICIES,
        replace(
            row,
            promotion=fact.promotion,
            gate=fact.gate,
            watch=fact.watch,
            canary_rules=fact.canary,
            updated_at=_at(fact),
        ),
    )


def policy_retired(fact: PolicyRetired, rows: Rows) -> None:
    row = _policy(fact, rows, fact.policy)
    rows.put(POLICIES, replace(row, status="retired", updated_at=_at(fact)))


def revision_exported(fact: RevisionExported, rows: Rows) -> None:
    # Only the revision row: a trainer's export may land before or after the catalog actor's
    # PolicyRegistered in the key's order, so nothing derived from both may live in one row.
    foreign = fact.foreign_uri()
    if foreign is not None:
        raise Poison(f"uri: {foreign}")
    if rows.get(REVISIONS, fact.policy, fact.revision) is not None:
        return  # revisions are immutable: a re-export under the same id changes nothing
    rows.put(
        REVISIONS,
        RevisionRow(
            fact.policy,
            fact.revision,
            fact.base_id,
            fact.uri,
            fact.sha256,
            fact.bytes,
            fact.rank,
            fact.alpha,
            tuple(fact.targets),
            fact.parent,
            fact.run,
            _at(fact),
        ),
    )


def evaluation_completed(fact: EvaluationCompleted, rows: Rows) -> None:
    revision = _revision(fact, rows, fact.policy, fact.revision)
    at = _at(fact)
    rows.add(
        EVALUATIONS,
        EvaluationRow(
            fact.id,
            fact.policy,
            fact.revision,
            fact.suite,
            fact.suite_version,
            fact.score,
            fact.verdict,
            fact.baseline_revision,
            fact.baseline_score,
            fact.delta,
            at,
            fact.samples,
            fact.detail,
        ),
    )
    rows.put(
        REVISIONS,
        replace(
            revision,
            eval_suite=fact.suite,
            eval_suite_version=fact.suite_version,
            eval_score=fact.score,
            eval_baseline_score=fact.baseline_score,
            eval_delta=fact.delta,
            eval_verdict=fact.verdict,
            evaluated_at=at,
            eval_baseline_revision=fact.baseline_revision,
            eval_detail=fact.detail,
        ),
    )


def evaluation_failed(fact: EvaluationFailed, rows: Rows) -> None:
    revision = _revision(fact, rows, fact.policy, fact.revision)
    rows.put(
        REVISIONS,
        replace(
            revision,
            eval_suite=fact.suite,
            eval_suite_version=None,
            eval_score=None,
            eval_baseline_score=None,
            eval_delta=None,
            eval_verdict="error",
            evaluated_at=_at(fact),
            eval_baseline_revision=None,
            eval_detail=fact.reason,
        ),
    )


def _revision(fact: Record, rows: Rows, policy: str, revision: str) -> RevisionRow:
    row: RevisionRow | None = rows.get(REVISIONS, policy, revision)
    if row is None:
        raise Poison(f"revision: {policy}@{revision} was never exported")
    return row


def revision_promoted(fact: RevisionPromoted, rows: Rows) -> None:
    row = _policy(fact, rows, fact.policy)
    at = _at(fact)
    rows.put(
        POLICIES, replace(row, pointer=fact.revision, served=(*row.served, fact.revision), updated_at=at)
    )
    rows.add(
        SERVING_MOVES,
        ServingMove(
            fact.id, fact.policy, "promoted", fact.revision, row.pointer, fact.reason, {}, at, fact.causation
        ),
    )


def revision_rolled_back(fact: RevisionRolledBack, rows: Rows) -> None:
    row = _policy(fact, rows, fact.policy)
    if fact.revision not in row.served:
        raise Poison(f"revision: {fact.revision!r} was never served by {fact.policy!r}")
    at = _at(fact)
    keep = len(row.served) - row.served[::-1].index(fact.revision)
    rows.put(POLICIES, replace(row, pointer=fact.revision, served=row.served[:keep], updated_at=at))
    rows.add(
        SERVING_MOVES,
        ServingMove(
            fact.id,
            fact.policy,
            "rolled_back",
            fact.revision,
            row.pointer,
            fact.reason,
            dict(fact.evidence),
            at,
            fact.causation,
        ),
    )


def canary_started(fact: CanaryStarted, rows: Rows) -> None:
    row = _policy(fact, rows, fact.policy)
    at = _at(fact)
    rows.put(
        CANARIES,
        CanaryRow(
            fact.canary,
            fact.policy,
            fact.revision,
            fact.stable,
            fact.rules,
            "running",
            at,
            reason=fact.reason,
            started_by=fact.causation,
        ),
    )
    rows.put(POLICIES, replace(row, canary=fact.canary, updated_at=at))


def _canary_ended(fact: CanaryPromoted | CanaryAborted, rows: Rows, status: str) -> None:
    row = _policy(fact, rows, fact.policy)
    canary: CanaryRow | None = rows.get(CANARIES, fact.canary)
    if canary is None:
        raise Poison(f"canary: {fact.canary!r} never started on {fact.policy!r}")
    at = _at(fact)
    rows.put(
        CANARIES,
        replace(
            canary,
            status=status,
            ended_at=at,
            reason=fact.reason,
            evidence=dict(fact.evidence),
            ended_by=fact.causation,
        ),
    )
    if row.canary == fact.canary:
        rows.put(POLICIES, replace(row, canary=None, updated_at=at))


def canary_promoted(fact: CanaryPromoted, rows: Rows) -> None:
    _canary_ended(fact, rows, "promoted")


def canary_aborted(fact: CanaryAborted, rows: Rows) -> None:
    _canary_ended(fact, rows, "aborted")


def traffic_observed(fact: TrafficObserved, rows: Rows) -> None:
    at = _at(fact)
    for ref, seen in fact.traffic.items():
        policy, _, revision = ref.partition("@")
        row: TrafficRow | None = rows.get(TRAFFIC, policy, revision)
        base = row or TrafficRow(policy, revision, 0, 0, 0, 0.0, at)
        rows.put(TRAFFIC, replace(_plus(base, seen), updated_at=at))
    for canary, served in fact.canaries.items():
        for ref, seen in served.items():
            revision = ref.partition("@")[2]
            under: CanaryTrafficRow | None = rows.get(CANARY_TRAFFIC, canary, revision)
            rows.put(CANARY_TRAFFIC, _plus(under or CanaryTrafficRow(canary, revision), seen))


Counted = TypeVar("Counted", TrafficRow, CanaryTrafficRow)


def _plus(row: Counted, seen: RevisionTraffic) -> Counted:
    """`row`'s counters with one report's added."""
    return replace(
        row,
        requests=row.requests + seen.requests,
        errors=row.errors + seen.errors,
        scored=row.scored + seen.scored,
        score_sum=row.score_sum + seen.score_sum,
        paired=_paired_plus(row.paired, seen.paired),
    )


def _paired_plus(
    tallied: dict[str, PairedScores], reported: dict[str, PairedScores]
) -> dict[str, PairedScores]:
    """Sums per revision paired against: what a revision's shadow runs scored, over every report."""
    if not reported:
        return tallied
    out = dict(tallied)
    for against, add in reported.items():
        was = out.get(against, PairedScores())
        out[against] = PairedScores(
            pairs=was.pairs + add.pairs,
            diff_sum=was.diff_sum + add.diff_sum,
            diff_sq_sum=was.diff_sq_sum + add.diff_sq_sum,
            wins=was.wins + add.wins,
            losses=was.losses + add.losses,
        )
    return out


def command_rejected(fact: CommandRejected, rows: Rows) -> None:
    rows.add(
        REJECTIONS,
        RejectionRow(
            fact.id,
            fact.key,
            fact.tenant,
            fact.command_id,
            fact.command_type,
            fact.reason,
            fact.field,
            _at(fact),
        ),
    )


def training_started(fact: TrainingStarted, rows: Rows) -> None:
    if rows.get(RUNS, fact.run) is not None:
        return
    rows.put(
        RUNS,
        RunRow(
            fact.run,
            fact.tenant,
            fact.base_id,
            fact.algo,
            fact.task,
            dict(fact.config),
            tuple(fact.policies),
            fact.steps,
            "running",
            _at(fact),
            None,
            None,
            decided_by=fact.source,
        ),
    )


def step_completed(fact: StepCompleted, rows: Rows) -> None:
    # Only the step row: the run row is keyed by run, on another partition, and folds never assume
    # order across keys. A run's progress is read from its steps.
    rows.add(
        STEPS,
        StepRow(
            fact.run,
            fact.policy,
            fact.step,
            fact.loss,
            fact.reward_mean,
            fact.reward_std,
            fact.kl,
            fact.tokens_per_s,
            _at(fact),
        ),
    )


def run_claimed(fact: RunClaimed, rows: Rows) -> None:
    # The claim on the run's own partition names the lease's holder; it counts as the store counts
    # claims (an epoch above the last), and the claims on its policies' partitions follow it.
    if fact.on != fact.run:
        return
    run: RunRow | None = rows.get(RUNS, fact.run)
    if run is not None and fact.epoch > run.epoch:
        rows.put(RUNS, replace(run, epoch=fact.epoch, holder=fact.replica))


def run_heartbeat(fact: RunHeartbeat, rows: Rows) -> None:
    # A heartbeat of an older epoch than the run's latest claim never gets here: the store fences it.
    run: RunRow | None = rows.get(RUNS, fact.run)
    if run is not None:
        rows.put(RUNS, replace(run, progress=fact.step, heartbeat_at=_at(fact)))


def training_finished(fact: TrainingFinished, rows: Rows) -> None:
    run: RunRow | None = rows.get(RUNS, fact.run)
    if run is not None:
        rows.put(RUNS, replace(run, status="finished", finished_at=_at(fact)))


def training_failed(fact: TrainingFailed, rows: Rows) -> None:
    run: RunRow | None = rows.get(RUNS, fact.run)
    if run is None:
        return
    if fact.policy is not None:
        rows.put(RUNS, replace(run, failed_policies={**run.failed_policies, fact.policy: fact.reason}))
    else:
        rows.put(RUNS, replace(run, status="failed", finished_at=_at(fact), reason=fact.reason))


def engine_registered(fact: EngineRegistered, rows: Rows) -> None:
    before: EngineRow | None = rows.get(ENGINES, fact.engine)
    at = _at(fact)
    rows.put(
        ENGINES,
        EngineRow(
            fact.engine,
            fact.base_id,
            fact.kind,
            fact.gpu_slots,
            fact.cpu_slots,
            "up",
            before.wave if before else 0,
            at,
            None,
            dict(before.loads) if before else {},
            incarnation=fact.incarnation,
            # A host that heartbeats is judged from its registration on, so one that dies before its
            # first heartbeat is still found silent.
            heard_at=at if fact.incarnation else None,
            # What it held before stays until its first heartbeat says otherwise (the diff below).
            holds=before.holds if before else (),
        ),
    )


def engine_heartbeat(fact: EngineHeartbeat, rows: Rows) -> None:
    """The engine's own word on what it holds: residency follows it (a load it reports, an adapter
    it no longer reports), never a plan. A heartbeat of another incarnation than the one registered
    (a zombie process the new one replaced) says nothing."""
    engine: EngineRow | None = rows.get(ENGINES, fact.engine)
    if engine is None or fact.incarnation != engine.incarnation:
        return
    holds = tuple(sorted(set(fact.holds)))
    at = _at(fact)
    for ref in holds:
        policy, revision = _ref(ref)
        resident: ResidencyRow | None = rows.get(RESIDENCY, fact.engine, policy, revision)
        if resident is None or resident.tier != "gpu":
            rows.put(RESIDENCY, ResidencyRow(fact.engine, policy, revision, "gpu", 0.0, at))
    for ref in set(engine.holds) - set(holds):
        policy, revision = _ref(ref)
        resident = rows.get(RESIDENCY, fact.engine, policy, revision)
        if resident is not None and resident.tier == "gpu":
            rows.delete(RESIDENCY, fact.engine, policy, revision)
    rows.put(
        ENGINES,
        replace(
            engine,
            heard_at=at,
            url=fact.url,
            holds=holds,
            in_flight=fact.in_flight,
            heartbeat_s=fact.interval_s,
        ),
    )


def _ref(ref: str) -> tuple[str, str]:
    try:
        policy, revision = parse_model_ref(ref)
    except ValueError as exc:
        raise Poison(f"holds: {exc}") from None
    if revision is None:
        raise Poison(f"holds: {ref!r} names no revision (tenant/name@rev)")
    return policy, revision


def engine_lost(fact: EngineLost, rows: Rows) -> None:
    # What it last reported holding stays recorded (the scheduler re-plans from it; routers skip a
    # lost engine); its next incarnation's heartbeats and reconciliation correct it.
    engine: EngineRow | None = rows.get(ENGINES, fact.engine)
    if engine is not None and (fact.incarnation is None or fact.incarnation == engine.incarnation):
        rows.put(ENGINES, replace(engine, status="lost", lost_reason=fact.reason))


def wave_planned(fact: WavePlanned, rows: Rows) -> None:
    rows.add(
        WAVES,
        WaveRow(fact.engine, fact.wave, tuple(fact.load), tuple(fact.keep), tuple(fact.evict), _at(fact)),
    )
    engine: EngineRow | None = rows.get(ENGINES, fact.engine)
    if engine is not None and fact.wave > engine.wave:
        rows.put(ENGINES, replace(engine, wave=fact.wave))


def adapter_loaded(fact: AdapterLoaded, rows: Rows) -> None:
    rows.put(RESIDENCY, ResidencyRow(fact.engine, fact.policy, fact.revision, fact.tier, fact.ms, _at(fact)))
    engine: EngineRow | None = rows.get(ENGINES, fact.engine)
    if engine is not None:
        loads = {**engine.loads, fact.tier: engine.loads.get(fact.tier, 0) + 1}
        rows.put(ENGINES, replace(engine, loads=loads))


def adapter_evicted(fact: AdapterEvicted, rows: Rows) -> None:
    resident: ResidencyRow | None = rows.get(RESIDENCY, fact.engine, fact.policy, fact.revision)
    if resident is not None and resident.tier == fact.tier:
        rows.delete(RESIDENCY, fact.engine, fact.policy, fact.revision)


def adapter_load_failed(fact: AdapterLoadFailed, rows: Rows) -> None:
    rows.add(
        LOAD_FAILURES,
        LoadFailureRow(fact.id, fact.engine, fact.policy, fact.revision, fact.reason, _at(fact)),
    )


def actor_restarted(fact: ActorRestarted, rows: Rows) -> None:
    rows.add(RESTARTS, RestartRow(fact.id, fact.actor, fact.attempt, fact.error, fact.backoff_s, _at(fact)))


CATALOG_FOLD = Fold(
    name="catalog",
    tables=CATALOG_TABLES,
    handlers={
        "PolicyRegistered": policy_registered,
        "PolicyConfigured": policy_configured,
        "PolicyRetired": policy_retired,
        "RevisionExported": revision_exported,
        "EvaluationCompleted": evaluation_completed,
        "EvaluationFailed": evaluation_failed,
        "RevisionPromoted": revision_promoted,
        "RevisionRolledBack": revision_rolled_back,
        "CanaryStarted": canary_started,
        "CanaryPromoted": canary_promoted,
        "CanaryAborted": canary_aborted,
        "CommandRejected": command_rejected,
        "TrainingStarted": training_started,
        "StepCompleted": step_completed,
        "RunClaimed": run_claimed,
        "RunHeartbeat": run_heartbeat,
        "TrainingFinished": training_finished,
        "TrainingFailed": training_failed,
        "EngineRegistered": engine_registered,
        "EngineHeartbeat": engine_heartbeat,
        "EngineLost": engine_lost,
        "WavePlanned": wave_planned,
        "AdapterLoaded": adapter_loaded,
        "AdapterEvicted": adapter_evicted,
        "AdapterLoadFailed": adapter_load_failed,
        "TrafficObserved": traffic_observed,
        "ActorRestarted": actor_restarted,
    },
)
