"""The Tinker service: sessions, training clients, sampling sessions and their futures, over MinT's
resident bases, artifact store and log.

Every request that changes something is a fact on the log before its future resolves: a training
client is `TrainingClientCreated` (and a `RegisterPolicy` for a new policy), each optimizer step a
`StepCompleted`, each checkpoint a `CheckpointSaved`, each named sampler checkpoint also a
`RevisionExported` (PEFT-layout adapter in the artifact store), each sampler a `SamplerCreated`. So a
Tinker-trained adapter sits in the same catalog as the trainer actor's: it can be evaluated, promoted,
served by name and audited.

Torch work runs in worker threads, one at a time per base (the base's lock); a training client's
requests run in seq_id order (SeqGate); everything else is asyncio.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus

from events.catalog import RegisterPolicy
from events.envelope import Record
from events.log import EventLog
from events.names import POLICY_PATTERN, TENANT_PATTERN
from events.tinker import CheckpointSaved, SamplerCreated, TrainingClientCreated
from events.training import RevisionExported, StepCompleted
from mint.artifacts.keys import adapter_key
from mint.artifacts.store import ArtifactStore
from mint.catalog.queries import Catalog, ProjectionMissing
from mint.catalog.rows import PolicyRow
from mint.home import Home
from mint.tinker.auth import Grant
from mint.tinker.checkpoints import CheckpointDirectory, CheckpointInfo, TinkerPath, check_name
from mint.tinker.futures import Future, Futures, RequestFailed
from mint.tinker.generation import ATTENTION, DEFAULT_MAX_TOKENS, MLP, UNEMBED, Generation
from mint.tinker.results import ForwardBackwardResult, SampleResult
from mint.tinker.wire import (
    AdamParams,
    CreateModel,
    CreateSamplingSession,
    ForwardBackwardInput,
    LoadWeights,
    Sample,
    SamplingParamsBody,
    Sequenced,
    WireError,
    check_token_ids,
)

if TYPE_CHECKING:  # torch loads with the first base a request needs, not with `mint up`
    import torch

    from mint.tinker.resident import ResidentBase
    from mint.tinker.training import TrainingModel

SOURCE = "tinker"
PAUSE_AT_PENDING = 256  # queue_state "paused_capacity" beyond this many unfinished futures
REFUSE_AT_PENDING = 4096  # and 429 at submission beyond this many of one tenant's
MAX_RANK = 256
MAX_SAMPLES = 128  # sequences per asample
MAX_BATCH_POSITIONS = 1 << 21  # datums x longest datum, per forward_backward request
SESSION_IDLE_S = 600.0  # a session without heartbeats (every 10 s) for this long is finished
T = TypeVar("T")
_POLICY = re.compile(POLICY_PATTERN)
_TENANT = re.compile(rf"^{TENANT_PATTERN}$")


@dataclass
class Session:
    session_id: str
    tenant: str
    last_seen: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Sampler:
    sampler_id: str
    tenant: str
    base_id: str
    checkpoint: TinkerPath | None  # None: the base alone
    policy: str | None


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


class TinkerService:
    def __init__(
        self, home: Home, log: EventLog, artifacts: ArtifactStore, catalog: Callable[[], Catalog]
    ) -> None:
        self.home = home
        self.log = log
        self.artifacts = artifacts
        self.catalog = catalog
        self.futures = Futures()
        self.checkpoints = CheckpointDirectory(home.root / "tinker" / "checkpoints")
        self.sessions: dict[str, Session] = {}
        self.models: dict[str, TrainingModel] = {}
        # model ids being created, with their tenant: get_info waits for its own tenant's
        self.created: dict[str, tuple[str, anyio.Event]] = {}
        self.samplers: dict[str, Sampler] = {}
        self._bases: dict[str, ResidentBase] = {}
        self._loading = anyio.Lock()
        self._tasks: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold the task group that requests run in, until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            task_status.started()
            await anyio.sleep_forever()

    # -- bases -------------------------------------------------------------------------------------

    def base_ids(self) -> list[str]:
        if not self.home.bases.is_dir():
            return []
        return sorted(d.name for d in self.home.bases.iterdir() if (d / "config.json").is_file())

    def base_config(self, base_id: str) -> dict[str, Any]:
        config: dict[str, Any] = json.loads((self.home.base(base_id) / "config.json").read_text())
        return config

    def context_length(self, base_id: str) -> int:
        return int(self.base_config(base_id).get("max_position_embeddings", 0))

    def vocab_size(self, base_id: str) -> int:
        return int(self.base_config(base_id).get("vocab_size", 0))

    def check_base(self, base_id: str, field_name: str = "base_model") -> None:
        if base_id not in self.base_ids():
            raise WireError(
                field_name, f"{base_id!r} is not a base here (bases: {', '.join(self.base_ids())})"
            )

    async def resident(self, base_id: str) -> ResidentBase:
        if importlib.util.find_spec("torch") is None:
            raise RequestFailed("this MinT has no training installed: pip install 'mint-lora[train]'")
        from mint.tinker.resident import ResidentBase

        async with self._loading:
            if base_id not in self._bases:
                directory = self.home.base(base_id)
                self._bases[base_id] = await anyio.to_thread.run_sync(ResidentBase.load, base_id, directory)
            return self._bases[base_id]

    async def on_base(self, base: ResidentBase, work: Callable[[], T]) -> T:
        async with base.lock:
            return await anyio.to_thread.run_sync(work)

    # -- futures -------------------------------------------------------------------------------------

    def submit(self, tenant: str, work: Callable[[], Awaitable[Any]], model_id: str | None = None) -> Future:
        # Per tenant, so one tenant's flood (say, seq_ids far ahead that never get their turn) never
        # refuses another's requests.
        queued = self.futures.pending_of(tenant)
        if queued >= REFUSE_AT_PENDING:
            raise WireError("request", f"{queued} requests of yours are queued; retry later", 429)
        assert self._tasks is not None, "TinkerService.run is not running"
        future = self.futures.create(tenant, model_id)
        self._tasks.start_soon(self.futures.complete, future, work)
        return future

    @property
    def queue_state(self) -> str:
        return "paused_capacity" if self.futures.pending >= PAUSE_AT_PENDING else "active"

    # -- sessions ----------------------------------------------------------------------------------

    async def create_session(self, owner: Grant) -> str:
        idle = time.time() - SESSION_IDLE_S
        for stale in [s.session_id for s in self.sessions.values() if s.last_seen < idle]:
            await self.finish_session(stale)
        session = Session(f"sess-{os.urandom(5).hex()}", owner.tenant)
        self.sessions[session.session_id] = session
        return session.session_id

    async def finish_session(self, session_id: str) -> None:
        """Free what a session held: its training clients' slots (each slot costs every forward pass
        on its base), their snapshots and its samplers. Named checkpoints, exports and facts stay."""
        self.sessions.pop(session_id, None)
        for sampler_id in [s for s in self.samplers if s.startswith(f"{session_id}:")]:
            del self.samplers[sampler_id]
        for model in [m for m in self.models.values() if m.session_id == session_id]:
            del self.models[model.model_id]
            await self.on_base(model.base, model.close)
            self.checkpoints.forget_snapshots(model.model_id)

    def session(self, session_id: str, owner: Grant, field_name: str = "session_id") -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.tenant != owner.tenant:
            raise WireError(field_name, f"no session {session_id!r}", 404)
        session.last_seen = time.time()
        return session

    # -- training clients --------------------------------------------------------------------------

    def model(self, model_id: str, owner: Grant) -> TrainingModel:
        model = self._owned_model(model_id, owner)
        if model is None:
            raise WireError("model_id", f"no training client {model_id!r}", 404)
        return model

    def _owned_model(self, model_id: str, owner: Grant) -> TrainingModel | None:
        """The caller's training client `model_id`; another tenant's is as good as missing."""
        model = self.models.get(model_id)
        return model if model is not None and model.policy.split("/", 1)[0] == owner.tenant else None

    def _create(self, owner: Grant, model_id: str, build: Callable[[], Awaitable[dict[str, Any]]]) -> Future:
        """A future creating training client `model_id` by `build()`; get_info waits for it meanwhile.
        It is marked as being created only once submitted (a 429 leaves nothing behind)."""
        if model_id in self.models or model_id in self.created:
            raise WireError("model_seq_id", f"{model_id!r} already exists")
        done = anyio.Event()

        async def create() -> dict[str, Any]:
            try:
                return await build()
            finally:
                del self.created[model_id]
                done.set()

        future = self.submit(owner.tenant, create, model_id)
        self.created[model_id] = (owner.tenant, done)  # before `create` can start: no await between
        return future

    def _policy_for(
        self,
        owner: Grant,
        model_id: str,
        metadata: dict[str, Any] | None,
        base_id: str,
        default: str | None = None,
    ) -> str:
        """The policy a training client trains: `user_metadata.policy`, else `default` (the policy of
        the checkpoint it starts from), else one named after the client. An existing one must be
        active and on the same base."""
        if not _TENANT.match(owner.tenant):
            raise WireError(
                "X-API-Key", f"tenant {owner.tenant!r} owns no policies: use a tenant's token", 403
            )
        name = str((metadata or {}).get("policy") or default or model_id.replace(":", "-"))
        policy = name if "/" in name else f"{owner.tenant}/{name}"
        if not _POLICY.match(policy) or policy.split("/", 1)[0] != owner.tenant:
            raise WireError(
                "user_metadata.policy", f"{name!r} is not a policy name of tenant {owner.tenant!r}"
            )
        row = self._catalog_policy(policy)
        if row is not None and (row.base_id != base_id or row.status != "active"):
            raise WireError(
                "user_metadata.policy",
                f"policy {policy!r} is {row.status} on base {row.base_id!r}, not active on {base_id!r}",
            )
        return policy

    def create_model(self, owner: Grant, body: CreateModel) -> Future:
        self.session(body.session_id, owner)
        self.check_base(body.base_model)
        lora = body.lora_config
        if not 1 <= lora.rank <= MAX_RANK:
            raise WireError("lora_config.rank", f"must be in 1..{MAX_RANK}, got {lora.rank}")
        if not (lora.train_attn or lora.train_mlp or lora.train_unembed):
            raise WireError("lora_config", "train_attn, train_mlp and train_unembed are all false")
        model_id = f"{body.session_id}:train:{body.model_seq_id}"
        policy = self._policy_for(owner, model_id, body.user_metadata, body.base_model)

        async def create() -> dict[str, Any]:
            model = await self._new_model(
                model_id,
                body.session_id,
                policy,
                body.base_model,
                lora.rank,
                (lora.train_attn, lora.train_mlp, lora.train_unembed),
                lora.seed or 0,
                None,
            )
            return {"model_id": model.model_id, "type": "create_model"}

        return self._create(owner, model_id, create)

    async def _new_model(
        self,
        model_id: str,
        session_id: str,
        policy: str,
        base_id: str,
        rank: int,
        switches: tuple[bool, bool, bool],
        seed: int,
        loaded_from: TinkerPath | None,
    ) -> TrainingModel:
        from mint.tinker.training import TrainingModel

        base = await self.resident(base_id)
        targets = base.targets_for(*switches)
        run = f"{policy.split('/', 1)[0]}/{model_id.replace(':', '-')}"
        model = await self.on_base(
            base, lambda: TrainingModel.create(base, model_id, session_id, policy, run, rank, targets, seed)
        )
        facts: list[Record] = []
        if self._catalog_policy(policy) is None:
            facts.append(
                RegisterPolicy.create(
                    id=f"{model_id}/register", source=SOURCE, policy=policy, base_id=base_id
                )
            )
        facts.append(
            TrainingClientCreated.create(
                id=f"{model_id}/created",
                source=SOURCE,
                policy=policy,
                model_id=model_id,
                session_id=session_id,
                run=run,
                base_id=base_id,
                rank=rank,
                alpha=model.alpha,
                targets=list(targets),
                loaded_from=None if loaded_from is None else str(loaded_from),
            )
        )
        await self.log.append(facts)
        self.models[model_id] = model
        return model

    def _catalog_policy(self, policy: str) -> PolicyRow | None:
        try:
            catalog = self.catalog()
        except ProjectionMissing:
            return None
        try:
            return catalog.policy(policy)
        finally:
            catalog.close()

    def _catalog_revisions(self, policy: str) -> set[str]:
        try:
            catalog = self.catalog()
        except ProjectionMissing:
            return set()
        try:
            return {row.revision for row in catalog.revisions(policy)}
        finally:
            catalog.close()

    async def info(self, model_id: str, owner: Grant) -> dict[str, Any]:
        tenant, created = self.created.get(model_id, ("", None))
        if created is not None and tenant == owner.tenant:
            await created.wait()
        model = self.model(model_id, owner)
        directory = str(model.base.directory)  # the tokenizer loads from it offline
        return {
            "type": "get_info",
            "model_id": model_id,
            "model_data": {
                "arch": self.base_config(model.base.base_id).get("model_type", "unknown"),
                "model_name": model.base.base_id,
                "tokenizer_id": directory,
            },
            "is_lora": True,
            "lora_rank": model.rank,
            "model_name": model.base.base_id,
        }

    def _ordered(
        self, request: Sequenced[Any], owner: Grant, work: Callable[[TrainingModel], Awaitable[Any]]
    ) -> Future:
        model = self.model(request.model_id, owner)

        async def in_turn() -> Any:
            async with model.gate.turn(request.seq_id):
                return await work(model)

        return self.submit(owner.tenant, in_turn, model.model_id)

    def refused(self, owner: Grant, model_id: str, seq_id: int) -> None:
        """A training request refused before it was queued: later seq_ids must not wait for it. Only
        the caller's own training client is touched: another tenant cannot spend its turns."""
        model = self._owned_model(model_id, owner)
        if model is not None:
            model.gate.skip(seq_id)

    def forward_backward(self, owner: Grant, request: Sequenced[ForwardBackwardInput]) -> Future:
        self._check_batch(self.model(request.model_id, owner), request.work)

        async def run(model: TrainingModel) -> ForwardBackwardResult:
            outputs, metrics = await self.on_base(model.base, lambda: model.forward_backward(request.work))
            return ForwardBackwardResult(outputs, metrics)

        return self._ordered(request, owner, run)

    def _check_batch(self, model: TrainingModel, work: ForwardBackwardInput) -> None:
        """What the base can take: each datum within its context and vocabulary, the padded batch
        within MAX_BATCH_POSITIONS."""
        base_id = model.base.base_id
        context, vocab = self.context_length(base_id), self.vocab_size(base_id)
        longest = max(len(d.tokens) for d in work.data)
        if len(work.data) * longest > MAX_BATCH_POSITIONS:
            raise WireError(
                "data",
                f"{len(work.data)} datums of up to {longest} tokens exceed {MAX_BATCH_POSITIONS} positions"
                " per request: send fewer at a time",
            )
        for row, datum in enumerate(work.data):
            if len(datum.tokens) > context:
                raise WireError(
                    f"data[{row}].model_input", f"{len(datum.tokens)} tokens; {base_id!r} takes {context}"
                )
            check_token_ids(datum.tokens, vocab, f"data[{row}].model_input")
            check_token_ids(datum.inputs["target_tokens"], vocab, f"data[{row}].loss_fn_inputs.target_tokens")

    def optim_step(self, owner: Grant, request: Sequenced[AdamParams]) -> Future:
        adam = request.work

        async def run(model: TrainingModel) -> dict[str, Any]:
            metrics, loss = await self.on_base(model.base, lambda: model.optim_step(adam))
            step = StepCompleted.create(
                id=f"{model.run}/{model.policy}/step/{model.step}",
                source=SOURCE,
                run=model.run,
                policy=model.policy,
                step=model.step,
                loss=loss,
            )
            await self.log.append([step])
            return {"metrics": metrics, "type": "optim_step"}

        return self._ordered(request, owner, run)

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
        info = CheckpointInfo(
            model.model_id,
            model.base.base_id,
            model.policy,
            model.rank,
            model.alpha,
            list(model.targets),
            with_optimizer,
            time.time(),
        )
        optimizer = model.optimizer if with_optimizer else None
        size = await self.on_base(
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

    def save_weights(self, owner: Grant, request: Sequenced[tuple[str | None, bool]]) -> Future:
        name, overwrite = request.work

        def named(model: TrainingModel) -> TinkerPath:
            return TinkerPath(model.model_id, "weights", check_name(name or f"step-{model.step:06d}"))

        named(self.model(request.model_id, owner))  # refuse a bad name now, with a 400

        async def run(model: TrainingModel) -> dict[str, Any]:
            path = named(model)
            await self.log.append([await self._save(model, path, overwrite)])
            return {"path": str(path), "type": "save_weights"}

        return self._ordered(request, owner, run)

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
            if name in self._catalog_revisions(model.policy):
                raise RequestFailed(f"path: policy {model.policy!r} already has a revision {name!r}")
            revision = await self._export(model, name)
            await self.log.append([revision, await self._save(model, path, False, revision)])
            return {"path": str(path), "type": "save_weights_for_sampler"}

        return self._ordered(request, owner, run)

    async def _snapshot(self, model: TrainingModel, sampler_seq: int) -> dict[str, Any]:
        """An unnamed sampler checkpoint (`save_weights_and_get_sampling_client`): a sampling session
        over the weights as they are now. Its name starts with a dot, so listings skip it and no
        client can name it in a path."""
        sampler_id = f"{model.session_id}:sample:{sampler_seq}"
        path = TinkerPath(model.model_id, "sampler_weights", f".snapshot-{sampler_seq}")
        await self._save(model, path, overwrite=False)
        tenant = model.policy.split("/", 1)[0]
        sampler = await self._new_sampler(sampler_id, tenant, model.base.base_id, path, model.policy)
        return {"sampling_session_id": sampler.sampler_id, "type": "save_weights_for_sampler"}

    async def _export(self, model: TrainingModel, revision: str) -> RevisionExported:
        """The adapter in PEFT layout in the artifact store, and the fact that names it."""
        targets, data = await self.on_base(model.base, model.peft_adapter)
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

    def _owned_checkpoint(
        self, raw: str, owner: Grant, field_name: str = "path"
    ) -> tuple[TinkerPath, CheckpointInfo]:
        path = TinkerPath.parse(raw, field_name)
        try:
            info = self.checkpoints.info(path)
        except RequestFailed:
            raise WireError(field_name, f"no checkpoint {raw}", 404) from None
        if info.policy.split("/", 1)[0] != owner.tenant:
            raise WireError(field_name, f"no checkpoint {raw}", 404)
        return path, info

    def load_weights(self, owner: Grant, body: LoadWeights) -> Future:
        if body.model_id is not None and body.seq_id is None:
            raise WireError("seq_id", "required with model_id")
        path, info = self._owned_checkpoint(body.path, owner)
        if body.optimizer and not info.with_optimizer:
            raise WireError("optimizer", f"{body.path} holds no optimizer state (a sampler checkpoint)")

        def load(model: TrainingModel) -> None:
            if model.base.base_id != info.base_id or model.rank != info.rank:
                raise RequestFailed(
                    f"path: {body.path} is rank {info.rank} on {info.base_id!r}; this client is rank "
                    f"{model.rank} on {model.base.base_id!r}"
                )
            model.load_tensors(self.checkpoints.tensors(path))
            if body.optimizer:
                self.checkpoints.restore_optimizer(path, model.optimizer)

        if body.model_id is not None and body.seq_id is not None:
            request: Sequenced[None] = Sequenced(body.model_id, body.seq_id, None)

            async def into(model: TrainingModel) -> dict[str, Any]:
                await self.on_base(model.base, lambda: load(model))
                return {"path": str(path), "model_id": model.model_id, "type": "load_weights"}

            return self._ordered(request, owner, into)
        if body.session_id is None or body.model_seq_id is None:
            raise WireError(
                "model_id", "required (or session_id and model_seq_id to create a client from it)"
            )
        self.session(body.session_id, owner)
        model_id = f"{body.session_id}:train:{body.model_seq_id}"
        policy = self._policy_for(owner, model_id, body.user_metadata, info.base_id, info.policy)
        attention, mlp, unembed = (
            any(t in info.targets for t in group) for group in (ATTENTION, MLP, UNEMBED)
        )

        async def create() -> dict[str, Any]:
            model = await self._new_model(
                model_id,
                body.session_id or "",
                policy,
                info.base_id,
                info.rank,
                (attention, mlp, unembed),
                0,
                path,
            )
            await self.on_base(model.base, lambda: load(model))
            return {"path": str(path), "model_id": model_id, "type": "load_weights"}

        return self._create(owner, model_id, create)

    def weights_info(self, owner: Grant, raw: str) -> dict[str, Any]:
        _, info = self._owned_checkpoint(raw, owner, "tinker_path")
        return {
            "base_model": info.base_id,
            "is_lora": True,
            "lora_rank": info.rank,
            "train_attn": any(t in info.targets for t in ATTENTION),
            "train_mlp": any(t in info.targets for t in MLP),
            "train_unembed": any(t in info.targets for t in UNEMBED),
        }

    # -- sampling ----------------------------------------------------------------------------------

    async def _new_sampler(
        self, sampler_id: str, tenant: str, base_id: str, checkpoint: TinkerPath | None, policy: str | None
    ) -> Sampler:
        sampler = Sampler(sampler_id, tenant, base_id, checkpoint, policy)
        subject = policy or f"{tenant}/{sampler_id.split(':', 1)[0]}"
        created = SamplerCreated.create(
            source=SOURCE,
            subject=subject,
            tenant=tenant,
            sampler_id=sampler_id,
            base_id=base_id,
            policy=policy,
            model_path=None if checkpoint is None else str(checkpoint),
        )
        await self.log.append([created])
        self.samplers[sampler_id] = sampler
        return sampler

    async def create_sampling_session(self, owner: Grant, body: CreateSamplingSession) -> str:
        """A sampler over a checkpoint (`model_path`) or the base alone (`base_model`)."""
        self.session(body.session_id, owner)
        sampler_id = f"{body.session_id}:sample:{body.sampling_session_seq_id}"
        if body.model_path is not None:
            path, info = self._owned_checkpoint(body.model_path, owner, "model_path")
            sampler = await self._new_sampler(sampler_id, owner.tenant, info.base_id, path, info.policy)
        elif body.base_model is not None:
            self.check_base(body.base_model)
            sampler = await self._new_sampler(sampler_id, owner.tenant, body.base_model, None, None)
        else:
            raise WireError("model_path", "required (or base_model)")
        return sampler.sampler_id

    def sampler(self, sampler_id: str, owner: Grant, field_name: str = "sampling_session_id") -> Sampler:
        sampler = self.samplers.get(sampler_id)
        if sampler is None or sampler.tenant != owner.tenant:
            raise WireError(field_name, f"no sampling session {sampler_id!r}", 404)
        return sampler

    def sampler_info(self, sampler_id: str, owner: Grant) -> dict[str, Any]:
        sampler = self.sampler(sampler_id, owner, "sampler_id")
        return {
            "sampler_id": sampler_id,
            "base_model": sampler.base_id,
            "model_path": None if sampler.checkpoint is None else str(sampler.checkpoint),
        }

    async def sample(self, owner: Grant, body: Sample) -> tuple[Future, list[str]]:
        sampler = self.sampler(body.sampling_session_id, owner)
        if not 1 <= body.num_samples <= MAX_SAMPLES:
            raise WireError("num_samples", f"must be in 1..{MAX_SAMPLES}, got {body.num_samples}")
        if body.topk_prompt_logprobs:
            raise WireError("topk_prompt_logprobs", "top-k prompt logprobs are not supported")
        prompt = body.prompt.tokens("prompt")
        if not prompt:
            raise WireError("prompt", "empty")
        check_token_ids(prompt, self.vocab_size(sampler.base_id), "prompt")
        generation = self._generation(
            body.sampling_params, body.num_samples, body.prompt_logprobs, len(prompt), sampler.base_id
        )

        async def run() -> SampleResult:
            base = await self.resident(sampler.base_id)
            checkpoint = sampler.checkpoint

            def draw() -> SampleResult:
                slot = None
                if checkpoint is not None:
                    slot = base.sampler_slot(
                        # Slot names become parameter names: no dots or slashes.
                        "sampler-" + hashlib.sha256(str(checkpoint).encode()).hexdigest()[:16],
                        lambda: self._snapshot_tensors(checkpoint),
                    )
                sequences, prompt_logprobs = base.generate(slot, prompt, generation)
                return SampleResult(sequences, prompt_logprobs)

            return await self.on_base(base, draw)

        future = self.submit(owner.tenant, run)
        ids = [f"seq-{os.urandom(6).hex()}" for _ in range(body.num_samples)]
        return future, ids

    def _snapshot_tensors(self, checkpoint: TinkerPath) -> tuple[dict[str, torch.Tensor], int, float]:
        info = self.checkpoints.info(checkpoint)
        return self.checkpoints.tensors(checkpoint), info.rank, info.alpha

    def _generation(
        self, params: SamplingParamsBody, n: int, prompt_logprobs: bool, prompt_length: int, base_id: str
    ) -> Generation:
        context = self.context_length(base_id)
        if prompt_length >= context:
            raise WireError(
                "prompt", f"{prompt_length} tokens; {base_id!r} takes {context}, completion included"
            )
        limit = context - prompt_length
        max_tokens = params.max_tokens if params.max_tokens is not None else min(DEFAULT_MAX_TOKENS, limit)
        if not 0 <= max_tokens <= limit:
            raise WireError(
                "sampling_params.max_tokens", f"must be in 0..{limit} for a {prompt_length}-token prompt"
            )
        if params.temperature < 0:
            raise WireError("sampling_params.temperature", "must be >= 0")
        if not 0 < params.top_p <= 1:
            raise WireError("sampling_params.top_p", "must be in (0, 1]")
        if params.top_k not in (-1, 0):
            raise WireError("sampling_params.top_k", "only -1 (off) is supported")
        stop = params.stop
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        stop_ids = tuple(s for s in stops if isinstance(s, int))
        stop_texts = tuple(s for s in stops if isinstance(s, str))
        if stop is not None and not stops:
            stop_ids = (-1,)  # an explicit empty list: no stop at all, not even the end token
        return Generation(
            n,
            max_tokens,
            params.temperature,
            params.top_p,
            params.seed,
            stop_ids,
            stop_texts,
            prompt_logprobs,
        )

    # -- listings ----------------------------------------------------------------------------------

    def _runs(self, owner: Grant) -> dict[str, tuple[str, int]]:
        """Training runs (one per training client) of the caller's tenant, as (base, rank): live
        clients, and clients of earlier server lives that left checkpoints."""
        runs = {
            model_id: (info.base_id, info.rank)
            for model_id, info in self.checkpoints.runs().items()
            if info.policy.split("/", 1)[0] == owner.tenant
        }
        for model_id, model in self.models.items():
            if model.policy.split("/", 1)[0] == owner.tenant:
                runs[model_id] = (model.base.base_id, model.rank)
        return runs

    def training_run(self, owner: Grant, run_id: str) -> dict[str, Any]:
        runs = self._runs(owner)
        if run_id not in runs:
            raise WireError("training_run_id", f"no training run {run_id!r}", 404)
        return self._run_json(owner, run_id, *runs[run_id])

    def _run_json(self, owner: Grant, run_id: str, base_id: str, rank: int) -> dict[str, Any]:
        checkpoints = self.checkpoints.listing(run_id)
        training = [c for c in checkpoints if c[0].kind == "weights"]
        sampler = [c for c in checkpoints if c[0].kind == "sampler_weights"]
        saved_at = max([c[1].saved_at for c in checkpoints], default=time.time())
        return {
            "training_run_id": run_id,
            "base_model": base_id,
            "model_owner": owner.tenant,
            "is_lora": True,
            "corrupted": False,
            "lora_rank": rank,
            "last_request_time": _iso(saved_at),
            "last_checkpoint": self._checkpoint_json(*training[-1]) if training else None,
            "last_sampler_checkpoint": self._checkpoint_json(*sampler[-1]) if sampler else None,
            "user_metadata": None,
        }

    def training_runs(self, owner: Grant, limit: int, offset: int) -> dict[str, Any]:
        runs = self._runs(owner)
        page = list(runs.items())[offset : offset + limit]
        return {
            "training_runs": [self._run_json(owner, run_id, *run) for run_id, run in page],
            "cursor": {"offset": offset, "limit": limit, "total_count": len(runs)},
        }

    @staticmethod
    def _checkpoint_json(path: TinkerPath, info: CheckpointInfo, size: int) -> dict[str, Any]:
        return {
            "checkpoint_id": path.checkpoint_id,
            "checkpoint_type": "training" if path.kind == "weights" else "sampler",
            "time": _iso(info.saved_at),
            "tinker_path": str(path),
            "size_bytes": size,
            "public": False,
        }

    def checkpoints_of(self, owner: Grant, run_id: str | None, limit: int, offset: int) -> dict[str, Any]:
        run_ids = [run_id] if run_id is not None else list(self._runs(owner))
        if run_id is not None and run_id not in self._runs(owner):
            raise WireError("training_run_id", f"no training run {run_id!r}", 404)
        found = [c for r in run_ids for c in self.checkpoints.listing(r)]
        page = found[offset : offset + limit]
        return {
            "checkpoints": [self._checkpoint_json(*c) for c in page],
            "cursor": {"offset": offset, "limit": limit, "total_count": len(found)},
        }

    def capabilities(self) -> dict[str, Any]:
        return {
            "supported_models": [
                {
                    "model_name": b,
                    "max_context_length": self.context_length(b),
                    "trainable": True,
                    "sampleable": True,
                }
                for b in self.base_ids()
            ]
        }
