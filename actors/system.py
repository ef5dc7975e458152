"""The embedded system: every actor in one process under one supervisor, over one log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from actors.catalog import CatalogActor
from actors.faults import NO_FAULTS, Faults
from actors.projector import CatalogProjector
from actors.runtime import DEFAULT_BACKOFF, Backoff, StoreActor, Supervisor
from events.log import EventLog
from mint.home import Home


class System:
    def __init__(
        self, home: Home, log: EventLog, faults: Faults = NO_FAULTS, backoff: Backoff = DEFAULT_BACKOFF
    ) -> None:
        self.home = home
        self.log = log
        self.catalog = CatalogActor(home, faults)
        self.projector = CatalogProjector(home, faults)
        self.actors: list[StoreActor] = [self.catalog, self.projector]
        self.supervisor = Supervisor(log, self.actors, backoff)

    async def settle(self) -> None:
        """Wait until every actor has handled everything on the log, including what the others
        appended in answer (a command's facts arrive after the command)."""
        while True:
            end = await self.log.end_offsets()
            for actor in self.actors:
                await actor.progress.reached(end)
            if await self.log.end_offsets() == end:
                return


@asynccontextmanager
async def running(
    home: Home, log: EventLog, faults: Faults = NO_FAULTS, backoff: Backoff = DEFAULT_BACKOFF
) -> AsyncIterator[System]:
    """Start every actor (returns once all are ready); cancel them all on exit."""
    system = System(home, log, faults, backoff)
    async with anyio.create_task_group() as tg:
        await tg.start(system.supervisor.run)
        try:
            yield system
        finally:
            tg.cancel_scope.cancel()
