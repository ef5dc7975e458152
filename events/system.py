"""Records about the system itself, keyed by actor name."""

from __future__ import annotations

from typing import ClassVar

from events.envelope import Fact
from events.names import Count, Name


class ActorRestarted(Fact, kw_only=True, frozen=True):
    """A supervisor restarted a crashed actor after `backoff_s`."""

    KEY_FIELD: ClassVar[str] = "actor"
    SYSTEM: ClassVar[bool] = True
    actor: Name
    attempt: Count
    error: str
    backoff_s: float
