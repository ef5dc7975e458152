"""Names that records carry, with the patterns that make a name valid.

A policy is `tenant/name`; a pinned revision is `tenant/name@rev`. Patterns live here once so that the
schema, the CLI and the HTTP layer refuse the same inputs with the same words.
"""

from __future__ import annotations

import re
from typing import Annotated

from msgspec import Meta

TENANT_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
POLICY_PATTERN = rf"^{TENANT_PATTERN}/[a-z0-9][a-z0-9._-]{{0,127}}$"
REVISION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"

# Infrastructure records (engines, actors) belong to no customer; the leading underscore keeps this
# tenant out of the policy namespace, whose tenants start with a letter or digit.
SYSTEM_TENANT = "_system"

PolicyName = Annotated[str, Meta(pattern=POLICY_PATTERN, description="tenant/name")]
RevisionId = Annotated[str, Meta(pattern=REVISION_PATTERN, description="revision id within a policy")]
Name = Annotated[str, Meta(pattern=NAME_PATTERN, description="an identifier: run, engine, suite, base")]
RecordId = Annotated[str, Meta(min_length=1, max_length=200, description="unique; the idempotency key")]

# Integers are bounded at the door: SQLite stores int64, and a count of 10**30 would be accepted by JSON
# and then raise in every fold that stores it (OverflowError), stopping each actor at that record.
INT64_MAX = 2**63 - 1
Count = Annotated[int, Meta(ge=0, le=INT64_MAX, description="a count, 0 to 2**63-1")]
Steps = Annotated[int, Meta(ge=1, le=1_000_000, description="training steps, 1 to 1,000,000")]
StepNumber = Annotated[int, Meta(ge=0, le=1_000_000, description="a step of a run, 0 to 1,000,000")]
Rank = Annotated[int, Meta(ge=1, le=4096, description="LoRA rank, 1 to 4096")]
Slots = Annotated[int, Meta(ge=0, le=1_000_000, description="adapter slots, 0 to 1,000,000")]

_POLICY = re.compile(POLICY_PATTERN)
_REVISION = re.compile(REVISION_PATTERN)


def tenant_of(policy: str) -> str:
    return policy.split("/", 1)[0]


class ModelRefError(ValueError):
    """A `tenant/name[@rev]` reference that does not parse."""


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """Split `tenant/name@rev` into (policy, revision); revision is None when the ref follows the pointer."""
    policy, _, revision = ref.partition("@")
    if not _POLICY.match(policy):
        raise ModelRefError(f"model {ref!r}: expected tenant/name or tenant/name@revision")
    if revision and not _REVISION.match(revision):
        raise ModelRefError(f"model {ref!r}: revision {revision!r} is not a valid revision id")
    return policy, revision or None
