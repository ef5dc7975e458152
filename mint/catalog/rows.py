"""Rows of the catalog projection. Times are ISO-8601 strings of the fact's `at`."""

from __future__ import annotations

from typing import Any

from events.catalog import CanaryRules, Gate, Watch
from events.serving import PairedScores
from mint.projection.table import Row, Table


class PolicyRow(Row, frozen=True):
    policy: str
    tenant: str
    name: str
    base_id: str
    promotion: str
    status: str  # active | retired
    pointer: str | None  # the revision served; always served[-1]
    served: tuple[str, ...]  # revisions served in order; a rollback returns to an earlier one
    registered_at: str
    updated_at: str
    gate: Gate | None = None
    watch: Watch | None = None
    canary_rules: CanaryRules | None = None
    canary: str | None = None  # the id of the canary running now (a CanaryRow)


class RevisionRow(Row, frozen=True):
    policy: str
    revision: str
    base_id: str
    uri: str
    sha256: str
    bytes: int
    rank: int
    alpha: float
    targets: tuple[str, ...]
    parent: str | None
    run: str | None
    exported_at: str
    eval_suite: str | None = None
    eval_suite_version: int | None = None
    eval_score: float | None = None
    eval_baseline_score: float | None = None
    eval_delta: float | None = None
    eval_verdict: str | None = None  # pass | fail | error (the evaluation could not run)
    evaluated_at: str | None = None
    eval_baseline_revision: str | None = None
    eval_detail: str = ""


class ServingMove(Row, frozen=True):
    """One move of a serving pointer, with who caused it and why."""

    id: str
    policy: str
    kind: str  # promoted | rolled_back
    revision: str
    previous: str | None
    reason: str
    evidence: dict[str, float]
    at: str
    causation: str | None


class CanaryRow(Row, frozen=True):
    """One canary of a policy, from its start to its promotion or abort."""

    canary: str
    policy: str
    revision: str
    stable: str
    rules: CanaryRules
    status: str  # running | promoted | aborted
    started_at: str
    ended_at: str | None = None
    reason: str = ""
    evidence: dict[str, float] = {}
    started_by: str | None = None  # the record that caused its start, and its end
    ended_by: str | None = None


class EvaluationRow(Row, frozen=True):
    id: str
    policy: str
    revision: str
    suite: str
    suite_version: int
    score: float
    verdict: str
    baseline_revision: str | None
    baseline_score: float | None
    delta: float | None
    at: str
    samples: int = 0
    detail: str = ""


class TrafficRow(Row, frozen=True):
    """Live traffic of one revision over all its servings. Reports come on the engines' partitions and
    promotions on the policy's, in no order between them: a promotion resetting it would make the
    row depend on that order (a replay would differ from live), so nothing resets it."""

    policy: str
    revision: str
    requests: int
    errors: int
    scored: int
    score_sum: float
    updated_at: str
    paired: dict[str, PairedScores] = {}  # its shadow runs scored against the stable answer, per stable


class CanaryTrafficRow(Row, frozen=True):
    """Live traffic of one revision served under one canary (engine hosts tag what they serve while
    they see the canary running): the canary's evidence. Sums only, like TrafficRow, so a report
    folded before or after its canary's start or end (another partition) gives the same row."""

    canary: str
    revision: str
    requests: int = 0
    errors: int = 0
    scored: int = 0
    score_sum: float = 0.0
    paired: dict[str, PairedScores] = {}


class RunRow(Row, frozen=True):
    run: str
    tenant: str
    base_id: str
    algo: str
    task: str
    config: dict[str, Any]
    policies: tuple[str, ...]
    steps: int
    status: str  # running | finished | failed
    started_at: str
    finished_at: str | None
    reason: str | None
    failed_policies: dict[str, str] = {}
    # The `source` of the TrainingStarted: a trainer resumes only the runs it decided itself.
    decided_by: str = ""
    # The run's lease (events/training.py): the epoch of its latest counted claim, who holds it, the
    # step its holder last reported and when. No holder: nobody has claimed it yet.
    epoch: int = 0
    holder: str = ""
    progress: int = 0
    heartbeat_at: str | None = None


class StepRow(Row, frozen=True):
    run: str
    policy: str
    step: int
    loss: float
    reward_mean: float | None
    reward_std: float | None
    kl: float | None
    tokens_per_s: float | None
    at: str


