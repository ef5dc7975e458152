"""The engine port: one resident base, adapter slots, and generation that mixes adapters per request.

Two engines implement it (mint/serving/torch_engine.py, mint/serving/vllm_engine.py) and one contract
suite (tests/engine_contract.py) holds both to it. Adapters are named by immutable revision refs
(`tenant/name@rev`), so a new revision can never be served from a stale cache entry of an old one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from anyio.abc import TaskStatus


class EngineError(RuntimeError):
    pass


class AdapterNotLoaded(EngineError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"adapter {ref!r} is not loaded on this engine")
        self.ref = ref


class SlotsFull(EngineError):
    pass


class Overloaded(EngineError):
    """The admission queue is full: retry later (HTTP 429)."""


class DeviceMemoryExhausted(EngineError):
    """What was asked for does not fit in the engine's device memory (or its budget): a load refused, or
    a request answered 503 with Retry-After. The message names what did not fit; the engine serves on."""


class ContextExceeded(EngineError):
    """The prompt and `max_tokens` do not fit the model's context (HTTP 400): refused before any
    work, so a request can never run past the positions the base was trained for."""

    def __init__(self, prompt_tokens: int, max_tokens: int, context_length: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length
        self.prompt_too_long = prompt_tokens >= context_length
        if self.prompt_too_long:
            why = f"the prompt is {prompt_tokens} tokens; the model's context is {context_length}"
        else:
            why = (
                f"max_tokens: {max_tokens} more tokens after a {prompt_tokens}-token prompt exceed the "
                f"model's context of {context_length} (at most {context_length - prompt_tokens})"
            )
        super().__init__(why)


def check_context(prompt_tokens: int, params: SamplingParams, context_length: int) -> None:
    """Refuse (ContextExceeded) a request whose prompt plus `max_tokens` exceeds the context."""
    if prompt_tokens + params.max_tokens > context_length:
        raise ContextExceeded(prompt_tokens, params.max_tokens, context_length)


@dataclass(frozen=True)
class AdapterRef:
    """A revision ready to load: a local PEFT-layout directory whose sha256 was checked on fetch."""

    ref: str  # tenant/name@rev
    directory: Path
    sha256: str
    rank: int


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False


FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Delta:
    """A piece of a streamed completion: new text and its tokens; `finish` on the last one."""

    text: str
    tokens: tuple[int, ...]
    logprobs: tuple[float, ...] = ()
    finish: FinishReason | None = None


@dataclass
class Completion:
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: FinishReason = "length"
    prompt_tokens: int = 0

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        self.tokens.extend(delta.tokens)
        self.logprobs.extend(delta.logprobs)
        if delta.finish is not None:
            self.finish = delta.finish


class Engine(Protocol):
    base_id: str
    kind: str
    slots: int  # adapters resident at once (GPU slots; on CPU, the same bound)
    cpu_slots: int  # adapters kept in host memory after they leave the slots

    async def load(self, adapter: AdapterRef) -> float:
        """Make `adapter` resident (SlotsFull if every slot is taken); returns milliseconds taken."""
        ...

    async def unload(self, ref: str) -> None:
        """Free a slot. In-flight requests of `ref` finish first (it drains)."""
        ...

    def resident(self) -> Sequence[str]: ...

    def host_cached(self) -> Sequence[str]:
        """Adapters off the slots but still in host memory (the CPU tier): loading them is cheap."""
        ...

    def generate(self, prompt: str, adapter: str | None, params: SamplingParams) -> AsyncIterator[Delta]:
        """Stream a completion of `prompt` under `adapter` (None: the base). Requests of different
        adapters share batches."""
        ...

    async def text_logprobs(self, text: str, adapter: str | None) -> list[float]:
        """The log-probability of each token of `text` given the ones before it, under `adapter`
        (None: the base); the first token has none. What perplexity suites score."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def word_token(self, word: str) -> int: ...

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The prompt for a chat, through the base's chat template, ready for the assistant's turn."""
        ...

    async def serve(self, *, task_status: TaskStatus[None] = ...) -> None:
        """Run the engine's scheduling loop until cancelled (started once, outside actor restarts, so
        a crashed actor never strands an in-flight request)."""
        ...

    async def aclose(self) -> None: ...


async def complete(engine: Engine, prompt: str, adapter: str | None, params: SamplingParams) -> Completion:
    out = Completion(prompt_tokens=engine.count_tokens(prompt))
    async for delta in engine.generate(prompt, adapter, params):
        out.add(delta)
    return out


@asynccontextmanager
async def closing(deltas: AsyncIterator[Delta]) -> AsyncIterator[AsyncIterator[Delta]]:
    """`deltas`, closed on exit. Both engines stream from async generators; closing one at once (its
    client went away) makes the engine drop the request now, not when the generator is collected."""
    try:
        yield deltas
    finally:
        if isinstance(deltas, AsyncGenerator):
            await deltas.aclose()
