"""The ASGI application `mint up --port` serves: every route checks a bearer token (mint/api/auth.py)."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from actors.system import System
from mint.api.console import routes as console_routes
from mint.api.ingest import routes as ingest_routes
from mint.api.metrics import Metrics
from mint.api.openai import routes as openai_routes
from mint.auth.tokens import TokenStore
from mint.catalog.queries import Catalog
from mint.ingest import IngestLimits


def create_app(
    system: System, tokens: TokenStore, limits: IngestLimits | None = None, tinker: Sequence[BaseRoute] = ()
) -> Starlette:
    def catalog() -> Catalog:
        return Catalog(system.home.catalog)

    async def health(request: Request) -> Response:
        # Open to probes (load balancers carry no token), so it says nothing about tenants.
        return JSONResponse({"status": "ok", "engines": len(system.engines)})

    metrics = Metrics(system, catalog)
    app = Starlette(
        routes=[
            Route("/healthz", health),
            *openai_routes(system.engines, catalog, metrics.in_flight),
            *ingest_routes(system.log, limits or IngestLimits()),
            *console_routes(catalog, system.log, metrics.in_flight.snapshot),
            *metrics.routes(),
            *tinker,  # the Tinker API (mint/tinker/app.py), under /api/v1
        ],
        middleware=[Middleware(metrics.middleware)],
    )
    app.state.tokens = tokens
    return app
