"""Running a suite on an engine: the candidate and its baseline answer the same prompts with the same
seeds, in the same batches, so the only difference between their scores is the adapter."""

from __future__ import annotations

import math
from dataclasses import dataclass

import anyio

from mint.evaluation.suites import Case, Suite
from mint.serving.engine import Engine, SamplingParams, complete


@dataclass(frozen=True)
class Scores:
    candidate: float
    baseline: float
    samples: int  # completions (or, for perplexity, suites of texts) scored per side


async def _completions(engine: Engine, suite: Suite, adapter: str | None, out: list[float]) -> None:
    score = suite.score
    assert score is not None

    async def one(case: Case, seed: int) -> None:
        params = SamplingParams(max_tokens=suite.max_tokens, temperature=suite.temperature, seed=seed)
        done = await complete(engine, case.prompt, adapter, params)
        out.append(score(case, done.text, done.tokens))

    async with anyio.create_task_group() as tg:
        for case in suite.cases:
            for seed in range(suite.samples):
                tg.start_soon(one, case, seed)


async def _perplexity(engine: Engine, suite: Suite, adapter: str | None, out: list[float]) -> None:
    """One score for the whole suite: exp of the mean token log-probability over every text."""
    logprobs: list[float] = []
    for case in suite.cases:
        logprobs += await engine.text_logprobs(case.prompt, adapter)
    out.append(math.exp(sum(logprobs) / len(logprobs)) if logprobs else 0.0)


async def _side(engine: Engine, suite: Suite, adapter: str | None, out: list[float]) -> None:
    await (_completions if suite.score is not None else _perplexity)(engine, suite, adapter, out)


async def run_suite(engine: Engine, suite: Suite, candidate: str, baseline: str | None) -> Scores:
    """`candidate` and `baseline` are revision refs loaded on `engine`; a None baseline is the base."""
    ours: list[float] = []
    theirs: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(_side, engine, suite, candidate, ours)
        tg.start_soon(_side, engine, suite, baseline, theirs)
    return Scores(sum(ours) / len(ours), sum(theirs) / len(theirs), len(ours))
