"""Who may write each record type.

A fact belongs to the actor that decides it: a `RevisionPromoted` is the catalog's word that a Promote
passed its rules, so a `RevisionPromoted` from anyone else would move a serving pointer past every
gate. Upstream producers may append commands (an intent the owning actor may refuse) and the one fact
meant for them: `RevisionExported`, an adapter trained outside MinT (it is still evaluated and gated
before it serves).

Two mechanisms hold every reader to this table:
- the doors (`POST /v1/events`, `mint events produce`) refuse other facts on `type`;
- every record a MinT process appends carries a seal (events/seal.py); a fold sends an unsealed record
  of a type producers may not write to the dead-letter table. So a record written straight onto Kafka
  by a producer cannot pose as an actor's decision.
"""

from __future__ import annotations

from collections.abc import Mapping

PRODUCER = "producer"
# Commands also come from actors (the evaluator's Rollback, an engine host's ReportDemand).
COMMAND_WRITERS = (PRODUCER, "any actor")

# Every fact type, with the actors that decide it (events/schema.py derives the rest from this).
FACT_WRITERS: Mapping[str, tuple[str, ...]] = {
    "PolicyRegistered": ("catalog",),
    "PolicyConfigured": ("catalog",),
    "RevisionPromoted": ("catalog",),
    "RevisionRolledBack": ("catalog",),
    "PolicyRetired": ("catalog",),
    "CanaryStarted": ("catalog",),
    "CanaryPromoted": ("catalog",),
    "CanaryAborted": ("catalog",),
    "CommandRejected": ("catalog", "trainer", "evaluator"),
    "TrainingStarted": ("trainer",),
    "StepCompleted": ("trainer", "tinker"),
    "RevisionExported": ("trainer", "tinker", PRODUCER),
    "TrainingFinished": ("trainer",),
    "TrainingFailed": ("trainer",),
    "RunClaimed": ("trainer",),
    "RunHeartbeat": ("trainer",),
    "EvaluationCompleted": ("evaluator",),
    "EvaluationFailed": ("evaluator",),
    "EngineRegistered": ("engine-host",),
    "WavePlanned": ("scheduler",),
    "AdapterLoaded": ("engine-host",),
    "AdapterLoadFailed": ("engine-host",),
    "AdapterEvicted": ("engine-host",),
    "EngineHeartbeat": ("engine-host",),
    "EngineLost": ("scheduler",),
    "PartitionClaimed": ("catalog", "projector", "trainer", "evaluator", "scheduler"),
    "TrafficObserved": ("engine-host",),
    "ActorRestarted": ("supervisor",),
    "TrainingClientCreated": ("tinker",),
    "CheckpointSaved": ("tinker",),
    "SamplerCreated": ("tinker",),
    "CheckpointExpirySet": ("tinker",),
    "CheckpointDeleted": ("tinker",),
}
