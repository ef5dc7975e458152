"""Facts of the Tinker-compatible API (mint/tinker/): training clients, checkpoints and samplers.

A Tinker training client trains one policy (`tenant/name`) on a resident base. Its optimizer steps
are ordinary `StepCompleted` facts and its named sampler weights ordinary `RevisionExported` facts, so
the catalog, evaluation, promotion and `mint replay audit` treat a Tinker-trained adapter like any
other. The records here add what only the Tinker path has: the client's ids and its checkpoints.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from events.envelope import Fact
from events.names import Count, Name, PolicyName, Rank, RevisionId

CheckpointKind = Literal["training", "sampler", "external"]
DeletionReason = Literal["deleted", "expired"]


class TrainingClientCreated(Fact, kw_only=True, frozen=True):
    """`model_id` is the client's id (`<session>:train:<n>`); `run` names its steps and exports."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    model_id: str
    session_id: str
    run: PolicyName
    base_id: Name
    rank: Rank
    alpha: float
    targets: list[str]
    loaded_from: str | None = None  # a tinker:// checkpoint the client started from
    # What the client was created with (`create_model`'s user_metadata): the run listings return it,
    # and the cookbook keeps its renderer's name there.
    user_metadata: dict[str, str] | None = None


class CheckpointSaved(Fact, kw_only=True, frozen=True):
    """A `training` checkpoint holds the adapter and the optimizer state (resumable); a `sampler` one
    the adapter only, and is also exported as `revision`; an `external` one is the adapter in PEFT
    layout in the artifact store, for download. `expires_at` (unix time): when the service deletes it
    (None: never)."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    model_id: str
    path: str  # tinker://<model_id>/<weights|sampler_weights>/<name>
    kind: CheckpointKind
    bytes: Count
    revision: RevisionId | None = None
    expires_at: float | None = None


class CheckpointExpirySet(Fact, kw_only=True, frozen=True):
    """A checkpoint's time to live set anew (`PUT .../ttl`): deleted at `expires_at`, or never (None)."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    model_id: str
    path: str
    expires_at: float | None = None


class CheckpointDeleted(Fact, kw_only=True, frozen=True):
    """A checkpoint removed: by its owner (`deleted`, the DELETE route) or by the service when its time
    to live ran out (`expired`). Appended before its files go."""

    KEY_FIELD: ClassVar[str] = "policy"
    policy: PolicyName
    model_id: str
    path: str
    reason: DeletionReason


class SamplerCreated(Fact, kw_only=True, frozen=True):
    """A sampling session: over a policy's adapter (`policy` set; keyed by it) or the base alone
    (keyed by `tenant/<session>`)."""

    KEY_FIELD: ClassVar[str] = "subject"
    subject: PolicyName
    sampler_id: str
    base_id: Name
    policy: PolicyName | None = None
    model_path: str | None = None
