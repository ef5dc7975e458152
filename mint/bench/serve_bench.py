"""`mint bench serve`: mixed-adapter batching vs swapping adapters, and packed vs per-tensor loads.

mixed: the torch engine serves requests for N adapters together, each row on its own slot.
swap:  peft with the same N adapters loaded, `set_adapter` per adapter, one generate per request group
       (how a single-adapter server serves many adapters).
Both generate the same number of greedy tokens for the same prompts; tokens/s side by side.
packed: an adapter's cold load into device memory, packed (one read, one host-to-device copy of the
  buffer its tensors share) vs PEFT's per-tensor layout (a copy per tensor).
decode: one request's decode tokens/s against the bound the device's memory bandwidth sets: a decode
  step reads every weight once, so at batch 1 tokens/s <= bandwidth / weight bytes (the bandwidth is a
  device-to-device copy's, bytes read plus written, measured in the same run).
Everything runs on one placement (mint.device); on CUDA timers wait for the device's queued work.
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import torch
from peft import PeftModel

from mint.adapters.packed import write_packed
from mint.adapters.peft_layout import read_peft, write_peft
from mint.adapters.synthetic import random_adapter
from mint.adapters.tensors import adapter_tensors, load_packed_tensors
from mint.bases.info import read_base_info
from mint.bases.load import load_base
from mint.device import CPU, Placement
from mint.serving.engine import AdapterRef, Engine, SamplingParams, complete
from mint.serving.torch_engine import TorchEngine

Say = Callable[[str], None]
TARGETS = ("q_proj", "v_proj")
PROMPT = "The answer is"


def _adapters(base: Path, count: int, root: Path) -> list[AdapterRef]:
    info = read_base_info(base)
    refs = []
    for i in range(count):
        adapter = random_adapter(info, r=8, alpha=16.0, targets=TARGETS, seed=i, b_std=0.1)
        directory = root / f"a{i}"
        refs.append(AdapterRef(f"bench/a{i}@r1", directory, write_peft(directory, adapter), 8))
    return refs


async def _mixed(engine: Engine, refs: list[AdapterRef], requests: int, tokens: int) -> float:
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.serve)
        for ref in refs:
            await engine.load(ref)
        await complete(engine, PROMPT, refs[0].ref, params)  # warm-up: first-request costs are not batching
        began = time.perf_counter()
        async with anyio.create_task_group() as batch:
            for i in range(requests):
                batch.start_soon(complete, engine, PROMPT, refs[i % len(refs)].ref, params)
        elapsed = time.perf_counter() - began
        tg.cancel_scope.cancel()
    await engine.aclose()
    return requests * tokens / elapsed


def _swap(base: Path, refs: list[AdapterRef], requests: int, tokens: int, placement: Placement) -> float:
    model, tokenizer = load_base(base, placement)
    peft = PeftModel.from_pretrained(model, str(refs[0].directory), adapter_name="a0")
    for i, ref in enumerate(refs[1:], start=1):
        peft.load_adapter(str(ref.directory), adapter_name=f"a{i}")
    ids = torch.tensor([tokenizer.encode(PROMPT, add_special_tokens=False)], device=placement.torch_device)
    groups: dict[int, int] = {}
    for i in range(requests):
        groups[i % len(refs)] = groups.get(i % len(refs), 0) + 1
    began = time.perf_counter()
    with torch.no_grad():
        for adapter, size in groups.items():
            peft.set_adapter(f"a{adapter}")
            peft.generate(  # type: ignore[no-untyped-call]
                input_ids=ids.repeat(size, 1),
                attention_mask=torch.ones_like(ids).repeat(size, 1),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or 0,
            )
    _synchronize(placement)
    return requests * tokens / (time.perf_counter() - began)


def _synchronize(placement: Placement) -> None:
    if placement.on_cuda:
        torch.cuda.synchronize(placement.torch_device)


def mixed_batching(
    base: Path,
    adapters: int,
    requests: int,
    tokens: int,
    say: Say,
    placement: Placement = CPU,
    vllm: bool = False,
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mint-serve-") as tmp:
        refs = _adapters(base, adapters, Path(tmp))
        engine = TorchEngine(base, slots=adapters, max_batch=requests, placement=placement)
        mixed = anyio.run(_mixed, engine, refs, requests, tokens)
        del engine
        swap = _swap(base, refs, requests, tokens, placement)
        out = {"mixed_tokens_per_s": mixed, "swap_tokens_per_s": swap, "mixed_batch_speedup": mixed / swap}
        say(f"  {adapters} adapters: torch engine mixed {mixed:,.0f} tok/s, peft swapping {swap:,.0f} tok/s")
        if vllm:
            from mint.serving.vllm_engine import VllmEngine

            served = VllmEngine(
                base, slots=adapters, max_batch=requests, work_dir=Path(tmp) / "vllm", dtype=placement.dtype
            )
            out["vllm_mixed_tokens_per_s"] = anyio.run(_mixed, served, refs, requests, tokens)
            say(f"  {adapters} adapters: vLLM engine mixed {out['vllm_mixed_tokens_per_s']:,.0f} tok/s")
    return out


def packed_loads(
    base: Path, rank: int, repeats: int, say: Say, placement: Placement = CPU
) -> dict[str, float]:
    """Cold-load time of one adapter from each layout into device memory: read, made into tensors, and
    copied to the device (page cache warm for both: the difference is the layout, not the disk)."""
    info = read_base_info(base)
    adapter = random_adapter(
        info,
        r=rank,
        alpha=2.0 * rank,
        targets=tuple(sorted({m.rsplit(".", 1)[-1] for m in info.linear_shapes} - {"lm_head"})),
    )
    with tempfile.TemporaryDirectory(prefix="mint-packed-") as tmp:
        peft_dir, packed_dir = Path(tmp) / "peft", Path(tmp) / "packed"
        write_peft(peft_dir, adapter)
        write_packed(packed_dir, adapter)
        per_tensor, packed = [], []
        for _ in range(repeats):
            began = time.perf_counter()
            _per_tensor_to_device(adapter_tensors(read_peft(peft_dir, info)), placement)
            _synchronize(placement)
            per_tensor.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            _packed_to_device(load_packed_tensors(packed_dir, info)[1], placement)
            _synchronize(placement)
            packed.append((time.perf_counter() - began) * 1000)
        size = sum(f.stat().st_size for f in packed_dir.iterdir())
    peft_ms, packed_ms = statistics.median(per_tensor), statistics.median(packed)
    say(f"  rank {rank}, {size / 1e6:.1f} MB: per-tensor {peft_ms:.1f} ms, packed {packed_ms:.1f} ms")
    return {
        "adapter_mb": size / 1e6,
        "per_tensor_load_ms": peft_ms,
        "packed_load_ms": packed_ms,
        "packed_load_speedup": peft_ms / packed_ms,
    }


def _per_tensor_to_device(tensors: dict[str, torch.Tensor], placement: Placement) -> dict[str, torch.Tensor]:
    return {name: t.to(placement.torch_device, copy=True) for name, t in tensors.items()}


def _packed_to_device(tensors: dict[str, torch.Tensor], placement: Placement) -> dict[str, torch.Tensor]:
    """The packed tensors on the device from one copy of the buffer they are views of."""
    first = next(iter(tensors.values()))
    flat = torch.empty(0, dtype=torch.uint8).set_(first.untyped_storage())
    moved = flat.to(placement.torch_device, copy=True)
    out = {}
    for name, t in tensors.items():
        start = t.storage_offset() * t.element_size()
        out[name] = moved[start : start + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
    return out


def copy_bandwidth(placement: Placement, megabytes: int = 1024, repeats: int = 10) -> float:
    """Bytes per second a device-to-device copy moves, counting bytes read and bytes written."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=placement.torch_device)
    target = torch.empty_like(source)
    target.copy_(source)  # warm-up
    _synchronize(placement)
    began = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    _synchronize(placement)
    return 2 * source.numel() * repeats / (time.perf_counter() - began)


