"""OpenAI-compatible inference: /v1/completions, /v1/chat/completions (SSE streaming), /v1/models.

`model` is `tenant/name` (follows the serving pointer) or `tenant/name@rev` (pinned). Every route
needs a token with the reader role; a model of a tenant the token does not see is answered exactly like
a missing one (404), so names do not leak across tenants. Errors use OpenAI's shape
(`{"error": {"message", "type", "param", "code"}}`) and say which field or model is at fault: 400 for a
bad request (an unknown field, a value out of range, a prompt plus max_tokens beyond the model's
context), 404 for an unknown model, 429 with Retry-After over the token's concurrency or rate limit or
when the engine's queue is full, 503 with Retry-After when a cold adapter was not loaded within the
deadline or the server is shutting down, 500 when the engine failed the request (naming the step and
the cause); a stream that already began ends with that error as its last event. Every answer names
the revision that produced it in the `x-mint-revision` header (`tenant/name@rev`) and the engine in
`x-mint-engine`, so a client (and the demo) sees a rollback take effect, and its request id in
`x-request-id` (the client's own, when it sent one; else the completion's `id`). A client that goes
away cancels its generation, streaming or not: the engine stops decoding for it.

While a policy runs a canary, a request for `tenant/name` goes to the revision that the canary's hash
split picks for its request id (mint/catalog/canary.py), so `mint replay audit` can say later which
revision answered it. In shadow mode the stable revision answers, and the picked requests run once
more on the candidate in the background (mint/api/shadow.py), unseen and never delaying the answer;
each carries the stable answer the client got (when it was whole), so the engine host scores both
answers to the same prompt.

An API without engines of its own (an `api` replica) sends each generation through its router
(mint/serving/router.py) to an engine host, streaming included; when no host can take it within the
router's deadline, the answer is 503 with Retry-After and the reasons.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from actors.engine_host import ColdLoadTimeout, EngineHost
from events.names import tenant_of
from mint.api.auth import AuthError, require
from mint.api.errors import RETRY_AFTER_S, HttpError, decoded, retry_later
from mint.api.metrics import InFlight
from mint.api.shadow import ShadowWork
from mint.catalog.canary import Answering, answering
from mint.catalog.queries import Catalog, ProjectionMissing
from mint.ingest import IngestLimits, RateLimited, RateLimiter
from mint.serving.engine import (
    AdapterNotLoaded,
    Completion,
    ContextExceeded,
    Delta,
    DeviceMemoryExhausted,
    EngineError,
    Overloaded,
    SamplingParams,
)
from mint.serving.models import ModelNotFound, resolve_model
from mint.serving.router import EngineRefused, NoEngine, Router
from mint.serving.wire import ChatMessage, GenerateRequest, Params, StableAnswer

# What vLLM's OpenAI server accepts for `seed` (a torch long).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
T = TypeVar("T")
REQUEST_ID_HEADER = "x-request-id"
# What a client's request id may be: it is echoed in a header and typed into `mint replay audit`.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/=+-]{1,128}$")


class InferenceLimits(msgspec.Struct, frozen=True):
    """Per bearer token: requests in flight at once, and a bucket of `burst` requests refilled at
    `requests_per_s`. Over either, a request gets 429 with Retry-After; other tokens are unaffected."""

    concurrency: int = 8
    requests_per_s: float = 10.0
    burst: int = 20

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.burst < 1 or not self.requests_per_s > 0:
            raise ValueError(
                f"inference limits: concurrency and burst must be >= 1 and requests_per_s > 0, got {self}"
            )


class Admission:
    """Who may start an inference request now: not while the server drains (503), nor over the
    token's concurrency or rate (429). Counts requests per engine too (/metrics, the console, the drain)."""

    def __init__(self, limits: InferenceLimits) -> None:
        self.limits = limits
        self.in_flight = InFlight()  # per engine
        self.per_token = InFlight()
        # The ingest routes' token bucket, counting requests instead of records.
        self.rate = RateLimiter(IngestLimits(records_per_s=limits.requests_per_s, burst=limits.burst))
        self.draining = False
        self.cut_off = anyio.Event()  # set when a drain's grace is over: what still runs is cancelled
        self.answered: Counter[str] = Counter()  # requests answered, per revision ref (/metrics)
        self.shadow = ShadowWork()

    def admit(self, token_id: str) -> Callable[[], None]:
        """Count a request of `token_id` (the returned callable ends it), or refuse it (HttpError)."""
        if self.draining:
            raise retry_later(503, "the server is shutting down: retry")
        running = self.per_token.counts[token_id]
        if running >= self.limits.concurrency:
            raise retry_later(
                429, f"token {token_id}: {running} requests in flight, the limit is {self.limits.concurrency}"
            )
        try:
            self.rate.take(token_id, 1)
        except RateLimited as exc:
            raise HttpError(
                429, f"token {token_id}: {exc}", headers={"Retry-After": str(math.ceil(exc.retry_after_s))}
            ) from None
        return self.per_token.enter(token_id)


