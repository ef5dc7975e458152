"""An engine host's own HTTP server: the generate endpoint routers call, and its readiness probe.

`POST /v1/engine/generate` (mint/serving/wire.py) accepts a sealed request at once, answering 200 with
the engine and the revision, then streams the generation as NDJSON lines; a refusal after it was
accepted (a prompt over the context, a full queue, a cold load past its deadline) is the first line,
an `error` with the status the API should answer. Before accepting, it refuses an unsealed body (401),
a malformed one (400), and any request while the host is starting or draining (503 naming that state,
so the router sends it elsewhere).

`GET /healthz` is 200 once the host's store has caught up with the log (its engine is loaded before
that) and 503 while starting or draining. A drain (SIGTERM) fails readiness and stops heartbeats at
once; the requests in flight get the grace to finish.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from actors.engine_host import EngineHost, split_ref
from events.seal import Seal
from mint.api.errors import HttpError, decoded
from mint.api.metrics import InFlight
from mint.api.openai import inference_error
from mint.serving.models import ModelNotFound
from mint.serving.wire import (
    ENGINE_HEADER,
    GENERATE_PATH,
    NDJSON,
    REVISION_HEADER,
    SEAL_HEADER,
    STATE_HEADER,
    DeltaLine,
    EndLine,
    ErrorLine,
    GenerateRequest,
    encode_line,
    verifies,
)

# How long a request for a revision this host's store does not know yet waits for it: the router's
# projection may be a little ahead of this host's.
CATCH_UP_S = 2.0

log = logging.getLogger(__name__)


@dataclass
class EngineServer:
    """What the routes share: the engine host, the cluster's seal, and the host's state."""

    host: EngineHost
    seal: Seal
    ready: bool = False  # set once the host's store has caught up with the log
    draining: bool = False
    active: InFlight = field(default_factory=InFlight)  # requests accepted and not yet answered

    def state(self) -> str | None:
        """Why this host takes no request now, or None."""
        if self.draining:
            return "draining"
        return None if self.ready else "starting"

    def app(self) -> Starlette:
        async def generate_route(request: Request) -> Response:
            return await generate(self, request)

        async def health_route(request: Request) -> Response:
            return health(self)

        return Starlette(
            routes=[
                Route(GENERATE_PATH, generate_route, methods=["POST"]),
                Route("/healthz", health_route, methods=["GET"]),
            ]
        )


def health(server: EngineServer) -> Response:
    host = server.host
    body: dict[str, Any] = {
        "actor": "engine-host",
        "replica": host.engine_id,
        "owned": [],
        "base": host.engine.base_id,
        "kind": host.engine.kind,
        "holds": sorted(host.engine.resident()),
        "in_flight": host.in_flight,
        "position": host.progress.position,
    }
    if host.heartbeats is not None:
        body.update(incarnation=host.heartbeats.incarnation, url=host.heartbeats.url)
    state = server.state()
    if state is not None:
        reason = "draining" if state == "draining" else "catching up with the log"
        return JSONResponse({**body, "ready": False, "reason": reason}, status_code=503)
    return JSONResponse({**body, "ready": True})


async def generate(server: EngineServer, request: Request) -> Response:
    raw = await request.body()
    if not verifies(server.seal, raw, request.headers.get(SEAL_HEADER)):
        why = (
            f"{SEAL_HEADER}: this endpoint serves MinT's routers only (a body sealed with the cluster's key)"
        )
        return HttpError(401, why).response()
    state = server.state()
    if state is not None:
        headers = {"Retry-After": "1", STATE_HEADER: state}
        return HttpError(503, f"engine {server.host.engine_id} is {state}", headers=headers).response()
    try:
        wanted = decoded(raw, GenerateRequest)
        if "@" not in wanted.model:
            raise HttpError(400, "model: routers send a pinned revision (tenant/name@rev)", "model")
        if (wanted.prompt is None) == (wanted.messages is None):
            raise HttpError(400, "prompt: give either a prompt or messages", "prompt")
        if wanted.against is not None:
            policy, revision = split_ref(wanted.against.ref)
            if not revision or policy != split_ref(wanted.model)[0]:
                why = (
                    f"against.ref: {wanted.against.ref!r} is no pinned revision (tenant/name@rev) "
                    f"of the policy of {wanted.model!r}"
                )
                raise HttpError(400, why, "against.ref")
    except HttpError as exc:
        return exc.response()
    headers = {ENGINE_HEADER: server.host.engine_id, REVISION_HEADER: wanted.model}
    lines = _answer(server, wanted, server.active.enter(wanted.model))
    return _Answer(lines, headers)


async def _answer(
    server: EngineServer, wanted: GenerateRequest, leave: Callable[[], None]
) -> AsyncGenerator[bytes, None]:
    host = server.host
    prompt_field = "prompt" if wanted.prompt is not None else "messages"
    try:
        try:
            ref = await _resolved(host, wanted.model)
            if wanted.messages is not None:
                prompt = host.engine.render_chat([msgspec.to_builtins(m) for m in wanted.messages])
            else:
                prompt = wanted.prompt or ""
            answer = host.generate(ref, prompt, wanted.params.sampling(), wanted.against)
            async with aclosing(answer) as deltas:
                async for delta in deltas:
                    yield encode_line(DeltaLine.of(delta))
            counted = None
            if wanted.usage:  # a prompt may be megabytes: count it off the event loop
                counted = await anyio.to_thread.run_sync(host.engine.count_tokens, prompt)
        except Exception as exc:
            error = _refusal(exc, prompt_field)
            yield encode_line(ErrorLine(error.status, error.message, error.param))
            return
        yield encode_line(EndLine(counted))
    finally:
        leave()


def _refusal(exc: Exception, prompt_field: str) -> HttpError:
    try:
        return inference_error(exc, prompt_field)
    except Exception:  # not a refusal: a bug in the host, logged here since the router only sees a line
        log.exception("engine host failed a request")
        return HttpError(500, f"the engine failed this request: {type(exc).__name__}: {exc}")


async def _resolved(host: EngineHost, model: str) -> str:
    """The ref, once this host's store knows it (waiting up to CATCH_UP_S for it to catch up)."""
    with anyio.move_on_after(CATCH_UP_S):
        while True:
            try:
                return host.resolve(model)
            except ModelNotFound:
                await host.progress.changed()
    try:
        return host.resolve(model)
    except ModelNotFound as exc:
        raise HttpError(503, f"engine {host.engine_id} has not caught up: {exc}") from None


class _Answer(StreamingResponse):
    """The NDJSON answer, closed however it ends: a router that hangs up (its client left) stops the
    generation at once, even while it still waits for its first token (a cold load)."""

    def __init__(self, lines: AsyncGenerator[bytes, None], headers: dict[str, str]) -> None:
        super().__init__(lines, media_type=NDJSON, headers=headers)
        self._lines = lines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the router hung up
                        await self.stream_response(send)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._lines.aclose()


async def drain(server: EngineServer, grace_s: float) -> int:
    """Fail readiness, refuse new requests (routers go elsewhere) and stop heartbeating (routers stop
    choosing this host within T1); wait up to `grace_s` for the requests in flight. Returns how many
    are still running."""
    server.draining = True
    server.host.silent = True
    with anyio.move_on_after(grace_s):
        await server.active.until_total(0)
    return server.active.total()
