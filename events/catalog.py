"""Catalog records: a policy's registration, its serving pointer and its retirement. Keyed by policy."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from events.envelope import Command, Fact
from events.names import Name, PolicyName, RevisionId

PromotionMode = Literal["manual", "auto"]


class RegisterPolicy(Command, kw_only=True, frozen=True):
    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    base_id: Name
    promotion: PromotionMode = "manual"


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


class PolicyRegistered(Fact, kw_only=True, frozen=True):
    """v2: `base` became `base_id` and the promotion mode was added (upcast_v1_v2)."""

    KEY_FIELD: ClassVar[str] = "policy"
    v: int = 2
    policy: PolicyName
    base_id: Name
    promotion: PromotionMode = "manual"

    @staticmethod
    def upcast_v1_v2(fields: dict[str, Any]) -> dict[str, Any]:
        """v1 named the base `base` and had no promotion mode (every policy was promoted by hand)."""
        lifted = {k: v for k, v in fields.items() if k != "base"}
        lifted["base_id"] = fields.get("base")
        lifted.setdefault("promotion", "manual")
        return lifted


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
