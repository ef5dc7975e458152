"""A rollback while the evaluator and the scheduler are dead (kill -9, restarted after): the catalog
decides it once however often it is delivered, and the engines converge on the previous revision once
the scheduler is back (SCALE_OUT.md, "rollback while the evaluator and scheduler are killed")."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest

from events.catalog import RevisionRolledBack, Rollback
from events.kafka_log import KafkaLog
from mint.chaos.checks import counted_outcomes, fold_counted, read_everything
from mint.cluster.publish import publish_random_revision
from mint.cluster.table import ClusterDir
from tests.chaos.test_infra_stops import resident_without_a_report
from tests.cluster import running_cluster
from tests.test_engine_hosts import _holds, _serves, answered

pytestmark = [pytest.mark.anyio, pytest.mark.chaos, pytest.mark.kafka, pytest.mark.timeout(400)]

POLICY = "acme/a"


async def serves_from(client: httpx.AsyncClient, body: dict[str, object], ref: str) -> bool:
    """Whether a completion is answered from `ref` now."""
    answer = await client.post("/v1/completions", json=body)
    return answer.status_code == 200 and answer.headers.get("x-mint-revision") == ref


async def decided(log: KafkaLog, command: str, tmp: Path) -> bool:
    return bool((await counted_outcomes(log, tmp)).get(command))


async def test_a_rollback_while_the_evaluator_and_scheduler_are_dead_takes_effect_once_and_engines_converge(
    tmp_path: Path, base_dir: Path
) -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    counts = {"catalog": 1, "evaluators": 1, "schedulers": 1, "engines": 1, "api": 1}
    with running_cluster(tmp_path, base_dir=base_dir, broker_storage="memory", **counts) as cluster:
        first = await publish_random_revision(ClusterDir(cluster.root), POLICY, "r1", seed=1)
        second = await publish_random_revision(ClusterDir(cluster.root), POLICY, "r2", seed=2)
        auth = {"Authorization": f"Bearer {cluster.admin_token()}"}
        body = {"model": POLICY, "prompt": "The weather today is", "max_tokens": 4, "temperature": 0}
        async with httpx.AsyncClient(base_url=cluster.api_url(), headers=auth, timeout=90) as client:
            with anyio.fail_after(180):
                await answered(partial(_serves, client, second), every_s=0.5)
                await answered(partial(serves_from, client, body, second), every_s=0.5)

            for name in ("evaluator-1", "scheduler-1"):
                cluster.kill(name, "KILL")
            rollback = Rollback.create(source="test", policy=POLICY, reason="chaos: r2 is bad")
            async with cluster.log() as log:
                await log.append([rollback])
                await log.append([rollback])  # a producer that retried: the same command twice
                with anyio.fail_after(120):
                    await answered(partial(decided, log, rollback.id, tmp_path), every_s=0.5)
            for name in ("evaluator-1", "scheduler-1"):
                await anyio.to_thread.run_sync(cluster.restart, name)

            with anyio.fail_after(180):  # the engines converge on r1, through the restarted scheduler
                await answered(partial(serves_from, client, body, first), every_s=0.5)
                (engine,) = cluster.names("engine-host")
                await answered(lambda: _holds(client, engine, first), every_s=0.5)
            assert not (unreported := await resident_without_a_report(client, cluster)), unreported

        async with cluster.log() as log:
            records = await read_everything(log)
        assert sum(s.id == rollback.id for s in records) == 2, "the retried command is not on the log twice"
        folded = fold_counted(records, tmp_path)
        outcomes = folded.outcomes[rollback.id]
        assert len(outcomes) == 1, f"the rollback has {len(outcomes)} counted outcomes: {outcomes}"
        rolled = [r for r in folded.applied if isinstance(r, RevisionRolledBack)]
        assert [(r.previous, r.revision) for r in rolled] == [("r2", "r1")], rolled
