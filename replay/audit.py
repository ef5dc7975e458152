"""The full history of one key (a policy, run, engine or actor), with causation: who, what, when, why;
and which revision answered a request id while a canary ran."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from events.codec import RecordError, UnknownRecord
from events.envelope import Record
from events.log import EventLog, Stored
from events.partitioning import partition_for
from mint.catalog.canary import answering
from mint.catalog.queries import Catalog
from mint.catalog.rows import CanaryRow


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


@dataclass(frozen=True)
class RequestAnswer:
    """Who answered a request id while `canary` ran: `revision`, and `shadowed` when the candidate
    also ran it unseen."""

    canary: CanaryRow
    revision: str
    shadowed: bool


def who_answered(
    catalog: Catalog, policy: str, request_id: str, at: datetime | None = None
) -> list[RequestAnswer]:
    """For each canary of `policy` (only the one running at `at`, when given), which revision answered a
    request for `policy` with `request_id`: recomputed from the canary's facts, as the API chose it
    (mint/catalog/canary.py). Outside every canary, the serving pointer answered."""
    found = []
    for canary in catalog.canaries(policy):
        if at is not None and not _ran_at(canary, at):
            continue
        chosen = answering(policy, canary.stable, canary, request_id)
        found.append(RequestAnswer(canary, chosen.ref.partition("@")[2], chosen.shadow is not None))
    return found


def _ran_at(canary: CanaryRow, at: datetime) -> bool:
    started = datetime.fromisoformat(canary.started_at)
    ended = datetime.fromisoformat(canary.ended_at) if canary.ended_at else None
    return started <= at and (ended is None or at < ended)
