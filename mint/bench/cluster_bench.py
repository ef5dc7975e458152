"""`mint bench cluster`: what scaling out buys, measured on real local clusters (`mint cluster`).

Catalog decisions/s with 1, 2, 4… catalog replicas on one topic: each count gets a fresh cluster of
S3, the broker and only those replicas; K RegisterPolicy commands over K keys (so over every partition)
are appended at once, and the clock stops when the log holds an outcome for every one of them. What
counts is the ratio to one replica, measured side by side on the same machine. The broker keeps its log
in memory here: on S3 (moto, in Python, on the same cores) its writes would be what is measured.

Router latency: what a request pays for going through an api replica (its token check, catalog
resolve and router) rather than straight to the engine host, side by side on one cluster.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import httpx
import msgspec

from events.catalog import RegisterPolicy
from events.envelope import Fact
from events.kafka_log import KafkaLog
from events.seal import Seal
from mint.cluster import launcher
from mint.cluster.publish import publish_random_revision
from mint.cluster.table import HOST, ClusterDir, ClusterTable
from mint.percentiles import percentile
from mint.serving.wire import GENERATE_PATH, SEAL_HEADER, GenerateRequest, Params, seal_of

OUTCOME_POLL_S = 0.02  # between passes over the partitions while outcomes are missing
OUTCOMES_TIMEOUT_S = 300.0
SERVED_TIMEOUT_S = 180.0  # a fresh engine host imports torch and loads the base first
WARMUP_REQUESTS = 3
PACE_S = 0.15  # between request pairs (not timed)

Say = Callable[[str], None]


def bench_cluster(commands: int, replicas: Sequence[int], partitions: int, say: Say) -> dict[str, float]:
    results: dict[str, float] = {"catalog_commands": float(commands), "partitions": float(partitions)}
    for count in replicas:
        with tempfile.TemporaryDirectory(prefix="mint-bench-cluster-") as tmp:
            root = Path(tmp) / "cluster"
            say(f"catalog x{count}: starting a cluster")
            table = launcher.up(
                root, {"catalog": count}, partitions=partitions, broker_storage="memory", say=say
            )
            try:
                key = ClusterDir(root).key.read_text().strip()
                rate = anyio.run(_decisions_per_s, table, key, commands)
            finally:
                launcher.down(root)
        say(f"catalog x{count}: {rate:,.0f} decisions/s")
        results[f"catalog_decisions_per_s_{count}"] = rate
    if replicas and replicas[0] == 1:
        for count in replicas[1:]:
            one = results["catalog_decisions_per_s_1"]
            results[f"catalog_ratio_{count}_vs_1"] = results[f"catalog_decisions_per_s_{count}"] / one
    return results


def bench_router(requests: int, max_tokens: int, say: Say) -> dict[str, float]:
    """One cluster (a catalog, a scheduler, an engine host, an api replica): `requests` greedy
    completions of a served revision through the api replica (token check, catalog resolve, router,
    the engine host's HTTP) interleaved with as many sent straight to the engine host, sealed as the
    router seals them. The difference is what routing costs a request."""
    with tempfile.TemporaryDirectory(prefix="mint-bench-router-") as tmp:
        root = Path(tmp) / "cluster"
        say("router: starting a cluster")
        counts = {"catalog": 1, "scheduler": 1, "engine-host": 1, "api": 1}
        launcher.up(root, counts, partitions=2, broker_storage="memory", say=say)
        try:
            return anyio.run(_router_latency, ClusterDir(root), requests, max_tokens)
        finally:
            launcher.down(root)


async def _decisions_per_s(table: ClusterTable, key: str, commands: int) -> float:
    """Append `commands` registrations at once: decisions/s until each has an outcome on the log."""
    records = [RegisterPolicy.create(policy=f"bench/policy-{i}", base_id="tiny") for i in range(commands)]
    waiting = {record.id for record in records}
    async with KafkaLog(table.kafka, topic=table.topic, seal=Seal.from_secret(key)) as log:
        offsets = dict.fromkeys(range(log.partitions), 0)
        began = time.perf_counter()
        await log.append(records)
        with anyio.fail_after(OUTCOMES_TIMEOUT_S):
            while waiting:
                for partition, offset in offsets.items():
                    for stored in await log.read(partition, offset, limit=5_000):
                        offsets[partition] = stored.offset + 1
                        record = stored.decode()
                        if isinstance(record, Fact) and record.causation is not None:
                            waiting.discard(record.causation)
                if waiting:
                    await anyio.sleep(OUTCOME_POLL_S)
        elapsed = time.perf_counter() - began
    return commands / elapsed


async def _router_latency(cluster: ClusterDir, requests: int, max_tokens: int) -> dict[str, float]:
    table = cluster.read()
    ref = await publish_random_revision(cluster, "bench/router", "r1")
    engine = table.of_role("engine-host")[0]
    direct_url = f"http://{HOST}:{engine.port}{GENERATE_PATH}"
    seal = Seal.from_secret(cluster.key.read_text().strip())
    token = cluster.admin_token.read_text().strip()
    prompt = "The weather today is"
    routed_body = {"model": ref, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    direct_body = msgspec.json.encode(
        GenerateRequest(model=ref, params=Params(max_tokens, 0.0, 1.0), prompt=prompt)
    )
    direct_headers = {SEAL_HEADER: seal_of(seal, direct_body), "content-type": "application/json"}

    async with httpx.AsyncClient(timeout=120) as client:

        async def routed() -> float:
            began = time.perf_counter()
            answer = await client.post(
                f"{table.api[0]}/v1/completions",
                json=routed_body,
                headers={"Authorization": f"Bearer {token}"},
            )
            elapsed = time.perf_counter() - began
            if answer.status_code != 200:
                raise RuntimeError(f"through the api replica: {answer.status_code} {answer.text[:300]}")
            return elapsed

        async def direct() -> float:
            # Read as the router reads it: streamed, line by line, to the `end` line.
            began = time.perf_counter()
            request = client.build_request("POST", direct_url, content=direct_body, headers=direct_headers)
            answer = await client.send(request, stream=True)
            try:
                lines = [line async for line in answer.aiter_lines() if line]
            finally:
                await answer.aclose()
            elapsed = time.perf_counter() - began
            if answer.status_code != 200 or not lines or '"end"' not in lines[-1]:
                raise RuntimeError(f"straight to {engine.name}: {answer.status_code} {lines[-1:]}")
            return elapsed

        await _until_served(client, table.api[0], token, ref)
        for _ in range(WARMUP_REQUESTS):  # the load, the first compile of each path
            await anyio.sleep(PACE_S)
            await routed()
            await direct()
        through_router: list[float] = []
        to_engine: list[float] = []
        for i in range(requests):  # interleaved, each first every other time: the same conditions
            # Paced under the api's default per-token rate (10/s): a 429 would measure the limiter.
            await anyio.sleep(PACE_S)
            if i % 2:
                to_engine.append(await direct())
                through_router.append(await routed())
            else:
                through_router.append(await routed())
                to_engine.append(await direct())
    results = {"router_requests": float(requests), "router_max_tokens": float(max_tokens)}
    for name, times in (("router", through_router), ("direct", to_engine)):
        results[f"{name}_p50_ms"] = percentile(times, 0.5) * 1000
        results[f"{name}_p99_ms"] = percentile(times, 0.99) * 1000
    results["router_overhead_p50_ms"] = results["router_p50_ms"] - results["direct_p50_ms"]
    return results


async def _until_served(client: httpx.AsyncClient, api: str, token: str, ref: str) -> None:
    """Until the api replica's projection serves `ref` (the promotion folded, an engine alive)."""
    with anyio.fail_after(SERVED_TIMEOUT_S):
        while True:
            answer = await client.get(f"{api}/v1/models", headers={"Authorization": f"Bearer {token}"})
            if answer.status_code == 200 and any(m["root"] == ref for m in answer.json()["data"]):
                return
            await anyio.sleep(OUTCOME_POLL_S * 10)
