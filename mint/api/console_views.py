"""What the console shows of catalog rows: a policy's audit trail and lineage, an engine as one principal
may see it. Pure functions of rows (and of the principal), so each is read and tested without HTTP."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from events.names import tenant_of
from mint.auth.tokens import Principal
from mint.catalog.queries import Catalog
from mint.catalog.rows import (
    CanaryRow,
    EngineRow,
    EvaluationRow,
    PolicyRow,
    RejectionRow,
    RevisionRow,
    ServingMove,
    WaveRow,
)
from mint.evaluation.canary import Seen, seen_under
from mint.serving.liveness import Liveness, heard_age

# What a tenant sees of an engine besides its own adapters: what the engine is, not what it did.
# Its wave counter, load counts and requests in flight add up every tenant's traffic, and a new
# EngineRow field stays the operator's until it is added here.
ENGINE_FIELDS_FOR_TENANTS = (
    "engine",
    "base_id",
    "kind",
    "gpu_slots",
    "cpu_slots",
    "status",
    "registered_at",
    "lost_reason",
)
WAVES_SHOWN = 10


class AuditEntry(msgspec.Struct, frozen=True, omit_defaults=True):
    """One line of a policy's history: what happened, when, why, and the record that caused it."""

    at: str
    what: str
    detail: str
    revision: str | None = None
    id: str | None = None
    causation: str | None = None


class LiveNumbers(msgspec.Struct, frozen=True):
    """One revision's live traffic over a canary's window, as the evaluator judges it."""

    revision: str
    requests: int
    errors: int
    error_rate: float
    scored: int
    score: float | None
    # Its shadow runs scored against the stable answer to the same prompt (the candidate's, in shadow mode).
    pairs: int = 0
    paired_mean_diff: float | None = None
    paired_stderr: float | None = None
    paired_wins: int = 0
    paired_losses: int = 0
    paired_ties: int = 0

    @classmethod
    def of(cls, revision: str, seen: Seen) -> LiveNumbers:
        p = seen.paired
        return cls(
            revision,
            seen.requests,
            seen.errors,
            seen.error_rate,
            seen.scored,
            seen.score,
            p.pairs,
            p.mean_diff,
            p.stderr,
            p.wins,
            p.losses,
            p.ties,
        )


class CanaryPanel(msgspec.Struct, frozen=True):
    """The running canary, and both revisions' live numbers side by side."""

    canary: CanaryRow
    candidate: LiveNumbers
    stable: LiveNumbers


def canary_panel(view: Catalog, policy: PolicyRow) -> CanaryPanel | None:
    canary = view.running_canary(policy)
    if canary is None:
        return None
    served = {t.revision: t for t in view.canary_traffic(canary.canary)}

    def live(revision: str, paired_against: str | None = None) -> LiveNumbers:
        return LiveNumbers.of(revision, seen_under(served.get(revision), paired_against))

    return CanaryPanel(canary, live(canary.revision, canary.stable), live(canary.stable))


class LineageNode(msgspec.Struct, frozen=True):
    id: str
    run: str | None
    served: bool
    pointer: bool


class LineageEdge(msgspec.Struct, frozen=True):
    parent: str = msgspec.field(name="from")
    child: str = msgspec.field(name="to")


class Lineage(msgspec.Struct, frozen=True):
    nodes: list[LineageNode]
    edges: list[LineageEdge]


def _exported(r: RevisionRow) -> AuditEntry:
    run = f"run {r.run}" if r.run else "no run (exported by a producer)"
    parent = f", parent {r.parent}" if r.parent else ""
    return AuditEntry(at=r.exported_at, what="exported", revision=r.revision, detail=f"{run}{parent}")


def _evaluated(e: EvaluationRow) -> AuditEntry:
    return AuditEntry(
        at=e.at,
        what=f"evaluated: {e.verdict}",
        revision=e.revision,
        detail=f"{e.suite} v{e.suite_version} score {e.score:.4g}",
        id=e.id,
    )


