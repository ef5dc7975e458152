"""Training clients (`create_model`): a LoRA adapter in a slot of a resident base that trains one
policy. Its requests (forward_backward, optim_step, saves, loads) run in seq_id order (SeqGate), each
as a future; every optimizer step is a `StepCompleted` on the log before its future resolves.

A client is `TrainingClientCreated` once built, after its policy is registered (mint/tinker/policies.py).
While it is being built, get_info waits for it (only for the caller's own tenant's).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from events.log import EventLog
from events.names import tenant_of
from events.tinker import TrainingClientCreated
from events.training import StepCompleted
from mint.tinker import written
from mint.tinker.auth import Grant
from mint.tinker.bases import Bases, on_base
from mint.tinker.checkpoints import TinkerPath
from mint.tinker.futures import Future, Futures
from mint.tinker.policies import SOURCE, Policies
from mint.tinker.residency import Residency
from mint.tinker.results import ForwardBackwardResult
from mint.tinker.sessions import Sessions
from mint.tinker.wire import (
    AdamParams,
    CreateModel,
    ForwardBackwardInput,
    Sequenced,
    WireError,
    check_token_ids,
)

if TYPE_CHECKING:
    from mint.tinker.training import TrainingModel

MAX_RANK = 256
MAX_BATCH_POSITIONS = 1 << 21  # datums x longest datum, per forward_backward request


@dataclass(frozen=True)
class NewClient:
    """What a training client is built from."""

    model_id: str  # `<session>:train:<model_seq_id>`
    session_id: str
    policy: str
    base_id: str
    rank: int
    switches: tuple[bool, bool, bool]  # train attention, MLP, unembedding
    seed: int = 0
    loaded_from: TinkerPath | None = None
    user_metadata: dict[str, str] | None = None


def metadata_strings(metadata: dict[str, Any] | None) -> dict[str, str] | None:
    """`user_metadata` as the SDKs type it (strings to strings): other values as their JSON text."""
    if metadata is None:
        return None
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def client_id(session_id: str, model_seq_id: int) -> str:
    return f"{session_id}:train:{model_seq_id}"


class TrainingClients:
    def __init__(
        self,
        log: EventLog,
        bases: Bases,
        futures: Futures,
        sessions: Sessions,
        policies: Policies,
        residency: Residency,
    ) -> None:
        self.log = log
        self.bases = bases
        self.futures = futures
        self.sessions = sessions
        self.policies = policies
        self.residency = residency
        self.models: dict[str, TrainingModel] = {}
        self._creating: dict[str, tuple[str, anyio.Event]] = {}  # model id -> its tenant, built

    # -- finding -----------------------------------------------------------------------------------

    def get(self, model_id: str, owner: Grant) -> TrainingModel:
        model = self.owned(model_id, owner)
        if model is None:
            raise WireError("model_id", f"no training client {model_id!r}", 404)
        return model

    def owned(self, model_id: str, owner: Grant) -> TrainingModel | None:
        """The caller's training client `model_id`; another tenant's is as good as missing."""
        model = self.models.get(model_id)
        return model if model is not None and tenant_of(model.policy) == owner.tenant else None

    def of_tenant(self, tenant: str) -> list[TrainingModel]:
        return [m for m in self.models.values() if tenant_of(m.policy) == tenant]

    async def info(self, model_id: str, owner: Grant) -> dict[str, Any]:
        tenant, built = self._creating.get(model_id, ("", None))
        if built is not None and tenant == owner.tenant:
            await built.wait()
        model = self.get(model_id, owner)
        return {
            "type": "get_info",
            "model_id": model_id,
            "model_data": {
                "arch": self.bases.config(model.base.base_id).get("model_type", "unknown"),
                "model_name": model.base.base_id,
                "tokenizer_id": str(model.base.directory),  # the tokenizer loads from it offline
            },
            "is_lora": True,
            "lora_rank": model.rank,
            "model_name": model.base.base_id,
        }

    # -- creating ----------------------------------------------------------------------------------

    async def create_model(self, owner: Grant, body: CreateModel) -> Future:
        self.sessions.get(body.session_id, owner)
        base_id = self.bases.resolve(body.base_model)
        lora = body.lora_config
        if not 1 <= lora.rank <= MAX_RANK:
            raise WireError("lora_config.rank", f"must be in 1..{MAX_RANK}, got {lora.rank}")
        if not (lora.train_attn or lora.train_mlp or lora.train_unembed):
            raise WireError("lora_config", "train_attn, train_mlp and train_unembed are all false")
        model_id = client_id(body.session_id, body.model_seq_id)
        policy = self.policies.name(owner, model_id, body.user_metadata, None)
        switches = (lora.train_attn, lora.train_mlp, lora.train_unembed)
        client = NewClient(
            model_id,
            body.session_id,
            policy,
            base_id,
            lora.rank,
            switches,
            lora.seed or 0,
            user_metadata=metadata_strings(body.user_metadata),
        )

        async def create() -> dict[str, Any]:
            model = await self.build(client)
            return {"model_id": model.model_id, "type": "create_model"}

        return await self.creating(owner, client, create)

    async def creating(
        self, owner: Grant, client: NewClient, build: Callable[[], Awaitable[dict[str, Any]]]
    ) -> Future:
        """A future building `client` by `build()`, once its policy is registered; get_info waits for
        it meanwhile. Capacity is checked before anything is registered, and the client is marked as
        being built only once its future is submitted (a 429 leaves nothing behind)."""
        self._check_new(client.model_id)
        self.futures.admit(owner.tenant)
        await self.policies.ensure(client.policy, client.base_id, client.model_id)
        self._check_new(client.model_id)  # again: a twin request may have got here while we waited
        built = anyio.Event()

        async def create() -> dict[str, Any]:
            try:
                return await build()
            finally:
                del self._creating[client.model_id]
                built.set()

        future = self.futures.submit(owner.tenant, create, client.model_id)
        self._creating[client.model_id] = (owner.tenant, built)  # before `create` starts: no await between
        return future

    def _check_new(self, model_id: str) -> None:
        if model_id in self.models or model_id in self._creating:
            raise WireError("model_seq_id", f"{model_id!r} already exists")

    async def build(self, client: NewClient) -> TrainingModel:
        """The training client in a slot of its base, and the fact that says so."""
        from mint.tinker.training import TrainingModel

        base = await self.bases.resident(client.base_id)
        targets = base.targets_for(*client.switches)
        run = f"{tenant_of(client.policy)}/{client.model_id.replace(':', '-')}"
        model = await on_base(
            base,
            lambda: TrainingModel.create(
                base,
                client.model_id,
                client.session_id,
                client.policy,
                run,
                client.rank,
                targets,
                client.seed,
                client.user_metadata,
            ),
        )
        created = TrainingClientCreated.create(
            id=f"{client.model_id}/created",
            source=SOURCE,
            policy=client.policy,
            model_id=client.model_id,
            session_id=client.session_id,
            run=run,
            base_id=client.base_id,
            rank=client.rank,
            alpha=model.alpha,
            targets=list(targets),
            loaded_from=None if client.loaded_from is None else str(client.loaded_from),
            user_metadata=client.user_metadata,
        )
        await written.append(self.log, [created])
        self.models[client.model_id] = model
        await self.residency.admit(model)
        return model

    async def close_session(self, session_id: str) -> list[str]:
        """Free the session's training clients (each slot costs every forward pass on its base);
        returns their ids."""
        closed = [m for m in self.models.values() if m.session_id == session_id]
        for model in closed:
            del self.models[model.model_id]
            self.residency.forget(model)
            await on_base(model.base, model.close)
        return [m.model_id for m in closed]

    # -- requests in seq_id order --------------------------------------------------------------------

    def ordered(
        self, request: Sequenced[Any], owner: Grant, work: Callable[[TrainingModel], Awaitable[Any]]
    ) -> Future:
        """A future running `work` on the caller's client when its seq_id's turn comes."""
        model = self.get(request.model_id, owner)

        async def in_turn() -> Any:
            async with model.gate.turn(request.seq_id), self.residency.using(model):
                return await work(model)

        return self.futures.submit(owner.tenant, in_turn, model.model_id)

    def refused(self, owner: Grant, model_id: str, seq_id: int) -> None:
        """A training request refused before it was queued: later seq_ids must not wait for it. Only
        the caller's own training client is touched: another tenant cannot spend its turns."""
        model = self.owned(model_id, owner)
        if model is not None:
            model.gate.skip(seq_id)

    def forward_backward(self, owner: Grant, request: Sequenced[ForwardBackwardInput]) -> Future:
        self._check_batch(self.get(request.model_id, owner), request.work)

        async def run(model: TrainingModel) -> ForwardBackwardResult:
            outputs, metrics = await on_base(model.base, lambda: model.forward_backward(request.work))
            return ForwardBackwardResult(outputs, metrics)

        return self.ordered(request, owner, run)

    def _check_batch(self, model: TrainingModel, work: ForwardBackwardInput) -> None:
        """What the base can take: each datum within its context and vocabulary, the padded batch
        within MAX_BATCH_POSITIONS."""
        base_id = model.base.base_id
        context, vocab = self.bases.context_length(base_id), self.bases.vocab_size(base_id)
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
            metrics, loss = await on_base(model.base, lambda: model.optim_step(adam))
            step = StepCompleted.create(
                id=f"{model.run}/{model.policy}/step/{model.step}",
                source=SOURCE,
                run=model.run,
                policy=model.policy,
                step=model.step,
                loss=loss,
            )
            await written.append(self.log, [step])
            return {"metrics": metrics, "type": "optim_step"}

        return self.ordered(request, owner, run)
