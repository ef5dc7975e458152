"""The envelope every record carries, and the two kinds of record: commands and facts.

Records are immutable msgspec Structs in one tagged union (the tag is the class name, in the `type`
field). `v` is the schema version; each class's default is its current version, so a record built in
this process is always current and older bytes are upcast on read (events/upcasting.py).
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

import msgspec

from events.names import SYSTEM_TENANT, RecordId, tenant_of


def new_record_id() -> str:
    """A time-ordered unique id (UUIDv7 layout): sortable, so ids also say roughly when."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def utc_now() -> datetime:
    return datetime.now(UTC)


class Record(msgspec.Struct, kw_only=True, frozen=True, tag_field="type", tag=True, gc=False):
    """Envelope fields. `key` is the partition key: the policy for catalog and training records, the
    engine for serving records, the run for run-level records. One writer decides per key."""

    id: RecordId
    v: int = 1
    key: str
    tenant: str
    at: datetime
    source: str = ""
    causation: str | None = None
    correlation: str | None = None

    # Which field the key must equal; the schema checks it so a record can never land on the wrong
    # partition (per-key order is the only order the log promises).
    KEY_FIELD: ClassVar[str]
    # Records of infrastructure (engines, actors) use the system tenant instead of the key's prefix.
    SYSTEM: ClassVar[bool] = False

    def __post_init__(self) -> None:
        expected = getattr(self, self.KEY_FIELD)
        if self.key != expected:
            raise ValueError(f"key: must equal {self.KEY_FIELD} {expected!r}, got {self.key!r}")

    @classmethod
    def create(
        cls,
        *,
        cause: Record | None = None,
        source: str = "",
        id: str | None = None,
        at: datetime | None = None,
        tenant: str | None = None,
        correlation: str | None = None,
        **fields: Any,
    ) -> Self:
        """Build a current-version record, filling the envelope: key from KEY_FIELD, tenant from the
        key (or the system tenant), causation/correlation from `cause`."""
        # CommandRejected is keyed like its command, so its key is given, not derived.
        key = fields.pop("key") if cls.KEY_FIELD == "key" else fields[cls.KEY_FIELD]
        if tenant is None:
            tenant = SYSTEM_TENANT if cls.SYSTEM else tenant_of(key)
        return cls(
            id=id or new_record_id(),
            key=key,
            tenant=tenant,
            at=at or utc_now(),
            source=source,
            causation=cause.id if cause else None,
            correlation=correlation or ((cause.correlation or cause.id) if cause else None),
            **fields,
        )


class Command(Record, kw_only=True, frozen=True):
    """An intent. The actor that owns its key decides it: facts, or CommandRejected."""


class Fact(Record, kw_only=True, frozen=True):
    """Something that happened. Folds never reject a fact."""
