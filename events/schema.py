"""The vocabulary as one tagged union, the registry of current versions, and the published JSON Schema."""

from __future__ import annotations

from typing import Any

import msgspec

from events.authority import COMMAND_WRITERS, FACT_WRITERS, PRODUCER
from events.catalog import (
    AbortCanary,
    CanaryAborted,
    CanaryPromoted,
    CanaryStarted,
    CommandRejected,
    ConfigurePolicy,
    PolicyConfigured,
    PolicyRegistered,
    PolicyRetired,
    Promote,
    PromoteCanary,
    RegisterPolicy,
    RetirePolicy,
    RevisionPromoted,
    RevisionRolledBack,
    Rollback,
    StartCanary,
)
from events.claims import PartitionClaimed
from events.envelope import Command, Fact, Record
from events.evaluation import EvaluationCompleted, EvaluationFailed, RequestEvaluation
from events.serving import (
    AdapterEvicted,
    AdapterLoaded,
    AdapterLoadFailed,
    EngineHeartbeat,
    EngineLost,
    EngineRegistered,
    ReportDemand,
    TrafficObserved,
    WavePlanned,
)
from events.system import ActorRestarted
from events.tinker import (
    CheckpointDeleted,
    CheckpointExpirySet,
    CheckpointSaved,
    SamplerCreated,
    TrainingClientCreated,
)
from events.training import (
    RevisionExported,
    RunClaimed,
    RunHeartbeat,
    StartTraining,
    StepCompleted,
    TrainingFailed,
    TrainingFinished,
    TrainingStarted,
)

RECORD_TYPES: tuple[type[Record], ...] = (
    # commands
    RegisterPolicy,
    ConfigurePolicy,
    Promote,
    Rollback,
    RetirePolicy,
    StartCanary,
    PromoteCanary,
    AbortCanary,
    StartTraining,
    RequestEvaluation,
    ReportDemand,
    # facts
    PolicyRegistered,
    PolicyConfigured,
    RevisionPromoted,
    RevisionRolledBack,
    PolicyRetired,
    CanaryStarted,
    CanaryPromoted,
    CanaryAborted,
    CommandRejected,
    TrainingStarted,
    StepCompleted,
    RevisionExported,
    TrainingFinished,
    TrainingFailed,
    RunClaimed,
    RunHeartbeat,
    EvaluationCompleted,
    EvaluationFailed,
    EngineRegistered,
    WavePlanned,
    AdapterLoaded,
    AdapterLoadFailed,
    AdapterEvicted,
    EngineHeartbeat,
    EngineLost,
    TrafficObserved,
    ActorRestarted,
    PartitionClaimed,
    TrainingClientCreated,
    CheckpointSaved,
    SamplerCreated,
    CheckpointExpirySet,
    CheckpointDeleted,
)

BY_NAME: dict[str, type[Record]] = {cls.__name__: cls for cls in RECORD_TYPES}
COMMAND_TYPES = frozenset(name for name, cls in BY_NAME.items() if issubclass(cls, Command))
FACT_TYPES = frozenset(name for name, cls in BY_NAME.items() if issubclass(cls, Fact))


# Who may write each type (events/authority.py); a fact type missing from FACT_WRITERS fails here.
WRITERS: dict[str, tuple[str, ...]] = {
    name: COMMAND_WRITERS if name in COMMAND_TYPES else FACT_WRITERS[name] for name in BY_NAME
}
# The types an upstream producer may append: at the door, and unsealed on Kafka.
PRODUCER_TYPES = frozenset(name for name, writers in WRITERS.items() if PRODUCER in writers)


def producer_may_write(type_name: str) -> bool:
    return type_name in PRODUCER_TYPES


def refusal_for_producer(type_name: str) -> str:
    """Why a producer may not append a record of `type_name`, naming who does write it."""
    writers = " or ".join(WRITERS[type_name])
    return (
        f"{type_name} is written only by MinT's {writers} actor; producers may append commands and "
        f"{', '.join(sorted(PRODUCER_TYPES - COMMAND_TYPES))}"
    )


def current_version(cls: type[Record]) -> int:
    default = msgspec.structs.fields(cls)[1].default
    assert isinstance(default, int)
    return default


CURRENT_VERSION: dict[str, int] = {name: current_version(cls) for name, cls in BY_NAME.items()}

# msgspec needs the union spelled out at runtime; the annotation is for readers and mypy.
AnyRecord: Any = RECORD_TYPES[0]
for _cls in RECORD_TYPES[1:]:
    AnyRecord = AnyRecord | _cls


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of every record at its current version, for upstream producers."""
    schema = msgspec.json.schema(AnyRecord)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "MinT log record"
    schema["description"] = (
        "One record of the MinT log. `type` selects the record; `v` is its schema version; `id` is the "
        "idempotency key; `key` is the partition key and must equal the field named in each type's "
        "description. Older versions are accepted and upcast."
    )
    for name, cls in BY_NAME.items():
        definition = schema["$defs"][name]
        kind = "command" if name in COMMAND_TYPES else "fact"
        doc = (cls.__doc__ or "").strip()
        writers = ", ".join(WRITERS[name])
        definition["description"] = (
            f"{kind} v{CURRENT_VERSION[name]}; key = {cls.KEY_FIELD}; written by: {writers}. {doc}".strip()
        )
        definition["x-mint-writers"] = list(WRITERS[name])
    schema["x-mint-producer-types"] = sorted(PRODUCER_TYPES)
    return schema
