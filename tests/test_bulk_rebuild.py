"""The bulk rebuild (one process, and partition-parallel) gives the live projector's digest, on the
SQLite log and on Kafka; a fold whose row two partitions write is refused in parallel, not merged."""

from __future__ import annotations

import json
import pickle
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result
from msgspec.structs import replace

from actors.system import System, running
from events.envelope import Record
from events.kafka_log import KafkaLog
from events.log import Encoded, EventLog
from events.partitioning import partition_for
from events.seal import Seal
from events.serving import AdapterLoaded, EngineRegistered, RevisionTraffic, TrafficObserved
from events.sqlite_log import SqliteLog
from mint.catalog.fold import CATALOG_FOLD
from mint.cli import cli
from mint.config import LogSpec
from mint.home import Home
from mint.projection.store import (
    DEAD_LETTERS,
    DeadLetter,
    ProjectionStore,
    combined_digest,
    store_tables,
    table_digests,
)
from mint.projection.table import ROWS_PER_INSERT
from replay.partitioned import RowsAcrossPartitions, rebuild_partitioned, shares
from replay.rebuild import rebuild
from tests.records import evaluated, exported, promote, register

pytestmark = pytest.mark.anyio

POLICIES = [f"acme/p{i}" for i in range(8)]
ENGINES = ("e1", "e2")
KEY = "bulk-rebuild-test-cluster-key"


def _digest(path: Path) -> str:
    store = ProjectionStore(path, CATALOG_FOLD)
    try:
        return store.digest()
    finally:
        store.close()


def _live_digest(system: System) -> str:
    con = sqlite3.connect(f"file:{system.home.catalog}?mode=ro", uri=True)
    try:
        return combined_digest(table_digests(con, store_tables(CATALOG_FOLD)))
    finally:
        con.close()


async def _history(system: System) -> None:
    """Policies released twice over every partition, two engines loading some of them."""
    for policy in POLICIES:
        await system.log.append([register(policy)])
    for rev in ("r1", "r2"):
        for policy in POLICIES:
            await system.log.append([exported(policy, rev), evaluated(policy, rev), promote(policy, rev)])
    engines: list[Record] = []
    for engine in ENGINES:
        engines.append(
            EngineRegistered.create(engine=engine, base_id="tiny", kind="torch", gpu_slots=2, cpu_slots=2)
        )
        engines += [
            AdapterLoaded.create(engine=engine, policy=p, revision="r2", tier="gpu", ms=1.0)
            for p in POLICIES[:3]
        ]
    await system.log.append(engines)
    await system.settle()


async def _every_rebuild_equals_live(system: System, spec: LogSpec, tmp_path: Path) -> None:
    live = _live_digest(system)
    end = await system.log.end_offsets()
    assert sum(1 for o in end.values() if o) > 2, "the history spans several partitions"
    one = await rebuild(system.log, CATALOG_FOLD, tmp_path / "one.db")
    assert _digest(one.path) == live
    for jobs in (1, 2, 3):
        parallel = await rebuild_partitioned(spec, CATALOG_FOLD, tmp_path / f"jobs{jobs}.db", jobs)
        assert parallel.records == one.records == sum(end.values())
        assert parallel.position == end
        assert _digest(parallel.path) == live, f"{jobs} jobs"


@pytest.fixture
async def sqlite_system(tmp_path: Path) -> AsyncIterator[System]:
    home = Home(tmp_path / "home")
    async with SqliteLog(home.log, partitions=4) as log, running(home, log) as system:
        yield system


async def test_bulk_and_parallel_rebuilds_equal_live_on_sqlite(sqlite_system: System, tmp_path: Path) -> None:
    await _history(sqlite_system)
    spec = LogSpec("sqlite", path=sqlite_system.home.log)
    await _every_rebuild_equals_live(sqlite_system, spec, tmp_path)


@pytest.mark.kafka
async def test_bulk_and_parallel_rebuilds_equal_live_on_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"mint.bulk.{uuid.uuid4().hex[:8]}"
    seal = Seal.from_secret(KEY)  # the worker processes open the topic with the cluster's key
    home = Home(tmp_path / "home")
    async with (
        KafkaLog(kafka_bootstrap, topic=topic, partitions=4, seal=seal) as log,
        running(home, log) as system,
    ):
        await _history(system)
        spec = LogSpec("kafka", bootstrap=kafka_bootstrap, topic=topic, partitions=4, seal=seal)
        await _every_rebuild_equals_live(system, spec, tmp_path)


def _engines_on_two_partitions(partitions: int) -> tuple[str, str]:
    first = "e-a"
    other = next(
        e for i in range(100) if partition_for(e := f"e-{i}", partitions) != partition_for(first, partitions)
    )
    return first, other


async def _traffic_from_two_partitions(log: EventLog) -> None:
    now = datetime.now(UTC)
    seen = {"acme/p0@r1": RevisionTraffic(requests=3, errors=0, scored=1, score_sum=0.5)}
    await log.append(
        [
            TrafficObserved.create(engine=engine, interval_start=now, interval_s=1.0, traffic=seen)
            for engine in _engines_on_two_partitions(log.partitions)
        ]
    )


async def invoke(*args: str) -> Result:
    return await anyio.to_thread.run_sync(lambda: CliRunner().invoke(cli, list(args)))


