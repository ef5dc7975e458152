"""`POST /v1/events` (facts) and `POST /v1/commands` (commands) for upstream producers.

Needs a token with the producer role. 200: every record is on the log (`duplicates` counts ids it
already held), and `position` (also in `x-mint-position`) is the position just past the batch's
records: a read sent with it as `x-mint-after` sees every one of them folded. That is the records
themselves, not the decisions of the commands among them, which come later from their deciders (an
evaluation or a training run may take minutes); `mint policy …` and the console's buttons wait for a
command's decision and answer its position instead. 400: nothing was appended; `error.records` names
each bad record (index in the batch, id, type, field, message). 413: over the size limits. 429 with
Retry-After: over the token's rate. 503 with Retry-After: the log did not take the batch (its broker
down), which may or may not be on it: send the same records again.
"""

from __future__ import annotations

import math

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from events.log import EventLog, LogUnavailable
from events.positions import after_appended
from mint.api.auth import AuthError, require
from mint.api.errors import HttpError, retry_later
from mint.api.positions import positioned
from mint.ingest import BatchRefused, IngestLimits, Kind, RateLimited, RateLimiter, TooLarge, validate_batch

# A batch the log has not taken within this is answered 503 with Retry-After, not left hanging (a
# broker down): the client sends it again, and the records' ids make a second copy harmless.
APPEND_DEADLINE_S = 10.0


async def _bounded_body(request: Request, max_bytes: int) -> bytes:
    """The body, read no further than the limit (a chunked body declares no length up front)."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > max_bytes:
        raise TooLarge(f"body: {declared:,} bytes is over the limit of {max_bytes:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"body: more than the limit of {max_bytes:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def routes(log: EventLog, limits: IngestLimits) -> list[Route]:
    limiter = RateLimiter(limits)

    async def ingest(request: Request, kind: Kind) -> Response:
        try:
            principal = require(request, "producer")
        except AuthError as exc:
            return exc.response()
        try:
            records = validate_batch(await _bounded_body(request, limits.max_bytes), kind, principal, limits)
            limiter.take(principal.token_id, len(records))
        except TooLarge as exc:
            return HttpError(413, str(exc)).response()
        except BatchRefused as exc:
            problems = [
                {"index": p.index, "id": p.id, "type": p.type, "field": p.field, "message": p.message}
                for p in exc.problems
            ]
            return HttpError(400, str(exc), exc.problems[0].field, records=problems).response()
        except RateLimited as exc:
            wait = {"Retry-After": str(math.ceil(exc.retry_after_s))}
            return HttpError(429, str(exc), headers=wait).response()
        placed = None
        with anyio.move_on_after(APPEND_DEADLINE_S):
            try:
                placed = await log.append(records)
            except LogUnavailable as exc:
                return retry_later(503, f"the log did not take the batch; send it again: {exc}").response()
        if placed is None:
            return retry_later(
                503, f"the log did not take the batch within {APPEND_DEADLINE_S:.0f} s; send it again"
            ).response()
        return positioned(
            {
                "appended": sum(1 for p in placed if not p.duplicate),
                "duplicates": sum(1 for p in placed if p.duplicate),
                "records": [
                    {"id": r.id, "partition": p.partition, "offset": p.offset, "duplicate": p.duplicate}
                    for r, p in zip(records, placed, strict=True)
                ],
            },
            after_appended(placed),
        )

    async def events(request: Request) -> Response:
        return await ingest(request, "fact")

    async def commands(request: Request) -> Response:
        return await ingest(request, "command")

    return [
        Route("/v1/events", events, methods=["POST"]),
        Route("/v1/commands", commands, methods=["POST"]),
    ]
