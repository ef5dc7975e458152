"""Device placement: `--device`/`--dtype` chosen in one place, every torch path on that device, device
memory a budget (a refusal naming what did not fit, never a crash), the mixed-adapter LoRA matmul equal
to PEFT on the device. On the CPU with device="cpu"; the tests marked `cuda` need a GPU and skip without."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from peft import LoraConfig, get_peft_model  # noqa: E402

from mint.api.openai import inference_error  # noqa: E402
from mint.bases.load import load_base  # noqa: E402
from mint.cli import cli  # noqa: E402
from mint.device import (  # noqa: E402
    CPU,
    Placement,
    PlacementError,
    check_device,
    check_dtype,
    choose_placement,
    configured_placement,
)
from mint.lora.multi import MultiLora  # noqa: E402
from mint.serving.engine import AdapterRef, DeviceMemoryExhausted, SamplingParams, complete  # noqa: E402
from mint.serving.torch_engine import TorchEngine  # noqa: E402
from mint.training.multi_policy import MultiPolicyTrainer, TrainConfig  # noqa: E402
from mint.training.tasks import parse_task, word_token  # noqa: E402

CUDA = Placement("cuda:0", "bfloat16")
# Beside @pytest.mark.cuda (what `pytest -m cuda` selects): without a GPU, skipped saying why.
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=f"needs a CUDA GPU; torch {torch.__version__} sees none (deploy/gpu-check.sh runs these on one)",
)
LORA_TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


# -- choosing the placement ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "dtype", "message"),
    [
        ("gpu", "auto", "--device: 'gpu' is not one of auto|cpu|cuda[:N]"),
        ("cuda:", "auto", "--device: 'cuda:' is not one of"),
        ("cpu", "int8", "--dtype: 'int8' is not auto or one of float32, fp32, bfloat16"),
    ],
)
def test_a_bad_spelling_is_refused_naming_the_option(device: str, dtype: str, message: str) -> None:
    with pytest.raises(PlacementError, match=message.replace("|", r"\|").replace("[", r"\[")):
        choose_placement(device, dtype)


def test_auto_is_cuda_in_bf16_when_there_is_a_gpu_else_the_cpu_in_fp32() -> None:
    expected = CUDA if torch.cuda.is_available() else CPU
    assert choose_placement() == expected
    assert choose_placement("cpu") == Placement("cpu", "float32")
    assert choose_placement("cpu", "bf16") == Placement("cpu", "bfloat16")
    assert check_device("cuda:3") == "cuda:3"
    assert check_dtype("fp16") == "float16"


def test_a_cuda_device_this_machine_lacks_is_refused() -> None:
    with pytest.raises(PlacementError, match=r"--device: 'cuda:99'"):
        choose_placement("cuda:99")


def test_the_environment_configures_every_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINT_DEVICE", "cpu")
    monkeypatch.setenv("MINT_DTYPE", "bf16")
    assert configured_placement() == Placement("cpu", "bfloat16")
    monkeypatch.setenv("MINT_DEVICE", "metal")
    with pytest.raises(PlacementError, match=r"\$MINT_DEVICE: 'metal' is not one of"):
        configured_placement()


def test_the_commands_refuse_a_bad_device_before_starting_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["up", "--home", str(tmp_path), "--device", "tpu"])
    assert result.exit_code == 2
    assert "Invalid value for '--device': 'tpu' is not one of auto|cpu|cuda[:N]" in result.output
    result = CliRunner().invoke(
        cli, ["actor", "trainer", "--replica", "t-1", "--home", str(tmp_path), "--dtype", "half"]
    )
    assert result.exit_code == 2
    assert "Invalid value for '--dtype': 'half'" in result.output


def test_the_base_loads_in_the_chosen_dtype_with_sdpa_attention(base_dir: Path) -> None:
    model, _ = load_base(base_dir, Placement("cpu", "bfloat16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "sdpa"


def test_a_bf16_base_trains_float32_slots(base_dir: Path) -> None:
    """The GPU's arithmetic (a bfloat16 base, float32 adapters as PEFT keeps them), here on the CPU."""
    model, tokenizer = load_base(base_dir, Placement("cpu", "bfloat16"))
    task = parse_task("token:the", word_token(tokenizer))
    trainer = MultiPolicyTrainer(model, tokenizer, ["acme/a"], task, TrainConfig(seed=1, group_size=4))
    slot = trainer.multi.parameters("acme/a")
    assert {p.dtype for p in slot} == {torch.float32}
    before = [p.detach().clone() for p in slot]
    metrics = trainer.step(1)["acme/a"]
    assert torch.isfinite(torch.tensor(metrics.loss))
    assert any(not torch.equal(b, p) for b, p in zip(before, slot, strict=True))
    assert {p.dtype for p in trainer.multi.model.parameters() if not p.requires_grad} == {torch.bfloat16}