async def test_a_row_written_from_two_partitions_is_refused_in_parallel(tmp_path: Path) -> None:
    """The traffic row of one revision sums what every engine saw: engines sit on different
    partitions, so shares folded apart cannot be merged. Nothing is left behind; one process can."""
    home = Home(tmp_path / "home")
    async with SqliteLog(home.log, partitions=4) as log:
        await _traffic_from_two_partitions(log)
    spec = LogSpec("sqlite", path=home.log)
    target = tmp_path / "parallel.db"
    with pytest.raises(
        RowsAcrossPartitions, match=r"table traffic: a row was written by facts of more than one"
    ):
        await rebuild_partitioned(spec, CATALOG_FOLD, target, jobs=2)
    assert not target.exists()
    out = tmp_path / "cli.db"
    result = await invoke("replay", "rebuild", "--jobs", "2", "--out", str(out), "--home", str(home.root))
    assert result.exit_code == 0, result.output
    assert "rebuilding in one process instead" in result.output
    assert "rebuilt 2 records" in result.output
    async with SqliteLog(home.log) as log:
        one = await rebuild(log, CATALOG_FOLD, tmp_path / "one.db")
    assert _digest(out) == _digest(one.path)


async def test_cli_rebuilds_with_jobs_and_refuses_zero(sqlite_system: System, tmp_path: Path) -> None:
    await _history(sqlite_system)
    out = tmp_path / "jobs2.db"
    root = str(sqlite_system.home.root)
    result = await invoke("replay", "rebuild", "--jobs", "2", "--out", str(out), "--home", root)
    assert result.exit_code == 0, result.output
    assert "rebuilt" in result.output and "one process instead" not in result.output
    assert _digest(out) == _live_digest(sqlite_system)
    refused = await invoke("replay", "rebuild", "--jobs", "0", "--home", root)
    assert refused.exit_code == 2 and "--jobs" in refused.output


def test_shares_balance_records_and_skip_empty_partitions() -> None:
    assert shares({0: 10, 1: 0, 2: 6, 3: 5}, 2) == [{0: 10}, {2: 6, 3: 5}]
    assert shares({0: 4, 1: 0}, 3) == [{0: 4}]
    assert shares({0: 0, 1: 0}, 2) == [{}]


def test_a_fold_pickles_for_the_worker_processes() -> None:
    copy = pickle.loads(pickle.dumps(CATALOG_FOLD))
    assert copy.tables == CATALOG_FOLD.tables and copy.handlers == CATALOG_FOLD.handlers
    table = pickle.loads(pickle.dumps(DEAD_LETTERS))
    row = DeadLetter(1, 7, "id-1", "PolicyRegistered", "policy: why", "{}")
    assert table.to_db(row) == DEAD_LETTERS.to_db(row) == (1, 7, DEAD_LETTERS.to_db(row)[-1])
    assert table.from_db(table.to_db(row)) == row


def test_a_table_writes_many_rows_to_a_statement_and_the_later_copy_of_a_key_stands(tmp_path: Path) -> None:
    """Rows go ROWS_PER_INSERT to a statement, the rest one by one: every row lands, and of two rows
    with one key the later one stands, whether they share a statement or not."""
    con = sqlite3.connect(tmp_path / "rows.db")
    DEAD_LETTERS.create(con)
    rows = [
        DeadLetter(0, o, f"id-{o}", "PolicyRegistered", "first", "{}") for o in range(2 * ROWS_PER_INSERT + 5)
    ]
    same_statement = replace(rows[10], reason="again, in the same statement")
    later_statement = replace(rows[3], reason="again, in the rows after the whole statements")
    DEAD_LETTERS.write(con, [*rows[:11], same_statement, *rows[11:], later_statement])
    written = [DEAD_LETTERS.from_db(r) for r in con.execute("SELECT * FROM dead_letters ORDER BY offset")]
    assert written == [*rows[:3], later_statement, *rows[4:10], same_statement, *rows[11:]]
    con.close()


async def test_a_rebuild_that_flushes_and_sheds_rows_midway_equals_live(
    sqlite_system: System, tmp_path: Path
) -> None:
    """A log too big to hold: rows are written every few and the cache dropped, so later records
    read their rows back from the file."""
    await _history(sqlite_system)
    small = await rebuild(sqlite_system.log, CATALOG_FOLD, tmp_path / "small.db", batch=7, flush_rows=5)
    assert _digest(small.path) == _live_digest(sqlite_system)


async def test_only_the_types_the_fold_consumes_are_decoded(tmp_path: Path) -> None:
    """Types without a handler are skipped from the log's header: an invalid body of one costs
    nothing and is no dead letter; the same body of a folded type is one."""

    def invalid(type_name: str, key: str) -> Encoded:
        raw = json.dumps({"type": type_name, "id": f"bad-{type_name}", "key": key}).encode()
        return Encoded(id=f"bad-{type_name}", key=key, type=type_name, v=1, at_ms=0, raw=raw)

    assert "ReportDemand" not in CATALOG_FOLD.handlers and "PolicyRegistered" in CATALOG_FOLD.handlers
    async with SqliteLog(tmp_path / "log.db", partitions=2) as log:
        await log.append_encoded([invalid("ReportDemand", "e1")])
        skipped = await rebuild(log, CATALOG_FOLD, tmp_path / "skipped.db")
        await log.append_encoded([invalid("PolicyRegistered", "acme/p0")])
        folded = await rebuild(log, CATALOG_FOLD, tmp_path / "folded.db")
    assert (skipped.records, skipped.dead_letters) == (1, 0)
    assert (folded.records, folded.dead_letters) == (2, 1)
