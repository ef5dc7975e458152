"""The catalog actor's decisions: a catalog command and the current state in, facts out.

A canary (StartCanary, or a passed gate of a policy whose promotion is "canary") runs until a
PromoteCanary (the evaluator's verdict, or a person) moves the pointer to it, or an AbortCanary, a
rollback or the policy's retirement ends it. One runs per policy at a time.

Every refusal becomes a CommandRejected fact that names the reason and, where one field is at fault,
the field. Fact ids derive from the command id, so deciding the same command again after a crash
yields the same ids, and the log (or the folds' dedupe) keeps only the first copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from events.catalog import (
    AbortCanary,
    CanaryAborted,
    CanaryPromoted,
    CanaryRules,
    CanaryStarted,
    CommandRejected,
    ConfigurePolicy,
    PolicyConfigured,
    PolicyRegistered,
    PolicyRetired,
    Promote,
    PromoteCanary,
    RegisterPolicy,
    RetirePolicy,
    RevisionPromoted,
    RevisionRolledBack,
    Rollback,
    StartCanary,
)
from events.envelope import Command, Fact, Record
from events.evaluation import EvaluationCompleted
from mint.catalog.rows import (
    CANARIES,
    POLICIES,
    REVISIONS,
    CanaryRow,
    PolicyRow,
    RevisionRow,
)
from mint.projection.store import Rows

SOURCE = "catalog"
F = TypeVar("F", bound=Fact)


class Refusal(Exception):
    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def _answer(command: Command, fact: type[F], nth: int = 0, **fields: Any) -> F:
    """The `nth` fact deciding `command`. Its id and time derive from the command's, so deciding the
    same command again (after a crash, or a new owner catching up, which folds its own copy) yields the
    same fact as the first time."""
    return fact.create(id=f"{command.id}/{nth}", cause=command, at=command.at, source=SOURCE, **fields)


PolicyCommand = (
    Promote | Rollback | RetirePolicy | ConfigurePolicy | StartCanary | PromoteCanary | AbortCanary
)
AUTOMATIC = ("auto", "canary")  # promotion modes that act on a passed gate without a person


def _policy(command: PolicyCommand, rows: Rows) -> PolicyRow:
    row: PolicyRow | None = rows.get(POLICIES, command.policy)
    if row is None:
        raise Refusal(f"unknown policy {command.policy!r}", "policy")
    if row.status == "retired":
        raise Refusal(f"policy {command.policy!r} is retired", "policy")
    return row


def register(command: RegisterPolicy, rows: Rows) -> list[Fact]:
    existing: PolicyRow | None = rows.get(POLICIES, command.policy)
    if existing is not None:
        state = "retired; register a new name" if existing.status == "retired" else "already registered"
        raise Refusal(f"policy {command.policy!r} is {state}", "policy")
    if command.promotion in AUTOMATIC and command.gate is None:
        raise Refusal(
            f"{command.promotion} promotion needs a gate: give the suite its revisions must pass", "gate"
        )
    return [
        _answer(
            command,
            PolicyRegistered,
            policy=command.policy,
            base_id=command.base_id,
            promotion=command.promotion,
            gate=command.gate,
            watch=command.watch,
            canary=command.canary,
        )
    ]


def configure(command: ConfigurePolicy, rows: Rows) -> list[Fact]:
    policy = _policy(command, rows)
    promotion = command.promotion or policy.promotion
    gate = command.gate or policy.gate
    if promotion in AUTOMATIC and gate is None:
        raise Refusal(f"{promotion} promotion needs a gate: give the suite its revisions must pass", "gate")
    return [
        _answer(
            command,
            PolicyConfigured,
            policy=command.policy,
            promotion=promotion,
            gate=gate,
            watch=command.watch or policy.watch,
            canary=command.canary or policy.canary_rules,
        )
    ]


def _candidate(command: Promote | StartCanary, policy: PolicyRow, rows: Rows) -> None:
    """Refuse a revision that may not go before live traffic (unknown, another base, serving already,
    not passed), or any while a canary runs: a new revision replaces a canary only once it is aborted."""
    ref = f"{command.policy}@{command.revision}"
    revision: RevisionRow | None = rows.get(REVISIONS, command.policy, command.revision)
    if revision is None:
        raise Refusal(f"unknown revision {ref}", "revision")
    if revision.base_id != policy.base_id:
        raise Refusal(
            f"{ref} was trained on base {revision.base_id!r}; the policy is on {policy.base_id!r}", "revision"
        )
    if policy.pointer == command.revision:
        raise Refusal(f"{ref} is already serving", "revision")
    if policy.canary is not None:
        running: CanaryRow = rows.get(CANARIES, policy.canary)
        raise Refusal(
            f"canary {running.canary} of {command.policy}@{running.revision} is running: promote or abort "
            "it first (PromoteCanary / AbortCanary)",
            "revision",
        )
    _require_passed(ref, revision)


def promote(command: Promote, rows: Rows) -> list[Fact]:
    policy = _policy(command, rows)
    _candidate(command, policy, rows)
    return [
        _answer(
            command,
            RevisionPromoted,
            policy=command.policy,
            revision=command.revision,
            previous=policy.pointer,
            reason=command.reason,
        )
    ]


def _require_passed(ref: str, revision: RevisionRow) -> None:
    """A revision serves only after its latest evaluation passed. A person promoting by hand may
    rely on a verdict against an older pointer; automatic promotion may not (auto_promote)."""
    if revision.eval_verdict is None:
        raise Refusal(
            f"{ref} has no evaluation; request one (RequestEvaluation) before promoting", "revision"
        )
    if revision.eval_verdict == "error":
        raise Refusal(f"{ref} could not be evaluated: {revision.eval_detail}", "revision")
    if revision.eval_verdict != "pass":
        raise Refusal(
            f"{ref} failed evaluation {revision.eval_suite} v{revision.eval_suite_version}: "
            f"{revision.eval_detail or f'score {revision.eval_score:.4g}'}",
            "revision",
        )


def auto_promote(fact: EvaluationCompleted, rows: Rows) -> list[Fact]:
    """An evaluation that passed promotes its revision on its own when the policy says so. The
    evaluation must have compared against what the policy still serves: a verdict against an older
    pointer proves nothing about the newer one."""
    policy: PolicyRow | None = rows.get(POLICIES, fact.policy)
    revision: RevisionRow | None = rows.get(REVISIONS, fact.policy, fact.revision)
    if policy is None or revision is None or policy.promotion not in AUTOMATIC or policy.status != "active":
        return []
    if fact.verdict != "pass" or policy.pointer == fact.revision or revision.base_id != policy.base_id:
        return []
    if fact.baseline_revision != policy.pointer or policy.canary is not None:
        return []  # a running canary gives way to a new revision only through an explicit abort
    reason = f"auto: passed {fact.suite} v{fact.suite_version}" + (f" ({fact.detail})" if fact.detail else "")
    if policy.promotion == "canary" and policy.pointer is not None:
        return [
            _canary_started(
                f"{fact.id}/canary",
                fact,
                policy,
                fact.revision,
                policy.canary_rules or CanaryRules(),
                rows,
                reason,
            )
        ]
    promoted = RevisionPromoted.create(
        id=f"{fact.id}/promote",
        cause=fact,
        at=fact.at,
        source=SOURCE,
        policy=fact.policy,
        revision=fact.revision,
        previous=policy.pointer,
        reason=reason,
    )
    return [promoted]


def rollback(command: Rollback, rows: Rows) -> list[Fact]:
    policy = _policy(command, rows)
    if policy.pointer is None:
        raise Refusal(f"policy {command.policy!r} serves nothing; there is nothing to roll back", "policy")
    earlier = policy.served[:-1]
    if command.to_revision is None:
        if not earlier:
            raise Refusal(
                f"nothing earlier to roll back to: {policy.pointer} is the first revision "
                f"{command.policy} served",
                "policy",
            )
        target = earlier[-1]
    elif command.to_revision == policy.pointer:
        raise Refusal(f"{command.policy}@{command.to_revision} is already serving", "to_revision")
    elif command.to_revision not in earlier:
        raise Refusal(
            f"{command.policy}@{command.to_revision} was never served; rollback returns to an earlier "
            "served revision (use Promote for a new one)",
            "to_revision",
        )
    else:
        target = command.to_revision
    return [
        _answer(
            command,
            RevisionRolledBack,
            policy=command.policy,
            revision=target,
            previous=policy.pointer,
            reason=command.reason,
            evidence=dict(command.evidence),
        ),
        *_end_canary(command, policy, rows, f"the pointer rolled back to {target}"),
    ]


def retire(command: RetirePolicy, rows: Rows) -> list[Fact]:
    policy = _policy(command, rows)
    return [
        _answer(command, PolicyRetired, policy=command.policy, reason=command.reason),
        *_end_canary(command, policy, rows, "the policy was retired"),
    ]


def _end_canary(command: Command, policy: PolicyRow, rows: Rows, why: str) -> list[Fact]:
    """A canary is measured against the revision served when it started: a move of the pointer (or
    the policy's retirement) ends it."""
    if policy.canary is None:
        return []
    running: CanaryRow = rows.get(CANARIES, policy.canary)
    ended = _answer(
        command,
        CanaryAborted,
        1,
        policy=policy.policy,
        canary=running.canary,
        revision=running.revision,
        reason=why,
    )
    return [ended]


def _canary_started(
    ident: str, cause: Record, policy: PolicyRow, revision: str, rules: CanaryRules, rows: Rows, reason: str
) -> CanaryStarted:
    assert policy.pointer is not None
    return CanaryStarted.create(
        id=ident,
        cause=cause,
        at=cause.at,
        source=SOURCE,
        policy=policy.policy,
        canary=ident,
        revision=revision,
        stable=policy.pointer,
        rules=rules,
        reason=reason,
    )


def start_canary(command: StartCanary, rows: Rows) -> list[Fact]:
    policy = _policy(command, rows)
    if policy.pointer is None:
        raise Refusal(
            f"{command.policy} serves nothing yet: a canary needs a stable revision to compare with "
            "(promote the first one)",
            "policy",
        )
    _candidate(command, policy, rows)
    rules = command.rules or policy.canary_rules or CanaryRules()
    return [
        _canary_started(f"{command.id}/0", command, policy, command.revision, rules, rows, command.reason)
    ]


def _running(command: PromoteCanary | AbortCanary, policy: PolicyRow, rows: Rows) -> CanaryRow:
    if policy.canary is None:
        raise Refusal(f"{command.policy} runs no canary", "policy")
    running: CanaryRow = rows.get(CANARIES, policy.canary)
    if command.canary is not None and command.canary != running.canary:
        raise Refusal(
            f"canary {command.canary} of {command.policy} is over; {running.canary} runs now", "canary"
        )
    return running


def promote_canary(command: PromoteCanary, rows: Rows) -> list[Fact]:
    policy = _policy(command, rows)
    running = _running(command, policy, rows)
    evidence = dict(command.evidence)
    return [
        _answer(
            command,
            CanaryPromoted,
            policy=command.policy,
            canary=running.canary,
            revision=running.revision,
            reason=command.reason,
            evidence=evidence,
        ),
        _answer(
            command,
            RevisionPromoted,
            1,
            policy=command.policy,
            revision=running.revision,
            previous=policy.pointer,
            reason=f"canary {running.canary}: {command.reason}"
            if command.reason
            else f"canary {running.canary}",
        ),
    ]


def abort_canary(command: AbortCanary, rows: Rows) -> list[Fact]:
    policy = _policy(command, rows)
    running = _running(command, policy, rows)
    return [
        _answer(
            command,
            CanaryAborted,
            policy=command.policy,
            canary=running.canary,
            revision=running.revision,
            reason=command.reason,
            evidence=dict(command.evidence),
        )
    ]


DECIDERS: dict[str, Callable[..., list[Fact]]] = {
    "RegisterPolicy": register,
    "ConfigurePolicy": configure,
    "Promote": promote,
    "Rollback": rollback,
    "RetirePolicy": retire,
    "StartCanary": start_canary,
    "PromoteCanary": promote_canary,
    "AbortCanary": abort_canary,
}


# Facts the catalog actor answers, too: the ones that move a pointer on the policy's own rules.
REACTIONS: dict[str, Callable[..., list[Fact]]] = {"EvaluationCompleted": auto_promote}


def react(fact: Record, rows: Rows) -> list[Fact]:
    return REACTIONS[type(fact).__name__](fact, rows)


def decide(command: Command, rows: Rows) -> list[Fact]:
    try:
        return DECIDERS[type(command).__name__](command, rows)
    except Refusal as refusal:
        return [CommandRejected.refusing(command, SOURCE, refusal.reason, refusal.field)]
