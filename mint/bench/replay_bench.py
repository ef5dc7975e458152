"""`mint bench replay`: the SQLite log's append rates and the catalog rebuild rates (one process, and
partition-parallel in 1 and 2 jobs), beside a plain read + decode loop over the same log."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from events.catalog import RevisionPromoted, RevisionRolledBack
from events.log import Encoded
from events.schema import BY_NAME
from events.sqlite_log import SqliteLog
from mint.bench.workload import facts
from mint.catalog.fold import CATALOG_FOLD
from mint.config import LogSpec
from mint.projection.store import ProjectionStore
from replay.partitioned import rebuild_partitioned
from replay.rebuild import rebuild

APPEND_BATCH = 1_000


async def _append_batched(log: SqliteLog, records: list[Encoded]) -> float:
    began = time.perf_counter()
    for i in range(0, len(records), APPEND_BATCH):
        await log.append_encoded(records[i : i + APPEND_BATCH])
    return len(records) / (time.perf_counter() - began)


async def _append_one_per_commit(log: SqliteLog, records: list[Encoded]) -> float:
    began = time.perf_counter()
    for record in records:
        await log.append_encoded([record])
    return len(records) / (time.perf_counter() - began)


def plain_loop(path: Path) -> float:
    """The floor to compare with: a hand-written read + typed decode + in-memory fold of the same
    log, with no projection, no checkpoint and no SQLite writes. facts/s."""
    decoders = {name: msgspec.json.Decoder(cls) for name, cls in BY_NAME.items()}
    pointers: dict[str, str | None] = {}
    with sqlite3.connect(path) as con:
        began = time.perf_counter()
        count = 0
        for type_name, raw in con.execute("SELECT type, raw FROM records ORDER BY pos"):
            record = decoders[type_name].decode(raw)
            count += 1
            if isinstance(record, RevisionPromoted | RevisionRolledBack):
                pointers[record.policy] = record.revision
            else:
                pointers.setdefault(record.key, None)
        return count / (time.perf_counter() - began)


def _digest(path: Path) -> str:
    store = ProjectionStore(path, CATALOG_FOLD)
    try:
        return store.digest()
    finally:
        store.close()


async def bench_replay(
    count: int = 1_000_000, commits: int = 2_000, say: Callable[[str], None] = print
) -> dict[str, float]:
    say(f"generating {count:,} facts")
    records = facts(count)
    singles = facts(count + commits)[count:]
    with tempfile.TemporaryDirectory(prefix="mint-bench-") as tmp:
        root = Path(tmp)
        async with SqliteLog(root / "log.db") as log:
            say(f"appending {count:,} facts in batches of {APPEND_BATCH:,}")
            batched = await _append_batched(log, records)
            say(f"appending {commits:,} facts one per commit (synchronous=FULL)")
            per_commit = await _append_one_per_commit(log, singles)
        async with SqliteLog(root / "normal.db", synchronous="NORMAL") as log:
            per_commit_normal = await _append_one_per_commit(log, singles)
        log_bytes = (root / "log.db").stat().st_size
        # Measured just before the one-process rebuild it is compared with: on a shared machine whose
        # speed drifts, a ratio is honest only between neighbours.
        say("the same log through a plain read + decode + dict loop, for comparison")
        plain = plain_loop(root / "log.db")
        async with SqliteLog(root / "log.db") as log:
            say(f"rebuilding the catalog from {count + commits:,} facts in one process")
            rebuilt = await rebuild(log, CATALOG_FOLD, root / "catalog.db")
        parallel = {}
        for jobs in (1, 2):
            say(f"rebuilding it partition-parallel in {jobs} job(s)")
            spec = LogSpec("sqlite", path=root / "log.db")
            parallel[jobs] = await rebuild_partitioned(spec, CATALOG_FOLD, root / f"jobs{jobs}.db", jobs)
        digests = {_digest(r.path) for r in (rebuilt, *parallel.values())}
        projection_bytes = rebuilt.path.stat().st_size
    best = max(rebuilt.records_per_s, *(r.records_per_s for r in parallel.values()))
    return {
        "facts": float(rebuilt.records),
        "append_facts_per_s": batched,
        "append_commits_per_s": per_commit,
        "append_commits_per_s_sync_normal": per_commit_normal,
        "rebuild_facts_per_s": best,
        "rebuild_one_process_facts_per_s": rebuilt.records_per_s,
        "rebuild_seconds": rebuilt.seconds,
        "rebuild_jobs1_facts_per_s": parallel[1].records_per_s,
        "rebuild_jobs2_facts_per_s": parallel[2].records_per_s,
        "rebuild_jobs2_vs_jobs1": parallel[2].records_per_s / parallel[1].records_per_s,
        "rebuild_digests_equal": float(len(digests) == 1),
        "plain_loop_facts_per_s": plain,
        "rebuild_vs_plain_loop": rebuilt.records_per_s / plain,
        "log_mb": log_bytes / 1e6,
        "projection_mb": projection_bytes / 1e6,
    }
