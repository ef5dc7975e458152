"""What an adapter is: a LoRA config and its A/B tensors, named as PEFT names them.

Every layout (PEFT, packed) reads into and writes from this one in-memory form, as raw little-endian
bytes, so converting between layouts copies bytes and can never change a value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mint.bases.safetensors_file import FileProblem, RawTensor

Matrix = Literal["A", "B"]
# The floating-point dtypes engines compute LoRA in; anything else (integers, fp8) is refused.
ADAPTER_DTYPES = ("F32", "F16", "BF16")
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<matrix>[AB])\.weight$")
# adapter_config.json fields that change the math away from plain LoRA (W + alpha/r * B @ A): with
# their default value they are accepted, with any other value the adapter is refused.
_UNSUPPORTED_FEATURES: dict[str, Any] = {
    "use_dora": False,
    "use_rslora": False,
    "bias": "none",
    "fan_in_fan_out": False,
    "modules_to_save": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "layers_to_transform": None,
    "trainable_token_indices": None,
    "lora_bias": False,
    "target_parameters": None,
    "exclude_modules": None,
    "layer_replication": None,
}


class AdapterError(FileProblem):
    """An adapter refused as bad input; `path` is the offending file, `problem` says what is wrong."""


@dataclass(frozen=True)
class LoraConfig:
    r: int
    alpha: float
    target_modules: tuple[str, ...]  # module names or name suffixes, as PEFT matches them
    base_model: str = ""  # the base_id it was trained on

    def __post_init__(self) -> None:
        # One spelling per config, so equal configs encode to equal bytes (the content address).
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "target_modules", tuple(sorted(set(self.target_modules))))

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def targets(self, module: str) -> bool:
        return any(matches_target(module, t) for t in self.target_modules)

    def canonical_json(self) -> str:
        """The config as the content address covers it: compact, sorted keys."""
        return json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))

    def peft_json(self) -> dict[str, Any]:
        """adapter_config.json as peft and vLLM read it."""
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            **self.as_json(),
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "use_rslora": False,
            "use_dora": False,
            "modules_to_save": None,
            "inference_mode": True,
        }

    @classmethod
    def from_json(cls, raw: object, path: Path) -> LoraConfig:
        """Parse adapter_config.json (ours or any PEFT one) or the embedded canonical form."""
        if not isinstance(raw, dict):
            raise AdapterError(path, "config is not a JSON object")
        if raw.get("peft_type", "LORA") != "LORA":
            raise AdapterError(path, f"field 'peft_type' is {raw['peft_type']!r}; only 'LORA' is supported")
        if raw.get("task_type") not in (None, "CAUSAL_LM"):
            raise AdapterError(path, f"field 'task_type' is {raw['task_type']!r}; expected 'CAUSAL_LM'")
        for name, default in _UNSUPPORTED_FEATURES.items():
            if not _is_default(raw.get(name), default):
                raise AdapterError(path, f"field {name!r} is {raw[name]!r}; only plain LoRA is supported")
        r, alpha, targets = raw.get("r"), raw.get("lora_alpha"), raw.get("target_modules")
        if type(r) is not int or r < 1:
            raise AdapterError(path, f"field 'r' must be a positive integer, got {r!r}")
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, int | float)
            or not math.isfinite(alpha)
            or alpha <= 0
        ):
            raise AdapterError(path, f"field 'lora_alpha' must be a positive number, got {alpha!r}")
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise AdapterError(
                path, f"field 'target_modules' must be a non-empty list of module names, got {targets!r}"
            )
        base_model = raw.get("base_model_name_or_path") or ""
        if not isinstance(base_model, str):
            raise AdapterError(path, f"field 'base_model_name_or_path' must be a string, got {base_model!r}")
        return cls(r=r, alpha=alpha, target_modules=tuple(targets), base_model=base_model)

    def differences(self, other: LoraConfig) -> list[str]:
        mine, theirs = self.as_json(), other.as_json()
        return [f"{k} {mine[k]!r} vs {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]

    def as_json(self) -> dict[str, Any]:
        """The fields that make up the adapter's math and its base, under PEFT's names."""
        return {
            "base_model_name_or_path": self.base_model,
            "lora_alpha": _number(self.alpha),
            "r": self.r,
            "target_modules": list(self.target_modules),
        }


@dataclass(frozen=True)
class Adapter:
    config: LoraConfig
    tensors: Mapping[str, RawTensor]  # PEFT's saved names (see lora_key) -> tensor


def lora_key(module: str, matrix: Matrix) -> str:
    """PEFT's saved name for a module's A or B matrix (vLLM's loader expects the same)."""
    return f"base_model.model.{module}.lora_{matrix}.weight"


def parse_lora_key(key: str) -> tuple[str, Matrix] | None:
    match = _KEY.match(key)
    if match is None:
        return None
    return match["module"], "A" if match["matrix"] == "A" else "B"


def matches_target(module: str, target: str) -> bool:
    """PEFT's rule for a list of target_modules: the full name, or a suffix after a dot."""
    return module == target or module.endswith("." + target)


def targeted_modules(config: LoraConfig, modules: Iterable[str]) -> list[str]:
    return sorted(m for m in modules if config.targets(m))


def unmatched_targets(config: LoraConfig, modules: Iterable[str]) -> list[str]:
    """Entries of target_modules that name none of `modules`: the sign of an adapter for another base."""
    names = list(modules)
    return [t for t in config.target_modules if not any(matches_target(m, t) for m in names)]


def _is_default(value: object, default: object) -> bool:
    return value is None or value == default or (isinstance(value, list | dict) and not value)


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() else value
