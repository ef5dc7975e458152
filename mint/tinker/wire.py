"""The JSON half of the Tinker wire: request bodies as msgspec Structs, and the batch they carry.

Every body is decoded strictly enough that a bad field is refused with its name (a 400 whose body the
SDK shows, never an empty one: the SDK retries empty 400s as network faults). Unknown fields are
ignored, because both SDK generations send extras (telemetry ids, `type` tags).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from events.codec import field_of
from events.names import INT64_MAX, Count

FloatArray = npt.NDArray[np.float32]
T = TypeVar("T")

# Every integer a body carries fits an int64 (what torch and numpy take); counts and ids start at 1.
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=INT64_MAX)]
SeqId = Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
TokenId = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]  # int32, as the protobuf wire carries them
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Beta = Annotated[float, msgspec.Meta(ge=0, lt=1)]
MAX_JSON_DEPTH = 64  # no SDK body nests deeper; past this a too-deep body is refused (see decode)
MAX_SCAN_TOKENS = 250_000  # what reading a too-deep body may cost (about 0.2 s), hostile ones included

LOSS_FUNCTIONS = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo")
# Asked for by name, refused by name: tinker's `stable_reinforce` (the cookbook's rl_loop default)
# weighs tokens with stability information its sampler records, in a form Tinker does not publish;
# running another loss in its place would train something the caller did not ask for.
REFUSED_LOSSES = {
    "stable_reinforce": "not served here: its objective uses sampling-time stability information that"
    " Tinker does not publish; pass loss_fn='importance_sampling', 'ppo', 'cispo' or 'gspo'"
    " (tinker-cookbook: loss_fn=importance_sampling)",
}
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


def check_token_ids(tokens: Sequence[int] | np.ndarray, vocab_size: int, field: str) -> None:
    """Refuse token ids outside a base's vocabulary, naming the first."""
    ids = np.asarray(tokens)
    outside = np.flatnonzero((ids < 0) | (ids >= vocab_size))
    if outside.size:
        raise WireError(field, f"token {ids[outside[0]]} is outside the vocabulary (0..{vocab_size - 1})")


@dataclass(frozen=True)
class RawTensor:
    """A tensor as the wire gives it, before it is trusted: its values, declared shape and, for a
    sparse (CSR) one, its row offsets and column indices. Nothing is allocated beyond what was sent
    until `dense` has checked the declared shape against the data."""

    values: np.ndarray
    shape: list[int] | None
    crow: np.ndarray | None = None
    col: np.ndarray | None = None

    def dense(self, field: str, size: int) -> np.ndarray:
        """The flat tensor of one datum with `size` input tokens, or a WireError naming what is wrong."""
        values, shape = self.values, self.shape
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise WireError(field, "holds NaN or infinite values")
        if shape is not None and any(d < 0 for d in shape):
            raise WireError(f"{field}.shape", f"{shape}: dimensions must be >= 0")
        if self.crow is None:
            if shape is not None and math.prod(shape) != values.size:
                raise WireError(f"{field}.shape", f"{shape} does not hold {values.size} values")
            if values.size != size:
                raise WireError(field, f"has {values.size} values for {size} input tokens")
            return values.reshape(-1)
        crow, col = self.crow, self.col
        if shape is None or len(shape) != 2 or col is None:
            raise WireError(field, "a sparse tensor needs shape [rows, cols] and col indices")
        rows, cols = shape
        if rows * cols != size:
            raise WireError(f"{field}.shape", f"{shape} holds {rows * cols} values for {size} input tokens")
        if len(col) != values.size:
            raise WireError(f"{field}.sparse_col_indices", f"{len(col)} indices for {values.size} values")
        if len(crow) != rows + 1 or crow[0] != 0 or crow[-1] != len(col) or (np.diff(crow) < 0).any():
            raise WireError(
                f"{field}.sparse_crow_indices",
                f"must be {rows + 1} non-decreasing row offsets from 0 to {len(col)}",
            )
        if len(col) and not (col.min() >= 0 and col.max() < cols):
            raise WireError(f"{field}.sparse_col_indices", f"must be in 0..{cols - 1}")
        full = np.zeros((rows, cols), dtype=values.dtype)
        full[np.repeat(np.arange(rows), np.diff(crow)), col] = values
        return full.reshape(-1)


@dataclass(frozen=True)
class Datum:
    """One training example: `tokens` (the model input), and per-position inputs of the same length
    (position i predicts target_tokens[i])."""

    tokens: list[int]
    inputs: dict[str, np.ndarray]

    @classmethod
    def checked(cls, tokens: list[int], inputs: dict[str, RawTensor], index: int) -> Datum:
        if not tokens:
            raise WireError(f"data[{index}].model_input", "empty")
        return cls(
            tokens,
            {
                name: raw.dense(f"data[{index}].loss_fn_inputs.{name}", len(tokens))
                for name, raw in inputs.items()
            },
        )


