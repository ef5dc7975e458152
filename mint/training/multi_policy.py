"""K policies trained together on one resident base, inside the same forward/backward batches.

Each policy is a slot of a MultiLora model with its own AdamW. A step builds one batch holding every
live policy's rows, so the base's weights are read once per step for all of them. A policy whose loss
or gradients stop being finite fails alone: it is marked failed and leaves the batch; the rest go on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import torch
from torch import nn

from mint.lora.multi import MultiLora
from mint.training.sampling import Samples, sample, token_logprobs
from mint.training.tasks import Task

# MLP and lm_head matter on small bases: with attention alone a random tiny base cannot move its
# output distribution enough for GRPO to find a signal (measured; see docs/design.md).
DEFAULT_TARGETS = ("q_proj", "v_proj", "up_proj", "down_proj", "lm_head")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 50
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    lr: float = 5e-3
    seed: int = 0
    # GRPO
    group_size: int = 8
    prompts_per_step: int = 2
    max_new_tokens: int = 12
    temperature: float = 1.0
    clip: float = 0.2
    kl_beta: float = 0.02
    updates_per_batch: int = 1
    # SFT
    batch_size: int = 8
    max_grad_norm: float = 1.0

    @classmethod
    def from_dict(cls, values: dict[str, Any], steps: int) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(
                f"config: unknown setting {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})"
            )
        try:
            config = msgspec.convert({**values, "steps": steps}, cls)
        except msgspec.ValidationError as exc:
            raise ValueError(f"config: {exc}") from None
        for name, (low, high) in _BOUNDS.items():
            value = getattr(config, name)
            if not low <= value <= high:  # also refuses NaN
                raise ValueError(f"config.{name}: {value!r} is outside [{low}, {high}]")
        return config


# A run's settings come from upstream commands: bounded, so one record cannot ask for a batch that
# never fits in memory or a loop that never ends (each refusal names the setting).
_BOUNDS: dict[str, tuple[float, float]] = {
    "rank": (1, 4096),
    "alpha": (1e-6, 1e6),
    "lr": (0.0, 10.0),
    "seed": (0, 2**63 - 1),
    "group_size": (1, 1024),
    "prompts_per_step": (1, 1024),
    "max_new_tokens": (1, 4096),
    "temperature": (0.0, 100.0),
    "clip": (0.0, 100.0),
    "kl_beta": (0.0, 100.0),
    "updates_per_batch": (1, 100),
    "batch_size": (1, 4096),
    "max_grad_norm": (0.0, 1e6),
}


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO's advantage: each reward against its group's mean, in units of the group's spread."""
    groups = rewards.view(-1, group_size)
    return ((groups - groups.mean(-1, keepdim=True)) / (groups.std(-1, keepdim=True) + 1e-4)).view(-1)


@dataclass
class StepMetrics:
    loss: float
    reward_mean: float | None
    reward_std: float | None
    kl: float | None
    tokens_per_s: float


@dataclass
class PolicySlot:
    name: str
    optimizer: torch.optim.Optimizer
    failed: str | None = None