# -- device memory as a budget ---------------------------------------------------------------------


@pytest.fixture
async def budgeted(base_dir: Path) -> AsyncIterator[TorchEngine]:
    engine = TorchEngine(base_dir, slots=4, placement=CPU)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.serve)
        yield engine
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_load_that_does_not_fit_is_refused_naming_it_and_the_engine_serves_on(
    budgeted: TorchEngine, adapters: list[AdapterRef]
) -> None:
    first, second = adapters
    slot = budgeted.multi.slot_bytes(first.rank)
    kv = 64 * budgeted.kv_bytes_per_token  # one short request's KV cache
    budgeted.memory_budget_bytes = budgeted.device_bytes() + slot + kv
    await budgeted.load(first)
    with pytest.raises(DeviceMemoryExhausted, match=rf"{second.ref}: its slot needs {slot:,} bytes"):
        await budgeted.load(second)
    assert budgeted.resident() == [first.ref]  # nothing half-made is left behind
    done = await complete(budgeted, "hello", first.ref, SamplingParams(max_tokens=4, temperature=0.0))
    assert len(done.tokens) == 4


@pytest.mark.anyio
async def test_a_request_whose_kv_cache_does_not_fit_is_a_503_and_the_next_is_served(
    budgeted: TorchEngine,
) -> None:
    budgeted.memory_budget_bytes = budgeted.device_bytes() + 64 * budgeted.kv_bytes_per_token
    with pytest.raises(DeviceMemoryExhausted, match="its KV cache") as refused:
        await complete(budgeted, "hello", None, SamplingParams(max_tokens=200, temperature=0.0))
    answer = inference_error(refused.value, "prompt")
    assert answer.status == 503
    assert "memory budget" in str(answer)
    assert budgeted.active == 0
    done = await complete(budgeted, "hello", None, SamplingParams(max_tokens=8, temperature=0.0))
    assert len(done.tokens) == 8


# -- the mixed-adapter LoRA matmul on the device ---------------------------------------------------


def _mixed_against_peft(base_dir: Path, placement: Placement, tolerance: float) -> None:
    """Rows of one batch on different slots equal PEFT with each row's adapter alone."""
    multi = MultiLora(load_base(base_dir, placement)[0], LORA_TARGETS)
    generator = torch.Generator().manual_seed(7)
    for i, slot in enumerate(("a", "b")):
        multi.add(slot, rank=4 + 4 * i, alpha=8.0)
        with torch.no_grad():
            for p in multi.parameters(slot):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    ids = torch.randint(0, 512, (3, 10), generator=torch.Generator().manual_seed(1))
    slots = ["a", "b", "a"]
    with torch.no_grad(), multi.route(slots):
        mixed = multi.model(input_ids=ids.to(multi.device)).logits.float().cpu()
    for slot, rank in (("a", 4), ("b", 8)):
        peft_model = get_peft_model(
            load_base(base_dir, placement)[0],
            LoraConfig(r=rank, lora_alpha=8.0, target_modules=LORA_TARGETS, lora_dropout=0.0),
        )
        state = {k.replace(".weight", ".default.weight"): v for k, v in multi.state(slot).items()}
        assert not peft_model.load_state_dict(state, strict=False).unexpected_keys
        rows = [i for i, s in enumerate(slots) if s == slot]
        with torch.no_grad():
            theirs = peft_model.eval()(input_ids=ids[rows].to(multi.device)).logits.float().cpu()
        torch.testing.assert_close(mixed[rows], theirs, rtol=tolerance, atol=tolerance)


def test_the_mixed_lora_matmul_equals_peft_on_the_cpu_in_fp32(base_dir: Path) -> None:
    _mixed_against_peft(base_dir, CPU, 1e-5)


@pytest.mark.cuda
@needs_gpu
def test_the_mixed_lora_matmul_equals_peft_on_cuda_in_bf16(base_dir: Path) -> None:
    _mixed_against_peft(base_dir, CUDA, 3e-2)


# -- on a GPU --------------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_gpu
@pytest.mark.anyio
async def test_the_engine_runs_on_cuda_with_a_pinned_host_tier(
    base_dir: Path, adapters: list[AdapterRef]
) -> None:
    engine = TorchEngine(base_dir, slots=2, placement=CUDA)
    assert {p.device.type for p in engine.multi.model.parameters()} == {"cuda"}
    async with anyio.create_task_group() as tg:
        await tg.start(engine.serve)
        first = adapters[0]
        await engine.load(first)
        assert all(p.is_cuda and p.dtype == torch.bfloat16 for p in engine.multi.parameters(first.ref))
        greedy = SamplingParams(max_tokens=6, temperature=0.0)
        before = await complete(engine, "hello there", first.ref, greedy)
        await engine.unload(first.ref)
        held, _, _ = engine._host[first.ref]
        assert all(t.is_pinned() for t in held.values())
        await engine.load(first)  # from the pinned tier, copied in asynchronously
        after = await complete(engine, "hello there", first.ref, greedy)
        assert after.tokens == before.tokens
        tg.cancel_scope.cancel()


