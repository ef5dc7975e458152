"""A synthetic but realistic stream of catalog facts: per policy a registration, a run's steps, an
export, an evaluation and a promotion; every tenth policy also rolls back. Encoded up front so the
benchmarks time the log and the folds, not the generator."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from events.catalog import PolicyRegistered, RevisionPromoted, RevisionRolledBack
from events.envelope import Record
from events.evaluation import EvaluationCompleted
from events.log import Encoded
from events.training import RevisionExported, StepCompleted

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SHA = "ab" * 32


def policy_lifecycle(i: int) -> Iterator[Record]:
    policy = f"t{i % 97}/p{i}"
    run = f"t{i % 97}/run-{i}"
    at = T0 + timedelta(seconds=i)
    yield PolicyRegistered.create(policy=policy, base_id="tiny", at=at, source="bench")
    for step in range(1, 4):
        yield StepCompleted.create(
            run=run, policy=policy, step=step, loss=1.0 / step, reward_mean=0.1 * step, at=at
        )
    for rev, parent in (("r1", None), ("r2", "r1")):
        yield RevisionExported.create(
            policy=policy,
            revision=rev,
            base_id="tiny",
            uri=f"s3://mint/{policy}/{rev}",
            sha256=SHA,
            bytes=1_863_680,
            rank=8,
            alpha=16.0,
            targets=["q_proj", "v_proj"],
            parent=parent,
            run=run,
            at=at,
        )
        yield EvaluationCompleted.create(
            policy=policy, revision=rev, suite="smoke", suite_version=1, score=0.7, verdict="pass", at=at
        )
        yield RevisionPromoted.create(
            policy=policy, revision=rev, previous=parent, reason="gate passed", at=at
        )
    if i % 10 == 0:
        yield RevisionRolledBack.create(policy=policy, revision="r1", previous="r2", reason="canary", at=at)


def facts(count: int) -> list[Encoded]:
    """Exactly `count` encoded facts, whole lifecycles first."""
    out: list[Encoded] = []
    i = 0
    while len(out) < count:
        for record in policy_lifecycle(i):
            out.append(Encoded.of(record))
            if len(out) == count:
                break
        i += 1
    return out