class Message(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class _Sampling(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    # The ceiling is the model's context (checked by the engine against the prompt's length).
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)] = 16
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 1.0
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)] | None = None
    stream: bool = False
    n: int = 1

    def params(self, logprobs: bool) -> SamplingParams:
        if self.n != 1:
            raise HttpError(400, "n: only n=1 is supported", "n")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(self.max_tokens, self.temperature, self.top_p, stop, self.seed, logprobs)


class CompletionRequest(_Sampling, kw_only=True, forbid_unknown_fields=True):
    prompt: str
    # How many alternatives per token OpenAI would list (0..5); the chosen token's is what is reported.
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=5)] | None = None

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None

    def text(self, render_chat: Callable[[list[dict[str, str]]], str]) -> str:
        return self.prompt

    def routed(self, params: SamplingParams, ref: str, against: StableAnswer | None) -> GenerateRequest:
        return GenerateRequest(
            ref, Params.of(params), prompt=self.prompt, usage=not self.stream, against=against
        )


class ChatRequest(_Sampling, kw_only=True, forbid_unknown_fields=True):
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    logprobs: bool = False

    def wants_logprobs(self) -> bool:
        return self.logprobs

    def text(self, render_chat: Callable[[list[dict[str, str]]], str]) -> str:
        return render_chat([msgspec.to_builtins(m) for m in self.messages])

    def routed(self, params: SamplingParams, ref: str, against: StableAnswer | None) -> GenerateRequest:
        messages = [ChatMessage(m.role, m.content) for m in self.messages]
        return GenerateRequest(
            ref, Params.of(params), messages=messages, usage=not self.stream, against=against
        )


class ClientGone(Exception):
    """The client disconnected before its answer was ready: its generation was cancelled."""


async def _decode(request: Request, kind: type[T]) -> T:
    return decoded(await request.body(), kind)


def _host_for(hosts: list[EngineHost], model: str) -> EngineHost:
    errors = []
    for host in hosts:
        try:
            host.resolve(model)
            return host
        except ModelNotFound as exc:
            errors.append(exc)
    raise HttpError(404, str(errors[0]) if errors else f"model {model!r}: no engine serves it", "model")


def inference_error(exc: Exception, prompt_field: str) -> HttpError:
    """The answer to an inference request that failed with `exc` (re-raised when it is no refusal)."""
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, ModelNotFound):
        return HttpError(404, str(exc), "model")
    if isinstance(exc, NoEngine | ProjectionMissing):
        return retry_later(503, str(exc))
    if isinstance(exc, EngineRefused):
        retry = {"Retry-After": RETRY_AFTER_S} if exc.status in (429, 503) else {}
        return HttpError(exc.status, str(exc), exc.param, headers=retry)
    if isinstance(exc, ContextExceeded):
        return HttpError(400, str(exc), prompt_field if exc.prompt_too_long else "max_tokens")
    if isinstance(exc, Overloaded):
        return retry_later(429, str(exc))
    if isinstance(exc, ColdLoadTimeout | AdapterNotLoaded | DeviceMemoryExhausted):
        return retry_later(503, str(exc))
    if isinstance(exc, EngineError):
        return HttpError(500, f"the engine failed this request: {exc}")
    raise exc


