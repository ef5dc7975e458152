"""Training records. Run-level records are keyed by run (`tenant/run-id`); per-policy progress and
exports are keyed by policy so they sit in the policy's history.

A run is owned through a lease (Temporal's activity attempt token): a trainer replica appends a
`RunClaimed` with the next epoch on the run's partition and, once that one counts, on each of its
policies' partitions; it heartbeats (`RunHeartbeat`, with its progress) while it trains, and its
completion is the run's `TrainingFinished` or `TrainingFailed`. Every fact of the run it appends carries
the lease's epoch and answers to the lease's fence (`lease_scope`), so a fold ignores the steps, exports
and completion of a worker whose lease another has since claimed (events/claims.py).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from events.claims import Claim
from events.envelope import Command, Fact
from events.names import Count, Name, PolicyName, Rank, RevisionId, StepNumber, Steps

Algorithm = Literal["grpo", "sft"]


def lease_scope(run: str) -> str:
    """The fence of run `run`'s lease: its claims' scope, and what its facts' epochs answer to."""
    return f"run:{run}"


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

    def fence(self) -> str:
        return lease_scope(self.run)


class RevisionExported(Fact, kw_only=True, frozen=True):
    """An immutable adapter revision: safetensors in PEFT layout at `uri`, content-addressed; `uri`
    is a key under its policy's name (`.../<tenant>/<name>/...`)."""

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

    def fence(self) -> str:
        return lease_scope(self.run) if self.run is not None else super().fence()

    def foreign_uri(self) -> str | None:
        """Why `uri` is no artifact of this revision's policy, if it is not: a revision pointing at
        another policy's object would serve that tenant's weights under this tenant's name. The
        catalog dead-letters such a fact; the ingest door refuses it."""
        if f"/{self.policy}/" in f"/{self.uri}":
            return None
        return f"{self.uri!r} is not an artifact of {self.policy!r}"


class TrainingFinished(Fact, kw_only=True, frozen=True):
    KEY_FIELD: ClassVar[str] = "run"
    run: PolicyName
    steps: StepNumber

    def fence(self) -> str:
        return lease_scope(self.run)


class TrainingFailed(Fact, kw_only=True, frozen=True):
    """With `policy`: that policy failed and left the run, which goes on. Without: the run failed."""

    KEY_FIELD: ClassVar[str] = "run"
    run: PolicyName
    reason: str
    policy: PolicyName | None = None

    def fence(self) -> str:
        return lease_scope(self.run)


class RunClaimed(Claim, kw_only=True, frozen=True):
    """Worker `replica` took run `run` under `epoch`, on the partition of `on`: the run itself first,
    then each of its policies once the run's claim counted (so two workers racing for one epoch cannot
    split a run's partitions between them). The next epoch is one above the run's latest counted claim."""

    KEY_FIELD: ClassVar[str] = "on"
    run: PolicyName
    on: PolicyName
    replica: Name

    def scope(self) -> str:
        return lease_scope(self.run)


class RunHeartbeat(Fact, kw_only=True, frozen=True):
    """The lease's holder is alive: `step` is the last step whose facts are on the log. A reader takes
    the lease for expired when no heartbeat of the counted epoch has reached it for its lease timeout."""

    KEY_FIELD: ClassVar[str] = "run"
    run: PolicyName
    replica: Name
    step: StepNumber
    interval_s: float

    def fence(self) -> str:
        return lease_scope(self.run)
