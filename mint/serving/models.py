"""Which revision a request's `model` means: `tenant/name` follows the serving pointer, `tenant/name@rev`
is pinned. Engine hosts resolve against their own store, routers against their catalog projection;
both answer the same way, so a client cannot tell which one refused it."""

from __future__ import annotations

from collections.abc import Callable

from events.names import parse_model_ref
from mint.catalog.rows import PolicyRow


class ModelNotFound(LookupError):
    def __init__(self, model: str, why: str) -> None:
        super().__init__(f"model {model!r}: {why}")
        self.model = model


def resolve_model(
    model: str, policy_of: Callable[[str], PolicyRow | None], exported: Callable[[str, str], bool]
) -> tuple[str, PolicyRow]:
    """The revision ref `model` names now, and its policy's row. `policy_of(policy)` reads a policy's
    row; `exported(policy, revision)` says whether that revision exists."""
    try:
        policy, revision = parse_model_ref(model)
    except ValueError as exc:
        raise ModelNotFound(model, str(exc)) from None
    row = policy_of(policy)
    if row is None or row.status != "active":
        raise ModelNotFound(model, "no such policy")
    if revision is None:
        if row.pointer is None:
            raise ModelNotFound(model, "the policy serves no revision yet")
        revision = row.pointer
    elif not exported(policy, revision):
        raise ModelNotFound(model, f"no revision {revision!r}")
    return f"{policy}@{revision}", row
