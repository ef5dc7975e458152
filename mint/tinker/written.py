"""Where a Tinker call's writes landed on the log, for its answer's `x-mint-position`.

A Tinker call appends from deep inside the service (a registration's decision, a training client's
creation, a step, a checkpoint, an export), often in the background work of a future. Rather than
thread a position through every one of those, each piece of work collects what it appends here: a
request collects for its own answer (mint/tinker/endpoint.py), and a future's work for the future,
whose `retrieve_future` answer then carries it (mint/tinker/futures.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar

from events.envelope import Record
from events.log import Appended, EventLog, Position
from events.positions import after_appended, merged

_collected: ContextVar[Position | None] = ContextVar("written", default=None)


def collect() -> Position:
    """Start collecting, in this task and what it awaits, into the returned position (updated in
    place). A task started from here shares it until it calls `collect` itself, as a future's work
    does."""
    position: Position = {}
    _collected.set(position)
    return position


def note(position: Position) -> None:
    """Count `position` among what the current request or future has written (nothing outside one)."""
    collected = _collected.get()
    if collected is not None:
        collected.update(merged(collected, position))


async def append(log: EventLog, records: Sequence[Record]) -> list[Appended]:
    """`log.append(records)`, noted."""
    placed = await log.append(records)
    note(after_appended(placed))
    return placed
