"""How a chaos run is told to stop: an event another task sets, or a number of seconds."""

from __future__ import annotations

import anyio


def stop_event(until: anyio.Event | float) -> tuple[anyio.Event, float | None]:
    """The event to wait on, and the seconds after which the caller sets it (None: someone else does)."""
    if isinstance(until, anyio.Event):
        return until, None
    return anyio.Event(), float(until)


async def set_after(event: anyio.Event, seconds: float) -> None:
    await anyio.sleep(seconds)
    event.set()
