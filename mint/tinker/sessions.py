"""Tinker sessions: what a client opens first and keeps alive with heartbeats (every 10 s). Its
training clients and samplers are numbered within it and freed with it (mint/tinker/service.py)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from mint.tinker.auth import Grant
from mint.tinker.wire import WireError

SESSION_IDLE_S = 600.0  # a session without heartbeats for this long is finished


@dataclass
class Session:
    session_id: str
    tenant: str
    last_seen: float = field(default_factory=time.time)
    user_metadata: dict[str, str] | None = None  # what create_session said about itself
    display_name: str | None = None


class Sessions:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def open(
        self, tenant: str, user_metadata: dict[str, str] | None = None, display_name: str | None = None
    ) -> Session:
        session = Session(
            f"sess-{os.urandom(5).hex()}", tenant, user_metadata=user_metadata, display_name=display_name
        )
        self._sessions[session.session_id] = session
        return session

    def of_tenant(self, tenant: str) -> list[Session]:
        return [s for s in self._sessions.values() if s.tenant == tenant]

    def idle(self) -> list[str]:
        """Sessions that have sent no heartbeat for SESSION_IDLE_S."""
        horizon = time.time() - SESSION_IDLE_S
        return [s.session_id for s in self._sessions.values() if s.last_seen < horizon]

    def forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def get(self, session_id: str, owner: Grant, field_name: str = "session_id") -> Session:
        """The caller's session `session_id` (another tenant's is as good as missing); a request
        naming it counts as a sign of life."""
        session = self._sessions.get(session_id)
        if session is None or session.tenant != owner.tenant:
            raise WireError(field_name, f"no session {session_id!r}", 404)
        session.last_seen = time.time()
        return session
