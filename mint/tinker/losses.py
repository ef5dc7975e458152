"""Tinker's server-side loss functions, per datum, over the log-probabilities of its target tokens.

Losses are sums over tokens (Tinker's convention: the client scales with `weights` or advantages).
`logprobs` in the inputs are the sampler's; the ratio exp(logp - sampler_logp) is the importance
weight. `gspo` (Group Sequence Policy Optimization) clips one ratio per sequence, the geometric mean
of the token ratios over `sequence_ratio_mask` (every position when absent). `stable_reinforce` is
refused with a 400 (mint/tinker/wire.py says why).
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


def _mask(inputs: Mapping[str, np.ndarray], like: torch.Tensor) -> torch.Tensor:
    return (
        _tensor(inputs, "sequence_ratio_mask") if "sequence_ratio_mask" in inputs else torch.ones_like(like)
    )


def gspo_loss(
    logprobs: torch.Tensor,
    sampled: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    low: float,
    high: float,
) -> torch.Tensor:
    """GSPO's per-token form: every masked token carries the sequence's ratio s (its value), with the
    gradient of its own logprob scaled by s, clipped PPO-style on s as a whole."""
    counted = mask.sum().clamp(min=1.0)
    sequence_ratio = torch.exp(((logprobs - sampled) * mask).sum() / counted)
    ratio = sequence_ratio.detach() * torch.exp(logprobs - logprobs.detach())
    return -torch.minimum(ratio * advantages, ratio.clamp(low, high) * advantages) * mask


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
    if loss_fn == "importance_sampling":
        return -ratio * advantages
    if loss_fn == "gspo":
        return gspo_loss(logprobs, sampled, advantages, _mask(inputs, logprobs), low, high)
    if loss_fn == "ppo":
        return -torch.minimum(ratio * advantages, ratio.clamp(low, high) * advantages)
    if loss_fn == "cispo":
        # The clipped ratio is a constant weight on the policy gradient: tokens keep their gradient.
        return -ratio.clamp(low, high).detach() * logprobs * advantages
    if loss_fn == "dro":
        beta = float(config.get("beta", DEFAULT_DRO_BETA))
        return -(logprobs * advantages - 0.5 * beta * (logprobs - sampled) ** 2)
    raise RequestFailed(f"loss_fn: {loss_fn!r} is not supported")
