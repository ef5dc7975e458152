"""Training records. Run-level records are keyed by run (`tenant/run-id`); per-policy progress and
exports are keyed by policy so they sit in the policy's history."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from events.envelope import Command, Fact
from events.names import Count, Name, PolicyName, Rank, RevisionId, StepNumber, Steps

Algorithm = Literal["grpo", "sft"]


def unique_policies(policies: list[str]) -> None:
    """A run trains each policy once: a policy listed twice would only fail once the run starts."""
    repeated = sorted({p for p in policies if policies.count(p) > 1})
    if repeated:
        raise ValueError(f"policies: {', '.join(repeated)} listed more than once")
    if not policies:
        raise ValueError("policies: a run trains at least one policy")


class StartTraining(Command, kw_only=True, frozen=True):
    KEY_FIELD: ClassVar[str] = "run"
    run: PolicyName
    policies: list[PolicyName]
    base_id: Name
    algo: Algorithm
    task: str
    steps: Steps
    config: dict[str, Any] = {}

    def __post_init__(self) -> None:
        super().__post_init__()
        unique_policies(self.policies)


class TrainingStarted(Fact, kw_only=True, frozen=True):
    """Carries everything needed to resume the run after a crash: task and config included."""

    KEY_FIELD: ClassVar[str] = "run"
    run: PolicyName
    policies: list[PolicyName]
    base_id: Name
    algo: Algorithm
    task: str
    steps: Steps
    config: dict[str, Any] = {}

    def __post_init__(self) -> None:
        super().__post_init__()
        unique_policies(self.policies)


class StepCompleted(Fact, kw_only=True, frozen=True):
    KEY_FIELD: ClassVar[str] = "policy"
    run: PolicyName
    policy: PolicyName
    step: StepNumber
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
    bytes: Count
    rank: Rank
    alpha: float
    targets: list[str]
    parent: RevisionId | None = None
    run: PolicyName | None = None


class TrainingFinished(Fact, kw_only=True, frozen=True):
    KEY_FIELD: ClassVar[str] = "run"
    run: PolicyName
    steps: StepNumber


class TrainingFailed(Fact, kw_only=True, frozen=True):
    """With `policy`: that policy failed and left the run, which goes on. Without: the run failed."""

    KEY_FIELD: ClassVar[str] = "run"
    run: PolicyName
    reason: str
    policy: PolicyName | None = None
