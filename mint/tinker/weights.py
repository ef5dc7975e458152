"""A training client's weights: saved as checkpoints (`save_weights`, `save_weights_for_sampler`,
`save_weights_external`), loaded back (`load_weights`, into a client or as a new one), described
(`weights_info`), given a time to live and deleted.

Each checkpoint is a `CheckpointSaved` on the log before its future resolves; a named sampler
checkpoint is also a `RevisionExported` (a PEFT-layout adapter in the artifact store), so a
Tinker-trained adapter sits in the same catalog as the trainer actor's: it can be evaluated, promoted,
served by name and audited. On Tinker a sampler checkpoint's name belongs to its training run, so the
revision's id is derived from the run and the name (`revision_of`): a re-run, or a client started
from a checkpoint (a run of its own on the same policy), saves `final` again without a clash.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from events.log import EventLog
from events.names import tenant_of
from events.tinker import CheckpointDeleted, CheckpointExpirySet, CheckpointSaved
from events.training import RevisionExported
from mint.artifacts.keys import adapter_key
from mint.artifacts.store import ArtifactError, ArtifactStore
from mint.tinker import written
from mint.tinker.auth import Grant
from mint.tinker.bases import on_base
from mint.tinker.checkpoints import (
    CHECKPOINT_TYPES,
    CheckpointDirectory,
    CheckpointInfo,
    TinkerPath,
    check_name,
)
from mint.tinker.external import encrypted, external_key
from mint.tinker.futures import Future, RequestFailed
from mint.tinker.generation import ATTENTION, MLP, UNEMBED
from mint.tinker.models import NewClient, TrainingClients, client_id, metadata_strings
from mint.tinker.policies import SOURCE, Policies
from mint.tinker.samplers import Sampler, Samplers, sampler_id
from mint.tinker.wire import LoadWeights, SaveWeightsExternal, Sequenced, WireError

if TYPE_CHECKING:
    from mint.tinker.training import TrainingModel


def revision_of(run: str, name: str) -> str:
    """The catalog revision of sampler checkpoint `name` of training run `run`: the name, then a tag
    of run and name, within a revision id's 64 characters (the tag keeps two long names apart)."""
    tag = hashlib.sha256(f"{run}/{name}".encode()).hexdigest()[:8]
    return f"{name[:55]}-{tag}"


def expiry(ttl_seconds: int | None) -> float | None:
    """When a checkpoint saved now with `ttl_seconds` expires (None: never)."""
    return None if ttl_seconds is None else time.time() + ttl_seconds


def switches(info: CheckpointInfo) -> tuple[bool, bool, bool]:
    """Tinker's LoRA switches (attention, MLP, unembedding) that a checkpoint's targets amount to."""
    attention, mlp, unembed = (any(t in info.targets for t in group) for group in (ATTENTION, MLP, UNEMBED))
    return attention, mlp, unembed


