"""What a router and an engine host say to each other over HTTP: `POST /v1/engine/generate`.

The request names a pinned revision (`tenant/name@rev`, resolved by the router) and either a prompt or
chat messages (the engine host renders them with its base's template); a shadow run also carries the
stable revision's answer to the same request (`against`), which the host scores beside its own. The
engine host answers once the first token is out, with `x-mint-engine` and `x-mint-revision`, as
newline-delimited JSON: one `delta` line per piece, then `end` (with the prompt's token count when
asked), or `error` if the generation failed after it began. A refusal before the first token is an
HTTP error in OpenAI's shape; a host that is draining or not ready says so in `x-mint-engine-state`,
so the router tries another.

Requests carry `x-mint-seal`, an HMAC of the body under the cluster's key (events/seal.py): an engine
host serves only MinT's routers, which have checked the caller's token and tenant already.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from events.seal import Seal
from mint.serving.engine import Delta, FinishReason, SamplingParams

GENERATE_PATH = "/v1/engine/generate"
ENGINE_HEADER = "x-mint-engine"
REVISION_HEADER = "x-mint-revision"
SEAL_HEADER = "x-mint-seal"
STATE_HEADER = "x-mint-engine-state"  # draining | starting: this host cannot take the request now
NDJSON = "application/x-ndjson"


class ChatMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: str
    content: str


class Params(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    temperature: float
    top_p: float
    stop: list[str] = []
    seed: int | None = None
    logprobs: bool = False

    @classmethod
    def of(cls, params: SamplingParams) -> Params:
        return cls(
            params.max_tokens,
            params.temperature,
            params.top_p,
            list(params.stop),
            params.seed,
            params.logprobs,
        )

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            self.max_tokens, self.temperature, self.top_p, tuple(self.stop), self.seed, self.logprobs
        )


class StableAnswer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the client was answered by the stable revision `ref` (tenant/name@rev), sent with a shadow
    run of the same request so that the engine host scores both answers to the same prompt."""

    ref: str
    text: str
    tokens: list[int]


class GenerateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str  # tenant/name@rev
    params: Params
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    usage: bool = False  # count the prompt's tokens and send them with `end`
    against: StableAnswer | None = None  # a shadow run: the stable answer to score it against


class DeltaLine(msgspec.Struct, frozen=True, tag="delta"):
    text: str
    tokens: list[int]
    logprobs: list[float] = []
    finish: FinishReason | None = None

    @classmethod
    def of(cls, delta: Delta) -> DeltaLine:
        return cls(delta.text, list(delta.tokens), list(delta.logprobs), delta.finish)

    def delta(self) -> Delta:
        return Delta(self.text, tuple(self.tokens), tuple(self.logprobs), self.finish)


class EndLine(msgspec.Struct, frozen=True, tag="end"):
    prompt_tokens: int | None = None


class ErrorLine(msgspec.Struct, frozen=True, tag="error"):
    status: int
    message: str
    param: str | None = None


Line = DeltaLine | EndLine | ErrorLine
_LINE = msgspec.json.Decoder(Line)


def encode_line(line: Line) -> bytes:
    return msgspec.json.encode(line) + b"\n"


def decode_line(raw: bytes) -> Line:
    return _LINE.decode(raw)


def seal_of(seal: Seal, body: bytes) -> str:
    return seal.of(body).hex()


def verifies(seal: Seal, body: bytes, header: str | None) -> bool:
    try:
        signature = bytes.fromhex(header or "")
    except ValueError:
        return False
    return seal.verifies(body, signature)
