"""Throughput of the Kafka log against a running broker: batched appends through KafkaLog, then one
subscription draining them. Records are small PolicyRegistered facts, encoded before the clock starts."""

from __future__ import annotations

import time
import uuid

from events.catalog import PolicyRegistered
from events.kafka_log import KafkaLog
from events.log import Encoded

APPEND_BATCH = 5_000
CONSUME_BATCH = 5_000


async def bench_kafka(bootstrap: str, records: int = 50_000) -> dict[str, float]:
    encoded = [
        Encoded.of(PolicyRegistered.create(policy=f"bench/p{i}", base_id="tiny")) for i in range(records)
    ]
    topic = f"mint.bench.{uuid.uuid4().hex[:12]}"
    async with KafkaLog(bootstrap, topic=topic) as log:
        started = time.perf_counter()
        for i in range(0, records, APPEND_BATCH):
            await log.append_encoded(encoded[i : i + APPEND_BATCH])
        produce_s = time.perf_counter() - started

        consumed = 0
        async with log.subscribe(f"bench-{topic}", start={}) as sub:
            started = time.perf_counter()
            while consumed < records:
                batch = await sub.next_batch(max_records=CONSUME_BATCH, timeout=10.0)
                if not batch:
                    raise RuntimeError(f"kafka bench: subscription stalled after {consumed} of {records}")
                consumed += len(batch)
            consume_s = time.perf_counter() - started
    return {
        "kafka_records": float(records),
        "kafka_produce_per_s": records / produce_s,
        "kafka_consume_per_s": consumed / consume_s,
    }
