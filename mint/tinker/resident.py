"""One resident base for the Tinker API: the model loaded once, every training client an adapter slot
of one MultiLora, sampler snapshots loaded into slots on demand (a few at a time), all torch work on
this base serialised by one lock (the slots share the model's routing).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import torch
from torch import nn

from mint.bases.load import load_base
from mint.lora.multi import MultiLora
from mint.tinker.generation import ATTENTION, MLP, UNEMBED, Generation, Sampled
from mint.training.sampling import sample, token_logprobs

SAMPLER_SLOTS = 4  # snapshot adapters kept loaded beside the training slots


@dataclass
class ResidentBase:
    base_id: str
    directory: Path
    model: nn.Module
    tokenizer: Any
    multi: MultiLora
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    # snapshot slots, least recently used first
    sampler_slots: OrderedDict[str, None] = field(default_factory=OrderedDict)

    @classmethod
    def load(cls, base_id: str, directory: Path) -> ResidentBase:
        model, tokenizer = load_base(directory)
        present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
        targets = [t for t in (*ATTENTION, *MLP, *UNEMBED) if t in present]
        # float32 slots: training clients train them (over a bfloat16 base on a GPU)
        return cls(base_id, directory, model, tokenizer, MultiLora(model, targets, slot_dtype=torch.float32))

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else 0

    @property
    def eos_id(self) -> int | None:
        eos = self.tokenizer.eos_token_id
        return int(eos) if eos is not None else None

    def targets_for(self, attention: bool, mlp: bool, unembed: bool) -> tuple[str, ...]:
        wanted = (ATTENTION if attention else ()) + (MLP if mlp else ()) + (UNEMBED if unembed else ())
        return tuple(t for t in wanted if any(name.endswith(t) for name in self.multi.layers))

    # -- sampler slots (call with the lock held) -------------------------------------------------

    def sampler_slot(self, name: str, load: Callable[[], tuple[dict[str, torch.Tensor], int, float]]) -> str:
        """Make the snapshot `load()` reads (tensors, rank, alpha) resident as slot `name`, evicting the
        least recently used snapshot beyond SAMPLER_SLOTS."""
        if name in self.sampler_slots:
            self.sampler_slots.move_to_end(name)
            return name
        while len(self.sampler_slots) >= SAMPLER_SLOTS:
            old, _ = self.sampler_slots.popitem(last=False)
            self.multi.remove(old)
        tensors, rank, alpha = load()
        self.multi.load(name, tensors, rank, alpha)
        for param in self.multi.parameters(name):
            param.requires_grad_(False)  # a snapshot never trains: keep it out of every backward
        self.sampler_slots[name] = None
        return name

    # -- sampling (call in a worker thread with the lock held) ------------------------------------

    def generate(
        self, slot: str | None, prompt: list[int], request: Generation
    ) -> tuple[list[Sampled], list[float] | None]:
        seed = request.seed if request.seed is not None else int(torch.randint(0, 2**62, ()).item())
        generator = torch.Generator().manual_seed(seed)
        rows = [prompt] * request.num_samples
        slots = [slot] * request.num_samples
        eos = self.eos_id if not request.stop_ids and not request.stop_texts else None
        drawn = sample(
            self.multi,
            rows,
            slots,
            request.max_tokens,
            request.temperature,
            generator,
            self.pad_id,
            eos,
            stop_ids=request.stop_ids,
            top_p=request.top_p,
        )
        stops = {*request.stop_ids, *([] if eos is None else [eos])}
        with torch.no_grad():
            logprobs = token_logprobs(self.multi, drawn.tokens, drawn.mask, slots)
        width = drawn.prompt_length
        out = []
        for row in range(request.num_samples):
            counted = drawn.completion[row]
            tokens = drawn.tokens[row, width:][counted].tolist()
            values = logprobs[row, width - 1 :][counted].tolist()
            stopped = bool(tokens) and tokens[-1] in stops
            cut = self._stop_text_end(tokens, request.stop_texts)
            if cut is not None:
                tokens, values, stopped = tokens[:cut], values[:cut], True
            out.append(Sampled(tokens, values, stopped))
        prompt_logprobs = None
        if request.prompt_logprobs:
            with torch.no_grad():
                ids = torch.tensor([prompt])
                scored = token_logprobs(self.multi, ids, torch.ones_like(ids), [slot])[0].tolist()
            prompt_logprobs = [math.nan, *scored]
        return out, prompt_logprobs

    def _stop_text_end(self, tokens: list[int], stop_texts: tuple[str, ...]) -> int | None:
        if not stop_texts:
            return None
        for end in range(1, len(tokens) + 1):
            text = self.tokenizer.decode(tokens[:end])
            if any(stop in text for stop in stop_texts):
                return end
        return None
