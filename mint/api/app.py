"""The ASGI application `mint up --port` serves."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.engine_host import EngineHost
from mint.api.openai import routes as openai_routes
from mint.catalog.queries import Catalog


def create_app(hosts: list[EngineHost], catalog: Callable[[], Catalog]) -> Starlette:
    async def health(request: Request) -> Response:
        engines = [
            {
                "engine": h.engine_id,
                "base": h.engine.base_id,
                "kind": h.engine.kind,
                "resident": list(h.engine.resident()),
            }
            for h in hosts
        ]
        return JSONResponse({"status": "ok", "engines": engines})

    return Starlette(routes=[Route("/healthz", health), *openai_routes(hosts, catalog)])
