"""Actors that stay behind the log: a projection whose checkpoint does not reach the log's end.

`replay verify` compares the live projection with a rebuild up to the live checkpoint, so a projector
stuck at one record would still verify as equal. This finds it: each store must reach the end the log
had when the check began, within a bound (a live actor lags by a batch, not by minutes).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import anyio

from events.log import EventLog, Position
from mint.projection.states import checkpoint_of

POLL_S = 0.2  # how often the files are re-read while waiting; a store commits every batch


def records_behind(checkpoint: Position, end: Position) -> int:
    return sum(max(0, offset - checkpoint.get(p, 0)) for p, offset in end.items())


async def stuck(log: EventLog, states: Mapping[str, Path], wait_s: float) -> dict[str, int]:
    """Actor → how many records it is behind, for each store that has not reached the log's end
    (as of the call) after `wait_s`."""
    end = await log.end_offsets()
    deadline = time.monotonic() + wait_s
    while True:
        behind = {name: records_behind(checkpoint_of(path), end) for name, path in states.items()}
        behind = {name: n for name, n in behind.items() if n}
        if not behind or time.monotonic() >= deadline:
            return behind
        await anyio.sleep(POLL_S)
