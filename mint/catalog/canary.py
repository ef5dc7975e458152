"""Who answers a request while a canary runs: a pure function of the canary and the request's id.

The split is a hash, not a draw: the same request id always goes the same way, and `mint replay audit`
recomputes from facts alone which revision answered a request id (requests themselves are not on the
log). Hashing the canary's id in too gives each canary its own slice, so the same unlucky clients are
not the guinea pigs of every canary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from mint.catalog.rows import CanaryRow

_SCALE = 2**64


def takes_candidate(canary: str, request_id: str, fraction: float) -> bool:
    """Whether the request with `request_id` falls in `fraction` of canary `canary`'s requests."""
    digest = hashlib.sha256(f"{canary}\x00{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * _SCALE


@dataclass(frozen=True)
class Answering:
    """`ref` answers the request (tenant/name@rev); `shadow`, when set, also runs it unseen."""

    ref: str
    shadow: str | None = None


def answering(policy: str, stable: str, canary: CanaryRow | None, request_id: str) -> Answering:
    """Who answers `request_id` for `policy`, whose pointer is `stable`, while `canary` runs (None:
    while none does)."""
    stable_ref = f"{policy}@{stable}"
    if canary is None:
        return Answering(stable_ref)
    chosen = takes_candidate(canary.canary, request_id, canary.rules.fraction)
    if not chosen:
        return Answering(stable_ref)
    candidate = f"{policy}@{canary.revision}"
    return Answering(stable_ref, candidate) if canary.rules.mode == "shadow" else Answering(candidate)
