"""`mint bench train`: the two claims of adapter-only, multi-policy training, measured side by side.

handoff: one RL step = train step + hand the new weights to the rollout engine + rollouts.
  adapter-only: export the adapter (safetensors) -> the resident engine loads it into a slot -> rollouts
  merged:       merge LoRA into the weights -> save the full checkpoint -> the engine reloads it -> rollouts
multi-policy: K GRPO policies trained together in shared batches vs one after another (same steps,
  same batch per policy), each mode in its own process so peak RSS (and on CUDA the peak of device
  memory allocated) is measured cleanly.
Everything runs on one placement (mint.device): `--device cuda` puts the trainer, the rollout engine
and the reloaded merged base on the GPU.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mint.bases.load import load_base
from mint.device import CPU, Placement
from mint.lora.multi import MultiLora
from mint.training.multi_policy import MultiPolicyTrainer, TrainConfig
from mint.training.sampling import sample
from mint.training.tasks import parse_task, word_token

Say = Callable[[str], None]


def _trainer(
    base: Path, policies: list[str], steps: int, placement: Placement, seed: int = 0
) -> MultiPolicyTrainer:
    model, tokenizer = load_base(base, placement)
    # q,v only: the common serving setup, and mergeable on bases whose lm_head is tied to the embeddings.
    config = TrainConfig(
        steps=steps,
        seed=seed,
        targets=("q_proj", "v_proj"),
        group_size=4,
        prompts_per_step=2,
        max_new_tokens=16,
    )
    task = parse_task("token:the", word_token(tokenizer))
    return MultiPolicyTrainer(model, tokenizer, policies, task, config)


def _rollouts(engine: MultiLora, tokenizer: Any, slot: str | None, seed: int) -> None:
    prompt = tokenizer.encode("The answer is", add_special_tokens=False)
    pad = tokenizer.pad_token_id or 0
    sample(
        engine,
        [prompt] * 8,
        [slot] * 8,
        16,
        1.0,
        torch.Generator().manual_seed(seed),
        pad,
        tokenizer.eos_token_id,
    )


def _merged_state(trainer: MultiPolicyTrainer, policy: str) -> dict[str, torch.Tensor]:
    """The base's weights with the policy's LoRA folded in: what a merge-then-sync pipeline ships."""
    merged = {}
    for key, value in trainer.multi.model.state_dict().items():
        if "lora_" in key:
            continue
        merged[key.replace(".base.weight", ".weight")] = value.detach().clone()
    for name, layer in trainer.multi.layers.items():
        delta = (layer.lora_B[policy] @ layer.lora_A[policy]) * layer.scales[policy]
        merged[f"{name}.weight"] += delta.detach()
    if getattr(trainer.multi.model.config, "tie_word_embeddings", False):
        merged.pop("lm_head.weight", None)  # tied: saved once, as the embeddings
    return merged


def _ship_merged(state: dict[str, torch.Tensor], base: Path, destination: Path) -> int:
    destination.mkdir()
    save_file(state, str(destination / "model.safetensors"))
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        if (base / name).is_file():
            shutil.copyfile(base / name, destination / name)
    return (destination / "model.safetensors").stat().st_size


def _synchronize(placement: Placement) -> None:
    """Wait for the device's queued work, so a timer read after it counts that work."""
    if placement.on_cuda:
        torch.cuda.synchronize(placement.torch_device)