@pytest.mark.cuda
@needs_gpu
def test_a_grpo_step_trains_slots_on_cuda(base_dir: Path) -> None:
    model, tokenizer = load_base(base_dir, CUDA)
    task = parse_task("token:the", word_token(tokenizer))
    trainer = MultiPolicyTrainer(model, tokenizer, ["acme/a", "acme/b"], task, TrainConfig(seed=1))
    before = [p.detach().clone() for p in trainer.multi.parameters("acme/a")]
    metrics = trainer.step(1)
    assert set(metrics) == {"acme/a", "acme/b"}
    after = trainer.multi.parameters("acme/a")
    assert all(p.is_cuda for p in after)
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


# -- vLLM's settings -------------------------------------------------------------------------------


def _vllm_arguments(cpu: bool) -> dict[str, object]:
    from mint.serving.vllm_engine import vllm_arguments

    return vllm_arguments(
        Path("/bases/tiny"),
        cpu=cpu,
        zero=cpu,
        slots=8,
        cpu_slots=32,
        max_rank=16,
        max_batch=64,
        max_model_len=None,
        dtype="bfloat16",
        gpu_memory_utilization=0.85,
    )


def test_vllm_on_a_gpu_takes_the_configured_memory_share_and_dtype_without_the_cpu_workarounds() -> None:
    gpu = _vllm_arguments(cpu=False)
    assert gpu["dtype"] == "bfloat16"
    assert gpu["gpu_memory_utilization"] == 0.85
    assert gpu["max_loras"] == 8 and gpu["max_cpu_loras"] == 40  # no zero adapter's slot
    assert "enforce_eager" not in gpu and "enable_chunked_prefill" not in gpu


def test_vllm_on_a_cpu_keeps_its_workarounds() -> None:
    cpu = _vllm_arguments(cpu=True)
    assert cpu["dtype"] == "float32"
    assert cpu["enforce_eager"] is True and cpu["enable_chunked_prefill"] is False
    assert cpu["gpu_memory_utilization"] == 0.2
    assert cpu["max_loras"] == 9  # the zero adapter for base requests takes one


# -- the benchmarks' device measurements -----------------------------------------------------------


def test_packed_tensors_reach_the_device_in_one_copy_equal_to_per_tensor(
    base_dir: Path, tmp_path: Path
) -> None:
    from mint.adapters.packed import write_packed
    from mint.adapters.synthetic import random_adapter
    from mint.adapters.tensors import adapter_tensors, load_packed_tensors
    from mint.bases.info import read_base_info
    from mint.bench.serve_bench import _packed_to_device

    adapter = random_adapter(read_base_info(base_dir), r=4, alpha=8.0, targets=tuple(LORA_TARGETS), seed=2)
    write_packed(tmp_path / "packed", adapter)
    moved = _packed_to_device(load_packed_tensors(tmp_path / "packed")[1], CPU)
    expected = adapter_tensors(adapter)
    assert moved.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(moved[name], tensor, rtol=0, atol=0)
    storages = {t.untyped_storage().data_ptr() for t in moved.values()}
    assert len(storages) == 1, "one copy of the buffer, every tensor a view of it"


def test_decode_is_measured_against_the_bandwidth_bound(base_dir: Path) -> None:
    from mint.bench.serve_bench import decode_bound

    said: list[str] = []
    out = decode_bound(base_dir, 8, said.append, CPU)
    assert out["weight_bytes_per_token"] == sum(4 * n for n in _parameter_counts(base_dir))
    assert out["decode_bound_tokens_per_s"] == pytest.approx(
        out["copy_bandwidth_gb_per_s"] * 1e9 / out["weight_bytes_per_token"]
    )
    assert out["decode_fraction_of_bound"] > 0 and "tok/s" in said[0]


def _parameter_counts(base_dir: Path) -> list[int]:
    return [p.numel() for p in load_base(base_dir, CPU)[0].parameters()]


def test_the_benchmarks_refuse_an_unknown_base() -> None:
    result = CliRunner().invoke(cli, ["bench", "serve", "--base", "synthetic-7b", "--device", "cpu"])
    assert result.exit_code == 2
    assert "Invalid value for --base: 'synthetic-7b' is not one of tiny, synthetic-1b" in result.output
