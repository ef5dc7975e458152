"""Log positions on the wire, and reads bounded by one: a client reads its own writes on any replica.

A position is what events/log.py calls one: per partition, the next offset to read. Every write of the
API answers the position of its outcome in `x-mint-position` (and as `"position"` in a JSON body); a
read that sends it back in `x-mint-after` is answered only once this replica's catalog projection has
folded at least that far, or, after a bounded wait, with 503 and `Retry-After` (Kafka Streams'
`PositionBound`, EventStore's "not up to bound"). A read without the header is answered at once.

The wire form is `PARTITION@OFFSET[,PARTITION@OFFSET...]`, e.g. `0@13,3@7`: the form `mint replay at`
takes, where `P@O` also means "up to, not including, offset O". The empty string is the empty position
(no bound). Parsing is strict: a malformed value is refused, naming where it came from and what is wrong.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from events.log import EventLog, Position, caught_up
from events.positions import PositionError, format_position, parse_position
from mint.api.errors import HttpError
from mint.projection.states import checkpoint_of

POSITION_HEADER = "x-mint-position"
AFTER_HEADER = "x-mint-after"
DEFAULT_READ_WAIT_S = 5.0  # how long a read waits for its x-mint-after before answering 503
CHECKPOINT_POLL_S = 0.02  # how often a waiting read looks at the projection's checkpoint


def positioned(body: dict[str, Any], position: Position, status_code: int = 200) -> JSONResponse:
    """A write's JSON answer carrying `position` twice: `x-mint-position` and `"position"`."""
    wire = format_position(position)
    return JSONResponse({**body, "position": wire}, status_code, headers={POSITION_HEADER: wire})


class Checkpoint:
    """A projection's checkpoint as readers outside its actor see it: read from its SQLite file at
    most once per CHECKPOINT_POLL_S, however many reads wait on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._read_at = -1.0
        self._position: Position = {}

    def position(self, fresh: bool = False) -> Position:
        now = time.monotonic()
        if fresh or now - self._read_at >= CHECKPOINT_POLL_S:
            self._read_at = now
            try:
                self._position = checkpoint_of(self.path)
            except sqlite3.Error:  # not built yet: nothing folded
                self._position = {}
        return self._position

    async def reached(self, target: Position, timeout_s: float) -> bool:
        """Whether the projection has folded up to `target`, waiting up to `timeout_s` for it."""
        if caught_up(self.position(fresh=True), target):
            return True
        # Polled: the projector that writes the file may run in another process.
        with anyio.move_on_after(timeout_s):
            while True:
                await anyio.sleep(CHECKPOINT_POLL_S)
                if caught_up(self.position(), target):
                    return True
        return False


def behind(checkpoint: Checkpoint, asked: Position, waited_s: float, where: str) -> HttpError:
    """The 503 of a read whose bound this replica did not reach in time. It names the replica's
    position on the partitions asked only (the others' offsets are none of the reader's business)."""
    have = {p: checkpoint.position().get(p, 0) for p in asked}
    return HttpError(
        503,
        f"{where}: this replica's catalog has reached {format_position(have) or 'nothing'}, not yet "
        f"{format_position(asked)}, after waiting {waited_s:g}s; retry (here or on another replica)",
        where,
        headers={"Retry-After": "1"},
        position=format_position(have),
        after=format_position(asked),
    )


class ReadAfter:
    """ASGI middleware: a request carrying `x-mint-after` waits until `checkpoint` has reached it (up
    to `wait_s`), then goes on; a malformed value, or a partition the log does not have, is a 400
    naming the header; a bound not reached in time is a 503 with Retry-After. Writes may send it too:
    they then act on state at least that fresh (e.g. a promotion checked against a policy registered
    through another replica)."""

    def __init__(self, app: ASGIApp, checkpoint: Checkpoint, log: EventLog, wait_s: float) -> None:
        self.app = app
        self.checkpoint = checkpoint
        self.log = log  # for its partition count, known once it is open
        self.wait_s = wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = dict(scope["headers"]).get(AFTER_HEADER.encode()) if scope["type"] == "http" else None
        if raw is not None:
            refusal = await self._bound(raw.decode("latin-1").strip())
            if refusal is not None:
                await refusal.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _bound(self, value: str) -> HttpError | None:
        try:
            asked = parse_position(value, AFTER_HEADER)
        except PositionError as exc:
            return HttpError(400, str(exc), AFTER_HEADER)
        missing = sorted(p for p in asked if p >= self.log.partitions)
        if missing:
            return HttpError(
                400,
                f"{AFTER_HEADER}: partition {missing[0]} does not exist (the log has {self.log.partitions})",
                AFTER_HEADER,
            )
        if await self.checkpoint.reached(asked, self.wait_s):
            return None
        return behind(self.checkpoint, asked, self.wait_s, AFTER_HEADER)
