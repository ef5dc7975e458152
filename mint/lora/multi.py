"""Many LoRA adapters over one resident base, mixed within a batch.

Each targeted nn.Linear of the base is wrapped once by a MultiLoraLinear. Adapters live in named
slots; every slot holds its own A (r x in) and B (out x r) parameters per module, so each policy keeps
its own optimizer state. A forward pass serves a batch whose rows use different slots: the slot
matrices are stacked and gathered per row (one batched matmul), and autograd flows back into each
row's own slot. Row index -1 means "the base alone": that is how the KL reference is computed, with
no second copy of the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Routing:
    """Which slot each batch row uses; shared by every wrapped layer of one model."""

    rows: torch.Tensor | None = None  # long [batch]; -1 = base only


@dataclass(frozen=True)
class SlotSpec:
    rank: int
    alpha: float

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class MultiLoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, routing: Routing, slot_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.base = base
        self.routing = routing
        self.slot_dtype = slot_dtype or base.weight.dtype
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.scales: dict[str, float] = {}

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def add_slot(self, name: str, spec: SlotSpec, generator: torch.Generator | None = None) -> None:
        """PEFT's default init: A Kaiming-uniform, B zero, so a new adapter starts as the base. A is
        drawn on the host (where `generator` is), so a seed gives the same slot on any device."""
        device = self.base.weight.device
        bound = 1.0 / math.sqrt(self.in_features)
        a = torch.empty(spec.rank, self.in_features).uniform_(-bound, bound, generator=generator)
        self.lora_A[name] = nn.Parameter(a.to(device=device, dtype=self.slot_dtype))
        self.lora_B[name] = nn.Parameter(
            torch.zeros(self.out_features, spec.rank, dtype=self.slot_dtype, device=device)
        )
        self.scales[name] = spec.scale

    def remove_slot(self, name: str) -> None:
        del self.lora_A[name]
        del self.lora_B[name]
        del self.scales[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x)
        rows = self.routing.rows
        if rows is None or not len(self.lora_A):
            return out
        names = list(self.lora_A.keys())
        rank = max(self.lora_A[n].shape[0] for n in names)
        # Stack every slot, padded to the largest rank with zeros (which add nothing), plus one
        # all-zero slot at the end for rows that use the base alone.
        first = self.lora_A[names[0]]
        a = torch.stack(
            [_pad_rows(self.lora_A[n], rank) for n in names] + [first.new_zeros(rank, self.in_features)]
        )
        b = torch.stack(
            [_pad_cols(self.lora_B[n], rank) for n in names] + [first.new_zeros(self.out_features, rank)]
        )
        scale = first.new_tensor([self.scales[n] for n in names] + [0.0])
        index = torch.where(rows < 0, len(names), rows)
        # In the slots' dtype (float32 slots over a bfloat16 base train as PEFT's do), then the base's.
        shaped = x.reshape(x.shape[0], -1, self.in_features).to(self.slot_dtype)  # [batch, tokens, in]
        low = torch.bmm(shaped, a[index].transpose(1, 2))  # [batch, tokens, r]
        delta: torch.Tensor = torch.bmm(low, b[index].transpose(1, 2)) * scale[index].view(-1, 1, 1)
        return out + delta.reshape(out.shape).to(out.dtype)


def _pad_rows(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t if t.shape[0] == rank else torch.nn.functional.pad(t, (0, 0, 0, rank - t.shape[0]))


def _pad_cols(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t if t.shape[1] == rank else torch.nn.functional.pad(t, (0, rank - t.shape[1]))


class MultiLora:
    """Wraps `targets` (module-name suffixes, like PEFT's target_modules) of a causal LM in place.
    `slot_dtype`: the adapters' dtype (None: the base's); trainers keep float32 slots over a bfloat16
    base, so small updates are not rounded away."""

    def __init__(
        self, model: nn.Module, targets: Sequence[str], slot_dtype: torch.dtype | None = None
    ) -> None:
        self.model = model
        self.routing = Routing()
        self.layers: dict[str, MultiLoraLinear] = {}
        self.slots: dict[str, SlotSpec] = {}
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear) and name.split(".")[-1] in targets:
                wrapped = MultiLoraLinear(module, self.routing, slot_dtype)
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapped)
                self.layers[name] = wrapped
        missing = set(targets) - {n.split(".")[-1] for n in self.layers}
        if missing:
            raise ValueError(f"targets: the base has no linear module named {', '.join(sorted(missing))}")
        for p in model.parameters():
            p.requires_grad_(False)
        # Where the base lives (mint.device chose it): routing and slot tensors go there too.
        self.device = next(model.parameters()).device

    def add(self, slot: str, rank: int, alpha: float, seed: int = 0) -> None:
        if slot in self.slots:
            raise ValueError(f"slot: {slot!r} is already loaded")
        spec = SlotSpec(rank, alpha)
        generator = torch.Generator().manual_seed(seed)
        try:
            for layer in self.layers.values():
                layer.add_slot(slot, spec, generator)
        except BaseException:  # out of device memory half-way, say: no half-made slot stays behind
            for layer in self.layers.values():
                if slot in layer.lora_A:
                    layer.remove_slot(slot)
            raise
        self.slots[slot] = spec

    def slot_bytes(self, rank: int) -> int:
        """Device memory one slot of `rank` takes: A and B of every wrapped layer."""
        layers = list(self.layers.values())
        size = torch.empty((), dtype=layers[0].slot_dtype).element_size() if layers else 0
        return sum(rank * (layer.in_features + layer.out_features) for layer in layers) * size

    def remove(self, slot: str) -> None:
        for layer in self.layers.values():
            layer.remove_slot(slot)
        del self.slots[slot]

    def parameters(self, slot: str) -> list[nn.Parameter]:
        """The trainable tensors of one slot, for that policy's own optimizer."""
        return [p for layer in self.layers.values() for p in (layer.lora_A[slot], layer.lora_B[slot])]

    def index(self, slot: str | None) -> int:
        """The routing index of a slot (its position in every layer's stack), -1 for the base."""
        return -1 if slot is None else list(self.slots).index(slot)

    @contextmanager
    def route(self, slots: Sequence[str | None]) -> Iterator[None]:
        """Run the model with batch row i on slots[i] (None: the base alone)."""
        before = self.routing.rows
        self.routing.rows = torch.tensor([self.index(s) for s in slots], dtype=torch.long, device=self.device)
        try:
            yield
        finally:
            self.routing.rows = before

    def state(self, slot: str) -> dict[str, torch.Tensor]:
        """One slot's tensors under PEFT's names (base_model.model.<module>.lora_A.weight), copied to
        host memory (what checkpoints, exports and an engine's host tier keep)."""
        out = {}
        for name, layer in self.layers.items():
            out[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A[slot].detach().to("cpu", copy=True)
            out[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B[slot].detach().to("cpu", copy=True)
        return out

    def load(self, slot: str, tensors: dict[str, torch.Tensor], rank: int, alpha: float) -> None:
        """Fill a slot from PEFT-named tensors (already validated against the base). Wrapped layers the
        adapter does not target get zeros, which add nothing. Tensors in pinned host memory are copied to
        the device asynchronously (the copies queue on the stream that later forwards run on)."""
        fresh = slot not in self.slots
        if fresh:
            self.add(slot, rank, alpha)
        try:
            self._fill(slot, tensors)
        except BaseException:
            if fresh:
                self.remove(slot)
            raise

    def _fill(self, slot: str, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, layer in self.layers.items():
                a = tensors.get(f"base_model.model.{name}.lora_A.weight")
                b = tensors.get(f"base_model.model.{name}.lora_B.weight")
                if a is None:
                    layer.lora_A[slot].zero_()
                else:
                    layer.lora_A[slot].copy_(a, non_blocking=True)
                if b is None:
                    layer.lora_B[slot].zero_()
                else:
                    layer.lora_B[slot].copy_(b, non_blocking=True)
