"""The Tinker API's routes with their service running: what `mint up` mounts beside its other routes."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from starlette.routing import BaseRoute

from events.log import EventLog
from mint.artifacts.store import ArtifactStore
from mint.auth.tokens import TokenStore
from mint.catalog.queries import Catalog
from mint.home import Home

logger = logging.getLogger(__name__)


@asynccontextmanager
async def tinker_routes(
    home: Home,
    log: EventLog,
    artifacts: ArtifactStore,
    catalog: Callable[[], Catalog],
    tokens: TokenStore,
    chunk_datums: int = 1024,
) -> AsyncIterator[list[BaseRoute]]:
    """/api/v1 routes over a running TinkerService (none where training is not installed); requests
    in flight are cancelled on exit."""
    if importlib.util.find_spec("torch") is None:
        logger.warning("no Tinker API: training is not installed (pip install 'mint-lora[train]')")
        yield []
        return
    from mint.tinker.auth import Keys
    from mint.tinker.routes import routes
    from mint.tinker.service import TinkerService

    service = TinkerService(home, log, artifacts, catalog)
    keys = Keys(tokens, home.tinker / "jwt.key")
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        yield list(routes(service, keys, chunk_datums))
        tg.cancel_scope.cancel()
