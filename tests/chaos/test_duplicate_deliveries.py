"""Duplicate deliveries: a producer that retries every record (its HTTP batch sent twice, its Kafka
append made twice) leaves copies on the log, and every reader counts each record once: one outcome per
command, nothing applied twice, replay equal to live on every replica."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from events import codec
from mint.chaos.checks import check_cluster, read_everything
from mint.chaos.ledger import Acknowledged, Answer, Ledger
from mint.cluster.table import ClusterDir
from tests.cluster import running_cluster
from tests.test_catalog_replicas import registrations

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.timeout(300)]


async def test_every_record_delivered_twice_counts_once(tmp_path: Path) -> None:
    with running_cluster(
        tmp_path, catalog=1, projectors=1, api=1, partitions=2, broker_storage="memory"
    ) as cluster:
        ledger_path = tmp_path / "ledger.jsonl"
        ledger = Ledger(ledger_path)
        over_http, over_kafka = registrations("http", 6), registrations("kafka", 6)
        admin = {"Authorization": f"Bearer {cluster.admin_token()}"}
        async with httpx.AsyncClient(base_url=cluster.api_url(), headers=admin, timeout=30) as http:
            for i in range(0, len(over_http), 3):
                batch = over_http[i : i + 3]
                body = b"".join(codec.encode(r) + b"\n" for r in batch)
                for _ in range(2):  # the answer "was lost": the producer sends the same batch again
                    sent = time.time()
                    answer = await http.post("/v1/commands", content=body)
                    ledger.write(Answer("POST /v1/commands", answer.status_code, None, 0.0, at=sent))
                    assert answer.status_code == 200, answer.text
                    ids = [r.id for r in batch]
                    ledger.write(
                        Acknowledged("POST /v1/commands", ids, ids, answer.headers["x-mint-position"])
                    )
        async with cluster.log() as log:
            for record in over_kafka:
                for _ in range(2):  # a Kafka producer's retry after a timeout: appended again
                    await log.append([record])
                    ledger.write(Acknowledged("kafka", [record.id], [record.id], ""))
            copies = Counter(s.id for s in await read_everything(log))
        ledger.close()

        assert all(copies[r.id] == 2 for r in over_kafka), {r.id: copies[r.id] for r in over_kafka}
        assert all(copies[r.id] >= 1 for r in over_http)
        report = await check_cluster(ClusterDir(cluster.root), ledger_path)
        assert report.ok, f"{report.broken()}\n{report.counts}"
        assert report.counts["commands"] == len(over_http) + len(over_kafka)
