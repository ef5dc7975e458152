"""Adapters made up for a base, for tests and benchmarks: the right shapes, seeded values."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mint.adapters.adapter import Adapter, LoraConfig, lora_key, targeted_modules, unmatched_targets
from mint.adapters.tensors import TORCH_DTYPES, to_raw
from mint.bases.info import BaseInfo


def random_adapter(
    base: BaseInfo,
    *,
    r: int = 8,
    alpha: float = 16.0,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    seed: int = 0,
    b_std: float = 0.02,
    zero_b: bool = False,
    dtype: str = "F32",
) -> Adapter:
    """A as PEFT initialises it (uniform in +-1/sqrt(in_features)); B normal with `b_std`, or zero, as
    PEFT initialises it (an adapter that does not change the base yet). The same seed gives the same
    bytes."""
    config = LoraConfig(r=r, alpha=alpha, target_modules=tuple(targets), base_model=base.base_id)
    if unmatched := unmatched_targets(config, base.linear_shapes):
        raise ValueError(f"targets {unmatched} match no linear layer of base {base.base_id!r}")
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module in targeted_modules(config, base.linear_shapes):
        out_features, in_features = base.linear_shapes[module]
        bound = 1.0 / math.sqrt(in_features)
        a = torch.empty(r, in_features).uniform_(-bound, bound, generator=generator)
        b = (
            torch.zeros(out_features, r)
            if zero_b
            else torch.empty(out_features, r).normal_(0.0, b_std, generator=generator)
        )
        tensors[lora_key(module, "A")] = to_raw(a.to(TORCH_DTYPES[dtype]))
        tensors[lora_key(module, "B")] = to_raw(b.to(TORCH_DTYPES[dtype]))
    return Adapter(config, tensors)