class EngineRow(Row, frozen=True):
    engine: str
    base_id: str
    kind: str
    gpu_slots: int
    cpu_slots: int
    status: str  # up | lost (an EngineLost said so; a fresh registration makes it up again)
    wave: int
    registered_at: str
    lost_reason: str | None
    loads: dict[str, int] = {}  # adapters loaded so far, by the tier they were loaded into
    # From its heartbeats (an engine host process; all None/empty for an embedded engine): the
    # incarnation that registered last, when it was last heard from (ISO `at` of its latest
    # heartbeat, or of its registration until the first one), where it serves, what it reported
    # holding on the accelerator and its requests in flight then.
    incarnation: str | None = None
    heard_at: str | None = None
    url: str = ""
    holds: tuple[str, ...] = ()
    in_flight: int = 0
    heartbeat_s: float = 0.0


class ResidencyRow(Row, frozen=True):
    engine: str
    policy: str
    revision: str
    tier: str
    load_ms: float
    loaded_at: str


class WaveRow(Row, frozen=True):
    engine: str
    wave: int
    load: tuple[str, ...]
    keep: tuple[str, ...]
    evict: tuple[str, ...]
    at: str


class LoadFailureRow(Row, frozen=True):
    id: str
    engine: str
    policy: str
    revision: str
    reason: str
    at: str


class RejectionRow(Row, frozen=True):
    id: str
    key: str
    tenant: str
    command_id: str
    command_type: str
    reason: str
    field: str | None
    at: str


class RestartRow(Row, frozen=True):
    id: str
    actor: str
    attempt: int
    error: str
    backoff_s: float
    at: str


POLICIES = Table(
    "policies",
    PolicyRow,
    key=("policy",),
    columns=("tenant", "name", "base_id", "status", "pointer"),
    # Each filter the console pages by leads an index that ends in the name, so a filtered page is a
    # range scan in name order, whatever the filter's share of 10^6 policies.
    indexes=(("tenant", "name"), ("status", "policy"), ("base_id", "policy")),
)
REVISIONS = Table("revisions", RevisionRow, key=("policy", "revision"), columns=("exported_at",))
SERVING_MOVES = Table(
    "serving_moves",
    ServingMove,
    key=("id",),
    columns=("policy", "at"),
    indexes=(("policy", "at"),),
    append_only=True,
)
EVALUATIONS = Table(
    "evaluations",
    EvaluationRow,
    key=("id",),
    columns=("policy", "revision", "at"),
    indexes=(("policy", "revision"),),
    append_only=True,
)
CANARIES = Table(
    "canaries",
    CanaryRow,
    key=("canary",),
    columns=("policy", "status", "started_at"),
    indexes=(("policy", "started_at"), ("status",)),
)
TRAFFIC = Table("traffic", TrafficRow, key=("policy", "revision"))
CANARY_TRAFFIC = Table("canary_traffic", CanaryTrafficRow, key=("canary", "revision"))
RUNS = Table("runs", RunRow, key=("run",), columns=("tenant", "status"), indexes=(("tenant",),))
STEPS = Table("steps", StepRow, key=("run", "policy", "step"), append_only=True)
ENGINES = Table("engines", EngineRow, key=("engine",), columns=("status",))
RESIDENCY = Table("residency", ResidencyRow, key=("engine", "policy", "revision"), columns=("tier",))
WAVES = Table("waves", WaveRow, key=("engine", "wave"), append_only=True)
LOAD_FAILURES = Table(
    "load_failures",
    LoadFailureRow,
    key=("id",),
    columns=("engine", "at"),
    indexes=(("engine",),),
    append_only=True,
)
REJECTIONS = Table(
    "rejections", RejectionRow, key=("id",), columns=("key", "at"), indexes=(("key",),), append_only=True
)
RESTARTS = Table("actor_restarts", RestartRow, key=("id",), columns=("actor", "at"), append_only=True)

CATALOG_TABLES = (
    POLICIES,
    REVISIONS,
    SERVING_MOVES,
    EVALUATIONS,
    CANARIES,
    TRAFFIC,
    CANARY_TRAFFIC,
    RUNS,
    STEPS,
    ENGINES,
    RESIDENCY,
    WAVES,
    LOAD_FAILURES,
    REJECTIONS,
    RESTARTS,
)