async def _decode_rate(engine: TorchEngine, tokens: int) -> float:
    """One greedy request's tokens/s after its first token (decode steps alone, prefill excluded)."""
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.serve)
        await complete(engine, PROMPT, None, params)  # warm-up
        stamps = []
        async for _ in engine.generate(PROMPT, None, params):
            stamps.append(time.perf_counter())
        tg.cancel_scope.cancel()
    await engine.aclose()
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def decode_bound(base: Path, tokens: int, say: Say, placement: Placement = CPU) -> dict[str, float]:
    engine = TorchEngine(base, slots=1, max_batch=1, placement=placement)
    weight_bytes = engine.base_bytes
    measured = anyio.run(_decode_rate, engine, tokens)
    del engine
    bandwidth = copy_bandwidth(placement)
    bound = bandwidth / weight_bytes
    say(
        f"  decode {measured:,.1f} tok/s at batch 1; {weight_bytes / 1e9:.2f} GB of weights per token at"
        f" {bandwidth / 1e12:.2f} TB/s bound it at {bound:,.1f} tok/s ({measured / bound:.1%})"
    )
    return {
        "decode_tokens_per_s": measured,
        "weight_bytes_per_token": float(weight_bytes),
        "copy_bandwidth_gb_per_s": bandwidth / 1e9,
        "decode_bound_tokens_per_s": bound,
        "decode_fraction_of_bound": measured / bound,
    }


def bench_serve(
    base: Path, packed_base: Path, say: Say, placement: Placement, requests: int = 64, tokens: int = 16
) -> dict[str, float]:
    out: dict[str, float] = {}
    say(f"on {placement.describe()}")
    vllm = importlib.util.find_spec("vllm") is not None
    for adapters in (8, 64):
        say(f"mixed-adapter batching vs swapping, {requests} requests x {tokens} tokens")
        for key, value in mixed_batching(base, adapters, requests, tokens, say, placement, vllm).items():
            out[f"a{adapters}_{key}"] = value
    say(f"packed vs per-tensor PEFT loads into {placement.device} memory, on {packed_base.name}")
    out.update(packed_loads(packed_base, rank=64, repeats=9, say=say, placement=placement))
    say(f"decode against the memory-bandwidth bound, on {base.name}")
    out.update(decode_bound(base, max(tokens, 32), say, placement))
    return out
