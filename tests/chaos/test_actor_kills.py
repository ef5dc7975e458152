"""kill -9 of each actor type at a random point of a mixed workload (seeded), each restarted with
`mint cluster restart`: catalog, projector, scheduler, trainer, evaluator, engine host and api. The
pass criteria of SCALE_OUT.md's fault table: nothing acknowledged is lost, nothing counts twice, every
replica's catalog equals a replay, and clients saw successes or retry-laters (a request that got no
answer went to the replica just killed)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mint.chaos.checks import check_cluster
from mint.chaos.faults import FaultPlan, inject
from mint.chaos.ledger import Ledger
from mint.chaos.workload import Workload
from mint.cluster.roles import ROLES
from mint.cluster.table import ClusterDir
from tests.cluster import running_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.chaos, pytest.mark.timeout(1200)]


@pytest.mark.parametrize("seed", [7])
async def test_kill_9_of_each_actor_type_loses_and_doubles_nothing(
    tmp_path: Path, base_dir: Path, seed: int
) -> None:
    with running_cluster(
        tmp_path,
        catalog=2,
        projectors=1,
        schedulers=1,
        trainers=1,
        evaluators=1,
        engines=1,
        api=2,
        partitions=4,
        base_dir=base_dir,
        broker_storage="memory",
        timeout_s=240,
    ) as running:
        cluster = ClusterDir(running.root)
        ledger_path = tmp_path / "ledger.jsonl"
        ledger = Ledger(ledger_path)
        workload = Workload(cluster, ledger, seed=seed, rate_per_s=2.0)
        plan = FaultPlan(seed=seed, kinds=("kill",), every_s=6.0, roles=ROLES, limit=len(ROLES))
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(workload.run, stop)
            await inject(cluster, plan, anyio.Event(), ledger)  # until it has killed each type once
            stop.set()
        ledger.close()

        assert sorted(f.target.rsplit("-", 1)[0] for f in plan.injected) == sorted(ROLES), plan.injected
        report = await check_cluster(cluster, ledger_path)
        assert report.ok, f"{report.broken()}\n{report.counts}"
