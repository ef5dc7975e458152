"""Ingest for upstream producers: a batch of records, validated whole before anything is appended.

The body is a JSON array of records or NDJSON (one record per line); either way every record is
decoded against the published schema (`mint events schema`), checked against the producer's tenant, the
route's kind (commands or facts) and who may write it (events/authority.py: a producer appends commands
and `RevisionExported`, never a decider's facts, whatever its role), and only a batch without a single
error is appended, in one `append` (one SQLite transaction; one produce batch on Kafka). Ids make it
idempotent: a record whose id the log already holds comes back as a duplicate, not a second copy (on
Kafka, readers skip it).
"""

from __future__ import annotations

import time
from typing import Literal

import msgspec

from events import codec
from events.codec import RecordError
from events.envelope import Command, Record
from events.names import tenant_of
from events.schema import BY_NAME, producer_may_write, refusal_for_producer
from events.training import RevisionExported
from mint.auth.tokens import Principal

Kind = Literal["command", "fact"]
MAX_ERRORS = 50  # a body with more errors than this is cut short: the first ones say enough


class RecordProblem(msgspec.Struct, frozen=True):
    """What is wrong with one record: where it is in the batch, its id and type if they decoded, the
    field at fault (None when the record as a whole is), and why."""

    index: int
    id: str | None
    type: str | None
    field: str | None
    message: str


class BatchRefused(ValueError):
    def __init__(self, problems: list[RecordProblem]) -> None:
        first = problems[0]
        where = f"record {first.index}" + (f" {first.id!r}" if first.id else "")
        super().__init__(
            f"{len(problems)} bad record(s); nothing was appended. First: {where}: {first.message}"
        )
        self.problems = problems


class TooLarge(ValueError):
    pass


class RateLimited(ValueError):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"rate limit: retry after {retry_after_s:.1f}s")
        self.retry_after_s = retry_after_s


class IngestLimits(msgspec.Struct, frozen=True):
    max_bytes: int = 8 * 1024 * 1024
    max_records: int = 10_000
    # Per token: a bucket of `burst` records refilled at `records_per_s`.
    records_per_s: float = 5_000.0
    burst: int = 20_000


def split_body(body: bytes) -> list[bytes]:
    """The raw records of a JSON array or of NDJSON (blank lines ignored)."""
    text = body.lstrip()
    if text.startswith(b"["):
        try:
            raws = msgspec.json.decode(text, type=list[msgspec.Raw])
        except (msgspec.DecodeError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise BatchRefused(
                [RecordProblem(0, None, None, "body", f"body: not a JSON array: {why}")]
            ) from None
        return [bytes(r) for r in raws]
    return [line.strip() for line in body.splitlines() if line.strip()]


def _problem(index: int, raw: bytes, message: str, field: str | None) -> RecordProblem:
    try:
        type_name, _, ident, _ = codec.read_header(raw)
    except RecordError:
        type_name, ident = "", ""
    return RecordProblem(index, ident or None, type_name or None, field, message)


def _unwritable(index: int, raw: bytes) -> RecordProblem | None:
    """The problem of a record of a type that no producer may append (a decider's fact)."""
    try:
        type_name, _, ident, _ = codec.read_header(raw)
    except RecordError:
        return None  # validation names what is wrong with it
    if type_name not in BY_NAME or producer_may_write(type_name):
        return None
    message = f"record {ident!r} ({type_name}): type: {refusal_for_producer(type_name)}"
    return RecordProblem(index, ident or None, type_name, "type", message)


def _refusal(record: Record, kind: Kind, principal: Principal) -> tuple[str, str] | None:
    """(field, why) when this producer may not append this record on this route."""
    is_command = isinstance(record, Command)
    if is_command != (kind == "command"):
        route = "/v1/commands" if is_command else "/v1/events"
        return (
            "type",
            f"{type(record).__name__} is a {'command' if is_command else 'fact'}: send it to {route}",
        )
    if not principal.operator:
        if record.SYSTEM:
            return (
                "type",
                f"{type(record).__name__} is an infrastructure record: only the operator appends it",
            )
        if record.tenant != principal.tenant:
            return "tenant", f"{record.tenant!r} is not this token's tenant {principal.tenant!r}"
        if tenant_of(record.key) != principal.tenant:
            return "key", f"{record.key!r} belongs to another tenant than {principal.tenant!r}"
    return dead_on_arrival(record)


def dead_on_arrival(record: Record) -> tuple[str, str] | None:
    """(field, why) when the catalog would dead-letter this record whatever its state: every door
    (HTTP ingest, `mint events produce`) refuses it instead of appending it."""
    foreign = record.foreign_uri() if isinstance(record, RevisionExported) else None
    return None if foreign is None else ("uri", foreign)


def validate_batch(body: bytes, kind: Kind, principal: Principal, limits: IngestLimits) -> list[Record]:
    """Every record of the body, or BatchRefused listing each bad one (up to MAX_ERRORS)."""
    if len(body) > limits.max_bytes:
        raise TooLarge(f"body: {len(body):,} bytes is over the limit of {limits.max_bytes:,}")
    raws = split_body(body)
    if len(raws) > limits.max_records:
        raise TooLarge(f"body: {len(raws):,} records is over the limit of {limits.max_records:,} per request")
    if not raws:
        raise BatchRefused([RecordProblem(0, None, None, None, "body: no records")])
    records: list[Record] = []
    problems: list[RecordProblem] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raws):
        unwritable = _unwritable(index, raw)
        if unwritable is not None:  # who may write it is settled before its fields are read
            problems.append(unwritable)
            continue
        try:
            record = codec.validate(raw)
        except RecordError as exc:
            problems.append(_problem(index, raw, str(exc), exc.field))
        else:
            refusal = _refusal(record, kind, principal)
            if refusal is None and record.id in seen:
                refusal = ("id", f"{record.id!r} repeats record {seen[record.id]} of this batch")
            if refusal is not None:
                field, why = refusal
                name = type(record).__name__
                problems.append(
                    RecordProblem(
                        index, record.id, name, field, f"record {record.id!r} ({name}): {field}: {why}"
                    )
                )
            seen.setdefault(record.id, index)
            records.append(record)
        if len(problems) >= MAX_ERRORS:
            break
    if problems:
        raise BatchRefused(problems)
    return records


class RateLimiter:
    """A token bucket per producer token, in records."""

    def __init__(self, limits: IngestLimits) -> None:
        self.limits = limits
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, token_id: str, records: int) -> None:
        now = time.monotonic()
        level, since = self._buckets.get(token_id, (float(self.limits.burst), now))
        level = min(float(self.limits.burst), level + (now - since) * self.limits.records_per_s)
        if records > level:
            raise RateLimited((records - level) / self.limits.records_per_s)
        self._buckets[token_id] = (level - records, now)
