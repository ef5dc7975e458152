"""Shadow work: the same request run again on a shadowed candidate revision, whose answer nobody sees.
It carries the stable answer the client got (when that was whole), so that the engine host scores both
answers to the same prompt; the client's answer is already out, so pairing it costs the client nothing.

It must never delay a real answer, so it starts only once the real answer is out, runs outside the
request (a request's ASGI call that waited on it would hold its keep-alive connection, and so the
client's next request), and is dropped, and counted, whenever `limit` shadow generations already run
or the engine refuses it as overloaded. The servers run without an ASGI lifespan, so there is no
application task group to hold these tasks: they are asyncio tasks kept here, cancelled on close.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

DEFAULT_SHADOW_LIMIT = 2


class ShadowWork:
    def __init__(self, limit: int = DEFAULT_SHADOW_LIMIT) -> None:
        self.limit = limit
        self.ran: Counter[str] = Counter()  # shadow generations that finished, per candidate ref
        # Those of them sent with the stable answer, for the engine host to score the pair.
        self.paired: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()  # skipped under load (or refused by the engine)
        self._tasks: set[asyncio.Task[None]] = set()

    def running(self) -> int:
        return len(self._tasks)

    def start(self, ref: str, work: Callable[[], Awaitable[bool]], paired: bool = False) -> bool:
        """Run `work` (which returns False when the engine refused it as overloaded) in the background,
        unless `limit` shadows run already: then it is dropped. `paired`: it carries the stable answer.
        Returns whether it started."""
        if len(self._tasks) >= self.limit:
            self.dropped[ref] += 1
            return False

        async def shadowed() -> None:
            try:
                finished = await work()
            except Exception as exc:  # the engine host counts the candidate's failures for its verdict
                log.info("shadow run of %s failed: %s", ref, exc)
                return
            (self.ran if finished else self.dropped)[ref] += 1
            if finished and paired:
                self.paired[ref] += 1

        task = asyncio.get_running_loop().create_task(shadowed())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def idle(self) -> None:
        """Return once no shadow work runs (what a test or a drain waits for)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
