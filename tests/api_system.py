"""A running system without engines, its token store, and HTTP clients of its API per token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from actors.runtime import Backoff
from actors.system import System, running
from events.catalog import Promote
from events.sqlite_log import SqliteLog
from mint.api.app import create_app
from mint.auth.tokens import TokenStore
from mint.catalog.queries import Catalog
from mint.home import Home
from mint.ingest import IngestLimits
from tests.records import evaluated, exported, register


@pytest.fixture
async def bare_system(tmp_path: Path) -> AsyncIterator[System]:
    home = Home(tmp_path)
    async with (
        SqliteLog(home.log, partitions=2) as log,
        running(home, log, backoff=Backoff(0.001, 0.01)) as system,
    ):
        yield system


@pytest.fixture
def token_store(bare_system: System) -> TokenStore:
    return TokenStore(bare_system.home.tokens)


@pytest.fixture
def api_app(bare_system: System, token_store: TokenStore) -> Starlette:
    return create_app(
        bare_system,
        token_store,
        IngestLimits(max_bytes=64 * 1024, max_records=100, records_per_s=50, burst=100),
    )


def client_for(app: Starlette, tokens: TokenStore, tenant: str, roles: str) -> httpx.AsyncClient:
    secret = tokens.issue(tenant, roles).secret
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://mint",
        headers={"Authorization": f"Bearer {secret}"},
    )


async def two_revisions_served(system: System) -> str:
    """acme/a served r1 then r2 (its lineage r1 <- r2); globex/b registered. Returns the 2nd Promote's id."""
    await system.log.append([register("acme/a"), register("globex/b")])
    await system.log.append(
        [exported("acme/a", "r1"), evaluated("acme/a", "r1"), exported("acme/a", "r2", parent="r1")]
    )
    await system.log.append([evaluated("acme/a", "r2"), Promote.create(policy="acme/a", revision="r1")])
    second = Promote.create(policy="acme/a", revision="r2", reason="better")
    await system.log.append([second])
    with anyio.fail_after(30):
        await system.until(lambda: Catalog(system.home.catalog).resolve("acme/a") == "r2")
    return second.id
