"""The JSON half of the Tinker wire: request bodies as msgspec Structs, and the batch they carry.

Every body is decoded strictly enough that a bad field is refused with its name (a 400 whose body the
SDK shows, never an empty one: the SDK retries empty 400s as network faults). Unknown fields are
ignored, because both SDK generations send extras (telemetry ids, `type` tags).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
T = TypeVar("T")

LOSS_FUNCTIONS = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "stable_reinforce")
# The RL losses read the sampler's logprobs and the advantages beside the targets.
LOSS_INPUTS = {
    "cross_entropy": ("target_tokens",),
    **{name: ("target_tokens", "logprobs", "advantages") for name in LOSS_FUNCTIONS[1:]},
}


class WireError(ValueError):
    """A request the server refuses: `field` is where, `problem` what; status is the HTTP code."""

    def __init__(self, field: str, problem: str, status: int = 400) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.status = status


@dataclass(frozen=True)
class Datum:
    """One training example: `tokens` (the model input), and per-position inputs of the same length
    (position i predicts target_tokens[i])."""

    tokens: list[int]
    inputs: dict[str, np.ndarray]

    @classmethod
    def checked(cls, tokens: list[int], inputs: dict[str, np.ndarray], index: int) -> Datum:
        if not tokens:
            raise WireError(f"data[{index}].model_input", "empty")
        for name, values in inputs.items():
            if values.reshape(-1).shape[0] != len(tokens):
                raise WireError(
                    f"data[{index}].loss_fn_inputs.{name}",
                    f"has {values.size} values for {len(tokens)} input tokens",
                )
        return cls(tokens, {name: values.reshape(-1) for name, values in inputs.items()})


@dataclass(frozen=True)
class ForwardBackwardInput:
    data: list[Datum]
    loss_fn: str
    config: dict[str, float]
    forward_only: bool

    def check(self) -> None:
        if self.loss_fn not in LOSS_INPUTS:
            raise WireError(
                "loss_fn", f"{self.loss_fn!r} is not supported (supported: {', '.join(LOSS_FUNCTIONS)})"
            )
        if not self.data:
            raise WireError("data", "a batch needs at least one datum")
        for index, datum in enumerate(self.data):
            for name in LOSS_INPUTS[self.loss_fn]:
                if name not in datum.inputs:
                    raise WireError(f"data[{index}].loss_fn_inputs.{name}", f"required by {self.loss_fn}")


@dataclass(frozen=True)
class Sequenced(Generic[T]):
    """A training client's request: executed in `seq_id` order among its model's requests."""

    model_id: str
    seq_id: int
    work: T


# -- JSON bodies -----------------------------------------------------------------------------------


class Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    pass


class CreateSession(Body, kw_only=True):
    tags: list[str] = []
    user_metadata: dict[str, Any] | None = None
    sdk_version: str = ""


class SessionRef(Body, kw_only=True):
    session_id: str


class LoraConfigBody(Body, kw_only=True):
    rank: int = 32
    seed: int | None = None
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True


class CreateModel(Body, kw_only=True):
    session_id: str
    model_seq_id: int = 0
    base_model: str
    lora_config: LoraConfigBody = msgspec.field(default_factory=LoraConfigBody)
    user_metadata: dict[str, Any] | None = None


class ModelRef(Body, kw_only=True):
    model_id: str


class TensorBody(Body, kw_only=True):
    data: list[float]
    dtype: Literal["int64", "float32", "int32", "bfloat16"] = "float32"
    shape: list[int] | None = None
    sparse_crow_indices: list[int] | None = None
    sparse_col_indices: list[int] | None = None

    def array(self, name: str) -> np.ndarray:
        values = np.asarray(self.data, dtype=np.int64 if self.dtype in ("int64", "int32") else np.float32)
        if self.sparse_crow_indices is None:
            return values
        if self.shape is None or len(self.shape) != 2 or self.sparse_col_indices is None:
            raise WireError(
                f"loss_fn_inputs.{name}", "a sparse tensor needs shape [rows, cols] and col indices"
            )
        full = np.zeros(self.shape, dtype=values.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.sparse_crow_indices))
        full[rows, self.sparse_col_indices] = values
        return full


class ChunkBody(Body, kw_only=True):
    type: str = "encoded_text"
    tokens: list[int] = []


class ModelInputBody(Body, kw_only=True):
    chunks: list[ChunkBody]

    def tokens(self, field: str) -> list[int]:
        out: list[int] = []
        for i, chunk in enumerate(self.chunks):
            if chunk.type != "encoded_text":
                raise WireError(
                    f"{field}.chunks[{i}].type", f"{chunk.type!r}: only encoded_text is supported"
                )
            out += chunk.tokens
        return out


class DatumBody(Body, kw_only=True):
    model_input: ModelInputBody
    loss_fn_inputs: dict[str, TensorBody]


class ForwardBackwardInputBody(Body, kw_only=True):
    data: list[DatumBody]
    loss_fn: str
    loss_fn_config: dict[str, float] | None = None

    def work(self, forward_only: bool) -> ForwardBackwardInput:
        data = [
            Datum.checked(
                d.model_input.tokens(f"data[{i}].model_input"),
                {name: t.array(name) for name, t in d.loss_fn_inputs.items()},
                i,
            )
            for i, d in enumerate(self.data)
        ]
        work = ForwardBackwardInput(data, self.loss_fn, dict(self.loss_fn_config or {}), forward_only)
        work.check()
        return work


class ForwardBackward(Body, kw_only=True):
    model_id: str
    seq_id: int
    forward_backward_input: ForwardBackwardInputBody


class Forward(Body, kw_only=True):
    model_id: str
    seq_id: int
    forward_input: ForwardBackwardInputBody


class AdamParams(Body, kw_only=True):
    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


class OptimStep(Body, kw_only=True):
    model_id: str
    seq_id: int
    adam_params: AdamParams


class SaveWeights(Body, kw_only=True):
    model_id: str
    seq_id: int
    path: str | None = None
    overwrite: bool = False


class SaveWeightsForSampler(Body, kw_only=True):
    model_id: str
    seq_id: int
    path: str | None = None
    sampling_session_seq_id: int | None = None


class LoadWeights(Body, kw_only=True):
    path: str
    optimizer: bool = False
    # Either an existing model and its seq_id, or (0.38's create-via-load) a session and a new model.
    model_id: str | None = None
    seq_id: int | None = None
    session_id: str | None = None
    model_seq_id: int | None = None
    user_metadata: dict[str, Any] | None = None


class CreateSamplingSession(Body, kw_only=True):
    session_id: str
    sampling_session_seq_id: int = 0
    model_path: str | None = None
    base_model: str | None = None


class SamplingParamsBody(Body, kw_only=True):
    max_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str | int] | None = None
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0


class Sample(Body, kw_only=True):
    sampling_session_id: str
    seq_id: int = 0
    num_samples: int = 1
    prompt: ModelInputBody
    sampling_params: SamplingParamsBody
    prompt_logprobs: bool = False
    topk_prompt_logprobs: int = 0


class RetrieveFuture(Body, kw_only=True):
    request_id: str
    allow_metadata_only: bool = False


class WeightsInfo(Body, kw_only=True):
    tinker_path: str


def decode(body: bytes, kind: type[T]) -> T:
    """A JSON body as `kind`, or a WireError naming the field msgspec objected to."""
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = message.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in message else "body"
        raise WireError(field, message.split(" - at ")[0]) from None
    except msgspec.DecodeError as exc:
        raise WireError("body", f"not valid JSON: {exc}") from None
