"""A tiny LLaMA-architecture base built offline: ~140k parameters, its own tokenizer, trains on a CPU.

It exercises every code path a real base does (grouped-query attention, gated MLP, untied output head)
at a size where a test trains it in seconds. head_dim is 32 because vLLM accepts only 32 or 64 there.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mint.bases.info import BaseInfo, read_base_info
from mint.bases.staging import staged_directory
from mint.bases.tokenizer import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    save_for_transformers,
    shipped_corpus,
    train_byte_bpe,
)

VOCAB_SIZE = 512
MAX_POSITIONS = 512


def create_tiny_base(directory: Path, seed: int = 0) -> BaseInfo:
    """Build the tiny base into `directory` (absent or empty). The same seed gives the same bytes."""
    directory = Path(directory)
    with staged_directory(directory) as staging:
        tokenizer = train_byte_bpe(shipped_corpus(), VOCAB_SIZE)
        save_for_transformers(tokenizer, staging, MAX_POSITIONS)
        config = LlamaConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            max_position_embeddings=MAX_POSITIONS,
            tie_word_embeddings=False,
            pad_token_id=tokenizer.token_to_id(ENDOFTEXT),
            bos_token_id=tokenizer.token_to_id(IM_START),
            eos_token_id=tokenizer.token_to_id(IM_END),
        )
        # transformers' own initialisation draws from the global generator: fork it so building a base
        # leaves the caller's random state alone; the weights come from `seed` below.
        with torch.random.fork_rng(devices=[]):
            model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call, unused-ignore]
        _initialise(model, seed, config.initializer_range)
        model.save_pretrained(staging)
    return read_base_info(directory)


def _initialise(model: LlamaForCausalLM, seed: int, std: float) -> None:
    """Normal(0, std) matrices and unit norm scales, drawn from a generator of our own in name order, so
    the weights depend on the seed only (not on transformers' init code or the global random state)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.ndim == 1:
                param.fill_(1.0)
            else:
                param.normal_(0.0, std, generator=generator)
