"""Small builders of valid records for tests."""

from __future__ import annotations

import msgspec

from events import codec
from events.catalog import PolicyRegistered, Promote, RegisterPolicy
from events.envelope import Record
from events.evaluation import EvaluationCompleted
from events.training import RevisionExported


def registered(policy: str = "acme/alpha", base_id: str = "tiny", **kw: object) -> PolicyRegistered:
    return PolicyRegistered.create(policy=policy, base_id=base_id, **kw)


def register(policy: str = "acme/alpha", base_id: str = "tiny", **kw: object) -> RegisterPolicy:
    return RegisterPolicy.create(policy=policy, base_id=base_id, **kw)


def exported(policy: str, revision: str, parent: str | None = None, **kw: object) -> RevisionExported:
    return RevisionExported.create(
        policy=policy,
        revision=revision,
        base_id="tiny",
        uri=f"file:///artifacts/{policy}/{revision}",
        sha256="0" * 64,
        bytes=1024,
        rank=8,
        alpha=16.0,
        targets=["q_proj", "v_proj"],
        parent=parent,
        **kw,
    )


def evaluated(policy: str, revision: str, verdict: str = "pass", score: float = 0.9, **kw: object) -> Record:
    return EvaluationCompleted.create(
        policy=policy, revision=revision, suite="smoke", suite_version=1, score=score, verdict=verdict, **kw
    )


def promote(policy: str, revision: str, **kw: object) -> Promote:
    return Promote.create(policy=policy, revision=revision, **kw)


def forged(record: Record, **changes: object) -> bytes:
    """The JSON of `record` with fields changed past the schema's checks, as a hostile or careless
    producer could write it (e.g. another tenant than its key's): bytes no MinT process would make."""
    fields = {**msgspec.json.decode(codec.encode(record)), **changes}
    return msgspec.json.encode(fields)
