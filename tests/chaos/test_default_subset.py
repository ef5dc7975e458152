"""The default run's chaos: one small `mint cluster` (two catalog and two API replicas, a projector, a
scheduler, an evaluator and an engine host), the mixed workload through its public interfaces for
about 40 s while a seeded plan kill -9s (and restarts) replicas of different actor types, then every
invariant of mint/chaos/checks.py holds."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mint.chaos.checks import check_cluster
from mint.chaos.faults import FaultPlan, inject
from mint.chaos.ledger import Ledger
from mint.chaos.workload import Workload
from mint.cluster.table import ClusterDir
from tests.cluster import running_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.timeout(420)]

LOAD_S = 40.0
RATE_PER_S = 3.0
# The engine host is left out here (its restart imports torch again: most of a minute on busy cores);
# test_actor_kills.py kills every type.
KILLED = ("catalog", "projector", "scheduler", "evaluator", "api")


async def test_a_mixed_workload_under_kill_9s_of_different_actors_keeps_every_invariant(
    tmp_path: Path, base_dir: Path
) -> None:
    with running_cluster(
        tmp_path,
        catalog=2,
        projectors=1,
        schedulers=1,
        evaluators=1,
        engines=1,
        api=2,
        partitions=4,
        base_dir=base_dir,
        broker_storage="memory",
    ) as running:
        cluster = ClusterDir(running.root)
        ledger_path = tmp_path / "ledger.jsonl"
        ledger = Ledger(ledger_path)
        workload = Workload(cluster, ledger, seed=14, rate_per_s=RATE_PER_S)
        plan = FaultPlan(seed=14, kinds=("kill",), every_s=8.0, roles=KILLED)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(workload.run, stop)
            tg.start_soon(inject, cluster, plan, stop, ledger)
            await anyio.sleep(LOAD_S)
            stop.set()
        ledger.close()

        killed = {f.target.rsplit("-", 1)[0] for f in plan.injected}
        assert len(killed) >= 2, f"the plan killed too few actor types: {plan.injected}"
        assert sum(workload.counts.values()) >= LOAD_S * RATE_PER_S * 0.8, workload.counts
        report = await check_cluster(cluster, ledger_path)
        assert report.ok, f"{report.broken()}\n{report.counts}"
        assert report.counts["faults"] == len(plan.injected) and report.counts["acknowledged"] > 0
