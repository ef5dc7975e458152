"""The Tinker service: its parts over MinT's home, artifact store, log and catalog, and what spans
them (a session, which holds training clients and samplers).

    bases.py      the bases in the home, loaded once each; torch work under a base's lock
    futures.py    every slow call's future, and the task group its work runs in
    sessions.py   sessions and their heartbeats
    policies.py   the policy a training client trains, registered through the catalog
    models.py     training clients: created, and their requests in seq_id order
    residency.py  which training clients hold a slot: a budget, the idle ones evicted to disk
    samplers.py   sampling sessions and asample
    weights.py    checkpoints saved, exported as revisions, loaded, described, expired, deleted
    external.py   external weights for download: age encryption, signed URLs
    expiry.py     the sweep that deletes expired checkpoints
    listings.py   the REST reads: capabilities, training runs, checkpoints, sessions

Every request that changes something is a fact on the log before its future resolves. Torch work runs
in worker threads, one at a time per base; everything else is asyncio.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

from events.log import EventLog
from mint.artifacts.store import ArtifactStore
from mint.catalog.queries import Catalog
from mint.home import Home
from mint.tinker.auth import Grant
from mint.tinker.bases import Bases
from mint.tinker.checkpoints import CheckpointDirectory
from mint.tinker.expiry import sweep_expired
from mint.tinker.futures import Futures
from mint.tinker.listings import Listings
from mint.tinker.models import TrainingClients
from mint.tinker.policies import Policies
from mint.tinker.residency import Residency, slots_from_env
from mint.tinker.samplers import Samplers
from mint.tinker.sessions import Sessions
from mint.tinker.weights import Weights


class TinkerService:
    def __init__(
        self,
        home: Home,
        log: EventLog,
        artifacts: ArtifactStore,
        catalog: Callable[[], Catalog],
        training_slots: int | None = None,
    ) -> None:
        """`training_slots`: how many training clients hold a slot at once (MINT_TINKER_TRAINING_SLOTS
        when None)."""
        self.futures = Futures()
        self.bases = Bases(home)
        self.sessions = Sessions()
        self.checkpoints = CheckpointDirectory(home.tinker / "checkpoints")
        policies = Policies(log, catalog)
        self.residency = Residency(
            self.checkpoints, slots_from_env() if training_slots is None else training_slots
        )
        self.clients = TrainingClients(log, self.bases, self.futures, self.sessions, policies, self.residency)
        self.samplers = Samplers(log, self.bases, self.futures, self.sessions, self.checkpoints)
        self.weights = Weights(log, artifacts, self.checkpoints, self.clients, self.samplers, policies)
        self.listings = Listings(self.bases, self.checkpoints, self.clients, self.sessions, self.samplers)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the requests' work and the expired-checkpoint sweep until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(sweep_expired, self.weights)
            await self.futures.run(task_status=task_status)

    async def create_session(
        self, owner: Grant, user_metadata: dict[str, str] | None = None, display_name: str | None = None
    ) -> str:
        """A new session; sessions gone idle are finished first."""
        for idle in self.sessions.idle():
            await self.finish_session(idle)
        return self.sessions.open(owner.tenant, user_metadata, display_name).session_id

    async def finish_session(self, session_id: str) -> None:
        """Free what a session held: its training clients' slots, their snapshots and its samplers.
        Named checkpoints, exports and facts stay."""
        self.sessions.forget(session_id)
        self.samplers.close_session(session_id)
        for model_id in await self.clients.close_session(session_id):
            self.checkpoints.forget_unnamed(model_id)
