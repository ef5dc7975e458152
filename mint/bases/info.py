"""What the control plane knows about a base without loading it: read from config.json and the
safetensors headers only (no torch), so adapters can be checked against a base on any machine."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mint.bases.safetensors_file import Header, SafetensorsError, read_header

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SHARDED_INDEX_FILE = "model.safetensors.index.json"
# Weight files that would need unpickling to read; a base must not consist of these.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Input embeddings are 2-D `.weight` tensors too, but LoRA on them is not a linear LoRA (PEFT stores
# `lora_embedding_A/B`), so they are left out of the linear modules.
EMBEDDING_NAMES = ("embed", "wte", "wpe")


class BaseError(ValueError):
    """A directory that is not a usable base; the message names the file and the problem."""


@dataclass(frozen=True)
class BaseInfo:
    base_id: str
    path: Path
    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    num_parameters: int
    # module name -> (out_features, in_features) of every linear layer LoRA may target
    linear_shapes: dict[str, tuple[int, int]]

    def to_json(self) -> dict[str, Any]:
        return {
            "base_id": self.base_id,
            "path": str(self.path),
            "architecture": self.architecture,
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "vocab_size": self.vocab_size,
            "num_parameters": self.num_parameters,
            "linear_shapes": {name: list(shape) for name, shape in self.linear_shapes.items()},
        }


def read_base_info(directory: Path, base_id: str | None = None) -> BaseInfo:
    """Describe the base in `directory`; `base_id` defaults to the directory's name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BaseError(f"{directory}: not a directory")
    config = _read_config(directory / CONFIG_FILE)
    architectures = config.get("architectures")
    if not (
        isinstance(architectures, list) and architectures and str(architectures[0]).endswith("ForCausalLM")
    ):
        raise BaseError(f"{directory / CONFIG_FILE}: architectures {architectures!r} names no causal LM")
    headers = _read_weight_headers(directory)
    vocab_size = _int_field(directory / CONFIG_FILE, config, "vocab_size")
    hidden_size = _int_field(directory / CONFIG_FILE, config, "hidden_size")
    linear_shapes: dict[str, tuple[int, int]] = {}
    num_parameters = 0
    for header in headers:
        for name, entry in header.tensors.items():
            num_parameters += math.prod(entry.shape)
            module, _, leaf = name.rpartition(".")
            if leaf == "weight" and len(entry.shape) == 2 and not _is_embedding(module):
                linear_shapes[module] = (entry.shape[0], entry.shape[1])
    # A tied output head shares the embedding's tensor, so the file holds no lm_head.weight, yet the
    # model has an lm_head linear layer that LoRA can target.
    if config.get("tie_word_embeddings") is True and "lm_head" not in linear_shapes:
        linear_shapes["lm_head"] = (vocab_size, hidden_size)
    return BaseInfo(
        base_id=base_id or directory.resolve().name,
        path=directory,
        architecture=str(architectures[0]),
        model_type=str(config.get("model_type", "")),
        hidden_size=hidden_size,
        num_layers=_int_field(directory / CONFIG_FILE, config, "num_hidden_layers"),
        vocab_size=vocab_size,
        num_parameters=num_parameters,
        linear_shapes=dict(sorted(linear_shapes.items())),
    )


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise BaseError(f"{path}: missing (a base directory needs a Hugging Face config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaseError(f"{path}: unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise BaseError(f"{path}: not a JSON object")
    return config


def _read_weight_headers(directory: Path) -> list[Header]:
    single, index = directory / WEIGHTS_FILE, directory / SHARDED_INDEX_FILE
    try:
        if single.is_file():
            return [read_header(single)]
        if index.is_file():
            return [read_header(directory / shard) for shard in _shards(index)]
    except SafetensorsError as exc:
        raise BaseError(str(exc)) from None
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise BaseError(
            f"{directory}: weights {', '.join(pickled)} are pickle files, which are never read;"
            f" convert them to {WEIGHTS_FILE}"
        )
    raise BaseError(f"{directory}: no {WEIGHTS_FILE} or {SHARDED_INDEX_FILE}")


def _shards(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise BaseError(f"{index}: not a safetensors shard index: {exc!r}") from None
    for shard in shards:
        if not isinstance(shard, str) or "/" in shard or not shard.endswith(".safetensors"):
            raise BaseError(f"{index}: weight_map names {shard!r}, not a .safetensors file in the directory")
    return shards


def _int_field(path: Path, config: dict[str, Any], field: str) -> int:
    value = config.get(field)
    if type(value) is not int or value <= 0:
        raise BaseError(f"{path}: field {field!r} must be a positive integer, got {value!r}")
    return value


def _is_embedding(module: str) -> bool:
    leaf = module.rpartition(".")[2]
    return any(marker in leaf for marker in EMBEDDING_NAMES)
