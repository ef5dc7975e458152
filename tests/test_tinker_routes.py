"""A Tinker route handler on its own: a module-level function of the shared `Api`, a request and its
caller, called here without the HTTP app around it (over a real service, log and token store; no
torch needed, since nothing here touches a base)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Message

from events.sqlite_log import SqliteLog
from mint.artifacts.local import LocalArtifactStore
from mint.auth.tokens import TokenStore
from mint.catalog.queries import Catalog
from mint.home import Home
from mint.tinker import routes
from mint.tinker.auth import Grant, Keys
from mint.tinker.endpoint import Api
from mint.tinker.service import TinkerService
from mint.tinker.wire import WireError

pytestmark = pytest.mark.anyio
ACME = Grant("tok-acme", "acme", frozenset({"reader"}))
GLOBEX = Grant("tok-globex", "globex", frozenset({"reader"}))


def request(body: object = None, query: str = "") -> Request:
    raw = b"" if body is None else json.dumps(body).encode()

    async def receive() -> Message:
        return {"type": "http.request", "body": raw, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": query.encode()}
    return Request(scope, receive)


@asynccontextmanager
async def api_over(home: Home) -> AsyncIterator[Api]:
    async with SqliteLog(home.log) as log:
        service = TinkerService(home, log, LocalArtifactStore(home.artifacts), partial(Catalog, home.catalog))
        yield Api(service, Keys(TokenStore(home.tokens), home.root / "jwt.key"), chunk_datums=7)


async def test_handlers_answer_from_the_api_alone(tmp_path: Path) -> None:
    async with api_over(Home(tmp_path)) as api:
        assert (await routes.client_config(api, request(), ACME))["fwdbwd_max_chunk_len"] == 7
        session = (await routes.create_session(api, request({}), ACME))["session_id"]
        alive = await routes.heartbeat(api, request({"session_id": session}), ACME)
        assert alive == {"type": "session_heartbeat"}
        # A session this server does not know, or another tenant's, ends the SDK's heartbeat loop.
        for owner, session_id in ((ACME, "sess-unknown"), (GLOBEX, session)):
            gone = await routes.heartbeat(api, request({"session_id": session_id}), owner)
            assert isinstance(gone, JSONResponse) and gone.status_code == 410
            assert json.loads(bytes(gone.body))["field"] == "session_id"
        assert await routes.finish(api, _with_path(request(), session_id=session), ACME) == {}
        finished = await routes.heartbeat(api, request({"session_id": session}), ACME)
        assert isinstance(finished, JSONResponse) and finished.status_code == 410


async def test_listing_pages_are_checked_before_anything_is_read(tmp_path: Path) -> None:
    async with api_over(Home(tmp_path)) as api:
        listed = await routes.training_runs(api, request(query="limit=5&offset=2"), ACME)
        assert listed == {"training_runs": [], "cursor": {"offset": 2, "limit": 5, "total_count": 0}}
        for query, field in (("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-3", "offset")):
            with pytest.raises(WireError) as refused:
                await routes.user_checkpoints(api, request(query=query), ACME)
            assert refused.value.field == field


def _with_path(made: Request, **params: str) -> Request:
    made.scope["path_params"] = params
    return made
