"""Refuse an adapter before anything loads it: first its own consistency (keys, dtypes, rank, pairs),
then its fit to a base (modules exist, shapes match). Each failure names the file and the problem."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from mint.adapters.adapter import (
    ADAPTER_DTYPES,
    AdapterError,
    LoraConfig,
    Matrix,
    lora_key,
    parse_lora_key,
    targeted_modules,
    unmatched_targets,
)
from mint.bases.info import BaseInfo


class TensorSpec(Protocol):
    """What the checks need of a tensor, so an index can be checked before its data is read."""

    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


def check_structure(config: LoraConfig, tensors: Mapping[str, TensorSpec], source: Path) -> None:
    r = config.r
    found: dict[str, set[Matrix]] = {}
    for key, tensor in sorted(tensors.items()):
        parsed = parse_lora_key(key)
        if parsed is None:
            raise AdapterError(
                source,
                f"unexpected key {key!r}: expected base_model.model.<module>.lora_A.weight or .lora_B.weight",
            )
        module, matrix = parsed
        if tensor.dtype not in ADAPTER_DTYPES:
            raise AdapterError(
                source, f"{key}: dtype {tensor.dtype} is not allowed (allowed: {', '.join(ADAPTER_DTYPES)})"
            )
        if len(tensor.shape) != 2:
            raise AdapterError(source, f"{key}: shape {list(tensor.shape)} is not a matrix")
        rank = tensor.shape[0] if matrix == "A" else tensor.shape[1]
        if rank != r:
            raise AdapterError(
                source, f"{key}: shape {list(tensor.shape)} has rank {rank}, but the config says r={r}"
            )
        if not config.targets(module):
            raise AdapterError(
                source,
                f"{key}: module {module!r} is not in target_modules {list(config.target_modules)}",
            )
        found.setdefault(module, set()).add(matrix)
    if not found:
        raise AdapterError(source, "holds no LoRA tensors")
    for module, matrices in found.items():
        if matrices != {"A", "B"}:
            (missing,) = {"A", "B"} - matrices
            raise AdapterError(source, f"module {module!r} has no lora_{missing} matrix")


def check_against_base(
    config: LoraConfig, tensors: Mapping[str, TensorSpec], base: BaseInfo, source: Path
) -> None:
    """Assumes check_structure passed: every module has an A and a B of rank r."""
    r = config.r
    if unmatched := unmatched_targets(config, base.linear_shapes):
        raise AdapterError(
            source, f"target_modules {unmatched} match no linear layer of base {base.base_id!r} (wrong base?)"
        )
    modules = {module for module, _ in filter(None, map(parse_lora_key, tensors))}
    for module in sorted(modules):
        if module not in base.linear_shapes:
            raise AdapterError(
                source, f"module {module!r} is not a linear layer of base {base.base_id!r} (wrong base?)"
            )
        out_features, in_features = base.linear_shapes[module]
        expected: dict[Matrix, tuple[int, int]] = {"A": (r, in_features), "B": (out_features, r)}
        for matrix, shape in expected.items():
            key = lora_key(module, matrix)
            if tensors[key].shape != shape:
                raise AdapterError(
                    source,
                    f"{key}: shape {list(tensors[key].shape)} does not fit {module} of base"
                    f" {base.base_id!r} ({out_features} out x {in_features} in): expected {list(shape)}",
                )
    for module in targeted_modules(config, base.linear_shapes):
        if module not in modules:
            raise AdapterError(
                source,
                f"base layer {module!r} matches target_modules but the adapter has no lora_A/lora_B for it",
            )
