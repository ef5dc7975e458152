"""Serving records, keyed by engine: registration, waves, residency changes, demand."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

import msgspec

from events.envelope import Command, Fact
from events.names import Count, Name, PolicyName, RevisionId, Slots

ResidencyTier = Literal["gpu", "cpu", "disk"]
# Where a load found the adapter: the engine's host cache, the local disk cache, or the artifact store.
FoundIn = Literal["cpu", "disk", "store"]


class ReportDemand(Command, kw_only=True, frozen=True):
    """Requests per revision ref seen by one engine over one interval: aggregated, never one per
    request. `waiting` gives, per ref not on the engine, how long its oldest request has waited (s)."""

    KEY_FIELD: ClassVar[str] = "engine"
    SYSTEM: ClassVar[bool] = True
    engine: Name
    interval_start: datetime
    interval_s: float
    counts: dict[str, Count]
    waiting: dict[str, float] = {}


class EngineRegistered(Fact, kw_only=True, frozen=True):
    """An engine (re)joined. `incarnation` names the engine host's process start when it heartbeats
    (EngineHeartbeat); None for an engine inside the embedded system, whose liveness is its process's."""

    KEY_FIELD: ClassVar[str] = "engine"
    SYSTEM: ClassVar[bool] = True
    engine: Name
    base_id: Name
    kind: Name
    gpu_slots: Slots
    cpu_slots: Slots
    incarnation: Name | None = None


class WavePlanned(Fact, kw_only=True, frozen=True):
    """The next residency change of one engine; adapters are named `tenant/name@rev`. `prefetch`
    names adapters to bring from the artifact store to the engine's host while this wave serves."""

    KEY_FIELD: ClassVar[str] = "engine"
    SYSTEM: ClassVar[bool] = True
    engine: Name
    wave: Count
    load: list[str]
    keep: list[str]
    evict: list[str]
    prefetch: list[str] = []


class AdapterLoaded(Fact, kw_only=True, frozen=True):
    """`tier` is where the adapter now is; `found_in` where the load found it; `ms` how long it took."""

    KEY_FIELD: ClassVar[str] = "engine"
    SYSTEM: ClassVar[bool] = True
    engine: Name
    policy: PolicyName
    revision: RevisionId
    tier: ResidencyTier
    ms: float
    found_in: FoundIn = "disk"


class AdapterLoadFailed(Fact, kw_only=True, frozen=True):
    KEY_FIELD: ClassVar[str] = "engine"
    SYSTEM: ClassVar[bool] = True
    engine: Name
    policy: PolicyName
    revision: RevisionId
    reason: str


class AdapterEvicted(Fact, kw_only=True, frozen=True):
    KEY_FIELD: ClassVar[str] = "engine"
    SYSTEM: ClassVar[bool] = True
    engine: Name
    policy: PolicyName
    revision: RevisionId
    tier: ResidencyTier


class EngineHeartbeat(Fact, kw_only=True, frozen=True):
    """An engine host is alive: which incarnation (a process start), where it serves, and what it
    really holds on the accelerator (`holds`, revision refs) with its requests in flight. Liveness is
    taken from these, never from Kafka group membership: a wedged host still heartbeats to the group."""

    KEY_FIELD: ClassVar[str] = "engine"
    SYSTEM: ClassVar[bool] = True
    engine: Name
    incarnation: Name
    base_id: Name
    url: str
    holds: list[str]
    in_flight: Count = 0
    interval_s: float


class EngineLost(Fact, kw_only=True, frozen=True):
    """The scheduler stopped hearing from an engine. `incarnation` is the one it judged: a loss of an
    incarnation that a newer registration already replaced says nothing."""

    KEY_FIELD: ClassVar[str] = "engine"
    SYSTEM: ClassVar[bool] = True
    engine: Name
    reason: str
    incarnation: Name | None = None


class PairedScores(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Shadow runs of a revision scored beside another revision's answer to the same prompt (a paired
    comparison): `pairs` of them, the sum and the sum of squares of their candidate-minus-other score
    differences (for the paired mean and its standard error), and how many the shadowed revision won
    and lost (the rest tied)."""

    pairs: Count = 0
    diff_sum: float = 0.0
    diff_sq_sum: float = 0.0
    wins: Count = 0
    losses: Count = 0


class RevisionTraffic(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`paired`: this revision's shadow runs scored against the answer the client got, per revision
    that gave that answer."""

    requests: Count = 0
    errors: Count = 0
    scored: Count = 0
    score_sum: float = 0.0
    paired: dict[RevisionId, PairedScores] = {}


def unpaired(traffic: dict[str, Any]) -> dict[str, Any]:
    """v1 traffic counters had no paired scores (nothing scored a shadow run against its stable answer)."""
    return {ref: {**seen, "paired": {}} for ref, seen in traffic.items()}


class TrafficObserved(Fact, kw_only=True, frozen=True):
    """What one engine saw of live traffic over one interval, per revision ref: requests, those that
    failed, the scores of the sampled ones, and the paired scores of shadow runs. Aggregated, never one
    record per request. `canaries` counts the same requests again per canary id, for those served
    while the engine host saw that canary of their policy running: a canary's evidence is exactly
    what was served under it, never the late report of what came before (an aborted canary's last
    errors, say). v2: the paired scores (upcast_v1_v2); v3: `canaries` (upcast_v2_v3)."""

    KEY_FIELD: ClassVar[str] = "engine"
    SYSTEM: ClassVar[bool] = True
    v: int = 3
    engine: Name
    interval_start: datetime
    interval_s: float
    traffic: dict[str, RevisionTraffic]
    canaries: dict[str, dict[str, RevisionTraffic]] = {}

    @staticmethod
    def upcast_v1_v2(fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "traffic": unpaired(fields.get("traffic", {}))}

    @staticmethod
    def upcast_v2_v3(fields: dict[str, Any]) -> dict[str, Any]:
        """A v2 engine host tagged nothing: its traffic is no canary's evidence."""
        return {**fields, "canaries": {}}
