"""The envelope every record carries, and the two kinds of record: commands and facts.

Records are immutable msgspec Structs in one tagged union (the tag is the class name, in the `type`
field). `v` is the schema version; each class's default is its current version, so a record built in
this process is always current and older bytes are upcast on read (events/upcasting.py).
"""

from __future__ import annotations

import os
import time
import typing
import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any, ClassVar, Self

import msgspec

from events.names import POLICY_PATTERN, SYSTEM_TENANT, Count, RecordId, tenant_of


def new_record_id() -> str:
    """A time-ordered unique id (UUIDv7 layout): sortable, so ids also say roughly when."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def utc_now() -> datetime:
    return datetime.now(UTC)


def _names_policy(hint: Any) -> bool:
    """Whether a field annotation is a policy name (`tenant/name`), alone, optional or in a list."""
    if typing.get_origin(hint) is typing.Annotated:
        return any(getattr(meta, "pattern", None) == POLICY_PATTERN for meta in hint.__metadata__)
    return any(_names_policy(arg) for arg in typing.get_args(hint))


@cache
def _policy_fields(cls: type[Record]) -> tuple[str, ...]:
    """The fields of `cls` that hold policy names (run names are policy-shaped too)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple(f.name for f in msgspec.structs.fields(cls) if _names_policy(hints[f.name]))


class Record(
    msgspec.Struct,
    kw_only=True,
    frozen=True,
    tag_field="type",
    tag=True,
    gc=False,
    forbid_unknown_fields=True,
):
    """Envelope fields. `key` is the partition key: the policy for catalog and training records, the
    engine for serving records, the run for run-level records. One writer decides per key.

    Tenancy is part of the schema: a tenant's record names only that tenant's policies and runs (its
    key included), and an infrastructure record belongs to the system tenant. A record that breaks
    this does not decode, so a fold never sees it: a run of globex cannot name acme's policies,
    whether it came through the HTTP door or straight onto Kafka."""

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
        if self.SYSTEM:
            if self.tenant != SYSTEM_TENANT:
                raise ValueError(
                    f"tenant: {type(self).__name__} belongs to {SYSTEM_TENANT!r}, not {self.tenant!r}"
                )
            return
        crossing = self.crossing()
        if crossing is not None:
            field, name = crossing
            raise ValueError(f"{field}: {name!r} belongs to another tenant than {self.tenant!r}")

    def crossing(self) -> tuple[str, str] | None:
        """The first (field, name) of this record that belongs to another tenant than its own, if
        any. Runs on every decode, so it compares prefixes rather than splitting names."""
        prefix = self.tenant + "/"
        if not self.key.startswith(prefix):
            return "key", self.key
        for field in _policy_fields(type(self)):
            value = getattr(self, field)
            if type(value) is str:
                if not value.startswith(prefix):
                    return field, value
            elif value is not None:
                for name in value:
                    if not name.startswith(prefix):
                        return field, name
        return None

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
    """Something that happened. Folds never reject a fact: they may only find it fenced.

    `epoch` is the claim (events/claims.py) its writer decided under: a partition owner's, or a run
    lease's. A fact whose epoch is older than the latest claim of its fence on its partition is
    ignored by every fold, so a writer that lost its claim (a zombie) cannot make anything count.
    0 means unfenced: the embedded system, where one process owns every key."""

    epoch: Count = 0

    def fence(self) -> str:
        """Whose claims this fact's epoch answers to: by default its deciding actor's."""
        return f"actor:{self.source}"
