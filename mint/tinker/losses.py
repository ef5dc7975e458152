"""Tinker's server-side loss functions, per datum, over the log-probabilities of its target tokens.

Losses are sums over tokens (Tinker's convention: the client scales with `weights` or advantages).
`logprobs` in the inputs are the sampler's; the ratio exp(logp - sampler_logp) is the importance
weight. `stable_reinforce` (the cookbook's default) is treated as `importance_sampling`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from mint.tinker.futures import RequestFailed

DEFAULT_CLIP_LOW, DEFAULT_CLIP_HIGH = 0.8, 1.2  # ratio bounds, as the SDK's examples pass them
DEFAULT_DRO_BETA = 0.05


def _tensor(inputs: Mapping[str, np.ndarray], name: str) -> torch.Tensor:
    return torch.tensor(np.asarray(inputs[name], dtype=np.float32))


def elementwise_loss(
    loss_fn: str, logprobs: torch.Tensor, inputs: Mapping[str, np.ndarray], config: Mapping[str, float]
) -> torch.Tensor:
    """The per-token loss of one datum (same length as `logprobs`); its sum is what gets minimised."""
    if loss_fn == "cross_entropy":
        weights = _tensor(inputs, "weights") if "weights" in inputs else torch.ones_like(logprobs)
        return -logprobs * weights
    advantages = _tensor(inputs, "advantages")
    sampled = _tensor(inputs, "logprobs")
    ratio = torch.exp(logprobs - sampled)
    low = float(config.get("clip_low_threshold", DEFAULT_CLIP_LOW))
    high = float(config.get("clip_high_threshold", DEFAULT_CLIP_HIGH))
    if loss_fn in ("importance_sampling", "stable_reinforce"):
        return -ratio * advantages
    if loss_fn == "ppo":
        return -torch.minimum(ratio * advantages, ratio.clamp(low, high) * advantages)
    if loss_fn == "cispo":
        # The clipped ratio is a constant weight on the policy gradient: tokens keep their gradient.
        return -ratio.clamp(low, high).detach() * logprobs * advantages
    if loss_fn == "dro":
        beta = float(config.get("beta", DEFAULT_DRO_BETA))
        return -(logprobs * advantages - 0.5 * beta * (logprobs - sampled) ** 2)
    raise RequestFailed(f"loss_fn: {loss_fn!r} is not supported")
