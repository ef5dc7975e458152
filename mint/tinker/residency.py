"""Which training clients hold a slot on their base: at most `budget` at a time, the least recently
used idle ones evicted beyond that (their state to an unnamed checkpoint on disk, mint/tinker/training.py)
and reloaded on their next request. Without it every client ever created keeps its slot and AdamW state
until its session ends, and every forward on the base stacks all of them.

A client with a request running is never evicted; when every resident client has one, a client that
needs its slot gets it over budget, until those requests finish.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:  # the CLI reads SLOTS_ENV from here without loading the service
    from mint.tinker.checkpoints import CheckpointDirectory
    from mint.tinker.training import TrainingModel

SLOTS_ENV = "MINT_TINKER_TRAINING_SLOTS"
DEFAULT_SLOTS = 16


def slots_from_env() -> int:
    """The budget `MINT_TINKER_TRAINING_SLOTS` sets (DEFAULT_SLOTS when unset)."""
    raw = os.environ.get(SLOTS_ENV, "")
    if not raw:
        return DEFAULT_SLOTS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{SLOTS_ENV}: {raw!r} is not a whole number of training slots (1 or more)")
    return int(raw)


class Residency:
    def __init__(self, checkpoints: CheckpointDirectory, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"training_slots: must be 1 or more, got {budget}")
        self.checkpoints = checkpoints
        self.budget = budget
        self._resident: OrderedDict[str, TrainingModel] = OrderedDict()  # least recently used first
        self._in_use: Counter[str] = Counter()

    @property
    def resident(self) -> list[str]:
        return list(self._resident)

    async def admit(self, model: TrainingModel) -> None:
        """A client just built in its slot: resident, evicting beyond the budget."""
        self._resident[model.model_id] = model
        await self._evict_beyond(self.budget)

    @asynccontextmanager
    async def using(self, model: TrainingModel) -> AsyncIterator[None]:
        """Hold `model` in its slot for the body, reloading it first if it was evicted."""
        self._in_use[model.model_id] += 1  # before any await: no eviction may take it from here on
        try:
            if model.model_id in self._resident:
                self._resident.move_to_end(model.model_id)
            else:
                await self._evict_beyond(self.budget - 1)
                async with model.base.lock:
                    if model.resident_optimizer is None:
                        await anyio.to_thread.run_sync(model.reload, self.checkpoints)
                self._resident[model.model_id] = model
            yield
        finally:
            self._in_use[model.model_id] -= 1
            if not self._in_use[model.model_id]:
                del self._in_use[model.model_id]

    def forget(self, model: TrainingModel) -> None:
        """A closed client: no longer counted (its files go with its session's)."""
        self._resident.pop(model.model_id, None)

    async def _evict_beyond(self, keep: int) -> None:
        while len(self._resident) > keep:
            victim = next((m for m in self._resident.values() if m.model_id not in self._in_use), None)
            if victim is None:
                return  # every resident client has a request running
            del self._resident[victim.model_id]
            async with victim.base.lock:
                # A request that came for it while the lock was busy keeps it (and counts it again).
                if victim.model_id not in self._in_use and victim.resident_optimizer is not None:
                    try:
                        await anyio.to_thread.run_sync(victim.evict, self.checkpoints)
                    finally:
                        # Not written (a full disk, say): it still holds its slot.
                        if victim.resident_optimizer is not None:
                            self._resident[victim.model_id] = victim
