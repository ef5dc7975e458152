"""Checkpoints whose time to live ran out are deleted by the service, each as a `CheckpointDeleted`
(reason `expired`) on the log before its files go. Listings and loads treat an expired checkpoint
as gone at once; this sweep frees its disk within EXPIRY_SWEEP_S."""

from __future__ import annotations

import logging
import time

import anyio

from mint.tinker.weights import Weights

EXPIRY_SWEEP_S = 30.0

logger = logging.getLogger(__name__)


async def sweep_expired(weights: Weights, interval_s: float = EXPIRY_SWEEP_S) -> None:
    """Delete expired checkpoints every `interval_s` until cancelled; a failed sweep is logged and
    the next one tries again."""
    while True:
        try:
            await weights.expire(time.time())
        except Exception:
            logger.exception("the expired-checkpoint sweep failed; retrying in %gs", interval_s)
        await anyio.sleep(interval_s)