class Weights:
    def __init__(
        self,
        log: EventLog,
        artifacts: ArtifactStore,
        checkpoints: CheckpointDirectory,
        clients: TrainingClients,
        samplers: Samplers,
        policies: Policies,
    ) -> None:
        self.log = log
        self.artifacts = artifacts
        self.checkpoints = checkpoints
        self.clients = clients
        self.samplers = samplers
        self.policies = policies

    # -- saving ------------------------------------------------------------------------------------

    def save_weights(self, owner: Grant, request: Sequenced[tuple[str | None, bool, int | None]]) -> Future:
        name, overwrite, ttl_seconds = request.work

        def named(model: TrainingModel) -> TinkerPath:
            return TinkerPath(model.model_id, "weights", check_name(name or f"step-{model.step:06d}"))

        named(self.clients.get(request.model_id, owner))  # refuse a bad name now, with a 400

        async def run(model: TrainingModel) -> dict[str, Any]:
            path = named(model)
            await written.append(self.log, [await self._save(model, path, overwrite, expiry(ttl_seconds))])
            return {"path": str(path), "type": "save_weights"}

        return self.clients.ordered(request, owner, run)

    def save_weights_for_sampler(
        self, owner: Grant, request: Sequenced[tuple[str | None, int | None, int | None]]
    ) -> Future:
        """Named: a sampler checkpoint, exported as a revision. Unnamed: a snapshot sampling session
        numbered `sampler_seq` in the client's session."""
        name, sampler_seq, ttl_seconds = request.work
        if name is not None:
            check_name(name)
        elif sampler_seq is None:
            raise WireError("path", "required (or sampling_session_seq_id for a snapshot sampler)")

        async def run(model: TrainingModel) -> dict[str, Any]:
            if name is None:
                assert sampler_seq is not None
                return await self._snapshot(model, sampler_seq)
            path = TinkerPath(model.model_id, "sampler_weights", name)
            if self.checkpoints.directory(path).exists():
                raise RequestFailed(f"path: {path} already exists")
            revision_id = revision_of(model.run, name)
            if revision_id in self.policies.revisions(model.policy):
                raise RequestFailed(f"path: policy {model.policy!r} already has a revision {revision_id!r}")
            revision = await self._export(model, revision_id)
            saved = await self._save(model, path, False, expiry(ttl_seconds), revision)
            await written.append(self.log, [revision, saved])
            return {"path": str(path), "type": "save_weights_for_sampler"}

        return self.clients.ordered(request, owner, run)

    async def _snapshot(self, model: TrainingModel, sampler_seq: int) -> dict[str, Any]:
        """An unnamed sampler checkpoint (`save_weights_and_get_sampling_client`): a sampling session
        over the weights as they are now. Its name starts with a dot, so listings skip it and no
        client can name it in a path."""
        path = TinkerPath(model.model_id, "sampler_weights", f".snapshot-{sampler_seq}")
        await self._save(model, path, overwrite=False)
        tenant = tenant_of(model.policy)
        snapshot = Sampler(
            sampler_id(model.session_id, sampler_seq), tenant, model.base.base_id, path, model.policy
        )
        opened = await self.samplers.open(snapshot)
        return {"sampling_session_id": opened.sampler_id, "type": "save_weights_for_sampler"}

    async def _export(self, model: TrainingModel, revision: str) -> RevisionExported:
        """The adapter in PEFT layout in the artifact store, and the fact that names it."""
        targets, data = await on_base(model.base, model.peft_adapter)
        sha256 = hashlib.sha256(data).hexdigest()
        stored = await self.artifacts.put(adapter_key(model.policy, revision, sha256), data)
        return RevisionExported.create(
            id=f"{model.run}/{revision}/export/{sha256[:16]}",
            source=SOURCE,
            policy=model.policy,
            revision=revision,
            base_id=model.base.base_id,
            uri=stored.key,
            sha256=stored.sha256,
            bytes=stored.size,
            rank=model.rank,
            alpha=model.alpha,
            targets=list(targets),
            run=model.run,
        )

    async def _save(
        self,
        model: TrainingModel,
        path: TinkerPath,
        overwrite: bool,
        expires_at: float | None = None,
        revision: RevisionExported | None = None,
    ) -> CheckpointSaved:
        """Write a checkpoint: a training one (`weights`) holds the optimizer state too. A sampler one
        named like a revision is never overwritten (revisions are immutable)."""
        if self.checkpoints.directory(path).exists() and not (overwrite and path.kind == "weights"):
            raise RequestFailed(f"path: {path} already exists")
        with_optimizer = path.kind == "weights"
        info = model.checkpoint_info(with_optimizer, expires_at)
        optimizer = model.optimizer if with_optimizer else None
        size = await on_base(
            model.base, lambda: self.checkpoints.write(path, model.adapter_tensors(), optimizer, info)
        )
        return CheckpointSaved.create(
            source=SOURCE,
            policy=model.policy,
            model_id=model.model_id,
            path=str(path),
            kind="training" if with_optimizer else "sampler",
            bytes=size,
            revision=None if revision is None else revision.revision,
            expires_at=expires_at,
        )

    def save_weights_external(self, owner: Grant, request: Sequenced[SaveWeightsExternal]) -> Future:
        """The adapter in PEFT layout (adapter_model.safetensors, adapter_config.json) in the artifact
        store, each file age-encrypted to the request's recipients if it names any (`<file>.age`),
        as checkpoint `tinker://<model_id>/external_weights/<name>`, downloaded through signed URLs."""
        body = request.work
        path = TinkerPath(body.model_id, "external_weights", check_name(body.path))
        recipients = body.age_encryption_recipients or []
        encrypted(b"", recipients)  # refuse a bad recipient now, with a 400

        async def run(model: TrainingModel) -> dict[str, Any]:
            if self.checkpoints.directory(path).exists():
                raise RequestFailed(f"path: {path} already exists")
            files = await on_base(model.base, model.peft_files)
            keys = {}
            for name, data in files.items():
                stored_name, stored = encrypted(data, recipients, name)
                sha256 = hashlib.sha256(stored).hexdigest()
                put = await self.artifacts.put(external_key(model.policy, path, sha256, stored_name), stored)
                keys[stored_name] = put.key
            expires_at = expiry(body.ttl_seconds)
            info = msgspec.structs.replace(model.checkpoint_info(False, expires_at), files=keys)
            self.checkpoints.describe(path, info)
            size = sum(len(data) for data in files.values())
            saved = CheckpointSaved.create(
                source=SOURCE,
                policy=model.policy,
                model_id=model.model_id,
                path=str(path),
                kind="external",
                bytes=size,
                expires_at=expires_at,
            )
            await written.append(self.log, [saved])
            return {"path": str(path), "size_bytes": size, "type": "save_weights_external"}

        return self.clients.ordered(request, owner, run)

    # -- a checkpoint's life -----------------------------------------------------------------------

    async def delete(self, owner: Grant, path: TinkerPath) -> None:
        """Delete the caller's checkpoint (`DELETE .../checkpoints/{kind}/{name}`): the fact first,
        then the files. An external checkpoint's files stay in the artifact store (whose keys are
        write-once), unreachable: no URL is signed for a deleted checkpoint."""
        _, info = self.checkpoints.owned_path(path, owner.tenant, "checkpoint_id")
        await self._remove(path, info, "deleted")

    async def expire(self, now: float) -> int:
        """Delete every checkpoint whose time to live ran out by `now`, each as a fact; returns how
        many."""
        expired = self.checkpoints.expired(now)
        for path, info in expired:
            await self._remove(path, info, "expired")
        return len(expired)

    async def _remove(
        self, path: TinkerPath, info: CheckpointInfo, reason: Literal["deleted", "expired"]
    ) -> None:
        deleted = CheckpointDeleted.create(
            source=SOURCE, policy=info.policy, model_id=path.model_id, path=str(path), reason=reason
        )
        await written.append(self.log, [deleted])
        self.checkpoints.delete(path)

    async def set_ttl(self, owner: Grant, path: TinkerPath, ttl_seconds: int | None) -> None:
        """Give the caller's checkpoint a new time to live from now (None: keep it until deleted)."""
        _, info = self.checkpoints.owned_path(path, owner.tenant, "checkpoint_id")
        expires_at = expiry(ttl_seconds)
        changed = CheckpointExpirySet.create(
            source=SOURCE, policy=info.policy, model_id=path.model_id, path=str(path), expires_at=expires_at
        )
        await written.append(self.log, [changed])
        self.checkpoints.describe(path, msgspec.structs.replace(info, expires_at=expires_at))

    def external_files(self, owner: Grant, path: TinkerPath) -> dict[str, str]:
        """An external checkpoint of the caller's: its files' artifact keys by name."""
        if path.kind != "external_weights":
            raise WireError(
                "checkpoint_id", f"{path} is a {CHECKPOINT_TYPES[path.kind]} checkpoint, not external weights"
            )
        _, info = self.checkpoints.owned_path(path, owner.tenant, "checkpoint_id")
        return info.files

    async def external_file(self, key: str) -> bytes:
        try:
            return await self.artifacts.read(key)
        except ArtifactError as exc:
            raise WireError("file", str(exc), 404) from None

    # -- loading -----------------------------------------------------------------------------------

    async def load_weights(self, owner: Grant, body: LoadWeights) -> Future:
        """Into the client `model_id` (in its seq_id turn), or into a new client `model_seq_id` of
        `session_id` built to the checkpoint's base, rank and targets."""
        if body.model_id is not None and body.seq_id is None:
            raise WireError("seq_id", "required with model_id")
        path, info = self.checkpoints.owned(body.path, owner.tenant)
        if path.kind == "external_weights":
            raise WireError(
                "path", f"{body.path} is external weights (for download); load weights or sampler_weights"
            )
        if body.optimizer and not info.with_optimizer:
            raise WireError("optimizer", f"{body.path} holds no optimizer state (a sampler checkpoint)")
        if body.model_id is not None and body.seq_id is not None:
            request: Sequenced[None] = Sequenced(body.model_id, body.seq_id, None)

            async def into(model: TrainingModel) -> dict[str, Any]:
                await self._load(model, path, info, body.optimizer)
                return {"path": str(path), "model_id": model.model_id, "type": "load_weights"}

            return self.clients.ordered(request, owner, into)
        if body.session_id is None or body.model_seq_id is None:
            raise WireError(
                "model_id", "required (or session_id and model_seq_id to create a client from it)"
            )
        self.clients.sessions.get(body.session_id, owner)
        model_id = client_id(body.session_id, body.model_seq_id)
        policy = self.policies.name(owner, model_id, body.user_metadata, info.policy)
        client = NewClient(
            model_id,
            body.session_id,
            policy,
            info.base_id,
            info.rank,
            switches(info),
            0,
            path,
            metadata_strings(body.user_metadata),
        )

        async def create() -> dict[str, Any]:
            model = await self.clients.build(client)
            async with self.clients.residency.using(model):
                await self._load(model, path, info, body.optimizer)
            return {"path": str(path), "model_id": model_id, "type": "load_weights"}

        return await self.clients.creating(owner, client, create)

    async def _load(
        self, model: TrainingModel, path: TinkerPath, info: CheckpointInfo, optimizer: bool
    ) -> None:
        if model.base.base_id != info.base_id or model.rank != info.rank:
            raise RequestFailed(
                f"path: {path} is rank {info.rank} on {info.base_id!r}; this client is rank "
                f"{model.rank} on {model.base.base_id!r}"
            )

        def load() -> None:
            model.load_tensors(self.checkpoints.tensors(path))
            if optimizer:
                self.checkpoints.restore_optimizer(path, model.optimizer)

        await on_base(model.base, load)

    def weights_info(self, owner: Grant, raw: str) -> dict[str, Any]:
        _, info = self.checkpoints.owned(raw, owner.tenant, "tinker_path")
        attention, mlp, unembed = switches(info)
        return {
            "base_model": info.base_id,
            "is_lora": True,
            "lora_rank": info.rank,
            "train_attn": attention,
            "train_mlp": mlp,
            "train_unembed": unembed,
        }
