"""The embedded system: every actor in one process under one supervisor, over one log."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import ParamSpec

import anyio

from actors.catalog import CatalogActor
from actors.engine_host import EngineHost
from actors.evaluator import EngineFactory, EvaluatorActor
from actors.faults import NO_FAULTS, Faults
from actors.locks import actor_locks
from actors.projector import CatalogProjector
from actors.runtime import DEFAULT_BACKOFF, Backoff, StoreActor, Supervisor
from actors.scheduler import WaveScheduler
from actors.trainer import TrainerActor
from events.log import EventLog
from mint.artifacts.local import LocalArtifactStore
from mint.artifacts.store import ArtifactStore
from mint.home import Home
from mint.serving.engine import Engine
from mint.serving.fetch import AdapterFetcher

ACTOR_NAMES = ("catalog", "projector", "trainer", "evaluator", "scheduler")


class System:
    """`only` runs a subset (one process per actor, on Kafka); by default every actor runs here.
    `evaluation_engines` builds the evaluator's own engine per base (default: a torch engine)."""

    def __init__(
        self,
        home: Home,
        log: EventLog,
        faults: Faults = NO_FAULTS,
        backoff: Backoff = DEFAULT_BACKOFF,
        only: frozenset[str] | None = None,
        artifacts: ArtifactStore | None = None,
        engines: Mapping[str, Engine] | None = None,
        evaluation_engines: EngineFactory | None = None,
    ) -> None:
        unknown = {n for n in (only or frozenset()) if n not in ACTOR_NAMES and not n.startswith("engine-")}
        if unknown:
            raise ValueError(
                f"only: no actor named {', '.join(sorted(unknown))} (actors: {', '.join(ACTOR_NAMES)})"
            )
        self.home = home
        self.log = log
        self.artifacts = artifacts or LocalArtifactStore(home.artifacts)
        self.catalog = CatalogActor(home, faults)
        self.projector = CatalogProjector(home, faults)
        self.trainer = TrainerActor(home, self.artifacts, faults)
        fetcher = AdapterFetcher(self.artifacts, home.cache / "adapters")
        self.evaluator = EvaluatorActor(home, fetcher, evaluation_engines, faults)
        self.engines = [
            EngineHost(home, engine, name, fetcher, faults) for name, engine in (engines or {}).items()
        ]
        self.scheduler = WaveScheduler(home, faults)
        everyone: list[StoreActor] = [
            self.catalog,
            self.projector,
            self.trainer,
            self.evaluator,
            self.scheduler,
            *self.engines,
        ]
        self.actors = [a for a in everyone if only is None or a.name in only]
        self.supervisor = Supervisor(log, self.actors, backoff)

    async def until(self, check: Callable[[], bool]) -> None:
        """Wait until `check` (usually a query of the catalog) holds, re-checking each time the
        projector commits: for outcomes that arrive later than `settle` can see, like a run's end."""
        while not check():
            await self.projector.progress.changed()

    async def settle(self) -> None:
        """Wait until every actor has handled everything on the log, including what the others
        appended in answer (a command's facts arrive after the command)."""
        while True:
            end = await self.log.end_offsets()
            for actor in self.actors:
                await actor.progress.reached(end)
            if await self.log.end_offsets() == end:
                return


P = ParamSpec("P")


def _started(build: Callable[P, System]) -> Callable[P, AbstractAsyncContextManager[System]]:
    """`running` takes exactly System's arguments, so a new option is declared once, on System."""

    @asynccontextmanager
    async def running(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[System]:
        """Start the actors (returns once all are ready); cancel them all on exit."""
        system = build(*args, **kwargs)
        with actor_locks(system.home, [a.name for a in system.actors]):
            async with anyio.create_task_group() as tg:
                for host in system.engines:
                    await tg.start(host.engine.serve)
                await tg.start(system.supervisor.run)
                try:
                    yield system
                finally:
                    tg.cancel_scope.cancel()

    return running


running = _started(System)
