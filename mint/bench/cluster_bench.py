"""`mint bench cluster`: what scaling out buys, measured on real local clusters (`mint cluster`).

Catalog decisions/s with 1, 2, 4… catalog replicas on one topic: each count gets a fresh cluster of
S3, the broker and only those replicas; K RegisterPolicy commands over K keys (so over every partition)
are appended at once, and the clock stops when the log holds an outcome for every one of them. What
counts is the ratio to one replica, measured side by side on the same machine. The broker keeps its log
in memory here: on S3 (moto, in Python, on the same cores) its writes would be what is measured.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from events.catalog import RegisterPolicy
from events.envelope import Fact
from events.kafka_log import KafkaLog
from events.seal import Seal
from mint.cluster import launcher
from mint.cluster.table import ClusterDir, ClusterTable

OUTCOME_POLL_S = 0.02  # between passes over the partitions while outcomes are missing
OUTCOMES_TIMEOUT_S = 300.0

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
    # ROUTER LATENCY (to be filled in by the serving side): end-to-end request p50/p99 through an api
    # replica's router vs straight to an engine host, in one run on one cluster with `--engines 1 --api 1`
    # (keys router_p50_ms, router_p99_ms, direct_p50_ms, direct_p99_ms).
    return results


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
