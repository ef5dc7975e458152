"""Sampling sessions (`create_sampling_session`, `asample`): a base alone or a checkpoint's adapter
on it, loaded into one of the base's sampler slots when a sample needs it. Each is a `SamplerCreated`
on the log before it answers."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from events.log import EventLog
from events.tinker import SamplerCreated
from mint.tinker import written
from mint.tinker.auth import Grant
from mint.tinker.bases import Bases, on_base
from mint.tinker.checkpoints import CheckpointDirectory, TinkerPath
from mint.tinker.futures import Future, Futures
from mint.tinker.generation import DEFAULT_MAX_TOKENS, Generation
from mint.tinker.policies import SOURCE
from mint.tinker.results import SampleResult
from mint.tinker.sessions import Sessions
from mint.tinker.wire import CreateSamplingSession, Sample, SamplingParamsBody, WireError, check_token_ids

if TYPE_CHECKING:
    import torch

MAX_SAMPLES = 128  # sequences per asample


@dataclass(frozen=True)
class Sampler:
    sampler_id: str  # `<session>:sample:<sampling_session_seq_id>`
    tenant: str
    base_id: str
    checkpoint: TinkerPath | None  # None: the base alone
    policy: str | None


def sampler_id(session_id: str, sampling_session_seq_id: int) -> str:
    return f"{session_id}:sample:{sampling_session_seq_id}"


class Samplers:
    def __init__(
        self,
        log: EventLog,
        bases: Bases,
        futures: Futures,
        sessions: Sessions,
        checkpoints: CheckpointDirectory,
    ) -> None:
        self.log = log
        self.bases = bases
        self.futures = futures
        self.sessions = sessions
        self.checkpoints = checkpoints
        self._samplers: dict[str, Sampler] = {}

    async def open(self, sampler: Sampler) -> Sampler:
        """Record `sampler` on the log, then serve it."""
        subject = sampler.policy or f"{sampler.tenant}/{sampler.sampler_id.split(':', 1)[0]}"
        created = SamplerCreated.create(
            source=SOURCE,
            subject=subject,
            tenant=sampler.tenant,
            sampler_id=sampler.sampler_id,
            base_id=sampler.base_id,
            policy=sampler.policy,
            model_path=None if sampler.checkpoint is None else str(sampler.checkpoint),
        )
        await written.append(self.log, [created])
        self._samplers[sampler.sampler_id] = sampler
        return sampler

    async def create_sampling_session(self, owner: Grant, body: CreateSamplingSession) -> str:
        """A sampler over a checkpoint (`model_path`) or the base alone (`base_model`)."""
        self.sessions.get(body.session_id, owner)
        new_id = sampler_id(body.session_id, body.sampling_session_seq_id)
        if body.model_path is not None:
            path, info = self.checkpoints.owned(body.model_path, owner.tenant, "model_path")
            if path.kind == "external_weights":
                raise WireError(
                    "model_path", f"{path} is external weights (for download), not sampler weights"
                )
            sampler = Sampler(new_id, owner.tenant, info.base_id, path, info.policy)
        elif body.base_model is not None:
            sampler = Sampler(new_id, owner.tenant, self.bases.resolve(body.base_model), None, None)
        else:
            raise WireError("model_path", "required (or base_model)")
        return (await self.open(sampler)).sampler_id

    def get(self, sampler_id: str, owner: Grant, field_name: str = "sampling_session_id") -> Sampler:
        sampler = self._samplers.get(sampler_id)
        if sampler is None or sampler.tenant != owner.tenant:
            raise WireError(field_name, f"no sampling session {sampler_id!r}", 404)
        return sampler

    def info(self, sampler_id: str, owner: Grant) -> dict[str, Any]:
        sampler = self.get(sampler_id, owner, "sampler_id")
        return {
            "sampler_id": sampler_id,
            "base_model": sampler.base_id,
            "model_path": None if sampler.checkpoint is None else str(sampler.checkpoint),
        }

    def of_session(self, session_id: str) -> list[str]:
        return [s for s in self._samplers if s.startswith(f"{session_id}:")]

    def close_session(self, session_id: str) -> None:
        for closed in self.of_session(session_id):
            del self._samplers[closed]

    def sample(self, owner: Grant, body: Sample) -> tuple[Future, list[str]]:
        """A future drawing `num_samples` sequences, and the ids the SDK gives them."""
        sampler = self.get(body.sampling_session_id, owner)
        if not 1 <= body.num_samples <= MAX_SAMPLES:
            raise WireError("num_samples", f"must be in 1..{MAX_SAMPLES}, got {body.num_samples}")
        if body.topk_prompt_logprobs:
            raise WireError("topk_prompt_logprobs", "top-k prompt logprobs are not supported")
        prompt = body.prompt.tokens("prompt")
        if not prompt:
            raise WireError("prompt", "empty")
        check_token_ids(prompt, self.bases.vocab_size(sampler.base_id), "prompt")
        context = self.bases.context_length(sampler.base_id)
        generation = _generation(body, len(prompt), context, sampler.base_id)

        async def run() -> SampleResult:
            base = await self.bases.resident(sampler.base_id)
            checkpoint = sampler.checkpoint

            def draw() -> SampleResult:
                slot = None
                if checkpoint is not None:
                    slot = base.sampler_slot(
                        # Slot names become parameter names: no dots or slashes.
                        "sampler-" + hashlib.sha256(str(checkpoint).encode()).hexdigest()[:16],
                        lambda: self._adapter(checkpoint),
                    )
                sequences, prompt_logprobs = base.generate(slot, prompt, generation)
                return SampleResult(sequences, prompt_logprobs)

            return await on_base(base, draw)

        future = self.futures.submit(owner.tenant, run)
        return future, [f"seq-{os.urandom(6).hex()}" for _ in range(body.num_samples)]

    def _adapter(self, checkpoint: TinkerPath) -> tuple[dict[str, torch.Tensor], int, float]:
        info = self.checkpoints.info(checkpoint)
        return self.checkpoints.tensors(checkpoint), info.rank, info.alpha


def _generation(body: Sample, prompt_length: int, context: int, base_id: str) -> Generation:
    """What `body` asks the base to generate for a `prompt_length`-token prompt, checked."""
    if prompt_length >= context:
        raise WireError("prompt", f"{prompt_length} tokens; {base_id!r} takes {context}, completion included")
    params: SamplingParamsBody = body.sampling_params
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
        body.num_samples,
        max_tokens,
        params.temperature,
        params.top_p,
        params.seed,
        stop_ids,
        stop_texts,
        body.prompt_logprobs,
    )
