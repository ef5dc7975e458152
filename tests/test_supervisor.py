"""Supervision: crashed actors restart with backoff, each restart is a fact, nothing is lost or doubled."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from actors.faults import Faults
from actors.runtime import Backoff, Batch, StoreActor, Supervisor
from actors.system import running
from events.envelope import Record
from events.sqlite_log import SqliteLog
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.queries import Catalog
from mint.home import Home
from mint.projection.store import ProjectionStore
from replay.audit import history
from replay.verify import verify
from tests.records import evaluated, exported, promote, register

pytestmark = pytest.mark.anyio
FAST = Backoff(first_s=0.001, max_s=0.01)


class Flaky(StoreActor):
    """Crashes in its first `failures` effects, like an actor whose dependency is briefly down. (A
    decision that raises is the record's fault and goes to the dead letters; an effect that raises
    is retried, by a restart.)"""

    decode_types = frozenset({"RegisterPolicy"})

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__("flaky", CATALOG_FOLD, path)
        self.failures = failures

    async def act(self, batch: Batch, store: ProjectionStore) -> list[Record]:
        if batch.records and self.failures:
            self.failures -= 1
            raise ConnectionError("engine unreachable")
        return []


async def test_restarts_are_recorded_with_growing_backoff(tmp_path: Path) -> None:
    async with SqliteLog(tmp_path / "log.db", partitions=1) as log:
        flaky = Flaky(tmp_path / "flaky.db", failures=3)
        supervisor = Supervisor(log, [flaky], Backoff(first_s=0.001, max_s=0.004))
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run)
            await log.append([register("acme/a")])
            await flaky.progress.reached({0: 1})  # it gets past the command only after three crashes
            tg.cancel_scope.cancel()
        assert supervisor.restarts == 3
        restarts = [e.record for e in await history(log, "flaky")]
        assert [(r.attempt, r.backoff_s) for r in restarts] == [(1, 0.001), (2, 0.002), (3, 0.004)]  # type: ignore[union-attr]
        assert all("engine unreachable" in r.error for r in restarts)  # type: ignore[union-attr]


async def test_a_session_with_injected_crashes_replays_to_the_live_catalog(tmp_path: Path) -> None:
    home = Home(tmp_path)
    faults = Faults(rate=0.15, seed=11)
    policies = [f"acme/p{i}" for i in range(6)]
    async with SqliteLog(home.log, partitions=3) as log, running(home, log, faults, FAST) as system:
        for p in policies:
            await log.append(
                [register(p), exported(p, "r1"), evaluated(p, "r1"), exported(p, "r2"), evaluated(p, "r2")]
            )
            await log.append([promote(p, "r1")])
            await log.append([promote(p, "r2"), promote(p, "r2")])  # the second is refused: already serving
        await system.settle()
        assert system.supervisor.restarts > 0 and faults.injected > 0
        catalog = Catalog(home.catalog)
        assert {p: catalog.resolve(p) for p in policies} == dict.fromkeys(policies, "r2")
        for p in policies:
            moves = catalog.serving_history(p)
            assert [m.revision for m in moves] == ["r1", "r2"], "no pointer move is lost or doubled"
            assert ["already serving" in r.reason for r in catalog.rejections(p)] == [True]
        verdict = await verify(log, CATALOG_FOLD, home.catalog)
        assert verdict.equal, verdict.diffs
