"""Saving and resuming a multi-policy run at a completed step, without pickle.

A checkpoint is a directory `step-NNNNNN/` holding, per policy, its adapter tensors and its AdamW
moments as safetensors, plus `state.json` (step, per-policy optimizer scalars, failures). It is
written to a temporary sibling and renamed into place, so a crash leaves either the whole checkpoint
or none; resuming takes the newest complete one. The trainer actor keeps these directories only on
their way to and from the artifact store (mint/training/stored_checkpoints.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mint.training.multi_policy import MultiPolicyTrainer

STEP_PREFIX = "step-"


def _file_name(policy: str) -> str:
    return policy.replace("/", "__")


def save_slot(
    directory: Path, name: str, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None
) -> dict[str, Any]:
    """One adapter's tensors and (unless None) its AdamW moments as safetensors in `directory`; returns
    the optimizer's scalars and param groups (JSON) that `restore_optimizer` needs beside them."""
    save_file(tensors, str(directory / f"{name}.adapter.safetensors"))
    if optimizer is None:
        return {}
    optimizer_state = optimizer.state_dict()
    moments = {
        f"{index}.{key}": value.contiguous()
        for index, entry in optimizer_state["state"].items()
        for key, value in entry.items()
        if isinstance(value, torch.Tensor) and value.dim() > 0
    }
    scalars = {
        f"{index}.{key}": float(value)
        for index, entry in optimizer_state["state"].items()
        for key, value in entry.items()
        if not (isinstance(value, torch.Tensor) and value.dim() > 0)
    }
    if moments:
        save_file(moments, str(directory / f"{name}.optimizer.safetensors"))
    return {"scalars": scalars, "groups": optimizer_state["param_groups"]}


def load_slot_tensors(directory: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(directory / f"{name}.adapter.safetensors"))


def restore_optimizer(
    optimizer: torch.optim.Optimizer, directory: Path, name: str, saved: dict[str, Any]
) -> None:
    """The inverse of `save_slot` for the optimizer: moments from safetensors, scalars from `saved`."""
    moments_path = directory / f"{name}.optimizer.safetensors"
    moments = load_file(str(moments_path)) if moments_path.is_file() else {}
    entries: dict[int, dict[str, Any]] = {}
    for key, value in moments.items():
        index, _, field = key.partition(".")
        entries.setdefault(int(index), {})[field] = value
    for key, value in saved["scalars"].items():
        index, _, field = key.partition(".")
        entries.setdefault(int(index), {})[field] = torch.tensor(value)
    optimizer.load_state_dict({"state": entries, "param_groups": saved["groups"]})


def save(trainer: MultiPolicyTrainer, root: Path, step: int) -> Path:
    final = root / f"{STEP_PREFIX}{step:06d}"
    staging = root / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    state: dict[str, Any] = {"step": step, "policies": {}}
    for policy, slot in trainer.slots.items():
        saved = save_slot(staging, _file_name(policy), trainer.multi.state(policy), slot.optimizer)
        state["policies"][policy] = {"failed": slot.failed, **saved}
    (staging / "state.json").write_text(json.dumps(state, indent=1))
    for path in staging.iterdir():
        with path.open("rb") as f:
            os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)  # a step computed again after a resume replaces its copy
    os.replace(staging, final)
    for older in sorted(root.glob(f"{STEP_PREFIX}*"))[:-2]:  # keep the last two
        shutil.rmtree(older, ignore_errors=True)
    return final


def latest(root: Path) -> Path | None:
    complete = sorted(p for p in root.glob(f"{STEP_PREFIX}*") if (p / "state.json").is_file())
    return complete[-1] if complete else None


def restore(trainer: MultiPolicyTrainer, checkpoint: Path) -> int:
    """Load adapters and optimizer state; returns the step the checkpoint completed."""
    state = json.loads((checkpoint / "state.json").read_text())
    for policy, saved in state["policies"].items():
        slot = trainer.slots[policy]
        name = _file_name(policy)
        spec = trainer.multi.slots[policy]
        trainer.multi.load(policy, load_slot_tensors(checkpoint, name), spec.rank, spec.alpha)
        slot.failed = saved["failed"]
        restore_optimizer(slot.optimizer, checkpoint, name, saved)
    return int(state["step"])