@dataclass
class MultiPolicyTrainer:
    model: nn.Module
    tokenizer: Any
    policies: list[str]
    task: Task
    config: TrainConfig
    multi: MultiLora = field(init=False)
    slots: dict[str, PolicySlot] = field(init=False)

    def __post_init__(self) -> None:
        self.multi = MultiLora(self.model, self.config.targets, slot_dtype=torch.float32)
        self.slots = {}
        for i, policy in enumerate(self.policies):
            self.multi.add(policy, self.config.rank, self.config.alpha, seed=self.config.seed * 1000 + i)
            optimizer = torch.optim.AdamW(self.multi.parameters(policy), lr=self.config.lr, weight_decay=0.0)
            self.slots[policy] = PolicySlot(policy, optimizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.eos_id = self.tokenizer.eos_token_id

    @property
    def live(self) -> list[str]:
        return [p for p, s in self.slots.items() if s.failed is None]

    def fail(self, policy: str, reason: str) -> None:
        self.slots[policy].failed = reason

    def step(self, step: int, only: list[str] | None = None) -> dict[str, StepMetrics]:
        """One optimisation step of every live policy (or of `only`), in shared batches. Deterministic
        for a seed."""
        live = [p for p in self.live if only is None or p in only]
        if not live:
            return {}
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        if self.task.reward is not None:
            return self._grpo(live, generator)
        return self._sft(live, generator)

    # -- SFT -------------------------------------------------------------------------------------

    def _sft(self, live: list[str], generator: torch.Generator) -> dict[str, StepMetrics]:
        began = time.perf_counter()
        rows: list[list[int]] = []
        starts: list[int] = []
        slots: list[str | None] = []
        for policy in live:
            picks = torch.randint(len(self.task.examples), (self.config.batch_size,), generator=generator)
            for i in picks.tolist():
                prompt, completion = self.task.examples[i]
                p_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
                c_ids = self.tokenizer.encode(completion, add_special_tokens=False)
                if self.eos_id is not None:
                    c_ids = [*c_ids, self.eos_id]
                rows.append(p_ids + c_ids)
                starts.append(len(p_ids))
                slots.append(policy)
        width = max(len(r) for r in rows)
        tokens = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(tokens)
        target = torch.zeros((len(rows), width - 1), dtype=torch.bool)
        for i, (r, start) in enumerate(zip(rows, starts, strict=True)):
            tokens[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
            target[i, start - 1 : len(r) - 1] = True
        logprobs = token_logprobs(self.multi, tokens, mask, slots)
        per_row = -(logprobs * target).sum(-1) / target.sum(-1).clamp(min=1)
        tokens_per_s = float(target.sum()) / max(time.perf_counter() - began, 1e-9)
        losses = self._update(live, slots, per_row)
        return {p: StepMetrics(losses[p], None, None, None, tokens_per_s) for p in losses}

    # -- GRPO ------------------------------------------------------------------------------------

    def _grpo(self, live: list[str], generator: torch.Generator) -> dict[str, StepMetrics]:
        cfg = self.config
        began = time.perf_counter()
        prompts, texts, slots = self._groups(live, generator)
        drawn = sample(
            self.multi,
            prompts,
            slots,
            cfg.max_new_tokens,
            cfg.temperature,
            generator,
            self.pad_id,
            self.eos_id,
        )
        width = drawn.prompt_length
        rewards = self._rewards(drawn, texts)
        advantages = group_advantages(rewards, cfg.group_size)
        # Only sampled tokens count; logprobs[t] predicts token t + 1, so shift the mask by one.
        counted = torch.zeros((len(prompts), drawn.tokens.shape[1] - 1), dtype=torch.bool)
        counted[:, width - 1 :] = drawn.completion
        with torch.no_grad():
            old = token_logprobs(self.multi, drawn.tokens, drawn.mask, slots)
            reference = token_logprobs(self.multi, drawn.tokens, drawn.mask, [None] * len(slots))
        kl_rows = torch.zeros(len(prompts))
        losses: dict[str, float] = {}
        for _ in range(cfg.updates_per_batch):
            current = token_logprobs(self.multi, drawn.tokens, drawn.mask, slots)
            ratio = torch.exp(current - old)
            surrogate = torch.minimum(
                ratio * advantages[:, None], ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * advantages[:, None]
            )
            log_ref_ratio = reference - current
            kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1  # k3: unbiased, always >= 0
            per_token = -(surrogate - cfg.kl_beta * kl) * counted
            n_tokens = counted.sum(-1).clamp(min=1)
            per_row = per_token.sum(-1) / n_tokens
            kl_rows = ((kl * counted).sum(-1) / n_tokens).detach()
            losses = self._update(live, slots, per_row)
        tokens_per_s = float(counted.sum()) / max(time.perf_counter() - began, 1e-9)
        out = {}
        for policy in losses:
            mine = torch.tensor([s == policy for s in slots])
            out[policy] = StepMetrics(
                losses[policy],
                float(rewards[mine].mean()),
                float(rewards[mine].std()),
                float(kl_rows[mine].mean()),
                tokens_per_s,
            )
        return out

    def _groups(
        self, live: list[str], generator: torch.Generator
    ) -> tuple[list[list[int]], list[str], list[str | None]]:
        """One batch for every live policy: `prompts_per_step` prompts each, every prompt repeated
        `group_size` times (a GRPO group); the prompt ids, texts and each row's policy."""
        cfg = self.config
        prompts: list[list[int]] = []
        texts: list[str] = []
        slots: list[str | None] = []
        for policy in live:
            picks = torch.randint(
                len(self.task.prompts), (cfg.prompts_per_step,), generator=generator
            ).tolist()
            for i in picks:
                ids = self.tokenizer.encode(self.task.prompts[i], add_special_tokens=False)
                for _ in range(cfg.group_size):
                    prompts.append(ids)
                    texts.append(self.task.prompts[i])
                    slots.append(policy)
        return prompts, texts, slots

    def _rewards(self, drawn: Samples, texts: list[str]) -> torch.Tensor:
        assert self.task.reward is not None
        width = drawn.prompt_length
        rewards = torch.zeros(len(texts))
        for row in range(len(texts)):
            ids = drawn.tokens[row, width:][drawn.completion[row]].tolist()
            completion = self.tokenizer.decode(ids, skip_special_tokens=True)
            rewards[row] = float(self.task.reward(texts[row], completion, ids))
        return rewards

    # -- the shared update -----------------------------------------------------------------------

    def _update(self, live: list[str], slots: list[str | None], per_row: torch.Tensor) -> dict[str, float]:
        """Per-policy mean losses, summed into one backward (each policy's rows reach only its slot),
        then one optimizer step per policy whose loss and gradients are finite."""
        for policy in live:
            self.slots[policy].optimizer.zero_grad(set_to_none=True)
        by_policy = {p: per_row[torch.tensor([s == p for s in slots])].mean() for p in live}
        finite = {p: loss for p, loss in by_policy.items() if math.isfinite(loss.item())}
        for policy in set(live) - set(finite):
            self.fail(policy, f"loss is {by_policy[policy].item()}")
        if finite:
            torch.stack(list(finite.values())).sum().backward()  # type: ignore[no-untyped-call]
        results = {}
        for policy, loss in finite.items():
            params = self.multi.parameters(policy)
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
            if not math.isfinite(float(norm)):
                self.fail(policy, f"gradient norm is {float(norm)}")
                continue
            self.slots[policy].optimizer.step()
            results[policy] = loss.item()
        return results