def _shut_down() -> HttpError:
    return retry_later(503, "the server shut down before this request finished: retry")


async def _attended(request: Request, cut_off: anyio.Event, work: Callable[[], Awaitable[T]]) -> T:
    """`work`'s result, unless the client disconnects first (ClientGone) or a drain's grace ends
    (HttpError 503): either cancels `work` and the generation it awaits, so a request nobody waits
    for holds no engine row."""
    done: list[T] = []
    failed: list[Exception] = []
    stopped: list[Exception] = []

    async def until_disconnected() -> None:
        # Called once the body is read: what the server delivers next is the client's disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        stopped.append(ClientGone())
        tg.cancel_scope.cancel()

    async def until_cut_off() -> None:
        await cut_off.wait()
        stopped.append(_shut_down())
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(until_disconnected)
        tg.start_soon(until_cut_off)
        try:
            done.append(await work())
        except Exception as exc:  # re-raised as itself below, not wrapped in the task group's group
            failed.append(exc)
        tg.cancel_scope.cancel()
    if failed:
        raise failed[0]
    if not done:
        raise stopped[0]
    return done[0]


async def _collect(
    first: Delta, stream: AsyncIterator[Delta], prompt_tokens: Callable[[], Awaitable[int]]
) -> Completion:
    out = Completion()
    out.add(first)
    async for delta in stream:
        out.add(delta)
    out.prompt_tokens = await prompt_tokens()
    return out


