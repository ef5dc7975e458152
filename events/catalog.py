"""Catalog records: a policy's registration, its serving pointer, its canaries and its retirement. Keyed
by policy."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from events.envelope import Command, Fact
from events.names import INT64_MAX, SYSTEM_TENANT, Name, PolicyName, RevisionId
from events.serving import unpaired

PromotionMode = Literal["manual", "auto", "canary"]
CanaryMode = Literal["canary", "shadow"]
Share = Annotated[float, Meta(ge=0.0, le=1.0)]
AtLeastOne = Annotated[int, Meta(ge=1, le=INT64_MAX)]


class Gate(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """What a revision must show on `suite` before it may serve: no worse than the revision served
    (or the base, when nothing is served yet) by more than `tolerance`, and at least `min_score`."""

    suite: Name
    tolerance: Annotated[float, Meta(ge=0.0)] = 0.0
    min_score: float | None = None


class Watch(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Live signals that roll a served revision back on their own: its error rate over at least
    `min_requests` requests, or its mean score on sampled live traffic (the gate suite's scorer, on
    `sample_rate` of requests, at least `min_scored` of them) falling more than `max_score_drop`
    below the score its evaluation gave it. Counted from the moment it started serving."""

    max_error_rate: Share = 0.05
    min_requests: AtLeastOne = 20
    sample_rate: Share = 0.25
    max_score_drop: Annotated[float, Meta(ge=0.0)] | None = 0.15
    min_scored: AtLeastOne = 10