def _moved(m: ServingMove) -> AuditEntry:
    return AuditEntry(
        at=m.at,
        what=m.kind,
        revision=m.revision,
        detail=f"from {m.previous or '-'}: {m.reason}",
        id=m.id,
        causation=m.causation,
    )


def _rejected(r: RejectionRow) -> AuditEntry:
    return AuditEntry(
        at=r.at, what=f"{r.command_type} rejected", detail=r.reason, id=r.id, causation=r.command_id
    )


def audit(
    policy: PolicyRow,
    revisions: Sequence[RevisionRow],
    evaluations: Sequence[EvaluationRow],
    serving: Sequence[ServingMove],
    rejections: Sequence[RejectionRow],
) -> list[AuditEntry]:
    """A policy's history from its projection rows, oldest first (a stable sort: rows of one instant
    keep the order registered, exported, evaluated, moved, rejected)."""
    trail = [AuditEntry(at=policy.registered_at, what="registered", detail=f"base {policy.base_id}")]
    trail += [_exported(r) for r in revisions]
    trail += [_evaluated(e) for e in evaluations]
    trail += [_moved(m) for m in serving]
    trail += [_rejected(r) for r in rejections]
    return sorted(trail, key=lambda entry: entry.at)


def lineage(policy: PolicyRow, revisions: Sequence[RevisionRow]) -> Lineage:
    """The revisions as a tree (parent to child), marking those ever served and the one served now."""
    return Lineage(
        nodes=[
            LineageNode(
                id=r.revision,
                run=r.run,
                served=r.revision in policy.served,
                pointer=r.revision == policy.pointer,
            )
            for r in revisions
        ],
        edges=[LineageEdge(parent=r.parent, child=r.revision) for r in revisions if r.parent],
    )


def _wave_seen(wave: WaveRow, principal: Principal) -> dict[str, Any] | None:
    """The wave with only the adapters the principal sees; None when it moved none of them (another
    tenant's wave is not news). The operator sees every wave whole."""
    load, keep, evict = (
        [ref for ref in refs if principal.sees(tenant_of(ref))] for refs in (wave.load, wave.keep, wave.evict)
    )
    if not (principal.operator or load or keep or evict):
        return None
    return {**msgspec.to_builtins(wave), "load": load, "keep": keep, "evict": evict}


def engine_seen(
    view: Catalog,
    engine: EngineRow,
    principal: Principal,
    in_flight: Mapping[str, int],
    *,
    liveness: Liveness | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One engine as `principal` may see it: a tenant sees what the engine is, whether it is alive
    (`liveness`: up, stale past T1, lost past T2 or once declared; `heard_s`: seconds since its last
    heartbeat, None for an engine that never heartbeats) and its own adapters (resident, moved by a
    wave, failed to load); the operator also the engine-wide counts, where it serves, and the
    requests in flight (`in_flight` here by engine, or what the engine last reported, the larger)."""

    def mine(policy: str) -> bool:
        return principal.sees(tenant_of(policy))

    resident = [r for r in view.residency(engine.engine) if mine(r.policy)]
    waves = [w for w in (_wave_seen(w, principal) for w in view.waves(engine.engine, WAVES_SHOWN)) if w]
    row: dict[str, Any] = msgspec.to_builtins(engine)
    if principal.operator:
        row["in_flight"] = max(in_flight.get(engine.engine, 0), engine.in_flight)
    else:
        row = {field: row[field] for field in ENGINE_FIELDS_FOR_TENANTS}
    now = now or datetime.now(UTC)
    age = heard_age(engine, now)
    return {
        **row,
        "liveness": (liveness or Liveness.from_env()).state(engine, now),
        "heard_s": None if age is None else round(age, 1),
        "tiers": dict(Counter(r.tier for r in resident)),
        "resident": msgspec.to_builtins(resident),
        "waves": waves,
        "failures": msgspec.to_builtins([f for f in view.load_failures(engine.engine) if mine(f.policy)]),
    }