class _Streamed(StreamingResponse):
    """Server-sent events that close the generation and end the request's accounting however the
    stream ends: a client that leaves mid-stream stops its generation at once, not when the
    abandoned generators are collected; a drain's grace ending stops it with an error event."""

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        generation: AsyncGenerator[Delta, None],
        leave: Callable[[], None],
        headers: dict[str, str],
        cut_off: anyio.Event,
        after: Callable[[], None],
    ) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._closing = (events, generation)
        self._leave = leave
        self._cut_off = cut_off
        self._after = after  # once the answer is out: the shadow run, if any

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cut = started = False

        async def until_cut_off() -> None:
            nonlocal cut
            await self._cut_off.wait()
            cut = True
            tg.cancel_scope.cancel()

        async def tracked(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(until_cut_off)
                await super().__call__(scope, receive, tracked)
                tg.cancel_scope.cancel()
            if cut and started:  # end the stream in words, as an error event
                error = b"data: " + _shut_down().response().body + b"\n\n"
                await send({"type": "http.response.body", "body": error})
            elif cut:
                await _shut_down().response()(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                for generator in self._closing:
                    await generator.aclose()
            self._leave()
            self._after()


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class OpenAiApi:
    """What the OpenAI routes share: the engine hosts in this process, the catalog read model, the
    admission limits, and the router to engine hosts elsewhere (used when there are no local hosts)."""

    hosts: list[EngineHost]
    catalog: Callable[[], Catalog]
    admission: Admission
    router: Router | None = None


async def list_models(api: OpenAiApi, request: Request) -> Response:
    try:
        principal = require(request, "reader")
    except AuthError as exc:
        return exc.response()
    prefix = "" if principal.operator else f"{principal.tenant}/"
    view = api.catalog()
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


@dataclass
class _Generation:
    """A generation about to start: the revision it serves, its deltas, the engine answering (known
    once the first delta is out), its prompt's token count (once it ended), and the end of its count
    per engine."""

    ref: str
    deltas: AsyncGenerator[Delta, None]
    engine: Callable[[], str]
    prompt_tokens: Callable[[], Awaitable[int]]
    leave_engine: Callable[[], None] = _nothing


def _in_process(
    api: OpenAiApi,
    body: CompletionRequest | ChatRequest,
    params: SamplingParams,
    model: str,
    against: StableAnswer | None,
) -> _Generation:
    host = _host_for(api.hosts, model)
    prompt = body.text(host.engine.render_chat)
    ref = host.resolve(model)  # pinned here, so the header names what really answered

    async def prompt_tokens() -> int:
        # A prompt may be megabytes: count its tokens off the event loop.
        return await anyio.to_thread.run_sync(host.engine.count_tokens, prompt)

    leave = api.admission.in_flight.enter(host.engine_id)
    deltas = host.generate(ref, prompt, params, against)
    return _Generation(ref, deltas, lambda: host.engine_id, prompt_tokens, leave)


def _routed(
    api: OpenAiApi,
    router: Router,
    body: CompletionRequest | ChatRequest,
    params: SamplingParams,
    model: str,
    against: StableAnswer | None,
) -> _Generation:
    view = api.catalog()
    try:
        ref, policy = resolve_model(model, view.policy, lambda p, r: view.revision(p, r) is not None)
    finally:
        view.close()
    # The router counts the request against the engine it sends it to (admission.in_flight).
    routed = router.route(ref, policy.base_id, body.routed(params, ref, against), api.admission.in_flight)

    async def prompt_tokens() -> int:
        return routed.prompt_tokens or 0

    return _Generation(ref, routed.deltas, lambda: routed.engine, prompt_tokens)


def _generation(
    api: OpenAiApi,
    body: CompletionRequest | ChatRequest,
    params: SamplingParams,
    model: str,
    against: StableAnswer | None = None,
) -> _Generation:
    """`against`: this is a shadow run, to be scored beside the stable answer the client got."""
    if api.router is not None and not api.hosts:
        return _routed(api, api.router, body, params, model, against)
    return _in_process(api, body, params, model, against)


def _request_id(request: Request, generated: str) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is None:
        return generated
    if not REQUEST_ID.match(given):
        raise HttpError(
            400,
            f"{REQUEST_ID_HEADER}: 1 to 128 characters of letters, digits and ._:/=+- (got {given[:40]!r})",
        )
    return given


def _answering(api: OpenAiApi, model: str, request_id: str) -> Answering:
    """Who answers `model` for this request: a pinned ref or a policy without a canary as always
    (resolved where it is served), else the side of the running canary's split `request_id` falls on."""
    unchanged = Answering(model)
    if "@" in model:
        return unchanged
    try:
        view = api.catalog()
    except ProjectionMissing:
        return unchanged
    try:
        row = view.policy(model)
        if row is None or row.status != "active" or row.pointer is None or row.canary is None:
            return unchanged
        return answering(model, row.pointer, view.running_canary(row), request_id)
    finally:
        view.close()


def _shadow(
    api: OpenAiApi,
    body: CompletionRequest | ChatRequest,
    params: SamplingParams,
    ref: str,
    against: StableAnswer | None,
) -> None:
    """Run the request again on the shadowed candidate `ref`, in the background, for its live numbers;
    with the stable answer the client got (`against`, when it was whole), for the paired scores too."""

    async def work() -> bool:
        generation = _generation(api, body, params, ref, against)
        try:
            async with aclosing(generation.deltas) as deltas:
                async for _ in deltas:
                    pass
        except Overloaded:
            return False
        except EngineRefused as exc:
            if exc.status == 429:
                return False
            raise
        finally:
            generation.leave_engine()
        return True

    api.admission.shadow.start(ref, work, paired=against is not None)


@dataclass
class _Started:
    """A generation that has produced its first delta, and what answering it needs."""

    body: CompletionRequest | ChatRequest
    generation: _Generation
    logprobs: bool
    first: Delta
    leave: Callable[[], None]  # ends the request's counts (per token and per engine)
    request_id: str
    ident: str
    params: SamplingParams
    shadow: str | None  # the candidate that runs this request too, unseen


async def _start(api: OpenAiApi, request: Request, chat: bool, ident: str) -> _Started:
    """Admit, decode and start the request; on any failure (a cancellation included) it leaves the
    counts and closes what it started before the error goes on."""
    admission = api.admission
    leave_token = _nothing
    started: _Generation | None = None

    def leave() -> None:
        if started is not None:
            started.leave_engine()
        leave_token()

    try:
        principal = require(request, "reader")
        leave_token = admission.admit(principal.token_id)
        body: CompletionRequest | ChatRequest = await _decode(
            request, ChatRequest if chat else CompletionRequest
        )
        logprobs = body.wants_logprobs()
        params = body.params(logprobs)
        if not principal.sees(tenant_of(body.model)):
            raise ModelNotFound(body.model, "no such policy")
        request_id = _request_id(request, ident)
        chosen = _answering(api, body.model, request_id)
        started = _generation(api, body, params, chosen.ref)
        deltas = started.deltas
        first = await _attended(request, admission.cut_off, lambda: anext(deltas))
    except BaseException:
        leave()
        if started is not None:
            with anyio.CancelScope(shield=True):
                await started.deltas.aclose()
        raise
    admission.answered[started.ref] += 1
    return _Started(body, started, logprobs, first, leave, request_id, ident, params, chosen.shadow)


async def serve(api: OpenAiApi, request: Request, chat: bool) -> Response:
    prompt_field = "messages" if chat else "prompt"
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    try:
        started = await _start(api, request, chat, ident)
    except ClientGone:
        return Response(status_code=499)  # nobody reads it: the status is for the access log
    except Exception as exc:
        return inference_error(exc, prompt_field).response()
    body, generation, cut_off = started.body, started.generation.deltas, api.admission.cut_off
    answered = {
        "x-mint-revision": started.generation.ref,
        "x-mint-engine": started.generation.engine(),
        REQUEST_ID_HEADER: started.request_id,
    }
    created = int(time.time())
    shadow = started.shadow

    def after(told: Completion | None) -> None:
        """Once the answer is out: the shadow run, if any, scored against what the client was told."""
        if shadow is not None:
            against = None if told is None else StableAnswer(started.generation.ref, told.text, told.tokens)
            _shadow(api, body, started.params, shadow, against)

    if body.stream:
        told = _Told()
        events = _sse(ident, created, body.model, chat, started.first, generation, told)
        return _Streamed(events, generation, started.leave, answered, cut_off, lambda: after(told.whole()))
    try:
        async with aclosing(generation):
            out = await _attended(
                request,
                cut_off,
                lambda: _collect(started.first, generation, started.generation.prompt_tokens),
            )
    except ClientGone:
        return Response(status_code=499)
    except Exception as exc:
        return inference_error(exc, prompt_field).response()
    finally:
        started.leave()
    after(out)
    return JSONResponse(_whole(ident, created, body.model, chat, out, started.logprobs), headers=answered)


def routes(
    hosts: list[EngineHost],
    catalog: Callable[[], Catalog],
    admission: Admission,
    router: Router | None = None,
) -> list[Route]:
    api = OpenAiApi(hosts, catalog, admission, router)

    async def models(request: Request) -> Response:
        return await list_models(api, request)

    async def completions(request: Request) -> Response:
        return await serve(api, request, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await serve(api, request, chat=True)

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


@dataclass
class _Told:
    """What a stream told its client so far, and whether it ended whole (a shadow run of the request
    is scored against it only then)."""

    answer: Completion = field(default_factory=Completion)
    ended: bool = False

    def whole(self) -> Completion | None:
        return self.answer if self.ended else None


async def _sse(
    ident: str, created: int, model: str, chat: bool, first: Delta, rest: AsyncIterator[Delta], told: _Told
) -> AsyncGenerator[bytes, None]:
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

    told.answer.add(first)
    yield event(first)
    try:
        async for delta in rest:
            told.answer.add(delta)
            yield event(delta)
    except Exception as exc:  # the status is sent: the stream ends with the error, without [DONE]
        yield b"data: " + inference_error(exc, "messages" if chat else "prompt").response().body + b"\n\n"
        return
    told.ended = True
    yield b"data: [DONE]\n\n"
