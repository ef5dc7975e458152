"""The full history of one key (a policy, run, engine or actor), with causation: who, what, when, why."""

from __future__ import annotations

from dataclasses import dataclass

from events.codec import RecordError, UnknownRecord
from events.envelope import Record
from events.log import EventLog, Stored
from events.partitioning import partition_for


@dataclass(frozen=True)
class Entry:
    stored: Stored
    record: Record | UnknownRecord | None  # None: the bytes do not decode (see `error`)
    error: str | None = None
    cause: Stored | None = None  # the record named by `causation`, when it is in this history


async def history(log: EventLog, key: str, page: int = 5000) -> list[Entry]:
    partition = partition_for(key, log.partitions)
    end = (await log.end_offsets()).get(partition, 0)
    mine: list[Stored] = []
    start = 0
    while start < end:
        batch = await log.read(partition, start, limit=page)
        if not batch:
            break
        mine.extend(s for s in batch if s.key == key)
        start = batch[-1].offset + 1
    by_id = {s.id: s for s in mine}
    entries = []
    for stored in mine:
        try:
            record = stored.decode()
        except RecordError as exc:
            entries.append(Entry(stored, None, str(exc)))
            continue
        causation = record.causation if isinstance(record, Record) else None
        entries.append(Entry(stored, record, None, by_id.get(causation) if causation else None))
    return entries
