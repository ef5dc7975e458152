"""Requests in flight per adapter, which both engines count so that an unload drains them first."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio


class InFlight:
    """Mixed into an engine: `holding(adapter)` around each request, `drained(ref)` before unloading."""

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}
        self._idle = anyio.Event()

    @contextmanager
    def holding(self, adapter: str | None) -> Iterator[None]:
        if adapter is None:
            yield
            return
        self._in_flight[adapter] = self._in_flight.get(adapter, 0) + 1
        try:
            yield
        finally:
            self._in_flight[adapter] -= 1
            self._idle.set()
            self._idle = anyio.Event()

    async def drained(self, ref: str) -> None:
        while self._in_flight.get(ref, 0):
            await self._idle.wait()
