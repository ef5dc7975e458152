"""Evaluation records, keyed by policy: the gate between an exported revision and serving."""

from __future__ import annotations

from typing import ClassVar, Literal

from events.envelope import Command, Fact
from events.names import Count, Name, PolicyName, RevisionId

Verdict = Literal["pass", "fail"]


class RequestEvaluation(Command, kw_only=True, frozen=True):
    """Evaluate `revision` on `suite` (default: the suite of the policy's gate) against the revision
    the policy serves when the evaluation runs."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    revision: RevisionId
    suite: Name | None = None


class EvaluationCompleted(Fact, kw_only=True, frozen=True):
    """Candidate and baseline on the same prompts and seeds. The baseline is the revision served at
    the time; with none served (`baseline_revision` null) it is the base model itself. `verdict` is
    the policy's gate applied to both scores (without a gate: pass); `detail` says why in words."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    revision: RevisionId
    suite: Name
    suite_version: Count
    score: float
    verdict: Verdict
    baseline_revision: RevisionId | None = None
    baseline_score: float | None = None
    delta: float | None = None
    samples: Count = 0
    detail: str = ""


class EvaluationFailed(Fact, kw_only=True, frozen=True):
    """The evaluation could not run (unknown suite, unreadable adapter, base not installed, ...).
    The revision stays unpromotable until an evaluation completes."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    revision: RevisionId
    suite: str
    reason: str