@dataclass(frozen=True)
class ForwardBackwardInput:
    data: list[Datum]
    loss_fn: str
    config: dict[str, float]
    forward_only: bool

    def check(self) -> None:
        for key, value in self.config.items():
            if not math.isfinite(value):
                raise WireError(f"loss_fn_config.{key}", "must be a finite number")
        if self.loss_fn in REFUSED_LOSSES:
            raise WireError("loss_fn", f"{self.loss_fn!r} is {REFUSED_LOSSES[self.loss_fn]}")
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
    display_name: str | None = None


class SessionRef(Body, kw_only=True):
    session_id: str


class LoraConfigBody(Body, kw_only=True):
    rank: Int64 = 32
    seed: Int64 | None = None
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True


class CreateModel(Body, kw_only=True):
    session_id: str
    model_seq_id: Count = 0
    base_model: str
    lora_config: LoraConfigBody = msgspec.field(default_factory=LoraConfigBody)
    user_metadata: dict[str, Any] | None = None


class ModelRef(Body, kw_only=True):
    model_id: str


class TensorBody(Body, kw_only=True):
    data: list[float]
    dtype: Literal["int64", "float32", "int32", "bfloat16"] = "float32"
    shape: list[Int64] | None = None
    sparse_crow_indices: list[Int64] | None = None
    sparse_col_indices: list[Int64] | None = None

    def raw(self, field: str) -> RawTensor:
        values = np.asarray(self.data, dtype=np.float64)
        if self.dtype in ("int64", "int32"):
            if not (np.isfinite(values) & (values == np.trunc(values)) & (np.abs(values) < 2**63)).all():
                raise WireError(field, f"dtype {self.dtype} holds integers only")
            values = values.astype(np.int64)
        elif (np.abs(values) > np.finfo(np.float32).max).any():
            raise WireError(field, f"dtype {self.dtype} holds values up to 3.4e38 only")
        else:
            values = values.astype(np.float32)
        crow, col = self.sparse_crow_indices, self.sparse_col_indices
        return RawTensor(
            values,
            self.shape,
            None if crow is None else np.asarray(crow, dtype=np.int64),
            None if col is None else np.asarray(col, dtype=np.int64),
        )


class ChunkBody(Body, kw_only=True):
    type: str = "encoded_text"
    tokens: list[TokenId] = []


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
                {name: t.raw(f"data[{i}].loss_fn_inputs.{name}") for name, t in d.loss_fn_inputs.items()},
                i,
            )
            for i, d in enumerate(self.data)
        ]
        work = ForwardBackwardInput(data, self.loss_fn, dict(self.loss_fn_config or {}), forward_only)
        work.check()
        return work


class ForwardBackward(Body, kw_only=True):
    model_id: str
    seq_id: SeqId
    forward_backward_input: ForwardBackwardInputBody


class Forward(Body, kw_only=True):
    model_id: str
    seq_id: SeqId
    forward_input: ForwardBackwardInputBody


class AdamParams(Body, kw_only=True):
    learning_rate: NonNegative = 1e-4
    beta1: Beta = 0.9
    beta2: Beta = 0.95
    eps: NonNegative = 1e-12
    weight_decay: NonNegative = 0.0
    grad_clip_norm: NonNegative = 0.0  # 0: no clipping


class OptimStep(Body, kw_only=True):
    model_id: str
    seq_id: SeqId
    adam_params: AdamParams


# A checkpoint's time to live: a second up to ten years (Tinker takes an hour and up; shorter ones
# let a test see expiry happen). None: kept until deleted.
TtlSeconds = Annotated[int, msgspec.Meta(ge=1, le=10 * 365 * 86_400)]


class SaveWeights(Body, kw_only=True):
    model_id: str
    seq_id: SeqId
    path: str | None = None
    overwrite: bool = False
    ttl_seconds: TtlSeconds | None = None


class SaveWeightsForSampler(Body, kw_only=True):
    model_id: str
    seq_id: SeqId
    path: str | None = None
    sampling_session_seq_id: Count | None = None
    ttl_seconds: TtlSeconds | None = None


class SaveWeightsExternal(Body, kw_only=True):
    model_id: str
    seq_id: SeqId
    path: str
    ttl_seconds: TtlSeconds | None = None
    age_encryption_recipients: list[str] | None = None  # `age1…` keys or SSH public keys


class SetTtl(Body, kw_only=True):
    ttl_seconds: TtlSeconds | None


