"""S3 stopped (SIGSTOP of the cluster's moto) for 10 s (SCALE_OUT.md, "S3 unavailable for a while"):
an adapter load and an export started during the stop finish after it, nothing in the bucket is
half-written, and the API meanwhile answers 200, or 503/429 with Retry-After (never a 500 or a hang),
and serves the new revision once S3 is back."""

from __future__ import annotations

import hashlib
import time
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest

from mint.artifacts.s3 import S3ArtifactStore
from mint.cluster.launcher import S3_CREDENTIALS
from mint.cluster.publish import announce, publish_random_revision, upload_random_adapter
from mint.cluster.table import ClusterDir
from tests.chaos.test_infra_rollback import serves_from
from tests.cluster import RunningCluster, running_cluster
from tests.test_engine_hosts import _serves, answered

pytestmark = [pytest.mark.anyio, pytest.mark.chaos, pytest.mark.kafka, pytest.mark.timeout(400)]

POLICY = "acme/a"
STOPPED_S = 10.0
# A request that gets no answer within this is a hang.
HANG_S = 30.0


async def half_written(cluster: RunningCluster) -> list[str]:
    """Adapter objects in the bucket whose bytes are not the sha256 their key names."""
    table = ClusterDir(cluster.root).read()
    async with S3ArtifactStore.connect(
        table.bucket,
        endpoint_url=table.s3,
        region="us-east-1",
        access_key=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ) as store:
        wrong = []
        for key in await store.list("adapters/"):
            named = key.split("/")[-2]
            if hashlib.sha256(await store.read(key)).hexdigest() != named:
                wrong.append(key)
        return wrong


async def test_s3_stopped_for_ten_seconds_degrades_the_api_to_503_and_loads_and_exports_finish_after(
    tmp_path: Path, base_dir: Path
) -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    counts = {"catalog": 1, "schedulers": 1, "engines": 1, "api": 1}
    # The broker's log in memory: the fault is S3's alone, not the broker's storage too.
    with running_cluster(tmp_path, base_dir=base_dir, broker_storage="memory", **counts) as cluster:
        cluster_dir = ClusterDir(cluster.root)
        first = await publish_random_revision(cluster_dir, POLICY, "r1", seed=1)
        second = await upload_random_adapter(cluster_dir, POLICY, "r2", seed=2)  # uploaded, not announced
        auth = {"Authorization": f"Bearer {cluster.admin_token()}"}
        body = {"model": POLICY, "prompt": "The weather today is", "max_tokens": 4, "temperature": 0}
        async with httpx.AsyncClient(base_url=cluster.api_url(), headers=auth, timeout=HANG_S) as client:
            with anyio.fail_after(180):
                await answered(partial(_serves, client, first), every_s=0.5)
                await answered(partial(serves_from, client, body, first), every_s=0.5)

            cluster.kill("s3", "STOP")
            stopped = time.monotonic()
            answers: list[tuple[str, int, str | None, str]] = []
            exported: list[str] = []

            async def export_during_the_stop() -> None:  # as a trainer's export would, mid-outage
                export = await upload_random_adapter(cluster_dir, "acme/b", "r1", seed=3)
                exported.append(export.uri)

            async with anyio.create_task_group() as tg:
                tg.start_soon(export_during_the_stop)
                # The promotion of r2 needs its adapter loaded from S3, which does not answer.
                await announce(cluster_dir, second)
                while time.monotonic() - stopped < STOPPED_S:
                    for route, request in (
                        ("POST /v1/completions", partial(client.post, "/v1/completions", json=body)),
                        ("GET /v1/models", partial(client.get, "/v1/models")),
                    ):
                        try:
                            answer = await request()
                        except httpx.TimeoutException:
                            answers.append((route, 0, None, "hang"))
                            continue
                        retry = answer.headers.get("retry-after")
                        answers.append((route, answer.status_code, retry, answer.text[:200]))
                    await anyio.sleep(0.5)  # a client's pace, not a wait on the system
                cluster.kill("s3", "CONT")
                with anyio.fail_after(120):  # S3 back: the load of r2 finishes and r2 is served
                    await answered(partial(serves_from, client, body, f"{POLICY}@r2"), every_s=0.5)
            recovered_s = time.monotonic() - stopped

        bad = [a for a in answers if not (a[1] == 200 or (a[1] in (429, 503) and a[2]))]
        assert not bad, f"answers during the stop that were neither 200 nor 503/429 with Retry-After: {bad}"
        assert exported, "the export started during the stop did not finish"
        assert not await half_written(cluster), "objects in the bucket that are not whole"
    statuses = sorted({a[1] for a in answers})
    print(f"s3 stopped {STOPPED_S:.0f}s: answers {statuses}, r2 served {recovered_s:.1f}s after the stop")
