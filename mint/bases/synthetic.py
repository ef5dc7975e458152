"""Synthetic bases of a real size, for measuring on a GPU with no download: LLaMA architecture,
random weights, the tiny base's tokenizer.

`1b` has Llama-3.2-1B's layer shapes (hidden 2048, 16 layers, 32 query and 8 KV heads of 64, MLP 8192),
`3b` Llama-3.2-3B's (3072, 28 layers, 24 query and 8 KV heads of 128, MLP 8192). The vocabulary is the
tiny tokenizer's 512 tokens, so almost every parameter is in the layers, where a decode step reads
them. The weights are bfloat16 (what a GPU serves) and are written in safetensors shards: each tensor
is drawn, added to the shard being filled, and dropped once that shard is written, so building holds
one shard in memory, never the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig

from mint.bases.info import SHARDED_INDEX_FILE, BaseInfo, read_base_info
from mint.bases.staging import staged_directory
from mint.bases.tiny import VOCAB_SIZE
from mint.bases.tokenizer import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    save_for_transformers,
    shipped_corpus,
    train_byte_bpe,
)

MAX_POSITIONS = 4096
SHARD_BYTES = 2 * 1024**3
STD = 0.02  # LLaMA's initializer_range


@dataclass(frozen=True)
class SyntheticShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int

    def config(self, pad_id: int | None, bos_id: int | None, eos_id: int | None) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            max_position_embeddings=MAX_POSITIONS,
            tie_word_embeddings=False,
            dtype="bfloat16",
            architectures=["LlamaForCausalLM"],
            pad_token_id=pad_id,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
        )

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight under transformers' LlamaForCausalLM names, in the order they are written."""
        hidden = self.hidden_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB_SIZE, hidden)}
        for i in range(self.num_hidden_layers):
            layer = f"model.layers.{i}"
            shapes |= {
                f"{layer}.input_layernorm.weight": (hidden,),
                f"{layer}.self_attn.q_proj.weight": (q, hidden),
                f"{layer}.self_attn.k_proj.weight": (kv, hidden),
                f"{layer}.self_attn.v_proj.weight": (kv, hidden),
                f"{layer}.self_attn.o_proj.weight": (hidden, q),
                f"{layer}.post_attention_layernorm.weight": (hidden,),
                f"{layer}.mlp.gate_proj.weight": (self.intermediate_size, hidden),
                f"{layer}.mlp.up_proj.weight": (self.intermediate_size, hidden),
                f"{layer}.mlp.down_proj.weight": (hidden, self.intermediate_size),
            }
        return shapes | {"model.norm.weight": (hidden,), "lm_head.weight": (VOCAB_SIZE, hidden)}

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(shape) for shape in self.tensor_shapes().values())


SIZES = {
    "1b": SyntheticShape(2048, 8192, 16, 32, 8, 64),
    "3b": SyntheticShape(3072, 8192, 28, 24, 8, 128),
}


def create_synthetic_base(
    directory: Path, params: str | SyntheticShape = "1b", seed: int = 0, shard_bytes: int = SHARD_BYTES
) -> BaseInfo:
    """Build a synthetic base of `params` (a key of SIZES, or a shape) into `directory` (absent or
    empty). The same seed gives the same weights."""
    if isinstance(params, str):
        if params not in SIZES:
            raise ValueError(f"params: {params!r} is not one of {', '.join(SIZES)}")
        params = SIZES[params]
    directory = Path(directory)
    with staged_directory(directory) as staging:
        tokenizer = train_byte_bpe(shipped_corpus(), VOCAB_SIZE)
        save_for_transformers(tokenizer, staging, MAX_POSITIONS)
        config = params.config(
            tokenizer.token_to_id(ENDOFTEXT), tokenizer.token_to_id(IM_START), tokenizer.token_to_id(IM_END)
        )
        config.save_pretrained(staging)
        shapes = params.tensor_shapes()
        shards = _plan_shards(shapes, shard_bytes)
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        generator = torch.Generator().manual_seed(seed)
        for name, members in zip(names, shards, strict=True):
            shard = {tensor: _draw(shapes[tensor], generator) for tensor in members}
            save_file(shard, str(staging / name), metadata={"format": "pt"})
            del shard  # the next shard is drawn only after this one has left memory
        index = {
            "metadata": {"total_size": params.num_parameters * 2},
            "weight_map": {
                tensor: name for name, members in zip(names, shards, strict=True) for tensor in members
            },
        }
        (staging / SHARDED_INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return read_base_info(directory)


def _plan_shards(shapes: dict[str, tuple[int, ...]], shard_bytes: int) -> list[list[str]]:
    """Consecutive tensors grouped into shards of at most `shard_bytes` (a larger tensor alone)."""
    shards: list[list[str]] = [[]]
    filled = 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)  # bfloat16
        if shards[-1] and filled + size > shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += size
    return shards


def _draw(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A norm scale is ones; a matrix is Normal(0, STD), drawn in float32 and stored as bfloat16."""
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    return torch.empty(shape).normal_(0.0, STD, generator=generator).to(torch.bfloat16)
