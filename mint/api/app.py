"""The ASGI application `mint up --port` serves: every route checks a bearer token (mint/api/auth.py),
no route reads a body over the app's limit (413), and a request carrying `x-mint-after` is answered
only once this replica's catalog has folded that far (mint/api/positions.py)."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.system import System
from events.log import LogUnavailable
from mint.api.console import routes as console_routes
from mint.api.errors import HttpError, log_unavailable
from mint.api.ingest import routes as ingest_routes
from mint.api.metrics import Metrics
from mint.api.openai import Admission, InferenceLimits
from mint.api.openai import routes as openai_routes
from mint.api.positions import DEFAULT_READ_WAIT_S, Checkpoint, ReadAfter
from mint.auth.tokens import TokenStore
from mint.catalog.queries import Catalog
from mint.ingest import IngestLimits
from mint.serving.router import Router

# The ingest routes refuse bodies over their own limit (IngestLimits.max_bytes); this one is for
# every route, so it is never below that.
DEFAULT_MAX_BODY_BYTES = IngestLimits().max_bytes
# How long a drain waits for the requests it cancelled to answer (they answer at once).
CUT_OFF_S = 1.0


class BodyLimit:
    """Refuse a request body over `max_bytes` with 413 and a JSON error, whether it declares its
    length (refused before the route runs) or streams it (refused at the chunk that crosses the
    limit: the route then sees the client leave, and what it answers is dropped)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, f"body: {int(declared):,} bytes is over the limit of {self.max_bytes:,}")
            return
        received = 0
        responded = refused = False

        async def bounded_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not responded:
                        await self._refuse(send, f"body: more than the limit of {self.max_bytes:,} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal responded
            if refused:
                return  # the 413 was the answer
            responded = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except Exception:
            if not refused:
                raise
            # The route failed on the body that ended early (e.g. ClientDisconnect); the 413 stands.

    @staticmethod
    async def _refuse(send: Send, message: str) -> None:
        response = HttpError(413, message).response()
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


def create_app(
    system: System,
    tokens: TokenStore,
    limits: IngestLimits | None = None,
    tinker: Sequence[BaseRoute] = (),
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    inference: InferenceLimits | None = None,
    read_wait_s: float = DEFAULT_READ_WAIT_S,
    router: Router | None = None,
) -> Starlette:
    """`max_body_bytes` bounds every route's body; `inference` bounds each token's inference;
    `read_wait_s` bounds how long a read waits for its `x-mint-after` (mint/api/positions.py);
    `router` sends inference to engine hosts elsewhere when the system has no engines of its own."""
    limits = limits or IngestLimits()
    if max_body_bytes < limits.max_bytes:
        raise ValueError(
            f"max_body_bytes: {max_body_bytes:,} is below the ingest limit of {limits.max_bytes:,}, "
            "which could then never be reached"
        )

    def catalog() -> Catalog:
        return Catalog(system.home.catalog)

    admission = Admission(inference or InferenceLimits())

    async def health(request: Request) -> Response:
        # Open to probes (load balancers carry no token), so it says nothing about tenants.
        if admission.draining:
            return JSONResponse({"status": "draining", "engines": len(system.engines)}, status_code=503)
        return JSONResponse({"status": "ok", "engines": len(system.engines)})

    metrics = Metrics(system, catalog, admission.in_flight, admission.answered, admission.shadow)
    app = Starlette(
        routes=[
            Route("/healthz", health),
            *openai_routes(system.engines, catalog, admission, router),
            *ingest_routes(system.log, limits),
            *console_routes(catalog, system.log, admission.in_flight.snapshot),
            *metrics.routes(),
            *tinker,  # the Tinker API (mint/tinker/app.py), under /api/v1
        ],
        # A write the log did not take (its broker down) is the client's to send again, not a 500.
        exception_handlers={LogUnavailable: log_unavailable},
        middleware=[
            Middleware(metrics.middleware),
            Middleware(BodyLimit, max_bytes=max_body_bytes),
            Middleware(
                ReadAfter, checkpoint=Checkpoint(system.home.catalog), log=system.log, wait_s=read_wait_s
            ),
        ],
    )
    app.state.tokens = tokens
    app.state.admission = admission
    return app


async def drain(app: Starlette, grace_s: float) -> int:
    """Begin a shutdown: /healthz fails and new inference is refused (503) from now on; the inference
    in flight gets up to `grace_s` to finish, then what still runs is cancelled (its engines stop
    decoding it; its client gets a 503, or an error event ending its stream). Returns how many
    requests outlived the grace."""
    admission: Admission = app.state.admission
    admission.draining = True
    with anyio.move_on_after(grace_s):
        await admission.in_flight.until_total(0)
    left = admission.in_flight.total()
    admission.cut_off.set()
    with anyio.move_on_after(CUT_OFF_S):
        await admission.in_flight.until_total(0)
    return left
