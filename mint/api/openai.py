"""OpenAI-compatible inference: /v1/completions, /v1/chat/completions (SSE streaming), /v1/models.

`model` is `tenant/name` (follows the serving pointer) or `tenant/name@rev` (pinned). Every route
needs a token with the reader role; a model of a tenant the token does not see is answered exactly like
a missing one (404), so names do not leak across tenants. Errors use
OpenAI's shape and say which field or model is at fault: 400 for a bad request, 404 for an unknown
model, 429 with Retry-After when the engine's queue is full, 503 with Retry-After when a cold adapter
was not loaded within the deadline, 500 when the engine failed the request. Every answer names the
revision that produced it in the `x-mint-revision` header (`tenant/name@rev`), so a client (and the
demo) sees a rollback take effect.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from actors.engine_host import ColdLoadTimeout, EngineHost, ModelNotFound
from events.codec import field_of
from events.names import tenant_of
from mint.api.auth import AuthError, require
from mint.api.metrics import InFlight, released
from mint.auth.tokens import Principal
from mint.catalog.queries import Catalog
from mint.serving.engine import AdapterNotLoaded, Completion, Delta, EngineError, SamplingParams
from mint.serving.torch_engine import Overloaded

RETRY_AFTER_S = "1"


class Message(msgspec.Struct):
    role: str
    content: str


class _Sampling(msgspec.Struct, kw_only=True):
    model: str
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = 1

    def params(self, logprobs: bool) -> SamplingParams:
        if self.n != 1:
            raise ApiError(400, "n: only n=1 is supported", "n")
        if self.max_tokens < 1:
            raise ApiError(400, "max_tokens: must be at least 1", "max_tokens")
        if self.temperature < 0:
            raise ApiError(400, "temperature: must be >= 0", "temperature")
        if not 0 < self.top_p <= 1:
            raise ApiError(400, "top_p: must be in (0, 1]", "top_p")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(self.max_tokens, self.temperature, self.top_p, stop, self.seed, logprobs)


class CompletionRequest(_Sampling, kw_only=True):
    prompt: str
    logprobs: int | None = None


class ChatRequest(_Sampling, kw_only=True):
    messages: list[Message]
    logprobs: bool = False


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


async def _decode(request: Request, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(await request.body(), type=kind)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid request: {exc}", field_of(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None


def _host_for(hosts: list[EngineHost], model: str, principal: Principal) -> EngineHost:
    if not principal.sees(tenant_of(model)):
        raise ModelNotFound(model, "no such policy")
    errors = []
    for host in hosts:
        try:
            host.resolve(model)
            return host
        except ModelNotFound as exc:
            errors.append(exc)
    raise ApiError(404, str(errors[0]) if errors else f"model {model!r}: no engine serves it", "model")


def _errors(exc: Exception) -> ApiError | AuthError:
    if isinstance(exc, ApiError | AuthError):
        return exc
    if isinstance(exc, ModelNotFound):
        return ApiError(404, str(exc), "model")
    if isinstance(exc, Overloaded):
        return ApiError(429, str(exc), headers={"Retry-After": RETRY_AFTER_S})
    if isinstance(exc, ColdLoadTimeout | AdapterNotLoaded):
        return ApiError(503, str(exc), headers={"Retry-After": RETRY_AFTER_S})
    if isinstance(exc, EngineError):
        return ApiError(500, f"the engine failed this request: {exc}")
    raise exc


async def _first(stream: AsyncIterator[Delta]) -> tuple[Delta, AsyncIterator[Delta]]:
    """Start the stream before answering, so errors (unknown model, overload) become status codes."""
    first = await anext(stream)
    return first, stream


def routes(hosts: list[EngineHost], catalog: Callable[[], Catalog], in_flight: InFlight) -> list[Route]:
    async def models(request: Request) -> Response:
        try:
            principal = require(request, "reader")
        except AuthError as exc:
            return exc.response()
        prefix = "" if principal.operator else f"{principal.tenant}/"
        view = catalog()
        try:
            after = request.query_params.get("after", "")
            rows = [r for r in view.search(prefix, after=after, status="active", limit=1000) if r.pointer]
        finally:
            view.close()
        data = [
            {"id": r.policy, "object": "model", "owned_by": r.tenant, "root": f"{r.policy}@{r.pointer}"}
            for r in rows
        ]
        return JSONResponse({"object": "list", "data": data})

    async def serve(request: Request, chat: bool) -> Response:
        try:
            principal = require(request, "reader")
            body = await _decode(request, ChatRequest if chat else CompletionRequest)
            params = body.params(bool(body.logprobs))
            host = _host_for(hosts, body.model, principal)
            prompt = (
                host.engine.render_chat([msgspec.to_builtins(m) for m in body.messages])
                if chat
                else body.prompt
            )
            ref = host.resolve(body.model)  # pinned here, so the header names what really answered
            leave = in_flight.enter(host.engine_id)
            try:
                first, stream = await _first(host.generate(ref, prompt, params))
            except BaseException:
                leave()
                raise
        except Exception as exc:
            return _errors(exc).response()
        answered = {"x-mint-revision": ref}
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.stream:
            return StreamingResponse(
                released(_sse(ident, created, body.model, chat, first, stream), leave),
                media_type="text/event-stream",
                headers=answered,
            )
        try:
            out = Completion(prompt_tokens=host.engine.count_tokens(prompt))
            out.add(first)
            async for delta in stream:
                out.add(delta)
        finally:
            leave()
        return JSONResponse(
            _whole(ident, created, body.model, chat, out, bool(body.logprobs)), headers=answered
        )

    async def completions(request: Request) -> Response:
        return await serve(request, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await serve(request, chat=True)

    return [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]


def _choice(
    chat: bool, text: str, finish: str | None, logprobs: list[float] | None, delta: bool
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if chat:
        choice["delta" if delta else "message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    if logprobs is not None:
        choice["logprobs"] = {"token_logprobs": logprobs}
    return choice


def _whole(
    ident: str, created: int, model: str, chat: bool, out: Completion, logprobs: bool
) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [_choice(chat, out.text, out.finish, out.logprobs if logprobs else None, delta=False)],
        "usage": {
            "prompt_tokens": out.prompt_tokens,
            "completion_tokens": len(out.tokens),
            "total_tokens": out.prompt_tokens + len(out.tokens),
        },
    }


async def _sse(
    ident: str, created: int, model: str, chat: bool, first: Delta, rest: AsyncIterator[Delta]
) -> AsyncIterator[bytes]:
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(delta: Delta) -> bytes:
        logprobs = list(delta.logprobs) if delta.logprobs else None
        chunk = {
            "id": ident,
            "object": kind,
            "created": created,
            "model": model,
            "choices": [_choice(chat, delta.text, delta.finish, logprobs, delta=True)],
        }
        return b"data: " + msgspec.json.encode(chunk) + b"\n\n"

    yield event(first)
    async for delta in rest:
        yield event(delta)
    yield b"data: [DONE]\n\n"