def handoff(base: Path, steps: int, say: Say, placement: Placement = CPU) -> dict[str, float]:
    policy = "bench/p"
    trainer = _trainer(base, [policy], steps, placement)
    tokenizer = trainer.tokenizer
    engine_model, _ = load_base(base, placement)
    engine = MultiLora(engine_model, trainer.config.targets)  # the resident rollout engine
    adapter_s = merged_s = rollout_s = 0.0
    adapter_bytes = merged_bytes = 0
    with tempfile.TemporaryDirectory(prefix="mint-handoff-") as tmp:
        for step in range(1, steps + 1):
            trainer.step(step)
            _synchronize(placement)
            # adapter-only: export the adapter, the resident engine loads it into its slot, rollouts
            began = time.perf_counter()
            path = Path(tmp) / f"adapter-{step}.safetensors"
            save_file(trainer.multi.state(policy), str(path))
            spec = trainer.multi.slots[policy]
            if policy in engine.slots:
                engine.remove(policy)
            engine.load(policy, load_file(str(path)), spec.rank, spec.alpha)
            loaded = time.perf_counter()
            _rollouts(engine, tokenizer, policy, step)
            _synchronize(placement)
            rollout_s += time.perf_counter() - loaded
            adapter_s += time.perf_counter() - began
            adapter_bytes += path.stat().st_size
            # merged: fold LoRA into the weights, save them whole, the engine reloads them, rollouts
            began = time.perf_counter()
            merged_bytes += _ship_merged(_merged_state(trainer, policy), base, Path(tmp) / f"merged-{step}")
            reloaded, _ = load_base(Path(tmp) / f"merged-{step}", placement)
            _rollouts(MultiLora(reloaded, ()), tokenizer, None, step)
            _synchronize(placement)
            merged_s += time.perf_counter() - began
            del reloaded  # the engine holds one base at a time
        ms = 1000 / steps
        say(f"  adapter-only {adapter_s * ms:.0f} ms/step, merged {merged_s * ms:.0f} ms/step")
        say(f"  (of which rollouts {rollout_s * ms:.0f} ms, the same work on both paths)")
    return {
        "adapter_handoff_ms": adapter_s / steps * 1000,
        "merged_handoff_ms": merged_s / steps * 1000,
        "adapter_bytes": adapter_bytes / steps,
        "merged_bytes": merged_bytes / steps,
        "rollouts_ms": rollout_s / steps * 1000,
        # The whole handoff+rollout step, and the transfer alone (rollouts cost the same either way).
        "handoff_speedup": merged_s / adapter_s,
        "transfer_speedup": (merged_s - rollout_s) / max(adapter_s - rollout_s, 1e-9),
    }


def _peak_rss_mb() -> float:
    """This process's own high-water mark. (ru_maxrss would include the parent's size at fork.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_mode(
    base: Path, mode: str, policies: int, steps: int, device: str = "cpu", dtype: str = "float32"
) -> dict[str, float]:
    placement = Placement(device, dtype)
    names = [f"bench/p{i}" for i in range(policies)]
    trainer = _trainer(base, names, steps, placement)  # one resident base either way
    began = time.perf_counter()
    if mode == "concurrent":
        for step in range(1, steps + 1):
            trainer.step(step)
    else:
        for name in names:
            for step in range(1, steps + 1):
                trainer.step(step, only=[name])
    _synchronize(placement)
    seconds = time.perf_counter() - began
    peak = {"peak_rss_mb": _peak_rss_mb()}
    if placement.on_cuda:
        peak["peak_gpu_mb"] = torch.cuda.max_memory_allocated(placement.torch_device) / 1e6
    return {"seconds": seconds, **peak}


def multi_policy(
    base: Path, policies: int, steps: int, say: Say, placement: Placement = CPU
) -> dict[str, float]:
    results = {}
    for mode in ("sequential", "concurrent"):
        code = (
            "import json, sys; from pathlib import Path; from mint.bench.train_bench import _train_mode; "
            f"print(json.dumps(_train_mode(Path({str(base)!r}), {mode!r}, {policies}, {steps},"
            f" {placement.device!r}, {placement.dtype!r})))"
        )
        printed = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        results[mode] = json.loads(printed.stdout.strip().splitlines()[-1])
        gpu = f", peak GPU {results[mode]['peak_gpu_mb']:.0f} MB" if placement.on_cuda else ""
        say(f"  {mode}: {results[mode]['seconds']:.1f}s, peak RSS {results[mode]['peak_rss_mb']:.0f} MB{gpu}")
    sequential, concurrent = results["sequential"], results["concurrent"]
    out = {
        "policies": float(policies),
        "sequential_s": sequential["seconds"],
        "concurrent_s": concurrent["seconds"],
        "multi_policy_speedup": sequential["seconds"] / concurrent["seconds"],
        "peak_rss_ratio": concurrent["peak_rss_mb"] / sequential["peak_rss_mb"],
    }
    if placement.on_cuda:
        out["peak_gpu_mem_ratio"] = concurrent["peak_gpu_mb"] / sequential["peak_gpu_mb"]
    return out


def bench_train(
    bases: dict[str, Path], steps: int, policies: int, say: Say, placement: Placement, multi_on: str = "tiny"
) -> dict[str, float]:
    """Handoff on every base of `bases`, the multi-policy comparison on `bases[multi_on]`."""
    out: dict[str, float] = {}
    say(f"on {placement.describe()}")
    for label, base in bases.items():
        say(f"handoff on {label}")
        for key, value in handoff(base, steps, say, placement).items():
            out[f"{label}_{key}"] = value
    say(f"multi-policy GRPO, K={policies}, on {multi_on}")
    out.update(multi_policy(bases[multi_on], policies, steps * 4, say, placement))
    return out
