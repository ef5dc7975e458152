"""An engine that fails a share of the requests of chosen revisions, around any real engine.

This is how `mint demo` and the tests inject a regression that only live traffic can reveal (a bad
kernel, a driver fault, an adapter that trips the runtime): evaluation passed, serving then fails, and
the watch must roll the revision back. Everything else is the wrapped engine's own behaviour.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence

import anyio
from anyio.abc import TaskStatus

from mint.serving.engine import AdapterRef, Delta, Engine, EngineError, SamplingParams, closing


class InjectedFault(EngineError):
    pass


class FaultyEngine:
    def __init__(self, inner: Engine, seed: int = 0) -> None:
        self.inner = inner
        self.base_id = inner.base_id
        self.kind = inner.kind
        self.slots = inner.slots
        self.cpu_slots = inner.cpu_slots
        self._failing: dict[str, float] = {}
        self._random = random.Random(seed)

    def fail(self, ref: str, share: float) -> None:
        """From now on, fail `share` of the requests served by revision `ref` (0 heals it)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share: {share} is not between 0 and 1")
        self._failing[ref] = share

    async def generate(
        self, prompt: str, adapter: str | None, params: SamplingParams
    ) -> AsyncIterator[Delta]:
        share = self._failing.get(adapter or "", 0.0)
        if share and self._random.random() < share:
            raise InjectedFault(f"injected fault serving {adapter}")
        async with closing(self.inner.generate(prompt, adapter, params)) as inner:
            async for delta in inner:
                yield delta

    async def text_logprobs(self, text: str, adapter: str | None) -> list[float]:
        return await self.inner.text_logprobs(text, adapter)

    async def load(self, adapter: AdapterRef) -> float:
        return await self.inner.load(adapter)

    async def unload(self, ref: str) -> None:
        await self.inner.unload(ref)

    def resident(self) -> Sequence[str]:
        return self.inner.resident()

    def host_cached(self) -> Sequence[str]:
        return self.inner.host_cached()

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def word_token(self, word: str) -> int:
        return self.inner.word_token(word)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self.inner.render_chat(messages)

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.inner.serve(task_status=task_status)

    async def aclose(self) -> None:
        await self.inner.aclose()
