"""The log port's contract, written once. Each backend's test module subclasses LogContract and
provides the `log` fixture (an open, empty log)."""

from __future__ import annotations

from collections import defaultdict

import anyio
import pytest

from events.codec import UnknownRecord
from events.dedupe import RecentIds
from events.log import Encoded, EventLog, Stored, caught_up
from events.partitioning import partition_for
from tests.records import registered


async def read_all(log: EventLog) -> list[Stored]:
    out: list[Stored] = []
    for p, end in (await log.end_offsets()).items():
        start = 0
        while start < end:
            batch = await log.read(p, start, limit=100)
            assert batch, f"partition {p} ended at {start}, end offset says {end}"
            out.extend(batch)
            start = batch[-1].offset + 1
    return out


async def drain(sub: object, want: int) -> list[Stored]:
    got: list[Stored] = []
    while len(got) < want:
        batch = await sub.next_batch(max_records=7, timeout=10.0)  # type: ignore[attr-defined]
        assert batch, f"subscription stalled after {len(got)} of {want} records"
        got.extend(batch)
    return got


@pytest.mark.anyio
class LogContract:
    async def test_append_returns_places_by_key(self, log: EventLog) -> None:
        records = [registered(f"acme/p{i % 3}-{i}") for i in range(9)]
        appended = await log.append(records)
        assert len(appended) == 9
        for record, place in zip(records, appended, strict=True):
            assert place.partition == partition_for(record.key, log.partitions)
            assert not place.duplicate
        by_partition: dict[int, list[int]] = defaultdict(list)
        for place in appended:
            by_partition[place.partition].append(place.offset)
        for offsets in by_partition.values():
            assert offsets == list(range(len(offsets))), "offsets within a partition are dense from 0"

    async def test_per_key_order_survives_batches(self, log: EventLog) -> None:
        keys = ["acme/a", "acme/b", "beta/c"]
        sent: dict[str, list[str]] = defaultdict(list)
        for batch_no in range(5):
            batch = [registered(keys[(batch_no + i) % 3]) for i in range(6)]
            for r in batch:
                sent[r.key].append(r.id)
            await log.append(batch)
        seen: dict[str, list[str]] = defaultdict(list)
        for stored in await read_all(log):
            seen[stored.key].append(stored.id)
        assert seen == sent

    async def test_read_from_an_offset(self, log: EventLog) -> None:
        records = [registered("acme/same") for _ in range(10)]
        appended = await log.append(records)
        p = appended[0].partition
        tail = await log.read(p, 6, limit=100)
        assert [s.id for s in tail] == [r.id for r in records[6:]]
        assert [s.offset for s in tail] == [6, 7, 8, 9]
        assert await log.read(p, 10) == []

    async def test_end_offsets_count_each_partition(self, log: EventLog) -> None:
        assert set((await log.end_offsets()).values()) == {0}
        appended = await log.append([registered(f"acme/e{i}") for i in range(20)])
        counts: dict[int, int] = defaultdict(int)
        for place in appended:
            counts[place.partition] += 1
        ends = await log.end_offsets()
        assert set(ends) == set(range(log.partitions))
        for p in range(log.partitions):
            assert ends[p] == counts[p]

    async def test_stored_records_decode_to_what_was_appended(self, log: EventLog) -> None:
        record = registered("acme/roundtrip", promotion="auto")
        await log.append([record])
        (stored,) = await read_all(log)
        assert (stored.id, stored.key, stored.type, stored.v) == (
            record.id,
            record.key,
            "PolicyRegistered",
            2,
        )
        assert stored.decode() == record

    async def test_group_resumes_after_committed_offsets(self, log: EventLog) -> None:
        records = [registered(f"acme/g{i}") for i in range(12)]
        await log.append(records)
        async with log.subscribe("projector") as sub:
            first = await drain(sub, 5)
            position = sub.position()
            consumed = sum(position.values())
            assert consumed >= 5
            await sub.commit(position)
        assert await log.committed("projector") == {p: position.get(p, 0) for p in range(log.partitions)}
        async with log.subscribe("projector") as again:
            rest = await drain(again, 12 - consumed)
            assert caught_up(again.position(), await log.end_offsets())
        ids = [s.id for s in first[:consumed]] + [s.id for s in rest]
        assert sorted(ids) == sorted(r.id for r in records)
        assert len(set(ids)) == 12, "no record is delivered twice across a committed resume"

    async def test_explicit_start_overrides_the_group(self, log: EventLog) -> None:
        appended = await log.append([registered("acme/only") for _ in range(6)])
        p = appended[0].partition
        async with log.subscribe("other", start={p: 4}) as sub:
            got = await drain(sub, 2)
        assert [s.offset for s in got] == [4, 5]

    async def test_subscription_wakes_on_a_later_append(self, log: EventLog) -> None:
        late = registered("acme/late")
        async with log.subscribe("waiter", start={}) as sub:
            assert await sub.next_batch(timeout=0.2) == []
            async with anyio.create_task_group() as tg:
                received: list[Stored] = []

                async def consume() -> None:
                    received.extend(await drain(sub, 1))

                tg.start_soon(consume)
                await log.append([late])
        assert [s.id for s in received] == [late.id]

    async def test_a_repeated_id_is_detectable(self, log: EventLog) -> None:
        record = registered("acme/retry")
        first = await log.append([record])
        second = await log.append([record])
        stored = await read_all(log)
        if log.refuses_duplicates:
            assert second[0].duplicate and (second[0].partition, second[0].offset) == (
                first[0].partition,
                first[0].offset,
            )
            assert len(stored) == 1
        else:
            assert len(stored) == 2
        recent = RecentIds()
        assert [s.id for s in stored if recent.first_time(s.key, s.id)] == [record.id]

    async def test_unknown_types_are_kept(self, log: EventLog) -> None:
        future = Encoded(
            id="f-1", key="acme/x", type="FromTheFuture", v=3, at_ms=1, raw=b'{"type":"FromTheFuture"}'
        )
        await log.append_encoded([future])
        (stored,) = await read_all(log)
        assert stored.type == "FromTheFuture" and stored.raw == future.raw
        decoded = stored.decode()
        assert isinstance(decoded, UnknownRecord) and decoded.type == "FromTheFuture"

    async def test_offsets_for_time(self, log: EventLog) -> None:
        from datetime import UTC, datetime, timedelta

        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        records = [registered("acme/timed", at=t0 + timedelta(minutes=i)) for i in range(5)]
        appended = await log.append(records)
        p = appended[0].partition
        at_ms = int((t0 + timedelta(minutes=2)).timestamp() * 1000)
        assert (await log.offsets_for_time(at_ms))[p] == 2
        late_ms = int((t0 + timedelta(hours=1)).timestamp() * 1000)
        assert (await log.offsets_for_time(late_ms))[p] == 5
