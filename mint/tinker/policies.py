"""Which policy a training client trains, and its registration through the catalog.

A client names its policy (`user_metadata.policy`) or gets one after itself. A policy the catalog
already holds must be active on the client's base. A new one is registered the way every writer
registers one: a `RegisterPolicy` command on the log, decided by the catalog actor, whose outcome
(`PolicyRegistered` or `CommandRejected`, caused by the command) the request waits for, so no training
client ever trains a policy the catalog refused. The wait is bounded: a catalog that does not answer
in time is a 503 the client retries (its retry appends the same command id, so it is decided once).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any, TypeVar

from events.catalog import CommandRejected, RegisterPolicy
from events.log import EventLog, append_one, outcome
from events.names import POLICY_PATTERN, TENANT_PATTERN, tenant_of
from mint.catalog.queries import Catalog, ProjectionMissing
from mint.tinker import written
from mint.tinker.auth import Grant
from mint.tinker.wire import WireError

SOURCE = "tinker"
REGISTER_TIMEOUT_S = 10.0  # how long a request waits for the catalog to decide its RegisterPolicy
FIELD = "user_metadata.policy"  # where a request names its policy
T = TypeVar("T")
_POLICY = re.compile(POLICY_PATTERN)
_TENANT = re.compile(rf"^{TENANT_PATTERN}$")


class Policies:
    def __init__(self, log: EventLog, catalog: Callable[[], Catalog]) -> None:
        self.log = log
        self.catalog = catalog

    def name(self, owner: Grant, model_id: str, metadata: dict[str, Any] | None, default: str | None) -> str:
        """The policy training client `model_id` trains: `user_metadata.policy`, else `default` (the
        policy of the checkpoint it starts from), else one named after the client."""
        if not _TENANT.match(owner.tenant):
            raise WireError(
                "X-API-Key", f"tenant {owner.tenant!r} owns no policies: use a tenant's token", 403
            )
        name = str((metadata or {}).get("policy") or default or model_id.replace(":", "-"))
        policy = name if "/" in name else f"{owner.tenant}/{name}"
        if not _POLICY.match(policy) or tenant_of(policy) != owner.tenant:
            raise WireError(FIELD, f"{name!r} is not a policy name of tenant {owner.tenant!r}")
        return policy

    async def ensure(self, policy: str, base_id: str, model_id: str) -> None:
        """`policy` is active on `base_id` in the catalog, registered now for training client
        `model_id` if the catalog does not hold it yet."""
        row = self._read(lambda c: c.policy(policy), None)
        if row is None:
            # The same request retried registers under the same id; another one (a policy or base
            # of its own for the same client id) under its own.
            asked = hashlib.sha256(f"{policy} {base_id}".encode()).hexdigest()[:16]
            await self._register(policy, base_id, f"{model_id}/register/{asked}")
        elif row.base_id != base_id or row.status != "active":
            raise WireError(
                FIELD, f"policy {policy!r} is {row.status} on base {row.base_id!r}, not active on {base_id!r}"
            )

    async def _register(self, policy: str, base_id: str, command_id: str) -> None:
        """Append `RegisterPolicy` and wait for the catalog's decision. A retried request appends the
        same command id, so it waits for the first copy's outcome instead of being refused as
        'already registered' by its own first attempt."""
        command = RegisterPolicy.create(id=command_id, source=SOURCE, policy=policy, base_id=base_id)
        appended = await append_one(self.log, command)
        try:
            answered = await outcome(self.log, appended, command.id, REGISTER_TIMEOUT_S)
        except TimeoutError:
            raise WireError(
                FIELD,
                f"the catalog did not decide the registration of {policy!r} within "
                f"{REGISTER_TIMEOUT_S:g}s; retry",
                503,
            ) from None
        written.note(answered.position)
        if isinstance(answered.fact, CommandRejected):
            raise WireError(FIELD, f"the catalog refused to register {policy!r}: {answered.fact.reason}", 409)

    def revisions(self, policy: str) -> set[str]:
        """The revisions the catalog lists for `policy` (none while it has no projection)."""
        return self._read(lambda c: {row.revision for row in c.revisions(policy)}, set())

    def _read(self, query: Callable[[Catalog], T], missing: T) -> T:
        """`query` over the catalog projection, or `missing` where there is none yet."""
        try:
            catalog = self.catalog()
        except ProjectionMissing:
            return missing
        try:
            return query(catalog)
        finally:
            catalog.close()
