"""What a sampling request asks for and what it gets, and Tinker's LoRA switches: the torch-free
vocabulary the service shares with the resident base (which does the tensor work)."""

from __future__ import annotations

from dataclasses import dataclass

# Tinker's LoRA switches, as module-name suffixes of a LLaMA-style base.
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
UNEMBED = ("lm_head",)
DEFAULT_MAX_TOKENS = 64


@dataclass(frozen=True)
class Generation:
    """What one asample asks for: `stop_ids` end a sequence (and stay in it); `stop_texts` are cut
    after the token that completes them."""

    num_samples: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop_ids: tuple[int, ...]
    stop_texts: tuple[str, ...]
    prompt_logprobs: bool


@dataclass(frozen=True)
class Sampled:
    tokens: list[int]
    logprobs: list[float]
    stopped: bool
