"""Engine liveness from heartbeat facts, with two thresholds (after KServe ModelMesh).

An engine host appends an EngineHeartbeat every `heartbeat_s`. Whoever reads the engines row judges
its age, the time since its latest heartbeat (its `at`, the host's clock, against the reader's):
- past `stale_after_s` (T1) routers stop sending it requests: a request is cheap to send elsewhere;
- past `lost_after_s` (T2) the scheduler appends EngineLost and plans its adapters onto the other
  engines of its base: moving adapters costs loads, so it waits out a short pause (a GC, a slow disk).
An engine inside the embedded system never heartbeats; its liveness is its process's.

The defaults (1 s, 3 s, 8 s) are overridden by `MINT_ENGINE_HEARTBEAT_S`, `MINT_ENGINE_STALE_S` and
`MINT_ENGINE_LOST_S`, which every process of a cluster should share. Ages compare clocks of two
machines: keep them in sync (NTP) to well under T1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from mint.catalog.rows import EngineRow

State = Literal["up", "stale", "lost"]


@dataclass(frozen=True)
class Liveness:
    heartbeat_s: float = 1.0
    stale_after_s: float = 3.0  # T1
    lost_after_s: float = 8.0  # T2

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_s < self.stale_after_s < self.lost_after_s:
            raise ValueError(
                "engine liveness: expected 0 < heartbeat < stale (T1) < lost (T2) seconds, got "
                f"{self.heartbeat_s:g}, {self.stale_after_s:g}, {self.lost_after_s:g}"
            )

    @classmethod
    def from_env(cls) -> Liveness:
        default = cls()
        return cls(
            heartbeat_s=_seconds("MINT_ENGINE_HEARTBEAT_S", default.heartbeat_s),
            stale_after_s=_seconds("MINT_ENGINE_STALE_S", default.stale_after_s),
            lost_after_s=_seconds("MINT_ENGINE_LOST_S", default.lost_after_s),
        )

    def state(self, engine: EngineRow, now: datetime) -> State:
        """`lost` once an EngineLost said so or past T2 (the scheduler is about to say it), `stale`
        past T1, else `up`."""
        if engine.status == "lost":
            return "lost"
        age = heard_age(engine, now)
        if age is None or age <= self.stale_after_s:
            return "up"
        return "stale" if age <= self.lost_after_s else "lost"


def heard_age(engine: EngineRow, now: datetime) -> float | None:
    """Seconds since the engine was last heard from; None for an engine that never heartbeats."""
    if engine.heard_at is None:
        return None
    return (now - datetime.fromisoformat(engine.heard_at)).total_seconds()


def _seconds(variable: str, default: float) -> float:
    raw = os.environ.get(variable)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{variable}: {raw!r} is not a number of seconds") from None
