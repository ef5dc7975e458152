"""A Tinker training client: one adapter slot on a resident base, its AdamW, and the work its requests
do — forward/backward (gradients accumulate until optim_step), optimizer steps with the client's Adam
parameters, and the tensors its checkpoints and exports are made of. An idle client may be evicted:
its slot, AdamW state and gradients written to an unnamed checkpoint and freed, then reloaded as they
were on its next request (mint/tinker/residency.py)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from mint.adapters.adapter import Adapter, LoraConfig
from mint.adapters.peft_layout import CONFIG_FILE, WEIGHTS_FILE, encode_peft
from mint.adapters.tensors import adapter_from_tensors
from mint.tinker.checkpoints import CheckpointDirectory, CheckpointInfo, TinkerPath
from mint.tinker.losses import elementwise_loss
from mint.tinker.ordering import SeqGate
from mint.tinker.resident import ResidentBase
from mint.tinker.wire import AdamParams, FloatArray, ForwardBackwardInput
from mint.training.sampling import target_logprobs

LORA_ALPHA = 32.0
EVICTED = ".evicted"  # the unnamed training checkpoint an evicted client's state waits in


@dataclass
class StepLoss:
    """The loss accumulated by forward_backward calls since the last optimizer step, per counted
    token (a non-zero weight or advantage), for the StepCompleted fact."""

    total: float = 0.0
    tokens: float = 0.0

    @property
    def mean(self) -> float:
        return self.total / self.tokens if self.tokens else 0.0


@dataclass
class TrainingModel:
    model_id: str
    session_id: str
    policy: str
    run: str
    base: ResidentBase
    rank: int
    targets: tuple[str, ...]
    resident_optimizer: torch.optim.Optimizer | None  # None while evicted
    gate: SeqGate = field(default_factory=SeqGate)
    step: int = 0
    pending: StepLoss = field(default_factory=StepLoss)
    alpha: float = LORA_ALPHA
    user_metadata: dict[str, str] | None = None

    @classmethod
    def create(
        cls,
        base: ResidentBase,
        model_id: str,
        session_id: str,
        policy: str,
        run: str,
        rank: int,
        targets: tuple[str, ...],
        seed: int,
        user_metadata: dict[str, str] | None = None,
    ) -> TrainingModel:
        base.multi.add(model_id, rank, LORA_ALPHA, seed=seed)
        optimizer = _optimizer(base, model_id, targets)
        return cls(
            model_id, session_id, policy, run, base, rank, targets, optimizer, user_metadata=user_metadata
        )

    def close(self) -> None:
        if self.resident_optimizer is not None:
            self.base.multi.remove(self.model_id)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if self.resident_optimizer is None:
            raise RuntimeError(f"training client {self.model_id!r} is evicted: reload it first")
        return self.resident_optimizer

    def checkpoint_info(self, with_optimizer: bool, expires_at: float | None = None) -> CheckpointInfo:
        return CheckpointInfo(
            self.model_id,
            self.base.base_id,
            self.policy,
            self.rank,
            self.alpha,
            list(self.targets),
            with_optimizer,
            time.time(),
            user_metadata=self.user_metadata,
            expires_at=expires_at,
        )

    # -- eviction (in a worker thread, with the base's lock held) ----------------------------------

    @property
    def evicted_path(self) -> TinkerPath:
        return TinkerPath(self.model_id, "weights", EVICTED)

    def evict(self, checkpoints: CheckpointDirectory) -> None:
        """Write the slot (every module, so a reload is exact), the AdamW state and the gradients
        accumulated since the last step to disk, and free the slot."""
        gradients = {
            str(index): param.grad.detach().to("cpu", copy=True)
            for index, param in enumerate(self.parameters)
            if param.grad is not None
        }
        state = self.base.multi.state(self.model_id)
        checkpoints.write(self.evicted_path, state, self.optimizer, self.checkpoint_info(True), gradients)
        self.base.multi.remove(self.model_id)
        self.resident_optimizer = None

    def reload(self, checkpoints: CheckpointDirectory) -> None:
        """The slot, AdamW state and gradients as `evict` left them."""
        path = self.evicted_path
        self.base.multi.load(self.model_id, checkpoints.tensors(path), self.rank, self.alpha)
        optimizer = _optimizer(self.base, self.model_id, self.targets)
        checkpoints.restore_optimizer(path, optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for index, gradient in checkpoints.gradients(path).items():
            param = params[int(index)]
            param.grad = gradient.to(device=param.device, dtype=param.dtype)
        self.resident_optimizer = optimizer

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The trained modules' tensors under PEFT's names (what an export and a checkpoint hold)."""
        return {
            key: value
            for key, value in self.base.multi.state(self.model_id).items()
            if key.split(".lora_")[0].rsplit(".", 1)[-1] in self.targets
        }

    def _adapter(self) -> Adapter:
        config = LoraConfig(
            r=self.rank, alpha=self.alpha, target_modules=self.targets, base_model=self.base.base_id
        )
        return adapter_from_tensors(config, self.adapter_tensors())

    def peft_adapter(self) -> tuple[tuple[str, ...], bytes]:
        """The adapter as an export holds it: its target modules and canonical PEFT safetensors."""
        adapter = self._adapter()
        return adapter.config.target_modules, encode_peft(adapter)

    def peft_files(self) -> dict[str, bytes]:
        """The adapter as a PEFT directory's files (what `save_weights_external` hands out)."""
        adapter = self._adapter()
        config = json.dumps(adapter.config.peft_json(), indent=2) + "\n"
        return {WEIGHTS_FILE: encode_peft(adapter), CONFIG_FILE: config.encode()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.base.multi.load(self.model_id, tensors, self.rank, self.alpha)

    # -- the work of requests (in a worker thread, with the base's lock held) ---------------------

    def forward_backward(
        self, work: ForwardBackwardInput
    ) -> tuple[list[dict[str, FloatArray]], dict[str, float]]:
        base = self.base
        lengths = [len(d.tokens) for d in work.data]
        tokens = torch.full((len(work.data), max(lengths)), base.pad_id, dtype=torch.long)
        targets = torch.zeros_like(tokens)
        mask = torch.zeros_like(tokens)
        for row, datum in enumerate(work.data):
            target = np.asarray(datum.inputs["target_tokens"]).astype(np.int64).tolist()
            tokens[row, : lengths[row]] = torch.tensor(datum.tokens)
            targets[row, : lengths[row]] = torch.tensor(target)
            mask[row, : lengths[row]] = 1
        with torch.set_grad_enabled(not work.forward_only):
            logprobs = target_logprobs(base.multi, tokens, mask, [self.model_id] * len(lengths), targets)
            losses = [
                elementwise_loss(work.loss_fn, logprobs[row, :n], datum.inputs, work.config)
                for row, (n, datum) in enumerate(zip(lengths, work.data, strict=True))
            ]
            total = torch.stack([loss.sum() for loss in losses]).sum()
            if not work.forward_only:
                total.backward()  # type: ignore[no-untyped-call]
        if not work.forward_only:
            self.pending.total += float(total.detach())
            self.pending.tokens += sum(_counted(work.loss_fn, d.inputs) for d in work.data)
        outputs = [
            {
                "logprobs": logprobs[row, :n].detach().numpy().astype(np.float32),
                "elementwise_loss": losses[row].detach().numpy().astype(np.float32),
            }
            for row, n in enumerate(lengths)
        ]
        return outputs, {"loss:sum": float(total.detach())}

    def optim_step(self, adam: AdamParams) -> tuple[dict[str, float], float]:
        """One AdamW step with the client's parameters; returns its metrics and the step's loss."""
        for group in self.optimizer.param_groups:
            group.update(
                lr=adam.learning_rate,
                betas=(adam.beta1, adam.beta2),
                eps=adam.eps,
                weight_decay=adam.weight_decay,
            )
        limit = adam.grad_clip_norm if adam.grad_clip_norm > 0 else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, limit))
        if math.isfinite(norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        loss = self.pending.mean
        self.pending = StepLoss()
        return {"grad_norm:mean": norm, "step:max": float(self.step)}, loss


def _optimizer(base: ResidentBase, model_id: str, targets: tuple[str, ...]) -> torch.optim.Optimizer:
    """AdamW over the targeted modules of slot `model_id`; untargeted ones keep B = 0 (no effect) and
    take no gradient."""
    trained = []
    for name, layer in base.multi.layers.items():
        wanted = name.rsplit(".", 1)[-1] in targets
        for param in (layer.lora_A[model_id], layer.lora_B[model_id]):
            param.requires_grad_(wanted)
            if wanted:
                trained.append(param)
    return torch.optim.AdamW(trained, lr=1e-4, weight_decay=0.0)


def _counted(loss_fn: str, inputs: dict[str, np.ndarray]) -> float:
    weights = inputs.get("weights" if loss_fn == "cross_entropy" else "advantages")
    if weights is None:
        return float(len(inputs["target_tokens"]))
    return float(np.count_nonzero(weights))
