"""Evaluation records, keyed by policy: the gate between an exported revision and serving."""

from __future__ import annotations

from typing import ClassVar, Literal

from events.envelope import Command, Fact
from events.names import Name, PolicyName, RevisionId

Verdict = Literal["pass", "fail"]


class RequestEvaluation(Command, kw_only=True, frozen=True):
    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    revision: RevisionId
    suite: Name


class EvaluationCompleted(Fact, kw_only=True, frozen=True):
    """Candidate and baseline (the revision served at the time) on the same prompts and seeds."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    revision: RevisionId
    suite: Name
    suite_version: int
    score: float
    verdict: Verdict
    baseline_revision: RevisionId | None = None
    baseline_score: float | None = None
    delta: float | None = None
    detail: str = ""
