"""Fold the log from offset 0 into a fresh projection, up to a position (default: the end now)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from events.log import EventLog, Position
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
    store = ProjectionStore(target, fold, dedupe=not log.refuses_duplicates, defer_indexes=True)
    began = time.perf_counter()
    folded = 0
    try:
        start = dict.fromkeys(stop, 0)
        async with log.subscribe(f"replay-{uuid.uuid4().hex[:8]}", start=start) as mailbox:
            while _remaining(store.position, stop) > 0:
                records = await mailbox.next_batch(max_records=batch, timeout=5.0)
                if not records:
                    raise RuntimeError(f"log stopped short of {stop}: folded up to {store.position}")
                for stored in records:
                    if stored.offset < stop.get(stored.partition, 0):
                        store.apply(stored)
                        folded += 1
                store.commit()
                if on_progress:
                    on_progress(folded, total)
        store.create_indexes()
        for p, o in stop.items():  # the checkpoint says exactly where this projection stands
            store.position.setdefault(p, o)
        store.commit()
        return Rebuilt(target, folded, time.perf_counter() - began, dict(store.position), store.dead_letters)
    finally:
        store.close()