class CanaryRules(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How a candidate revision meets live traffic before it serves everyone, and how it is decided.
    "canary" answers `fraction` of the policy's requests from the candidate; "shadow" answers every
    request from the stable revision and runs `fraction` of them on the candidate too, unseen. Once
    the candidate has seen `min_requests`, it is promoted if its live error rate is at most
    `max_error_rate` and its sampled live score at most `max_score_drop` below the stable revision's
    over the same window (in shadow mode, its mean score difference to the stable answers to the same
    prompts, where the gate's suite scored pairs); otherwise it is aborted. Undecided after
    `max_duration_s`, it is aborted."""

    fraction: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.1
    mode: CanaryMode = "canary"
    min_requests: AtLeastOne = 50
    max_duration_s: Annotated[float, Meta(gt=0.0)] = 3600.0
    max_score_drop: Annotated[float, Meta(ge=0.0)] = 0.1
    max_error_rate: Share = 0.05


class RegisterPolicy(Command, kw_only=True, frozen=True):
    """`promotion`: "auto" promotes every revision that passes `gate`; "canary" starts a canary of it
    (with `canary`'s rules, or the defaults); "manual" waits for a Promote. Without a gate, exports
    are evaluated only on request (RequestEvaluation)."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    base_id: Name
    promotion: PromotionMode = "manual"
    gate: Gate | None = None
    watch: Watch | None = None
    canary: CanaryRules | None = None


class ConfigurePolicy(Command, kw_only=True, frozen=True):
    """Change how a policy is promoted and watched; fields left out keep their value."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    promotion: PromotionMode | None = None
    gate: Gate | None = None
    watch: Watch | None = None
    canary: CanaryRules | None = None


class Promote(Command, kw_only=True, frozen=True):
    """Point the policy at `revision`. Refused unless the revision passed its evaluation gate."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    revision: RevisionId
    reason: str = ""


class Rollback(Command, kw_only=True, frozen=True):
    """Return to the revision served before the current one, or to `to_revision` if it was served
    earlier. `evidence` carries the live signals that triggered an automatic rollback."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    to_revision: RevisionId | None = None
    reason: str = ""
    evidence: dict[str, float] = {}


class RetirePolicy(Command, kw_only=True, frozen=True):
    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    reason: str = ""


class StartCanary(Command, kw_only=True, frozen=True):
    """Put `revision` in front of a slice of live traffic (or in the shadow of every request) before it
    serves everyone. Refused unless the revision passed its evaluation, something serves already, and
    no other canary of the policy runs. `rules` left out: the policy's canary rules, or the defaults."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    revision: RevisionId
    rules: CanaryRules | None = None
    reason: str = ""


class PromoteCanary(Command, kw_only=True, frozen=True):
    """Serve the running canary's revision to everyone. `canary` names the canary meant (its id):
    a decision about one canary never lands on a later one; None means whichever runs."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    canary: str | None = None
    reason: str = ""
    evidence: dict[str, float] = {}


class AbortCanary(Command, kw_only=True, frozen=True):
    """Stop the running canary: every request goes to the serving pointer again."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    canary: str | None = None
    reason: str = ""
    evidence: dict[str, float] = {}


class PolicyRegistered(Fact, kw_only=True, frozen=True):
    """v2: `base` became `base_id` and the promotion mode was added (upcast_v1_v2)."""

    KEY_FIELD: ClassVar[str] = "policy"
    v: int = 2
    policy: PolicyName
    base_id: Name
    promotion: PromotionMode = "manual"
    gate: Gate | None = None
    watch: Watch | None = None
    canary: CanaryRules | None = None

    @staticmethod
    def upcast_v1_v2(fields: dict[str, Any]) -> dict[str, Any]:
        """v1 named the base `base` and had no promotion mode (every policy was promoted by hand)."""
        lifted = {k: v for k, v in fields.items() if k != "base"}
        lifted["base_id"] = fields.get("base")
        lifted.setdefault("promotion", "manual")
        return lifted


class PolicyConfigured(Fact, kw_only=True, frozen=True):
    """The policy's promotion mode, gate, watch and canary rules as they now are (all, not a
    difference)."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    promotion: PromotionMode
    gate: Gate | None = None
    watch: Watch | None = None
    canary: CanaryRules | None = None


class RevisionPromoted(Fact, kw_only=True, frozen=True):
    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    revision: RevisionId
    previous: RevisionId | None = None
    reason: str = ""


class RevisionRolledBack(Fact, kw_only=True, frozen=True):
    """The pointer moved back from `previous` to `revision`."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    revision: RevisionId
    previous: RevisionId
    reason: str = ""
    evidence: dict[str, float] = {}


class CanaryStarted(Fact, kw_only=True, frozen=True):
    """A canary of `revision` against `stable` (the pointer then) began; `canary` is its id, which
    with a request's id decides who answers it (mint/catalog/canary.py). Both revisions are judged on
    the traffic engine hosts report under this id (TrafficObserved.canaries). v2: the counters of
    `window_start` carried paired scores (upcast_v1_v2); v3: no `window_start` (upcast_v2_v3), since a
    window of counters since the start also counted what was served before it but reported after."""

    KEY_FIELD: ClassVar[str] = "policy"
    v: int = 3
    policy: PolicyName
    canary: str
    revision: RevisionId
    stable: RevisionId
    rules: CanaryRules
    reason: str = ""

    @staticmethod
    def upcast_v1_v2(fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "window_start": unpaired(fields.get("window_start", {}))}

    @staticmethod
    def upcast_v2_v3(fields: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in fields.items() if name != "window_start"}


class CanaryPromoted(Fact, kw_only=True, frozen=True):
    """The canary ended in its promotion (a RevisionPromoted beside it moves the pointer)."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    canary: str
    revision: RevisionId
    reason: str = ""
    evidence: dict[str, float] = {}


class CanaryAborted(Fact, kw_only=True, frozen=True):
    """The canary ended without serving everyone: by its live evidence, its deadline, a person, or a
    pointer move or retirement that ended it."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    canary: str
    revision: RevisionId
    reason: str = ""
    evidence: dict[str, float] = {}


class PolicyRetired(Fact, kw_only=True, frozen=True):
    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    reason: str = ""


class CommandRejected(Fact, kw_only=True, frozen=True):
    """A command that its deciding actor refused, with the reason and, when one field is at fault,
    its name. Keyed like the command, so it sits next to it in the key's history."""

    KEY_FIELD: ClassVar[str] = "key"
    command_id: str
    command_type: str
    reason: str
    field: str | None = None

    def crossing(self) -> tuple[str, str] | None:
        # The refusal of an infrastructure command (keyed by engine) belongs to the system tenant.
        if self.tenant == SYSTEM_TENANT or self.key.startswith(self.tenant + "/"):
            return None
        return "key", self.key

    @classmethod
    def refusing(cls, command: Command, source: str, reason: str, field: str | None) -> CommandRejected:
        """The refusal of `command`. Its id and time derive from the command's, so deciding the same
        command again (after a crash) yields the same fact, which the log or the folds keep once."""
        return cls.create(
            id=f"{command.id}/0",
            cause=command,
            at=command.at,
            source=source,
            tenant=command.tenant,
            key=command.key,
            command_id=command.id,
            command_type=type(command).__name__,
            reason=reason,
            field=field,
        )
