"""The log port: what every backend (SQLite, Kafka) promises. tests/log_contract.py holds it to this.

Positions look like Kafka's on every backend: a record sits at (partition, offset), the partition is
chosen from its key (events/partitioning.py), and offsets within a partition are dense from 0. A
`Position` maps each partition to the next offset to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

import anyio
import msgspec

from events import codec
from events.claims import Claim
from events.codec import UnknownRecord
from events.envelope import Fact, Record

Position = dict[int, int]
DEFAULT_PARTITIONS = 8
# The type of a stored message that is no record at all (not JSON, no header): readers dead-letter it.
UNREADABLE = "<unreadable>"


class Stored(msgspec.Struct, frozen=True, gc=False):
    """A record as the log holds it: its place, the header the backend indexes, and the raw bytes.
    Decoding is left to the reader, so a fold can skip types it ignores without paying for them."""

    partition: int
    offset: int
    id: str
    key: str
    type: str
    v: int
    at_ms: int
    raw: bytes
    # Appended by a MinT process (events/seal.py); False for a record written straight onto Kafka,
    # which may then be a command or a producer's fact but never a decider's (events/authority.py).
    sealed: bool = True

    def decode(self) -> Record | UnknownRecord:
        return codec.decode(self.raw, self.type, self.v)


class Encoded(msgspec.Struct, frozen=True, gc=False):
    """A record ready to append: already validated (or of a type this build does not know)."""

    id: str
    key: str
    type: str
    v: int
    at_ms: int
    raw: bytes

    @classmethod
    def of(cls, record: Record) -> Encoded:
        return cls(
            id=record.id,
            key=record.key,
            type=type(record).__name__,
            v=record.v,
            at_ms=int(record.at.timestamp() * 1000),
            raw=codec.encode(record),
        )


class Appended(msgspec.Struct, frozen=True, gc=False):
    """Where an appended record sits. `duplicate` is True when a backend that refuses duplicates
    already held this id: the place is then the first copy's."""

    partition: int
    offset: int
    duplicate: bool = False


class Subscription(Protocol):
    """A mailbox over the log for one consumer group, starting at an explicit position (a projection's
    own checkpoint) or at the group's committed offsets."""

    async def next_batch(self, max_records: int = 1000, timeout: float = 1.0) -> list[Stored]:
        """Records after the last batch, waiting up to `timeout` for at least one; [] when none came."""
        ...

    async def commit(self, position: Position) -> None:
        """Record the group's progress. A convenience for lag metrics: projections keep their own."""
        ...

    def position(self) -> Position: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class LogUnavailable(RuntimeError):
    """The log did not take an append (its broker unreachable, or not answering in time). Whether the
    records were written is unknown: the caller retries later with the same records, whose ids make a
    second copy harmless."""


class EventLog(Protocol):
    partitions: int
    # True when a second append of an id is refused (SQLite). Kafka cannot refuse; its readers skip
    # ids they have already applied (events/dedupe.py).
    refuses_duplicates: bool

    async def append(self, records: Sequence[Record]) -> list[Appended]:
        """Append atomically (SQLite) or as one produce batch (Kafka); one Appended per record.
        LogUnavailable when the log could not take them now."""
        ...

    async def append_encoded(self, records: Sequence[Encoded]) -> list[Appended]: ...

    async def read(self, partition: int, start: int, limit: int = 1000) -> list[Stored]:
        """Up to `limit` records of one partition from offset `start`, in offset order."""
        ...

    async def end_offsets(self) -> Position:
        """The next offset each partition will assign (Kafka's high watermark)."""
        ...

    async def offsets_for_time(self, at_ms: int) -> Position:
        """Per partition, the first offset whose record time is at or after `at_ms` (else the end)."""
        ...

    def subscribe(self, group: str, start: Position | None = None) -> Subscription: ...

    async def committed(self, group: str) -> Position: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def caught_up(position: Position, end: Position) -> bool:
    return all(position.get(p, 0) >= o for p, o in end.items())


async def append_one(log: EventLog, record: Record) -> Appended:
    (appended,) = await log.append([record])
    return appended


OUTCOME_POLL_S = 0.2  # how often `outcome` re-reads the partition (another process decides)


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """A command's decision and where it sits on the log."""

    fact: Fact
    partition: int
    offset: int

    @property
    def position(self) -> Position:
        """The position just past the decision: a read at it sees the command decided."""
        return {self.partition: self.offset + 1}


async def outcome(log: EventLog, appended: Appended, command_id: str, timeout_s: float) -> Outcome:
    """The first counted fact caused by `command_id` (its decision: the facts, or CommandRejected).
    Deciders key it like the command, so it follows the command on the same partition. A decision of
    an owner that a later claim on the partition fenced (a zombie's) is passed over, as every fold
    passes over it. TimeoutError when no decider answers within `timeout_s`."""
    offset = appended.offset + 1
    claimed: dict[str, int] = {}  # fence scope -> the latest epoch claimed since the command
    with anyio.fail_after(timeout_s):
        while True:
            for stored in await log.read(appended.partition, offset):
                offset = stored.offset + 1
                try:
                    record = stored.decode()
                except codec.RecordError:
                    continue  # someone's poison on this partition: not the answer
                if isinstance(record, Claim):
                    scope = record.scope()
                    claimed[scope] = max(claimed.get(scope, 0), record.epoch)
                elif (
                    isinstance(record, Fact)
                    and record.causation == command_id
                    and claimed.get(record.fence(), record.epoch) == record.epoch  # not fenced since
                ):
                    return Outcome(record, stored.partition, stored.offset)
            await anyio.sleep(OUTCOME_POLL_S)
