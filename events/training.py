"""Training records. Run-level records are keyed by run (`tenant/run-id`); per-policy progress and
exports are keyed by policy so they sit in the policy's history."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from events.envelope import Command, Fact
from events.names import Name, PolicyName, RevisionId

Algorithm = Literal["grpo", "sft"]


class StartTraining(Command, kw_only=True, frozen=True):
    KEY_FIELD: ClassVar[str] = "run"
    run: PolicyName
    policies: list[PolicyName]
    base_id: Name
    algo: Algorithm
    task: str
    steps: int
    config: dict[str, Any] = {}


class TrainingStarted(Fact, kw_only=True, frozen=True):
    """Carries everything needed to resume the run after a crash: task and config included."""

    KEY_FIELD: ClassVar[str] = "run"
    run: PolicyName
    policies: list[PolicyName]
    base_id: Name
    algo: Algorithm
    task: str
    steps: int
    config: dict[str, Any] = {}


class StepCompleted(Fact, kw_only=True, frozen=True):
    KEY_FIELD: ClassVar[str] = "policy"
    run: PolicyName
    policy: PolicyName
    step: int
    loss: float
    reward_mean: float | None = None
    reward_std: float | None = None
    kl: float | None = None
    tokens_per_s: float | None = None


class RevisionExported(Fact, kw_only=True, frozen=True):
    """An immutable adapter revision: safetensors in PEFT layout at `uri`, content-addressed."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    revision: RevisionId
    base_id: Name
    uri: str
    sha256: str
    bytes: int
    rank: int
    alpha: float
    targets: list[str]
    parent: RevisionId | None = None
    run: PolicyName | None = None


class TrainingFinished(Fact, kw_only=True, frozen=True):
    KEY_FIELD: ClassVar[str] = "run"
    run: PolicyName
    steps: int


class TrainingFailed(Fact, kw_only=True, frozen=True):
    """With `policy`: that policy failed and left the run, which goes on. Without: the run failed."""

    KEY_FIELD: ClassVar[str] = "run"
    run: PolicyName
    reason: str
    policy: PolicyName | None = None
