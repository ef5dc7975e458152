"""The production log: one Kafka topic through aiokafka.

Each record is one Kafka message: value = the record's JSON bytes, key = the record key, timestamp = the
record's time, and headers `id`, `type`, `v` so a consumer can route without decoding the value, and
`seal` (events/seal.py) so a reader can tell MinT's own records from those written straight onto the
topic. The
partition is chosen here with events/partitioning.py (murmur2, as Kafka's default partitioner), so a
record sits on the same partition number as in the SQLite log.

Kafka cannot refuse a second copy of an id: a producer that retries may append one record twice, at two
offsets. Folds and deciders skip ids they have already applied (events/dedupe.py). The producer is not
idempotent (`enable_idempotence=False`): the brokers we test against do not support it, and nothing
here relies on it.

Only the protocol as Apache Kafka defines it is relied on; where a broker we test against (tansu) answers
a request loosely, the answer is used as a hint and checked (see `end_offsets`, `offsets_for_time`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, Self

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, OffsetOutOfRangeError, TopicAlreadyExistsError, for_code
from anyio.abc import AsyncResource

from events.codec import read_header
from events.envelope import Record
from events.log import DEFAULT_PARTITIONS, UNREADABLE, Appended, Encoded, LogUnavailable, Position, Stored
from events.partitioning import partition_for
from events.seal import Seal

DEFAULT_TOPIC = "mint.records"
# Produce batches stay under a broker's default message.max.bytes (about 1 MB).
DEFAULT_BATCH_BYTES = 512 * 1024
# The reader consumer only fetches what it knows is there, so the broker need not hold a fetch open
# long; but a broker that reads its records from object storage answers with only what it has loaded
# within this wait (tansu's s3:// engine on moto: nothing ever at 10 ms, a 3-record read in 0.4 s at
# 50-100 ms), so it is no shorter than a storage read.
_READER_FETCH_WAIT_MS = 100
_READER_POLL_MS = 20
# Subscriptions long-poll: the broker answers a fetch as soon as a record arrives, or after this.
_SUBSCRIPTION_FETCH_WAIT_MS = 500
_V_BYTES = {v: str(v).encode() for v in range(1, 16)}
_ERROR_CODE_UNKNOWN_TOPIC = 3
_ERROR_CODE_LEADER_NOT_AVAILABLE = 5


class KafkaLogError(RuntimeError):
    pass


def _v_bytes(v: int) -> bytes:
    return _V_BYTES.get(v) or str(v).encode()


def _stored(message: Any, seal: Seal) -> Stored:
    """A consumed message as a Stored record. Our producer's headers give id/type/v without decoding;
    a message from a foreign producer without them has its header read from the JSON value. It never
    raises: a message that is no record comes back as UNREADABLE, for the reader's dead letters, so one
    bad message cannot stop every consumer of its partition."""
    raw = message.value if isinstance(message.value, bytes) else b""
    headers: dict[str, bytes] = dict(message.headers) if message.headers else {}
    rid, rtype, rv = headers.get("id"), headers.get("type"), headers.get("v")
    key = message.key.decode(errors="replace") if message.key is not None else None
    place = {"partition": message.partition, "offset": message.offset, "at_ms": message.timestamp}
    sealed = seal.verifies(raw, headers.get("seal"))
    try:
        if rid is None or rtype is None or rv is None or key is None:
            type_name, version, ident, header_key = read_header(raw)
            rid_s = rid.decode() if rid is not None else ident
            key_s = key if key is not None else header_key
            type_s = rtype.decode() if rtype is not None else type_name
            v = int(rv) if rv is not None else version
        else:
            rid_s, key_s, type_s, v = rid.decode(), key, rtype.decode(), int(rv)
    except ValueError:  # a RecordError, or a header that is not UTF-8 or not a number
        where = f"{message.topic}[{message.partition}]@{message.offset}"
        return Stored(id=where, key=key or "", type=UNREADABLE, v=0, raw=raw, sealed=sealed, **place)
    return Stored(id=rid_s, key=key_s, type=type_s, v=v, raw=raw, sealed=sealed, **place)


class KafkaLog(AsyncResource):
    """`partitions=None` adopts an existing topic's count (creating it with DEFAULT_PARTITIONS when
    missing); a number that differs from an existing topic's count is an error. Use `async with`, or
    `await start()` and `await aclose()`."""

    refuses_duplicates = False

    def __init__(
        self,
        bootstrap: str,
        topic: str = DEFAULT_TOPIC,
        partitions: int | None = None,
        *,
        replication_factor: int = 1,
        client_id: str = "mint",
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        request_timeout: float = 30.0,
        seal: Seal | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        # Without the cluster's key this log trusts only this process's decisions (events/seal.py).
        self.seal = seal or Seal.of_this_process()
        self.topic = topic
        self.partitions = partitions or DEFAULT_PARTITIONS
        self._requested = partitions
        self.replication_factor = replication_factor
        self.client_id = client_id
        self.batch_bytes = batch_bytes
        self.request_timeout = request_timeout
        self._producer: Any = None
        self._reader: Any = None
        # The reader consumer is re-assigned and seeked by each read, so reads take turns.
        self._reader_lock = anyio.Lock()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> Self:
        if self._producer is not None:
            return self
        self.partitions = await self._settle_topic()
        timeout_ms = int(self.request_timeout * 1000)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=False,
            max_batch_size=self.batch_bytes,
            request_timeout_ms=timeout_ms,
        )
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            fetch_max_wait_ms=_READER_FETCH_WAIT_MS,
            request_timeout_ms=timeout_ms,
        )
        try:
            await producer.start()
            await reader.start()
        except BaseException:
            await reader.stop()
            await producer.stop()
            raise
        self._producer, self._reader = producer, reader
        return self

    async def _settle_topic(self) -> int:
        want = self._requested or DEFAULT_PARTITIONS
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            request_timeout_ms=int(self.request_timeout * 1000),
        )
        await admin.start()
        try:
            # CreateTime (Kafka's default, stated here): a message's timestamp is the record's own time,
            # which `Stored.at_ms` and `offsets_for_time` rely on. With LogAppendTime it would be the
            # broker's clock.
            topic = NewTopic(
                self.topic,
                num_partitions=want,
                replication_factor=self.replication_factor,
                topic_configs={"message.timestamp.type": "CreateTime"},
            )
            response = await admin.create_topics([topic])
            for _name, code, *rest in response.topic_errors:
                if code not in (0, TopicAlreadyExistsError.errno):
                    detail = rest[0] if rest and rest[0] else for_code(code).__name__
                    raise KafkaLogError(f"topic {self.topic!r}: cannot create it: {detail}")
            have = await self._partition_count(admin)
        finally:
            await admin.close()
        if self._requested is not None and have != self._requested:
            raise KafkaLogError(
                f"topic {self.topic!r} has {have} partitions, asked for {self._requested}: keys would map "
                "to other partitions than the records already in it"
            )
        return have

    async def _partition_count(self, admin: Any) -> int:
        # A topic just created may take a moment to show in metadata on a multi-broker cluster.
        with anyio.fail_after(self.request_timeout):
            while True:
                (described,) = await admin.describe_topics([self.topic])
                code = described["error_code"]
                if code == 0 and described["partitions"]:
                    return len(described["partitions"])
                if code not in (0, _ERROR_CODE_UNKNOWN_TOPIC, _ERROR_CODE_LEADER_NOT_AVAILABLE):
                    raise KafkaLogError(f"topic {self.topic!r}: {for_code(code).__name__}")
                await anyio.sleep(0.1)

    async def aclose(self) -> None:
        producer, reader = self._producer, self._reader
        self._producer = self._reader = None
        if reader is not None:
            await reader.stop()
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> Self:
        return await self.start()

    def _tp(self, partition: int) -> Any:
        if not 0 <= partition < self.partitions:
            raise ValueError(f"topic {self.topic!r} has no partition {partition} (it has {self.partitions})")
        return TopicPartition(self.topic, partition)

    def _started(self) -> tuple[Any, Any]:
        if self._producer is None:
            raise KafkaLogError(f"KafkaLog for topic {self.topic!r} is not started")
        return self._producer, self._reader

    # -- appending -------------------------------------------------------------------------------

    async def append(self, records: Sequence[Record]) -> list[Appended]:
        return await self.append_encoded([Encoded.of(r) for r in records])

    async def append_encoded(self, records: Sequence[Encoded]) -> list[Appended]:
        """One produce batch per partition (more when a batch would pass `batch_bytes`). Offsets come
        from the broker's answer: a batch's base offset plus each record's place in it."""
        if not records:
            return []
        producer, _ = self._started()
        batches: dict[int, list[tuple[Any, list[int]]]] = {}
        for i, r in enumerate(records):
            open_batches = batches.setdefault(partition_for(r.key, self.partitions), [])
            key = r.key.encode()
            headers = [
                ("id", r.id.encode()),
                ("type", r.type.encode()),
                ("v", _v_bytes(r.v)),
                ("seal", self.seal.of(r.raw)),
            ]
            placed = bool(open_batches) and (
                open_batches[-1][0].append(timestamp=r.at_ms, key=key, value=r.raw, headers=headers)
                is not None
            )
            if not placed:
                builder = producer.create_batch()
                open_batches.append((builder, []))
                # An empty batch takes any one record; the broker refuses one over its size limit.
                builder.append(timestamp=r.at_ms, key=key, value=r.raw, headers=headers)
            open_batches[-1][1].append(i)
        sent: list[tuple[int, list[int], asyncio.Future[Any]]] = []
        try:
            for p, partition_batches in batches.items():
                for builder, members in partition_batches:
                    future = await producer.send_batch(builder, self.topic, partition=p)
                    sent.append((p, members, future))
        except KafkaError as exc:  # no metadata: the broker is unreachable
            raise LogUnavailable(f"topic {self.topic!r}: {type(exc).__name__}: {exc}") from exc
        # Wait for every batch before raising, so no failed batch's exception goes unretrieved.
        results = await asyncio.gather(*(future for _, _, future in sent), return_exceptions=True)
        appended: list[Appended] = [Appended(-1, -1)] * len(records)
        for (p, members, _), result in zip(sent, results, strict=True):
            if isinstance(result, KafkaError):
                raise LogUnavailable(
                    f"topic {self.topic!r} partition {p}: {type(result).__name__}: {result}"
                ) from result
            if isinstance(result, BaseException):
                raise result
            for place, i in enumerate(members):
                appended[i] = Appended(p, result.offset + place)
        return appended

    # -- reading ---------------------------------------------------------------------------------

    async def read(self, partition: int, start: int, limit: int = 1000) -> list[Stored]:
        async with self._reader_lock:
            return await self._read_locked(partition, start, limit)

    async def _read_locked(self, partition: int, start: int, limit: int) -> list[Stored]:
        _, reader = self._started()
        tp = self._tp(partition)
        reader.assign([tp])  # a fresh assignment also forgets the last fetch's high watermark
        reader.seek(tp, start)
        out: list[Stored] = []
        following = start
        with anyio.fail_after(self.request_timeout):
            while len(out) < limit:
                high = reader.highwater(tp)
                if high is not None and following >= high:
                    break
                try:
                    got = await reader.getmany(tp, timeout_ms=_READER_POLL_MS, max_records=limit - len(out))
                except OffsetOutOfRangeError:
                    (begin,) = (await reader.beginning_offsets([tp])).values()
                    if following >= begin:
                        break  # past the end of the partition
                    reader.seek(tp, begin)  # retention removed the head: start at the oldest kept
                    following = begin
                    continue
                for message in got.get(tp, ()):
                    out.append(_stored(message, self.seal))
                    following = message.offset + 1
        return out

    async def end_offsets(self) -> Position:
        async with self._reader_lock:
            return await self._end_offsets_locked()

    async def _end_offsets_locked(self) -> Position:
        # Kafka's ListOffsets(latest) answers the high watermark, but tansu answers the base offset of
        # the last batch + 1, which is short by the rest of that batch. Neither quirk nor protocol is
        # trusted alone: the ListOffsets answer is taken as a lower bound, and the high watermark is
        # read from a real fetch at (lower bound - 1), whose response carries it for every partition
        # (aiokafka's `highwater(tp)`). On Kafka that fetch finds a record at once and confirms the
        # answer; on tansu it corrects it. An empty partition's fetch returns after the reader's short
        # fetch wait.
        _, reader = self._started()
        tps = [self._tp(p) for p in range(self.partitions)]
        listed = await reader.end_offsets(tps)
        reader.assign(tps)
        for tp in tps:
            reader.seek(tp, max(listed[tp] - 1, 0))
        with anyio.fail_after(self.request_timeout):
            while pending := [tp for tp in tps if reader.highwater(tp) is None]:
                try:
                    await reader.getmany(*pending, timeout_ms=_READER_POLL_MS, max_records=len(pending))
                except OffsetOutOfRangeError as exc:
                    # (lower bound - 1) was before the oldest kept record: fetch from the oldest instead.
                    reader.seek_to_beginning(*exc.args[0])
        return {tp.partition: max(int(reader.highwater(tp)), int(listed[tp])) for tp in tps}

    async def offsets_for_time(self, at_ms: int) -> Position:
        # The broker's ListOffsets(timestamp) answer is checked against the records around it (the one
        # before must be earlier, the one at it not earlier) and, if it fails, replaced by a scan of
        # the partition. On Kafka (CreateTime topics) the check passes; tansu answers 0 whatever the
        # time, so there the scan gives the answer.
        ends = await self.end_offsets()
        _, reader = self._started()
        async with self._reader_lock:
            found = await reader.offsets_for_times({self._tp(p): at_ms for p in range(self.partitions)})
        out: Position = {}
        for p, end in ends.items():
            hint = found.get(self._tp(p))
            candidate = end if hint is None else min(max(int(hint.offset), 0), end)
            out[p] = await self._checked_offset_for_time(p, at_ms, candidate, end)
        return out

    async def _checked_offset_for_time(self, partition: int, at_ms: int, candidate: int, end: int) -> int:
        if end == 0:
            return 0
        around = await self.read(partition, max(candidate - 1, 0), limit=2)
        before = [s for s in around if s.offset < candidate]
        at = [s for s in around if s.offset >= candidate]
        earlier_before = not before or before[-1].at_ms < at_ms
        not_earlier_at = (not at and candidate >= end) or (
            bool(at) and at[0].offset == candidate and at[0].at_ms >= at_ms
        )
        if earlier_before and not_earlier_at:
            return candidate
        start = 0
        while batch := await self.read(partition, start, limit=1000):
            for stored in batch:
                if stored.at_ms >= at_ms:
                    return stored.offset
            start = batch[-1].offset + 1
        return end

    # -- consumer groups -------------------------------------------------------------------------

    def subscribe(self, group: str, start: Position | None = None) -> KafkaSubscription:
        return KafkaSubscription(self, group, start)

    async def committed(self, group: str) -> Position:
        self._started()
        consumer = self._group_consumer(group, fetch_wait_ms=_READER_FETCH_WAIT_MS)
        await consumer.start()
        try:
            return await _committed(consumer, (self._tp(p) for p in range(self.partitions)), {})
        finally:
            await consumer.stop()

    def _group_consumer(self, group: str | None, fetch_wait_ms: int) -> Any:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="none",
            fetch_max_wait_ms=fetch_wait_ms,
            request_timeout_ms=int(self.request_timeout * 1000),
        )


