"""A catalog partition's state file deleted while its replica is stopped: on restart the replica rebuilds
it from the log to the same digest, and answers /healthz 200 only once it has caught up (SCALE_OUT.md,
"a partition's state file deleted")."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from events.log import Position
from mint.catalog.fold import CATALOG_FOLD
from mint.projection.states import checkpoint_of
from mint.projection.store import combined_digest, store_tables, table_digests
from replay.verify import verify
from tests.cluster import RunningCluster, running_cluster
from tests.test_catalog_replicas import health, outcomes_of, registrations, until

pytestmark = [pytest.mark.anyio, pytest.mark.chaos, pytest.mark.timeout(300)]

PARTITIONS = 2
DELETED = 0  # the partition whose state file goes


def state_of(cluster: RunningCluster, name: str) -> str:
    """running, stopped or dead, as `mint cluster status` says."""
    (process,) = (p for p in cluster.status()["processes"] if p["name"] == name)
    return str(process["state"])


def committed(path: Path) -> Position:
    """A store's checkpoint; empty while the file or its tables do not exist yet (a rebuild starting)."""
    try:
        return checkpoint_of(path) if path.exists() else {}
    except sqlite3.OperationalError:
        return {}


def digest_of(path: Path) -> str:
    """The digest of a catalog store's tables (claims and dedupe bookkeeping are not digested)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return combined_digest(table_digests(con, store_tables(CATALOG_FOLD)))
    finally:
        con.close()


def backup(path: Path, to: Path) -> None:
    source, copy = sqlite3.connect(f"file:{path}?mode=ro", uri=True), sqlite3.connect(to)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()


def table_diff(before: Path, after: Path) -> dict[str, tuple[list[object], list[object]]]:
    """Per digested table that differs: the rows only before, and only after (a few of each)."""
    old, new = (sqlite3.connect(f"file:{p}?mode=ro", uri=True) for p in (before, after))
    try:
        diffs = {}
        for table in store_tables(CATALOG_FOLD):
            if not table.digest:
                continue
            rows = [set(c.execute(f"SELECT * FROM {table.name}").fetchall()) for c in (old, new)]
            if rows[0] != rows[1]:
                diffs[table.name] = (sorted(rows[0] - rows[1])[:3], sorted(rows[1] - rows[0])[:3])
        return diffs
    finally:
        old.close()
        new.close()


async def test_a_deleted_partition_state_file_is_rebuilt_to_the_same_digest_before_the_replica_is_ready(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path, catalog=1, partitions=PARTITIONS, broker_storage="memory") as cluster:
        state_dir = Path(cluster.process("catalog-1")["home"]) / "actors" / "catalog"
        deleted = state_dir / f"p{DELETED}.db"
        # Enough records that folding them again takes a while: readiness is sampled meanwhile.
        commands = registrations("s", 120)
        async with cluster.log() as log:
            for i in range(0, len(commands), 30):
                await log.append(commands[i : i + 30])
            await outcomes_of(log, commands, tmp_path)
            end = await log.end_offsets()
            await until(
                lambda: all(
                    committed(state_dir / f"p{p}.db").get(p, 0) >= end.get(p, 0) for p in range(PARTITIONS)
                ),
                "catalog-1 has committed every partition up to the end",
            )

            cluster.kill("catalog-1", "KILL")
            await until(lambda: state_of(cluster, "catalog-1") == "dead", "catalog-1 is dead")
            before = {p: digest_of(state_dir / f"p{p}.db") for p in range(PARTITIONS)}
            kept = tmp_path / "deleted.db"  # for the failure's diff (a backup: the rows are in its WAL)
            with (
                sqlite3.connect(f"file:{deleted}?mode=ro", uri=True) as source,
                sqlite3.connect(kept) as copy,
            ):
                source.backup(copy)
            for stale in state_dir.glob(f"p{DELETED}.db*"):
                stale.unlink()
            end = await log.end_offsets()

            # Sample (ready, checkpoint of the rebuilt file) while the replica restarts and rebuilds.
            samples: list[tuple[bool, int]] = []
            restarting = True

            async def sample() -> None:
                while restarting:
                    ready = (await anyio.to_thread.run_sync(health, cluster, "catalog-1")).get("ready", False)
                    samples.append((bool(ready), committed(deleted).get(DELETED, 0)))
                    await anyio.sleep(0.05)

            async with anyio.create_task_group() as tg:
                tg.start_soon(sample)
                await anyio.to_thread.run_sync(cluster.restart, "catalog-1")
                restarting = False

            early = [s for s in samples if s[0] and s[1] < end.get(DELETED, 0)]
            assert not early, f"ready before catching up to {end.get(DELETED)}: {early[:5]}"
            assert samples and not samples[0][0], f"ready at once after the restart: {samples[:5]}"
            assert committed(deleted).get(DELETED, 0) >= end.get(DELETED, 0)
            after = {p: digest_of(state_dir / f"p{p}.db") for p in range(PARTITIONS)}
            assert after == before, (
                f"the rebuilt p{DELETED}.db differs from the one deleted: {table_diff(kept, deleted)}"
            )
            verdict = await verify(log, CATALOG_FOLD, deleted)
            assert verdict.equal, f"the rebuilt p{DELETED}.db differs from a replay: {verdict.diffs}"
            assert health(cluster, "catalog-1")["ready"]
