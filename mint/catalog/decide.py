"""The catalog actor's decisions: a catalog command and the current state in, facts out.

Every refusal becomes a CommandRejected fact that names the reason and, where one field is at fault,
the field. Fact ids derive from the command id, so deciding the same command again after a crash
yields the same ids, and the log (or the folds' dedupe) keeps only the first copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from events.catalog import (
    CommandRejected,
    ConfigurePolicy,
    PolicyConfigured,
    PolicyRegistered,
    PolicyRetired,
    Promote,
    RegisterPolicy,
    RetirePolicy,
    RevisionPromoted,
    RevisionRolledBack,
    Rollback,
)
from events.envelope import Command, Fact, Record
from events.evaluation import EvaluationCompleted
from mint.catalog.rows import POLICIES, REVISIONS, PolicyRow, RevisionRow
from mint.projection.store import Rows

SOURCE = "catalog"
F = TypeVar("F", bound=Fact)


class Refusal(Exception):
    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def _answer(command: Command, fact: type[F], **fields: Any) -> F:
    """The fact deciding `command`. Its id and time derive from the command's, so deciding the same
    command again (after a crash, or a new owner catching up, which folds its own copy) yields the same
    fact as the first time."""
    return fact.create(id=f"{command.id}/0", cause=command, at=command.at, source=SOURCE, **fields)


def _policy(command: Promote | Rollback | RetirePolicy | ConfigurePolicy, rows: Rows) -> PolicyRow:
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
    if command.promotion == "auto" and command.gate is None:
        raise Refusal("automatic promotion needs a gate: give the suite its revisions must pass", "gate")
    return [
        _answer(
            command,
            PolicyRegistered,
            policy=command.policy,
            base_id=command.base_id,
            promotion=command.promotion,
            gate=command.gate,
            watch=command.watch,
        )
    ]


def configure(command: ConfigurePolicy, rows: Rows) -> list[Fact]:
    policy = _policy(command, rows)
    promotion = command.promotion or policy.promotion
    gate = command.gate or policy.gate
    if promotion == "auto" and gate is None:
        raise Refusal("automatic promotion needs a gate: give the suite its revisions must pass", "gate")
    return [
        _answer(
            command,
            PolicyConfigured,
            policy=command.policy,
            promotion=promotion,
            gate=gate,
            watch=command.watch or policy.watch,
        )
    ]


def promote(command: Promote, rows: Rows) -> list[Fact]:
    policy = _policy(command, rows)
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
    _require_passed(ref, revision)
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
    if policy is None or revision is None or policy.promotion != "auto" or policy.status != "active":
        return []
    if fact.verdict != "pass" or policy.pointer == fact.revision or revision.base_id != policy.base_id:
        return []
    if fact.baseline_revision != policy.pointer:
        return []
    reason = f"auto: passed {fact.suite} v{fact.suite_version}" + (f" ({fact.detail})" if fact.detail else "")
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
        )
    ]


def retire(command: RetirePolicy, rows: Rows) -> list[Fact]:
    _policy(command, rows)
    return [_answer(command, PolicyRetired, policy=command.policy, reason=command.reason)]


DECIDERS: dict[str, Callable[..., list[Fact]]] = {
    "RegisterPolicy": register,
    "ConfigurePolicy": configure,
    "Promote": promote,
    "Rollback": rollback,
    "RetirePolicy": retire,
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
