"""A rebalance storm: catalog, projector and API replicas join and leave every few seconds under a
mixed workload, so every consumer group rebalances again and again. Afterwards nothing acknowledged is
lost, no command has two outcomes that count, and every replica left (the joiners too, which folded the
log from its start) has a catalog equal to a replay."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mint.chaos.checks import check_cluster
from mint.chaos.faults import storm
from mint.chaos.ledger import Ledger
from mint.chaos.workload import Workload
from mint.cluster.table import ClusterDir
from tests.cluster import running_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.chaos, pytest.mark.timeout(900)]

STORM_S = 60.0
ROLES = ("catalog", "projector", "api")


async def test_replicas_joining_and_leaving_every_few_seconds_lose_and_double_nothing(
    tmp_path: Path, base_dir: Path
) -> None:
    # The evaluator is there for the base it brings (the workload's served policies need one).
    with running_cluster(
        tmp_path,
        catalog=2,
        projectors=2,
        api=2,
        evaluators=1,
        partitions=4,
        base_dir=base_dir,
        broker_storage="memory",
    ) as running:
        cluster = ClusterDir(running.root)
        ledger_path = tmp_path / "ledger.jsonl"
        ledger = Ledger(ledger_path)
        workload = Workload(cluster, ledger, seed=3, rate_per_s=3.0)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(workload.run, stop)
            left = await storm(cluster, seed=3, roles=ROLES, every_s=4.0, until=STORM_S, ledger=ledger)
            stop.set()
        ledger.close()

        assert {f.target.rsplit("-", 1)[0] for f in left} == set(ROLES), left
        # Every replica now is one that joined during the storm (each role turned over at least once).
        names = [p.name for p in cluster.read().processes if p.role in ROLES]
        assert not {"catalog-1", "projector-1", "api-1"} & set(names), names
        report = await check_cluster(cluster, ledger_path)
        assert report.ok, f"{report.broken()}\n{report.counts}"
