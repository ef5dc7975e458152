"""Where torch work runs: a device and a dtype, chosen in one place for every torch code path.

`--device auto|cpu|cuda[:N]` (or `$MINT_DEVICE`): `auto` is CUDA when torch sees a GPU, else the CPU.
The commands that run torch (`mint up`, `mint actor`) export their options to the environment, so the
engine, the trainer, the evaluator's engine and the Tinker service of one process (and the processes it
starts) all resolve the same choice through `configured_placement`; code that is handed an explicit
Placement (benchmarks, tests) uses that instead.
`--dtype auto|float32|bfloat16|float16` (or `$MINT_DTYPE`; fp32, bf16, fp16 too): `auto` is bfloat16 on
CUDA and float32 on the CPU (a CPU's bf16 matmuls are slow and its tests compare in fp32). The syntax is
checked without importing torch, so the CLI refuses a typo at once; resolving `auto` imports it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_ENV = "MINT_DEVICE"
DTYPE_ENV = "MINT_DTYPE"
DEVICE_CHOICES = "auto|cpu|cuda[:N]"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
# Accepted spellings, each to torch's name for the dtype.
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


class PlacementError(ValueError):
    """A device or dtype that cannot be used: the message names the option."""


@dataclass(frozen=True)
class Placement:
    """A resolved choice: `device` is `cpu` or `cuda:N`, `dtype` torch's name for a floating dtype."""

    device: str = "cpu"
    dtype: str = "float32"

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        dtype: torch.dtype = getattr(torch, self.dtype)
        return dtype

    def describe(self) -> str:
        return f"{self.device} {self.dtype}"


CPU = Placement()


def check_device(text: str, option: str = "--device") -> str:
    """`text` if it is `auto`, `cpu` or `cuda[:N]` (no torch needed), else PlacementError."""
    if not _DEVICE.fullmatch(text):
        raise PlacementError(f"{option}: {text!r} is not one of {DEVICE_CHOICES}")
    return text


def check_dtype(text: str, option: str = "--dtype") -> str:
    """torch's name for the dtype `text` spells (`auto` stays `auto`), else PlacementError."""
    if text == "auto":
        return text
    if text not in DTYPES:
        raise PlacementError(f"{option}: {text!r} is not auto or one of {', '.join(DTYPES)}")
    return DTYPES[text]


def choose_placement(
    device: str = "auto",
    dtype: str = "auto",
    *,
    device_option: str = "--device",
    dtype_option: str = "--dtype",
) -> Placement:
    """Resolve `device` and `dtype` on this machine: PlacementError (naming the option) for a bad
    spelling, a CUDA device this machine lacks, or a dtype the device cannot compute in."""
    check_device(device, device_option)
    chosen_dtype = check_dtype(dtype, dtype_option)
    import torch

    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda"):
        if not torch.cuda.is_available():
            built = torch.version.cuda or "no CUDA"
            raise PlacementError(
                f"{device_option}: {device!r} asks for CUDA,"
                f" but torch {torch.__version__} ({built}) sees no GPU"
            )
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise PlacementError(
                f"{device_option}: {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        device = f"cuda:{index}"
    placement = Placement(device, chosen_dtype)
    if chosen_dtype == "auto":
        placement = Placement(device, "bfloat16" if placement.on_cuda else "float32")
    return placement


def configured_placement() -> Placement:
    """The placement `$MINT_DEVICE` and `$MINT_DTYPE` ask for (each `auto` when unset)."""
    return choose_placement(
        os.environ.get(DEVICE_ENV) or "auto",
        os.environ.get(DTYPE_ENV) or "auto",
        device_option=f"${DEVICE_ENV}",
        dtype_option=f"${DTYPE_ENV}",
    )
