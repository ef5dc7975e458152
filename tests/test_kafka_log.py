"""The Kafka backend against a real Kafka-protocol broker (tansu, started once per session)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from events import codec
from events.kafka_log import KafkaLog, KafkaLogError
from events.partitioning import partition_for
from mint.local_services import LocalKafka, LocalServiceError
from tests.log_contract import LogContract, drain, read_all
from tests.records import registered

pytestmark = pytest.mark.kafka


def fresh_topic() -> str:
    return f"test.{uuid.uuid4().hex[:12]}"


class TestKafkaLog(LogContract):
    @pytest.fixture
    async def log(self, kafka_bootstrap: str) -> AsyncIterator[KafkaLog]:
        async with KafkaLog(kafka_bootstrap, topic=fresh_topic(), partitions=4) as log:
            yield log


@pytest.mark.anyio
async def test_a_foreign_producers_record_reads_back_and_decodes(kafka_bootstrap: str) -> None:
    """An upstream system writes plain JSON with its own producer: no headers, Kafka's own partitioner."""
    record = registered("acme/upstream", promotion="auto")
    async with KafkaLog(kafka_bootstrap, topic=fresh_topic(), partitions=4) as log:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False, acks="all")
        await producer.start()
        try:
            sent = await producer.send_and_wait(
                log.topic, value=codec.encode(record), key=record.key.encode()
            )
        finally:
            await producer.stop()
        assert sent.partition == partition_for(record.key, log.partitions), "same partitioner as Kafka's"
        (stored,) = await read_all(log)
        assert (stored.id, stored.key, stored.type, stored.v) == (
            record.id,
            record.key,
            "PolicyRegistered",
            2,
        )
        assert stored.decode() == record
        async with log.subscribe("foreign", start={}) as sub:
            (consumed,) = await drain(sub, 1)
        assert consumed == stored


@pytest.mark.anyio
async def test_a_partition_count_mismatch_names_the_topic(kafka_bootstrap: str) -> None:
    topic = fresh_topic()
    async with KafkaLog(kafka_bootstrap, topic=topic, partitions=3) as log:
        await log.append([registered("acme/kept")])
    async with KafkaLog(kafka_bootstrap, topic=topic) as adopted:
        assert adopted.partitions == 3
        assert sum((await adopted.end_offsets()).values()) == 1
    with pytest.raises(KafkaLogError, match=rf"topic '{topic}' has 3 partitions, asked for 5"):
        await KafkaLog(kafka_bootstrap, topic=topic, partitions=5).start()


@pytest.mark.anyio
async def test_an_append_larger_than_a_produce_batch_keeps_offsets_dense(kafka_bootstrap: str) -> None:
    records = [registered("acme/many") for _ in range(40)]
    async with KafkaLog(kafka_bootstrap, topic=fresh_topic(), partitions=2, batch_bytes=1024) as log:
        appended = await log.append(records)
        p = appended[0].partition
        assert [a.offset for a in appended] == list(range(40))
        assert [s.id for s in await log.read(p, 0, limit=100)] == [r.id for r in records]
        assert (await log.end_offsets())[p] == 40


def test_a_broker_that_cannot_start_is_named_with_its_output() -> None:
    with pytest.raises(LocalServiceError, match=r"the tansu broker \S+ exited with code") as failed:
        LocalKafka(storage_engine="bogus://nowhere/").start()
    assert "bogus" in str(failed.value).split("its output ends:", 1)[1]
