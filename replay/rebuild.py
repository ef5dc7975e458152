"""Fold the log from offset 0 into a fresh projection, up to a position (default: the end now).

A rebuild is a bulk load: the same handlers as the live projector (the Fold), but rows stay in memory
and are written once, in key order, in one transaction (or one per `flush_rows` rows on a log too
big to hold), instead of one transaction per batch of records."""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from events.log import EventLog, Position, Stored
from mint.projection.store import Fold, ProjectionStore

ProgressCallback = Callable[[int, int], None]
# Rows held in memory before a rebuild writes them out (about 0.5 KiB each with their keys).
FLUSH_ROWS = 2_000_000


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


@contextmanager
def collector_paused() -> Iterator[None]:
    """Rows and records are not tracked by the garbage collector, but the tuples and dicts of a
    bulk fold are: with millions alive, its passes cost a third of a rebuild and free nothing."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def bulk_store(log: EventLog, fold: Fold, target: Path, flush_rows: int = FLUSH_ROWS) -> ProjectionStore:
    """A fresh projection file for a rebuild; `target` must not exist."""
    if target.exists():
        raise FileExistsError(f"{target}: already exists; a rebuild writes a fresh projection")
    return ProjectionStore(target, fold, dedupe=not log.refuses_duplicates, bulk=True, cache_limit=flush_rows)


async def fold_batches(
    store: ProjectionStore,
    batches: AsyncIterator[list[Stored]],
    stop: Position,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Apply every record below `stop`; reading runs one batch ahead (in the log's worker thread)
    while this task folds. Returns how many records were applied."""
    send, receive = anyio.create_memory_object_stream[list[Stored]](1)

    async def read_ahead() -> None:
        async with send:
            async for records in batches:
                await send.send(records)

    folded = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(read_ahead)
        async with receive:
            async for records in receive:
                for stored in records:
                    if stored.offset < stop.get(stored.partition, 0):
                        store.apply(stored)
                        folded += 1
                if store.rows.held() > store.cache_limit:
                    store.commit()
                if on_progress:
                    on_progress(folded)
    return folded


def finish(store: ProjectionStore, stop: Position) -> None:
    """Write what is left, say in the checkpoint exactly where this projection stands, and make
    the file an ordinary projection (indexes, WAL)."""
    store.commit()
    store.finish_bulk()
    for p, o in stop.items():
        store.position.setdefault(p, o)
    store.commit()


async def rebuild(
    log: EventLog,
    fold: Fold,
    target: Path,
    until: Position | None = None,
    on_progress: ProgressCallback | None = None,
    batch: int = 5000,
    flush_rows: int = FLUSH_ROWS,
) -> Rebuilt:
    """Fold in the log's own order (commit order on SQLite), as the live projector did. `target`
    must not exist: a rebuild never folds into a projection that holds anything."""
    stop = until if until is not None else await log.end_offsets()
    total = sum(stop.values())
    store = bulk_store(log, fold, target, flush_rows)
    began = time.perf_counter()
    try:
        with collector_paused():
            progress = (lambda done: on_progress(done, total)) if on_progress else None
            folded = await fold_batches(store, _subscribed(log, stop, batch), stop, progress)
            finish(store, stop)
        return Rebuilt(target, folded, time.perf_counter() - began, dict(store.position), store.dead_letters)
    finally:
        store.close()


async def _subscribed(log: EventLog, stop: Position, batch: int) -> AsyncIterator[list[Stored]]:
    async with log.subscribe(f"replay-{uuid.uuid4().hex[:8]}", start=dict.fromkeys(stop, 0)) as mailbox:
        while _remaining(mailbox.position(), stop) > 0:
            records = await mailbox.next_batch(max_records=batch, timeout=5.0)
            if not records:
                raise RuntimeError(f"log stopped short of {stop}: read up to {mailbox.position()}")
            yield records
