"""The whole control plane on the Kafka backend: the walkthrough session with injected crashes, against
the real tansu broker. Kafka does not refuse a retried id, so here the folds' dedupe does the work."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from actors.faults import Faults
from actors.runtime import Backoff
from actors.system import running
from events.kafka_log import KafkaLog
from mint.catalog.queries import Catalog
from mint.home import Home
from mint.walkthrough import walkthrough

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


async def test_walkthrough_on_kafka_replays_to_the_live_catalog(kafka_bootstrap: str, tmp_path: Path) -> None:
    home = Home(tmp_path)
    said: list[str] = []
    topic = f"mint.system.{uuid.uuid4().hex[:8]}"
    async with (
        KafkaLog(kafka_bootstrap, topic=topic, partitions=4) as log,
        running(home, log, Faults(rate=0.1, seed=5), Backoff(first_s=0.001, max_s=0.01)) as system,
    ):
        verdict = await walkthrough(system, said.append)
        assert verdict.equal, verdict.diffs
        assert any("appended again (folds skip it)" in line for line in said)
        catalog = Catalog(home.catalog)
        assert catalog.resolve("acme/support") == "r1"  # promoted r2, then rolled back once, not twice
        assert [m.kind for m in catalog.serving_history("acme/support")] == [
            "promoted",
            "promoted",
            "rolled_back",
        ]
        assert catalog.resolve("acme/search") == "r1"