async def _committed(consumer: Any, tps: Iterable[Any], fallback: dict[Any, int]) -> Position:
    out: Position = {}
    for tp in tps:
        offset = await consumer.committed(tp)
        out[tp.partition] = int(offset) if offset is not None and offset >= 0 else fallback.get(tp, 0)
    return out


class KafkaSubscription(AsyncResource):
    """All partitions of the topic, assigned by hand (no group rebalancing): the group id is used for
    commits only. Starts at the explicit position, or at the group's committed offsets (the oldest
    kept record where none is committed)."""

    def __init__(self, log: KafkaLog, group: str, start: Position | None) -> None:
        self._log = log
        self._group = group
        self._start = start
        self._consumer: Any = None
        self._position: Position = {}

    async def _ensure_started(self) -> Any:
        if self._consumer is not None:
            return self._consumer
        log = self._log
        consumer = log._group_consumer(self._group, fetch_wait_ms=_SUBSCRIPTION_FETCH_WAIT_MS)
        await consumer.start()
        try:
            tps = [log._tp(p) for p in range(log.partitions)]
            consumer.assign(tps)
            if self._start is None:
                oldest = await consumer.beginning_offsets(tps)
                position = await _committed(consumer, tps, oldest)
            else:
                position = {p: self._start.get(p, 0) for p in range(log.partitions)}
            for tp in tps:
                consumer.seek(tp, position[tp.partition])
        except BaseException:
            await consumer.stop()
            raise
        self._consumer, self._position = consumer, position
        return consumer

    async def next_batch(self, max_records: int = 1000, timeout: float = 1.0) -> list[Stored]:
        consumer = await self._ensure_started()
        try:
            got = await consumer.getmany(timeout_ms=int(timeout * 1000), max_records=max_records)
        except OffsetOutOfRangeError as exc:
            await self._out_of_range(consumer, exc.args[0])
            return []
        batch: list[Stored] = []
        for tp in sorted(got, key=lambda tp: tp.partition):
            for message in got[tp]:
                batch.append(_stored(message, self._log.seal))
            if got[tp]:
                self._position[tp.partition] = got[tp][-1].offset + 1
        if not batch:
            await self._check_within_end(consumer)
        return batch

    async def _check_within_end(self, consumer: Any) -> None:
        """A broker that lost its storage (tansu on memory://, restarted) answers a fetch past its end
        with nothing rather than OFFSET_OUT_OF_RANGE; the high watermark of its answer shows it. A hint:
        the end is read (and checked) before this subscription's reader is told it is past the end."""
        behind = [
            p
            for p, offset in self._position.items()
            if (highwater := consumer.highwater(self._log._tp(p))) is not None and highwater < offset
        ]
        if not behind:
            return
        end = await self._log.end_offsets()
        beyond = {p: self._position[p] for p in behind if self._position[p] > end.get(p, 0)}
        if beyond:
            raise KafkaLogError(
                f"topic {self._log.topic!r}: position {beyond} is past the end of the log "
                f"{ {p: end.get(p, 0) for p in beyond} } (was the topic recreated, or its storage lost?)"
            )

    async def _out_of_range(self, consumer: Any, offsets: dict[Any, int]) -> None:
        oldest = await consumer.beginning_offsets(list(offsets))
        for tp, offset in offsets.items():
            if offset >= oldest[tp]:
                raise KafkaLogError(
                    f"topic {self._log.topic!r} partition {tp.partition}: position {offset} is past the "
                    "end of the log (was the topic recreated?)"
                )
            # Retention removed records before this position: continue from the oldest kept.
            consumer.seek(tp, oldest[tp])
            self._position[tp.partition] = oldest[tp]

    def position(self) -> Position:
        return dict(self._position)

    async def commit(self, position: Position) -> None:
        if not position:
            return  # nothing folded yet (a fresh topic): aiokafka refuses an empty commit
        consumer = await self._ensure_started()
        await consumer.commit({self._log._tp(p): o for p, o in position.items()})

    async def aclose(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def __aenter__(self) -> Self:
        await self._ensure_started()
        return self


class KafkaPartitionReader(AsyncResource):
    """Reads a chosen set of partitions, each from its own position: an owner's mailbox, whose set
    changes with every rebalance. No group: positions live in the owner's stores, not in Kafka."""

    def __init__(self, log: KafkaLog) -> None:
        self._log = log
        self._consumer: Any = None
        self._positions: Position = {}
        self._changed = anyio.Event()

    async def start(self) -> Self:
        consumer = self._log._group_consumer(None, fetch_wait_ms=_SUBSCRIPTION_FETCH_WAIT_MS)
        await consumer.start()
        self._consumer = consumer
        return self

    def assign(self, positions: Position) -> None:
        """Read exactly these partitions from now on, each from its position; what was fetched but not
        yet returned for a partition is dropped (a revoked partition's records must not be handled)."""
        consumer = self._consumer
        tps = [self._log._tp(p) for p in sorted(positions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, positions[tp.partition])
        self._positions = dict(positions)
        self._changed.set()
        self._changed = anyio.Event()

    async def next_batch(self, max_records: int = 1000, timeout: float = 1.0) -> list[Stored]:
        consumer = self._consumer
        if not self._positions:
            with anyio.move_on_after(timeout):
                await self._changed.wait()  # nothing owned: wait for an assignment, not a fetch
            return []
        try:
            got = await consumer.getmany(timeout_ms=int(timeout * 1000), max_records=max_records)
        except OffsetOutOfRangeError as exc:
            partitions = sorted(tp.partition for tp in exc.args[0])
            raise KafkaLogError(
                f"topic {self._log.topic!r} partitions {partitions}: a stored position is past the end "
                "of the log (was the topic recreated, or the broker's storage lost?)"
            ) from exc
        batch: list[Stored] = []
        for tp in sorted(got, key=lambda tp: tp.partition):
            if tp.partition not in self._positions:
                continue
            for message in got[tp]:
                batch.append(_stored(message, self._log.seal))
        return batch

    async def aclose(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def __aenter__(self) -> Self:
        return await self.start()
