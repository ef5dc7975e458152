"""Partition-parallel rebuild: N processes each fold a share of the log's partitions into a file of
their own, and the shares are merged into one projection.

This is exact when every row of the fold is written by the facts of one partition: records of one
key share a partition (per-key order), and folds never assume order across keys (DESIGN.md,
invariant 4). A row two shares both wrote depends on the order across partitions, so it cannot be
merged: the merge finds it (its primary key is taken), writes nothing and says which table.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import anyio
import anyio.to_thread

from events.log import EventLog, Position, Stored
from mint.config import LogSpec, open_log
from mint.projection.store import Fold, ProjectionStore
from replay.rebuild import (
    ProgressCallback,
    Rebuilt,
    bulk_store,
    collector_paused,
    finish,
    fold_batches,
)


class RowsAcrossPartitions(RuntimeError):
    """Two shares of a partition-parallel rebuild wrote the same row: the fold's rows are not all
    partition-local, so only a rebuild in one process (in the log's order) is exact."""


def shares(stop: Position, jobs: int) -> list[Position]:
    """Partitions dealt into at most `jobs` shares of about equal record counts (largest first, each
    to the share with the fewest so far). Empty partitions need no share."""
    dealt: list[Position] = [{} for _ in range(min(jobs, sum(1 for o in stop.values() if o)) or 1)]
    for p, o in sorted(stop.items(), key=lambda po: (-po[1], po[0])):
        if o:
            min(dealt, key=lambda share: sum(share.values()))[p] = o
    return dealt


async def _by_partition(log: EventLog, share: Position, batch: int) -> AsyncIterator[list[Stored]]:
    for p, end in sorted(share.items()):
        offset = 0
        while offset < end:
            records = await log.read(p, offset, min(batch, end - offset))
            if not records:
                raise RuntimeError(f"log stopped short of offset {end} on partition {p}: read up to {offset}")
            offset = records[-1].offset + 1
            yield records


def _fold_share(spec: LogSpec, fold: Fold, share: Position, target: Path, batch: int) -> tuple[int, int]:
    """In a worker process: fold `share` into `target`. Returns (records folded, dead letters)."""

    async def go() -> tuple[int, int]:
        async with open_log(spec) as log:
            store = bulk_store(log, fold, target)
            try:
                folded = await fold_batches(store, _by_partition(log, share, batch), share)
                store.commit()
                return folded, store.dead_letters
            finally:
                store.close()

    with collector_paused():
        return anyio.run(go)


def _merge(store: ProjectionStore, parts: list[Path]) -> None:
    """Copy each share's rows into `store`, in one transaction; a key taken twice undoes it all."""
    con = sqlite3.connect(store.path, isolation_level=None)
    try:
        for i, part in enumerate(parts):
            con.execute(f"ATTACH DATABASE ? AS part{i}", (str(part),))
        con.execute("BEGIN IMMEDIATE")
        try:
            for table in store.tables:
                for i in range(len(parts)):
                    try:
                        con.execute(f"INSERT INTO main.{table.name} SELECT * FROM part{i}.{table.name}")
                    except sqlite3.IntegrityError as exc:
                        raise RowsAcrossPartitions(
                            f"table {table.name}: a row was written by facts of more than one partition "
                            f"({exc}), so its value depends on the order across partitions; rebuild "
                            "in one process (--jobs 1)"
                        ) from None
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
    finally:
        con.close()


async def rebuild_partitioned(
    spec: LogSpec,
    fold: Fold,
    target: Path,
    jobs: int,
    until: Position | None = None,
    on_progress: ProgressCallback | None = None,
    batch: int = 20_000,
) -> Rebuilt:
    """Fold the partitions in `jobs` shares: this process folds the first into `target` while
    `jobs - 1` worker processes fold the others, then their rows are merged into `target`. The
    result has the digest of a one-process rebuild (replay/verify.py) for a partition-local fold;
    RowsAcrossPartitions otherwise, with nothing left at `target`."""
    if jobs < 1:
        raise ValueError(f"jobs: must be at least 1, not {jobs}")
    async with open_log(spec) as log:
        stop = until if until is not None else await log.end_offsets()
        total = sum(stop.values())
        own, *others = shares(stop, jobs)
        store = bulk_store(log, fold, target)
        began = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="mint-rebuild-") as tmp:
                parts = [Path(tmp) / f"share-{i}.db" for i in range(1, len(others) + 1)]
                # spawn: a worker starts clean, holding none of this process's threads or connections.
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(max(1, len(others)), mp_context=context) as pool:
                    futures = [
                        pool.submit(_fold_share, spec, fold, share, part, batch)
                        for share, part in zip(others, parts, strict=True)
                    ]
                    with collector_paused():
                        progress = (lambda done: on_progress(done, total)) if on_progress else None
                        folded = await fold_batches(store, _by_partition(log, own, batch), own, progress)
                        store.commit()
                    results = [await anyio.to_thread.run_sync(f.result) for f in futures]
                _merge(store, parts)
            finish(store, stop)
        except BaseException:
            store.close()
            target.unlink(missing_ok=True)
            raise
        store.close()
    records = folded + sum(n for n, _ in results)
    if on_progress:
        on_progress(records, total)
    dead = store.dead_letters + sum(d for _, d in results)
    return Rebuilt(target, records, time.perf_counter() - began, dict(store.position), dead)
