"""Fold the log from offset 0 into a fresh projection, up to a position (default: the end now)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from events.log import EventLog, Position, Stored
from mint.projection.store import Fold, ProjectionStore

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Rebuilt:
    path: Path
    records: int
    seconds: float
    position: Position
    dead_letters: int

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else float("inf")


def _remaining(position: Position, until: Position) -> int:
    return sum(max(0, o - position.get(p, 0)) for p, o in until.items())


async def rebuild(
    log: EventLog,
    fold: Fold,
    target: Path,
    until: Position | None = None,
    on_progress: ProgressCallback | None = None,
    batch: int = 5000,
) -> Rebuilt:
    """`target` must not exist: a rebuild never folds into a projection that holds anything."""
    if target.exists():
        raise FileExistsError(f"{target}: already exists; a rebuild writes a fresh projection")
    stop = until if until is not None else await log.end_offsets()
    total = sum(stop.values())
    store = ProjectionStore(target, fold, dedupe=not log.refuses_duplicates, bulk=True)
    began = time.perf_counter()
    folded = 0
    try:
        # Reading runs ahead by one batch (in the log's worker thread) while this task folds.
        send, receive = anyio.create_memory_object_stream[list[Stored]](1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_read, log, stop, batch, send)
            async with receive:
                async for records in receive:
                    for stored in records:
                        if stored.offset < stop.get(stored.partition, 0):
                            store.apply(stored)
                            folded += 1
                    store.commit()
                    if on_progress:
                        on_progress(folded, total)
        store.finish_bulk()
        for p, o in stop.items():  # the checkpoint says exactly where this projection stands
            store.position.setdefault(p, o)
        store.commit()
        return Rebuilt(target, folded, time.perf_counter() - began, dict(store.position), store.dead_letters)
    finally:
        store.close()


async def _read(
    log: EventLog, stop: Position, batch: int, send: MemoryObjectSendStream[list[Stored]]
) -> None:
    position: Position = {}
    async with send, log.subscribe(f"replay-{uuid.uuid4().hex[:8]}", start=dict.fromkeys(stop, 0)) as mailbox:
        while _remaining(position, stop) > 0:
            records = await mailbox.next_batch(max_records=batch, timeout=5.0)
            if not records:
                raise RuntimeError(f"log stopped short of {stop}: read up to {position}")
            for stored in records:
                position[stored.partition] = stored.offset + 1
            await send.send(records)
