"""The engine port's contract, written once. A backend's module subclasses EngineContract and provides
the `engine` fixture (a started engine on the tiny base) and the `adapters` fixture (two PEFT
adapters of that base, as AdapterRefs)."""

from __future__ import annotations

import anyio
import pytest

from mint.serving.engine import (
    AdapterNotLoaded,
    AdapterRef,
    Completion,
    Engine,
    SamplingParams,
    SlotsFull,
    complete,
)

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)
PROMPT = "The weather today is"


@pytest.mark.anyio
class EngineContract:
    async def test_load_resident_unload(self, engine: Engine, adapters: list[AdapterRef]) -> None:
        a, b = adapters
        assert engine.resident() == []
        assert await engine.load(a) >= 0
        await engine.load(b)
        assert sorted(engine.resident()) == sorted([a.ref, b.ref])
        await engine.unload(a.ref)
        assert list(engine.resident()) == [b.ref]
        with pytest.raises(AdapterNotLoaded, match="acme/a@r1"):
            await complete(engine, PROMPT, a.ref, GREEDY)

    async def test_slots_are_bounded(
        self, engine: Engine, adapters: list[AdapterRef], spare: list[AdapterRef]
    ) -> None:
        for ref in [*adapters, *spare][: engine.slots]:
            await engine.load(ref)
        with pytest.raises(SlotsFull):
            await engine.load([*adapters, *spare][engine.slots])

    async def test_an_adapter_changes_the_output_and_is_deterministic(
        self, engine: Engine, adapters: list[AdapterRef]
    ) -> None:
        a, _ = adapters
        await engine.load(a)
        base = await complete(engine, PROMPT, None, GREEDY)
        tuned = await complete(engine, PROMPT, a.ref, GREEDY)
        again = await complete(engine, PROMPT, a.ref, GREEDY)
        assert tuned.tokens == again.tokens
        assert tuned.tokens != base.tokens
        assert len(tuned.tokens) == 12 and tuned.finish == "length"

    async def test_a_mixed_batch_equals_each_request_alone(
        self, engine: Engine, adapters: list[AdapterRef]
    ) -> None:
        for ref in adapters:
            await engine.load(ref)
        names: list[str | None] = [adapters[0].ref, None, adapters[1].ref, adapters[0].ref]
        prompts = [PROMPT, "Once upon a time", "My favourite colour is", "Answer briefly:"]
        alone = [await complete(engine, p, n, GREEDY) for p, n in zip(prompts, names, strict=True)]
        together: list[Completion | None] = [None] * 4

        async def one(i: int) -> None:
            together[i] = await complete(engine, prompts[i], names[i], GREEDY)

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i)
        assert [c.tokens for c in together if c] == [c.tokens for c in alone]

    async def test_streamed_pieces_make_the_completion(
        self, engine: Engine, adapters: list[AdapterRef]
    ) -> None:
        pieces = [d async for d in engine.generate(PROMPT, None, GREEDY)]
        whole = await complete(engine, PROMPT, None, GREEDY)
        assert "".join(p.text for p in pieces) == whole.text
        assert [t for p in pieces for t in p.tokens] == whole.tokens
        assert pieces[-1].finish == "length" and all(p.finish is None for p in pieces[:-1])

    async def test_stop_strings_end_the_completion_before_them(self, engine: Engine) -> None:
        text = (await complete(engine, PROMPT, None, SamplingParams(max_tokens=24, temperature=0.0))).text
        stop = text[len(text) // 2 : len(text) // 2 + 3]
        assert stop.strip(), f"need a visible stop string inside {text!r}"
        stopped = await complete(
            engine, PROMPT, None, SamplingParams(max_tokens=24, temperature=0.0, stop=(stop,))
        )
        assert stopped.finish == "stop"
        assert stopped.text == text[: text.index(stop)]

    async def test_seeded_sampling_repeats_and_logprobs_are_reported(self, engine: Engine) -> None:
        params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=7, logprobs=True)
        first = await complete(engine, PROMPT, None, params)
        second = await complete(engine, PROMPT, None, params)
        assert first.tokens == second.tokens
        assert len(first.logprobs) == len(first.tokens) and all(lp <= 0 for lp in first.logprobs)

    async def test_text_logprobs_score_each_token_under_an_adapter(
        self, engine: Engine, adapters: list[AdapterRef]
    ) -> None:
        a, _ = adapters
        await engine.load(a)
        text = "Once upon a time there was a small model"
        base = await engine.text_logprobs(text, None)
        tuned = await engine.text_logprobs(text, a.ref)
        assert len(base) == len(tuned) == engine.count_tokens(text) - 1
        assert all(lp <= 0 for lp in base + tuned)
        assert await engine.text_logprobs(text, a.ref) == pytest.approx(tuned, abs=1e-4)
        assert tuned != pytest.approx(base, abs=1e-3)
        with pytest.raises(AdapterNotLoaded):
            await engine.text_logprobs(text, adapters[1].ref)

    async def test_unload_drains_in_flight_requests(self, engine: Engine, adapters: list[AdapterRef]) -> None:
        a, _ = adapters
        await engine.load(a)
        params = SamplingParams(max_tokens=40, temperature=0.0)
        got: list[Completion] = []
        async with anyio.create_task_group() as tg:
            stream = engine.generate(PROMPT, a.ref, params)
            first = await anext(stream)  # the request is in flight

            async def rest() -> None:
                out = Completion()
                out.add(first)
                async for delta in stream:
                    out.add(delta)
                got.append(out)

            tg.start_soon(rest)
            await engine.unload(a.ref)
            assert got and len(got[0].tokens) == 40, "unload waited for the in-flight request"
        assert a.ref not in engine.resident()
