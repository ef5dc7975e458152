"""Adapters as torch tensors: raw bytes <-> tensors, and the packed layout's load as one read plus views."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from mint.adapters.adapter import Adapter, AdapterError, LoraConfig
from mint.adapters.packed import DATA_FILE, check_data, read_packed_index
from mint.bases.info import BaseInfo
from mint.bases.safetensors_file import RawTensor

TORCH_DTYPES: dict[str, torch.dtype] = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_NAMES = {torch_dtype: name for name, torch_dtype in TORCH_DTYPES.items()}


def to_tensor(raw: RawTensor) -> torch.Tensor:
    """A new CPU tensor holding a copy of the bytes."""
    flat = torch.frombuffer(bytearray(raw.data), dtype=torch.uint8)
    return flat.view(TORCH_DTYPES[raw.dtype]).view(raw.shape)


def to_raw(tensor: torch.Tensor) -> RawTensor:
    if tensor.dtype not in _NAMES:
        raise ValueError(f"dtype {tensor.dtype} is not an adapter dtype ({', '.join(TORCH_DTYPES)})")
    cpu = tensor.detach().to("cpu").contiguous()
    return RawTensor(_NAMES[tensor.dtype], tuple(cpu.shape), cpu.view(torch.uint8).numpy().tobytes())


def adapter_tensors(adapter: Adapter) -> dict[str, torch.Tensor]:
    return {name: to_tensor(raw) for name, raw in adapter.tensors.items()}


def adapter_from_tensors(config: LoraConfig, tensors: Mapping[str, torch.Tensor]) -> Adapter:
    """E.g. from `peft.get_peft_model_state_dict(model)`, whose keys are already PEFT's saved names."""
    return Adapter(config, {name: to_raw(t) for name, t in tensors.items()})


def load_packed_tensors(
    directory: Path, base: BaseInfo | None = None
) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """Check the index (and its fit to `base`), read the buffer in one call, check its sha256, and return
    views into it: no per-tensor copies. The tensors share the buffer; it lives as long as any of them."""
    directory = Path(directory)
    index = read_packed_index(directory, base)
    path = directory / DATA_FILE
    try:
        with path.open("rb") as f:
            buffer = bytearray(os.fstat(f.fileno()).st_size)
            f.readinto(buffer)
    except OSError as exc:
        raise AdapterError(path, f"unreadable: {exc.strerror or exc}") from None
    check_data(directory, index, buffer)
    flat = torch.frombuffer(buffer, dtype=torch.uint8)
    return index.config, {
        name: flat[e.offset : e.offset + e.nbytes].view(TORCH_DTYPES[e.dtype]).view(e.shape)
        for name, e in index.tensors.items()
    }
