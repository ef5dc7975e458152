"""Sampling completions from many adapters at once: each batch row on its own slot, one KV cache.

The model and its KV cache live on the base's device; the token bookkeeping, the sampling generator
and what these functions return stay on the host, so a seed draws the same tokens on any device.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch

from mint.lora.multi import MultiLora


@dataclass(frozen=True)
class Samples:
    """`tokens` is [rows, prompt + new] (prompts left-padded); `mask` marks real tokens; `completion`
    marks the sampled ones that count (up to and including an end token)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    completion: torch.Tensor
    prompt_length: int


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return tokens, mask


@torch.no_grad()
def sample(
    multi: MultiLora,
    prompts: list[list[int]],
    slots: list[str | None],
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator,
    pad_id: int,
    eos_id: int | None,
    *,
    stop_ids: Collection[int] = (),
    top_p: float = 1.0,
) -> Samples:
    """Rows stop after `eos_id` or any of `stop_ids`; `top_p` < 1 samples from the nucleus only."""
    stops = torch.tensor(sorted({*stop_ids, *([] if eos_id is None else [eos_id])}), dtype=torch.long)
    tokens, mask = left_pad(prompts, pad_id)
    prompt_length = tokens.shape[1]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    done = torch.zeros(len(prompts), dtype=torch.bool)
    completion = torch.zeros((len(prompts), 0), dtype=torch.bool)
    past = None
    step_input, step_positions = tokens, positions
    with multi.route(slots):
        for _ in range(max_new_tokens):
            out = multi.model(
                input_ids=step_input.to(multi.device),
                attention_mask=mask.to(multi.device),
                position_ids=step_positions.to(multi.device),
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
            logits = out.logits[:, -1, :].float().cpu()
            if temperature <= 0:
                chosen = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                if top_p < 1.0:
                    probs = _nucleus(probs, top_p)
                chosen = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            counts = ~done
            chosen = torch.where(done, torch.full_like(chosen, pad_id), chosen)
            tokens = torch.cat([tokens, chosen[:, None]], dim=1)
            mask = torch.cat([mask, counts.long()[:, None]], dim=1)
            completion = torch.cat([completion, counts[:, None]], dim=1)
            done = done | torch.isin(chosen, stops)
            if bool(done.all()):
                break
            step_input = chosen[:, None]
            step_positions = step_positions[:, -1:] + 1
    return Samples(tokens, mask, completion, prompt_length)


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens whose mass first reaches top_p (at least one), renormalised."""
    ordered, order = probs.sort(dim=-1, descending=True)
    outside = ordered.cumsum(-1) - ordered >= top_p
    kept = ordered.masked_fill(outside, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, kept / kept.sum(-1, keepdim=True))


def token_logprobs(
    multi: MultiLora, tokens: torch.Tensor, mask: torch.Tensor, slots: list[str | None]
) -> torch.Tensor:
    """log p(token_t | tokens_<t) for t >= 1, under each row's slot: [rows, length - 1]."""
    return target_logprobs(multi, tokens[:, :-1], mask[:, :-1], slots, tokens[:, 1:])


def target_logprobs(
    multi: MultiLora, tokens: torch.Tensor, mask: torch.Tensor, slots: list[str | None], targets: torch.Tensor
) -> torch.Tensor:
    """log p(targets_t | tokens_<=t) under each row's slot: [rows, length], on the host (gradients
    flow back to the device through the copy)."""
    device = multi.device
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with multi.route(slots):
        logits = multi.model(
            input_ids=tokens.to(device), attention_mask=mask.to(device), position_ids=positions.to(device)
        ).logits.float()
    chosen = torch.log_softmax(logits, dim=-1).gather(-1, targets.to(device)[:, :, None]).squeeze(-1)
    return chosen.to(tokens.device)
