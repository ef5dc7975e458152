"""A training client's weights: saved as checkpoints (`save_weights`, `save_weights_for_sampler`),
loaded back (`load_weights`, into a client or as a new one) and described (`weights_info`).

Each checkpoint is a `CheckpointSaved` on the log before its future resolves; a named sampler
checkpoint is also a `RevisionExported` (a PEFT-layout adapter in the artifact store), so a
Tinker-trained adapter sits in the same catalog as the trainer actor's: it can be evaluated, promoted,
served by name and audited.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from events.log import EventLog
from events.names import tenant_of
from events.tinker import CheckpointSaved
from events.training import RevisionExported
from mint.artifacts.keys import adapter_key
from mint.artifacts.store import ArtifactStore
from mint.tinker import written
from mint.tinker.auth import Grant
from mint.tinker.bases import on_base
from mint.tinker.checkpoints import CheckpointDirectory, CheckpointInfo, TinkerPath, check_name
from mint.tinker.futures import Future, RequestFailed
from mint.tinker.generation import ATTENTION, MLP, UNEMBED
from mint.tinker.models import NewClient, TrainingClients, client_id
from mint.tinker.policies import SOURCE, Policies
from mint.tinker.samplers import Sampler, Samplers, sampler_id
from mint.tinker.wire import LoadWeights, Sequenced, WireError

if TYPE_CHECKING:
    from mint.tinker.training import TrainingModel


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

    def save_weights(self, owner: Grant, request: Sequenced[tuple[str | None, bool]]) -> Future:
        name, overwrite = request.work

        def named(model: TrainingModel) -> TinkerPath:
            return TinkerPath(model.model_id, "weights", check_name(name or f"step-{model.step:06d}"))

        named(self.clients.get(request.model_id, owner))  # refuse a bad name now, with a 400

        async def run(model: TrainingModel) -> dict[str, Any]:
            path = named(model)
            await written.append(self.log, [await self._save(model, path, overwrite)])
            return {"path": str(path), "type": "save_weights"}

        return self.clients.ordered(request, owner, run)

    def save_weights_for_sampler(
        self, owner: Grant, request: Sequenced[tuple[str | None, int | None]]
    ) -> Future:
        """Named: a sampler checkpoint, exported as a revision. Unnamed: a snapshot sampling session
        numbered `sampler_seq` in the client's session."""
        name, sampler_seq = request.work
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
            if name in self.policies.revisions(model.policy):
                raise RequestFailed(f"path: policy {model.policy!r} already has a revision {name!r}")
            revision = await self._export(model, name)
            await written.append(self.log, [revision, await self._save(model, path, False, revision)])
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
        revision: RevisionExported | None = None,
    ) -> CheckpointSaved:
        """Write a checkpoint: a training one (`weights`) holds the optimizer state too. A sampler one
        named like a revision is never overwritten (revisions are immutable)."""
        if self.checkpoints.directory(path).exists() and not (overwrite and path.kind == "weights"):
            raise RequestFailed(f"path: {path} already exists")
        with_optimizer = path.kind == "weights"
        info = model.checkpoint_info(with_optimizer)
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
        )

    # -- loading -----------------------------------------------------------------------------------

    async def load_weights(self, owner: Grant, body: LoadWeights) -> Future:
        """Into the client `model_id` (in its seq_id turn), or into a new client `model_seq_id` of
        `session_id` built to the checkpoint's base, rank and targets."""
        if body.model_id is not None and body.seq_id is None:
            raise WireError("seq_id", "required with model_id")
        path, info = self.checkpoints.owned(body.path, owner.tenant)
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
            model_id, body.session_id, policy, info.base_id, info.rank, switches(info), 0, path
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
