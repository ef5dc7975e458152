"""What every Tinker route does around its handler: who is calling (the key and its role), the first
reply to an SDK retry of a request that starts something, errors as JSON, and the seq_id a refused
training request gives up.

Errors are JSON `{"detail": "<field>: <problem>", "field": ...}` with a 4xx status (the SDK shows the
detail; it retries an empty 400 as if the network had failed, so there is never an empty one). A 429
or 503 says when to retry (Retry-After). A request that fails in a way nobody foresaw is a JSON 500
(logged), never Starlette's plain-text one, and a refused or failed training request gives up its
seq_id, so the client's later requests still run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from events.positions import format_position
from mint.api.positions import POSITION_HEADER
from mint.tinker import proto, wire, written
from mint.tinker.auth import Grant, Keys
from mint.tinker.idempotency import Replies
from mint.tinker.service import TinkerService
from mint.tinker.wire import WireError

PROTOBUF = "application/x-protobuf"
TRAIN, READ = "trainer", "reader"
RETRY_AFTER_S = {429: "1", 503: "1"}  # refusals that pass: when to try again

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Api:
    """What the handlers share. `chunk_datums`: tinker 0.38 splits a larger forward_backward batch
    into requests of this many datums, sent concurrently (the first one last); their seq_ids keep them
    in order here."""

    service: TinkerService
    keys: Keys
    chunk_datums: int = 1024
    replies: Replies = field(default_factory=Replies)


Reply = Response | dict[str, Any]
Handler = Callable[[Api, Request, Grant], Awaitable[Reply]]


@dataclass(frozen=True)
class Door:
    """A route: `role` is what its key must allow (None: no key). `starts`: the request starts
    something (a future, a session), so an SDK retry of it (same X-Idempotency-Key) gets the first
    reply instead of starting it again. `sequenced`: it takes its turn among its training client's
    requests by seq_id, so refusing it gives the turn up."""

    method: str
    path: str
    role: str | None
    handler: Handler
    starts: bool = False
    sequenced: bool = False


ANONYMOUS = Grant("", "", frozenset())  # the caller of the routes that need no key


def error(exc: WireError) -> JSONResponse:
    retry_after = RETRY_AFTER_S.get(exc.status)
    headers = {"Retry-After": retry_after} if retry_after else {}
    return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=exc.status, headers=headers)


def caller(keys: Keys, request: Request, role: str) -> Grant:
    """The holder of the request's key, if it may act as `role` (a trainer may also read)."""
    presented = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix(
        "Bearer "
    )
    owner = keys.verify(presented) if presented else None
    if owner is None:
        raise WireError("X-API-Key", "missing, unknown or expired key", 401)
    if not (owner.allows(role) or (role == READ and owner.allows(TRAIN))):
        raise WireError("X-API-Key", f"this key may not act as {role}", 403)
    return owner


def endpoint(api: Api, door: Door) -> Callable[[Request], Awaitable[Response]]:
    async def respond(request: Request) -> Response:
        return await handle(api, door, request)

    return respond


async def handle(api: Api, door: Door, request: Request) -> Response:
    """`door`'s handler's reply to `request`, or the error it raised in the routes' JSON shape. The
    answer of a call that appended (a refusal too: a registration's CommandRejected is on the log)
    carries the position just past what it appended in `x-mint-position`."""
    appended = written.collect()
    response = await _answer(api, door, request)
    if appended:
        response.headers[POSITION_HEADER] = format_position(appended)
    return response


async def _answer(api: Api, door: Door, request: Request) -> Response:
    retry_key = request.headers.get("x-idempotency-key") if door.starts else None
    owner: Grant | None = None
    try:
        owner = caller(api.keys, request, door.role) if door.role else ANONYMOUS
        if retry_key and (first := api.replies.get(owner.tenant, retry_key)) is not None:
            return JSONResponse(first)
        reply = await door.handler(api, request, owner)
        if retry_key and isinstance(reply, dict):
            api.replies.put(owner.tenant, retry_key, reply)
    except WireError as exc:
        if exc.status == 401:
            response = error(exc)
            response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return response
        if door.sequenced and owner is not None and exc.status != 429:  # a 429 is resent as is
            await release_seq(api, request, owner)
        return error(exc)
    except Exception:
        logger.exception("Tinker %s failed", request.url.path)
        if door.sequenced and owner is not None:
            await release_seq(api, request, owner)
        return error(WireError("request", "the server failed on this request (logged)", 500))
    return reply if isinstance(reply, Response) else JSONResponse(reply)


async def release_seq(api: Api, request: Request, owner: Grant) -> None:
    """A refused training request still uses up its seq_id, or later ones would wait forever; only
    a training client of the caller's own tenant is touched."""
    raw = await request.body()
    ids = proto.request_ids(raw) if is_protobuf(request) else wire.sequence_ids(raw)
    if ids is not None:
        api.service.clients.refused(owner, *ids)


def is_protobuf(request: Request) -> bool:
    return PROTOBUF in request.headers.get("content-type", "")