class LoadWeights(Body, kw_only=True):
    path: str
    optimizer: bool = False
    # Either an existing model and its seq_id, or (0.38's create-via-load) a session and a new model.
    model_id: str | None = None
    seq_id: SeqId | None = None
    session_id: str | None = None
    model_seq_id: Count | None = None
    user_metadata: dict[str, Any] | None = None


class CreateSamplingSession(Body, kw_only=True):
    session_id: str
    sampling_session_seq_id: Count = 0
    model_path: str | None = None
    base_model: str | None = None


class SamplingParamsBody(Body, kw_only=True):
    max_tokens: Int64 | None = None
    seed: Int64 | None = None
    stop: str | list[str | Int64] | None = None
    temperature: float = 1.0
    top_k: Int64 = -1
    top_p: float = 1.0


class Sample(Body, kw_only=True):
    sampling_session_id: str
    seq_id: Int64 = 0
    num_samples: Int64 = 1
    prompt: ModelInputBody
    sampling_params: SamplingParamsBody
    prompt_logprobs: bool = False
    topk_prompt_logprobs: Int64 = 0


class RetrieveFuture(Body, kw_only=True):
    request_id: str
    allow_metadata_only: bool = False


class WeightsInfo(Body, kw_only=True):
    tinker_path: str


class SequencedRef(Body, kw_only=True):
    """What a training request's body must hold for its seq_id to be given up when it is refused."""

    model_id: str
    seq_id: SeqId


def decode(body: bytes, kind: type[T]) -> T:
    """A JSON body as `kind`, or a WireError naming the field msgspec objected to."""
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = field_of(message) or "body"  # a missing member is named too, not just "body"
        raise WireError(field, message.split(" - at ")[0]) from None
    except msgspec.DecodeError as exc:
        raise WireError("body", f"not valid JSON: {exc}") from None
    except RecursionError:
        # msgspec gives up near Python's recursion limit; name where the body passes our own limit.
        raise WireError(_deep_path(body), f"nested more than {MAX_JSON_DEPTH} levels deep") from None


def sequence_ids(body: bytes) -> tuple[str, int] | None:
    """(model_id, seq_id) of a refused JSON training request, however malformed the rest of it is."""
    try:
        ref = msgspec.json.decode(body, type=SequencedRef)
    except RecursionError:
        top_level = _top_level(body)
        return None if top_level is None else sequence_ids(top_level)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return ref.model_id, ref.seq_id


# A JSON string (escapes included), a bracket, a colon, or a run of anything else (scalars and the
# commas between them, counted at once: a long array of numbers costs one token).
_STRING = rb'"(?:[^"\\]|\\.)*"'
_PLACE_TOKEN = re.compile(_STRING + rb'|[\[\]{}:]|[^"\[\]{}:]+')
_NESTING_TOKEN = re.compile(_STRING + rb"|[\[\]{}]")


def _deep_path(body: bytes) -> str:
    """Where a body first nests deeper than MAX_JSON_DEPTH, as msgspec names places (`a.b[0]`); just
    "body" if that is not within MAX_SCAN_TOKENS."""
    place: list[str | int] = []  # per open container: the key (object) or index (array) being read
    key = ""
    for token in itertools.islice(_PLACE_TOKEN.finditer(body), MAX_SCAN_TOKENS):
        text = token[0]
        if text in (b"[", b"{"):
            if len(place) == MAX_JSON_DEPTH:
                return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in place).lstrip(".")
            place.append(0 if text == b"[" else "")
        elif text in (b"]", b"}"):
            if place:
                place.pop()
        elif text == b":":
            if place and isinstance(place[-1], str):
                place[-1] = key
        elif text.startswith(b'"'):
            key = text[1:-1].decode(errors="replace")
        elif place and isinstance(place[-1], int):
            place[-1] += text.count(b",")
    return "body"


def _top_level(body: bytes) -> bytes | None:
    """The body with every container inside the outermost one replaced by null: its top-level
    fields, which are all a refused request needs to give its turn up. None past MAX_SCAN_TOKENS
    (such a body costs only its own client its turn)."""
    kept: list[bytes] = []
    depth, resume = 0, 0
    for read, token in enumerate(_NESTING_TOKEN.finditer(body), 1):
        if read > MAX_SCAN_TOKENS:
            return None
        text = token[0]
        if text in (b"[", b"{"):
            depth += 1
            if depth == 2:
                kept.append(body[resume : token.start()])
        elif text in (b"]", b"}"):
            depth -= 1
            if depth == 1:
                kept.append(b"null")
                resume = token.end()
    kept.append(body[resume:])
    return b"".join(kept)
