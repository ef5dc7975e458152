"""Per-model request order. A training client numbers its requests (seq_id 1, 2, ...) and submits them
without waiting, and splits a large forward_backward into chunks sent concurrently, the first chunk
last. So requests may arrive out of order; each waits here for its turn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from mint.tinker.futures import RequestFailed


class SeqGate:
    def __init__(self, first: int = 1) -> None:
        self.next = first
        self._skipped: set[int] = set()
        self._advanced = anyio.Event()

    @asynccontextmanager
    async def turn(self, seq_id: int) -> AsyncIterator[None]:
        """Hold until every earlier seq_id has run (or was skipped), then run the body."""
        while self.next != seq_id:
            if seq_id < self.next:
                raise RequestFailed(f"seq_id: {seq_id} was already used (next is {self.next})")
            await self._advanced.wait()
        try:
            yield
        finally:
            self._advance(seq_id)

    def skip(self, seq_id: int) -> None:
        """A request refused before it could run: its seq_id must not hold back the later ones."""
        if seq_id == self.next:
            self._advance(seq_id)
        elif seq_id > self.next:
            self._skipped.add(seq_id)

    def _advance(self, seq_id: int) -> None:
        self.next = seq_id + 1
        while self.next in self._skipped:
            self._skipped.discard(self.next)
            self.next += 1
        self._advanced.set()
        self._advanced = anyio.Event()
