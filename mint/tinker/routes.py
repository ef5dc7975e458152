"""The Tinker HTTP routes under /api/v1: what the `tinker` and `mindlab-toolkit` SDKs call.

Clients set their base URL to the server's root (`http://HOST:PORT`); every path here starts with
/api/v1. Slow calls answer with a future at once; `retrieve_future` long-polls it. Errors are JSON
`{"detail": "<field>: <problem>", "field": ...}` with a 4xx status (the SDK shows the detail; it
retries an empty 400 as if the network had failed, so there is never an empty one). A request that
fails in a way nobody foresaw is a JSON 500 (logged), never Starlette's plain-text one, and a refused
or failed training request gives up its seq_id, so the client's later requests still run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mint.tinker import proto, wire
from mint.tinker.auth import Grant, Keys
from mint.tinker.futures import Future
from mint.tinker.idempotency import Replies
from mint.tinker.results import ForwardBackwardResult, SampleResult
from mint.tinker.service import TinkerService
from mint.tinker.wire import Sequenced, WireError

PREFIX = "/api/v1"
LONG_POLL_S = 30.0  # under the SDK's 45 s read timeout for retrieve_future
PROTOBUF = "application/x-protobuf"
TRAIN, READ = "trainer", "reader"
MAX_PAGE = 1000  # the most listing entries one request returns

logger = logging.getLogger(__name__)

Handler = Callable[[Request, Grant], Awaitable[Response | dict[str, Any]]]


def error(exc: WireError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status == 429 else {}
    return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=exc.status, headers=headers)


def future_reply(future: Future, **extra: Any) -> dict[str, Any]:
    return {"request_id": future.request_id, "model_id": future.model_id, **extra}


def routes(service: TinkerService, keys: Keys, chunk_datums: int = 1024) -> list[Route]:
    """`chunk_datums`: tinker 0.38 splits a larger forward_backward batch into requests of this many
    datums, sent concurrently (the first one last); their seq_ids keep them in order here."""

    def caller(request: Request, role: str) -> Grant:
        presented = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        owner = keys.verify(presented) if presented else None
        if owner is None:
            raise WireError("X-API-Key", "missing, unknown or expired key", 401)
        if not (owner.allows(role) or (role == READ and owner.allows(TRAIN))):
            raise WireError("X-API-Key", f"this key may not act as {role}", 403)
        return owner

    replies = Replies()

    def endpoint(
        role: str | None, handler: Handler, starts: bool, sequenced: bool
    ) -> Callable[[Request], Awaitable[Response]]:
        """`starts`: the request starts something (a future, a session), so an SDK retry of it (same
        X-Idempotency-Key) gets the first reply instead of starting it again. `sequenced`: it takes
        its turn among its training client's requests by seq_id, so refusing it gives the turn up."""

        async def respond(request: Request) -> Response:
            retry_key = request.headers.get("x-idempotency-key") if starts else None
            owner: Grant | None = None
            try:
                owner = caller(request, role) if role else _ANONYMOUS
                if retry_key and (first := replies.get(owner.tenant, retry_key)) is not None:
                    return JSONResponse(first)
                reply = await handler(request, owner)
                if retry_key and isinstance(reply, dict):
                    replies.put(owner.tenant, retry_key, reply)
            except WireError as exc:
                if exc.status == 401:
                    response = error(exc)
                    response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
                    return response
                if sequenced and owner is not None and exc.status != 429:  # a 429 is resent as is
                    await release_seq(request, owner)
                return error(exc)
            except Exception:
                logger.exception("Tinker %s failed", request.url.path)
                if sequenced and owner is not None:
                    await release_seq(request, owner)
                return error(WireError("request", "the server failed on this request (logged)", 500))
            return reply if isinstance(reply, Response) else JSONResponse(reply)

        return respond

    async def release_seq(request: Request, owner: Grant) -> None:
        """A refused training request still uses up its seq_id, or later ones would wait forever;
        only a training client of the caller's own tenant is touched."""
        raw = await request.body()
        if PROTOBUF in request.headers.get("content-type", ""):
            ids = proto.request_ids(raw)
        else:
            ids = wire.sequence_ids(raw)
        if ids is not None:
            service.refused(owner, *ids)

    # -- bootstrap ---------------------------------------------------------------------------------

    async def client_config(request: Request, owner: Grant) -> dict[str, Any]:
        # The JWT exchange is what lets MinT's SDK use its `sk-` keys (see mint/tinker/auth.py).
        return {
            "pjwt_auth_enabled": True,
            "sample_use_retrieve_futures": False,
            "fwdbwd_max_chunk_len": chunk_datums,
        }

    async def dynamic_config(request: Request, owner: Grant) -> dict[str, Any]:
        return {}

    async def auth_token(request: Request, owner: Grant) -> dict[str, Any]:
        raw = request.headers.get("x-api-key", "")
        verified = keys.verify_key(raw)
        if verified is None:
            raise WireError("X-API-Key", "unknown key", 401)
        return {"jwt": keys.issue_jwt(verified)}

    async def telemetry(request: Request, owner: Grant) -> dict[str, Any]:
        return {"status": "accepted"}

    async def healthz(request: Request, owner: Grant) -> dict[str, Any]:
        # The SDK's `health_check()` (tinker 0.38) reads exactly this; probes carry no key.
        return {"status": "ok"}

    async def create_session(request: Request, owner: Grant) -> dict[str, Any]:
        wire.decode(await request.body(), wire.CreateSession)
        return {"session_id": await service.create_session(owner), "type": "create_session"}

    async def heartbeat(request: Request, owner: Grant) -> Response | dict[str, Any]:
        body = wire.decode(await request.body(), wire.SessionRef)
        try:
            service.session(body.session_id, owner)
        except WireError as exc:  # 410 ends the SDK's heartbeat loop for a session this server forgot
            return error(WireError(exc.field, exc.problem, 410))
        return {"type": "session_heartbeat"}

    async def finish(request: Request, owner: Grant) -> dict[str, Any]:
        session = service.session(request.path_params["session_id"], owner)
        await service.finish_session(session.session_id)
        return {}

    # -- training ----------------------------------------------------------------------------------

    async def create_model(request: Request, owner: Grant) -> dict[str, Any]:
        body = wire.decode(await request.body(), wire.CreateModel)
        return future_reply(service.create_model(owner, body))

    async def get_info(request: Request, owner: Grant) -> dict[str, Any]:
        body = wire.decode(await request.body(), wire.ModelRef)
        return await service.info(body.model_id, owner)

    async def forward_backward(request: Request, owner: Grant) -> dict[str, Any]:
        raw = await request.body()
        if PROTOBUF in request.headers.get("content-type", ""):
            if "zstd" in request.headers.get("content-encoding", ""):
                raise WireError(
                    "Content-Encoding", "zstd bodies are not accepted (proto_compress_fwdbwd is off)"
                )
            sequenced = proto.decode_forward_backward(raw)
        else:
            body = wire.decode(raw, wire.ForwardBackward)
            sequenced = Sequenced(body.model_id, body.seq_id, body.forward_backward_input.work(False))
        return future_reply(service.forward_backward(owner, sequenced))

    async def forward(request: Request, owner: Grant) -> dict[str, Any]:
        body = wire.decode(await request.body(), wire.Forward)
        sequenced = Sequenced(body.model_id, body.seq_id, body.forward_input.work(True))
        return future_reply(service.forward_backward(owner, sequenced))

    async def optim_step(request: Request, owner: Grant) -> dict[str, Any]:
        body = wire.decode(await request.body(), wire.OptimStep)
        return future_reply(
            service.optim_step(owner, Sequenced(body.model_id, body.seq_id, body.adam_params))
        )

    async def save_weights(request: Request, owner: Grant) -> dict[str, Any]:
        body = wire.decode(await request.body(), wire.SaveWeights)
        return future_reply(
            service.save_weights(owner, Sequenced(body.model_id, body.seq_id, (body.path, body.overwrite)))
        )

    async def save_for_sampler(request: Request, owner: Grant) -> dict[str, Any]:
        body = wire.decode(await request.body(), wire.SaveWeightsForSampler)
        sequenced = Sequenced(body.model_id, body.seq_id, (body.path, body.sampling_session_seq_id))
        return future_reply(service.save_weights_for_sampler(owner, sequenced))

    async def load_weights(request: Request, owner: Grant) -> dict[str, Any]:
        body = wire.decode(await request.body(), wire.LoadWeights)
        return future_reply(service.load_weights(owner, body))

    async def weights_info(request: Request, owner: Grant) -> dict[str, Any]:
        body = wire.decode(await request.body(), wire.WeightsInfo)
        return service.weights_info(owner, body.tinker_path)

    # -- sampling ----------------------------------------------------------------------------------

    async def create_sampling_session(request: Request, owner: Grant) -> dict[str, Any]:
        body = wire.decode(await request.body(), wire.CreateSamplingSession)
        sampler_id = await service.create_sampling_session(owner, body)
        return {"sampling_session_id": sampler_id, "type": "create_sampling_session"}

    async def sampler(request: Request, owner: Grant) -> dict[str, Any]:
        return service.sampler_info(request.path_params["sampler_id"], owner)

    async def asample(request: Request, owner: Grant) -> dict[str, Any]:
        body = wire.decode(await request.body(), wire.Sample)
        future, sequence_ids = await service.sample(owner, body)
        return future_reply(future, sample_sequence_ids=sequence_ids)

    # -- futures -----------------------------------------------------------------------------------

    async def retrieve_future(request: Request, owner: Grant) -> Response | dict[str, Any]:
        body = wire.decode(await request.body(), wire.RetrieveFuture)
        future = service.futures.get(body.request_id, owner.tenant)
        if future is None:
            raise WireError("request_id", f"no request {body.request_id!r} (unknown or expired)", 404)
        if not await service.futures.wait(future, LONG_POLL_S):
            return {"type": "try_again", "request_id": future.request_id, "queue_state": service.queue_state}
        if future.error is not None:
            return {"error": future.error.message, "category": future.error.category}
        result = future.result
        if isinstance(result, ForwardBackwardResult | SampleResult):
            if PROTOBUF in request.headers.get("accept", ""):
                return Response(result.protobuf(), media_type=PROTOBUF)
            return result.json()
        assert isinstance(result, dict)
        return result

    # -- REST --------------------------------------------------------------------------------------

    def page(request: Request, default_limit: int) -> tuple[int, int]:
        limit = query_int(request, "limit", default_limit)
        offset = query_int(request, "offset", 0)
        if not 1 <= limit <= MAX_PAGE:
            raise WireError("limit", f"must be in 1..{MAX_PAGE}, got {limit}")
        if offset < 0:
            raise WireError("offset", f"must be >= 0, got {offset}")
        return limit, offset

    async def capabilities(request: Request, owner: Grant) -> dict[str, Any]:
        return service.capabilities()

    async def training_runs(request: Request, owner: Grant) -> dict[str, Any]:
        return service.training_runs(owner, *page(request, 20))

    async def training_run(request: Request, owner: Grant) -> dict[str, Any]:
        return service.training_run(owner, request.path_params["run_id"])

    async def run_checkpoints(request: Request, owner: Grant) -> dict[str, Any]:
        return service.checkpoints_of(owner, request.path_params["run_id"], *page(request, 100))

    async def user_checkpoints(request: Request, owner: Grant) -> dict[str, Any]:
        return service.checkpoints_of(owner, None, *page(request, 100))

    table: list[tuple[str, str, str | None, Handler]] = [
        ("POST", "/client/config", None, client_config),
        ("POST", "/client/dynamic_config", None, dynamic_config),
        ("POST", "/auth/token", None, auth_token),
        ("POST", "/telemetry", None, telemetry),
        ("GET", "/healthz", None, healthz),
        ("POST", "/create_session", READ, create_session),
        ("POST", "/session_heartbeat", READ, heartbeat),
        ("POST", "/sessions/{session_id}/finish", READ, finish),
        ("POST", "/create_model", TRAIN, create_model),
        ("POST", "/get_info", READ, get_info),
        ("POST", "/forward_backward", TRAIN, forward_backward),
        ("POST", "/forward", TRAIN, forward),
        ("POST", "/optim_step", TRAIN, optim_step),
        ("POST", "/save_weights", TRAIN, save_weights),
        ("POST", "/save_weights_for_sampler", TRAIN, save_for_sampler),
        ("POST", "/load_weights", TRAIN, load_weights),
        ("POST", "/weights_info", READ, weights_info),
        ("POST", "/create_sampling_session", READ, create_sampling_session),
        ("GET", "/samplers/{sampler_id}", READ, sampler),
        ("POST", "/asample", READ, asample),
        ("POST", "/retrieve_future", READ, retrieve_future),
        ("GET", "/get_server_capabilities", READ, capabilities),
        ("GET", "/training_runs", READ, training_runs),
        ("GET", "/training_runs/{run_id}", READ, training_run),
        ("GET", "/training_runs/{run_id}/checkpoints", READ, run_checkpoints),
        ("GET", "/checkpoints", READ, user_checkpoints),
    ]
    starting = {
        "/create_session",
        "/create_model",
        "/forward_backward",
        "/forward",
        "/optim_step",
        "/save_weights",
        "/save_weights_for_sampler",
        "/load_weights",
        "/create_sampling_session",
        "/asample",
    }
    sequenced = {
        "/forward_backward",
        "/forward",
        "/optim_step",
        "/save_weights",
        "/save_weights_for_sampler",
        "/load_weights",
    }
    return [
        Route(
            PREFIX + path,
            endpoint(role, handler, path in starting, path in sequenced),
            methods=[method],
        )
        for method, path, role, handler in table
    ]


_ANONYMOUS = Grant("", "", frozenset())  # the caller of the routes that need no key


def query_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise WireError(name, f"{raw[:40]!r} is not an integer") from None
