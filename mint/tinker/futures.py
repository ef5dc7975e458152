"""Futures ("promises"): every slow call answers at once with a request id; the client polls
`retrieve_future`, which long-polls (the SDK re-polls with no pause, so answering at once would spin).

A future holds a result (a JSON object, or a forward/backward or sample result the route renders as
protobuf or JSON by the client's Accept header) or an error with its category. Finished futures are
kept for a while after they finish, because the SDK may poll one again after a dropped connection.
Their work runs in one task group, held by `Futures.run` for the service's life.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup, TaskStatus

from events.log import Position
from mint.tinker import written
from mint.tinker.wire import WireError

KEEP_FINISHED_S = 600.0
PAUSE_AT_PENDING = 256  # queue_state "paused_capacity" beyond this many unfinished futures
REFUSE_AT_PENDING = 4096  # and 429 at submission beyond this many of one tenant's
ErrorCategory = Literal["user", "server", "unknown"]


class RequestFailed(Exception):
    """A request that ran and failed; `category` "user" means the request was at fault."""

    def __init__(self, message: str, category: ErrorCategory = "user") -> None:
        super().__init__(message)
        self.message = message
        self.category = category


@dataclass
class Future:
    request_id: str
    tenant: str  # only its tenant may retrieve it
    model_id: str | None
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Any = None
    error: RequestFailed | None = None
    finished_at: float = 0.0
    position: Position = field(default_factory=dict)  # where its work's appends landed


class Futures:
    def __init__(self) -> None:
        self._futures: dict[str, Future] = {}
        self._ids = itertools.count(1)
        self._salt = os.urandom(4).hex()
        self._tasks: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold the task group that submitted work runs in, until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            task_status.started()
            await anyio.sleep_forever()

    def admit(self, tenant: str) -> None:
        """Refuse (429) a tenant that has REFUSE_AT_PENDING futures unfinished. Per tenant, so one
        tenant's flood (say, seq_ids far ahead that never get their turn) never refuses another's."""
        queued = self.pending_of(tenant)
        if queued >= REFUSE_AT_PENDING:
            raise WireError("request", f"{queued} requests of yours are queued; retry later", 429)

    def submit(self, tenant: str, work: Callable[[], Awaitable[Any]], model_id: str | None = None) -> Future:
        """A future settled by `work`, which starts in the background (once admitted)."""
        self.admit(tenant)
        assert self._tasks is not None, "Futures.run is not running"
        future = self.create(tenant, model_id)
        self._tasks.start_soon(self.complete, future, work)
        return future

    @property
    def queue_state(self) -> str:
        return "paused_capacity" if self.pending >= PAUSE_AT_PENDING else "active"

    def create(self, tenant: str, model_id: str | None = None) -> Future:
        self._forget_old()
        future = Future(f"req-{next(self._ids)}-{self._salt}", tenant, model_id)
        self._futures[future.request_id] = future
        return future

    def get(self, request_id: str, tenant: str) -> Future | None:
        future = self._futures.get(request_id)
        return future if future is not None and future.tenant == tenant else None

    @property
    def pending(self) -> int:
        return sum(1 for f in self._futures.values() if not f.done.is_set())

    def pending_of(self, tenant: str) -> int:
        return sum(1 for f in self._futures.values() if f.tenant == tenant and not f.done.is_set())

    async def complete(self, future: Future, work: Callable[[], Awaitable[Any]]) -> None:
        """Run `work` and settle `future` with its result or failure. A failure of the server's own is
        reported as a "server" error, so one bad request never takes the service down."""
        future.position = written.collect()
        try:
            future.result = await work()
        except RequestFailed as exc:
            future.error = exc
        except Exception as exc:
            future.error = RequestFailed(f"{type(exc).__name__}: {exc}", "server")
        future.finished_at = time.monotonic()
        future.done.set()

    async def wait(self, future: Future, timeout_s: float) -> bool:
        """True once finished; False if still pending after `timeout_s` (the long poll)."""
        with anyio.move_on_after(timeout_s):
            await future.done.wait()
        return future.done.is_set()

    def _forget_old(self) -> None:
        horizon = time.monotonic() - KEEP_FINISHED_S
        for request_id in [
            r for r, f in self._futures.items() if f.done.is_set() and f.finished_at < horizon
        ]:
            del self._futures[request_id]
