"""How far an actor has got: lets callers wait until it has passed a position (read your writes)."""

from __future__ import annotations

import anyio

from events.log import Position


def passed(position: Position, target: Position) -> bool:
    return all(position.get(p, 0) >= o for p, o in target.items())


class Progress:
    def __init__(self) -> None:
        self.position: Position = {}
        self._changed = anyio.Event()

    def update(self, position: Position) -> None:
        self.position = dict(position)
        self._changed.set()
        self._changed = anyio.Event()

    async def changed(self) -> None:
        """Wait for the next update."""
        await self._changed.wait()

    async def reached(self, target: Position) -> None:
        while not passed(self.position, target):
            await self._changed.wait()
