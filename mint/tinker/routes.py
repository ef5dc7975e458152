"""The Tinker HTTP routes under /api/v1: what the `tinker` and `mindlab-toolkit` SDKs call.

Clients set their base URL to the server's root (`http://HOST:PORT`); every path here starts with
/api/v1. Slow calls answer with a future at once; `retrieve_future` long-polls it. Each handler is a
module-level function of the shared `Api`, the request and its caller; what every route does around
its handler (keys, retries, errors, seq_ids given up) is mint/tinker/endpoint.py.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mint.tinker import external, proto, wire, written
from mint.tinker.auth import Grant, Keys
from mint.tinker.checkpoints import TinkerPath
from mint.tinker.endpoint import PROTOBUF, READ, TRAIN, Api, Door, Reply, endpoint, error, is_protobuf
from mint.tinker.external import DOWNLOAD_ROUTE
from mint.tinker.futures import Future, RequestFailed
from mint.tinker.models import metadata_strings
from mint.tinker.results import ForwardBackwardResult, SampleResult
from mint.tinker.service import TinkerService
from mint.tinker.wire import Sequenced, WireError

PREFIX = "/api/v1"
LONG_POLL_S = 30.0  # under the SDK's 45 s read timeout for retrieve_future
MAX_PAGE = 1000  # the most listing entries one request returns


def future_reply(future: Future, **extra: Any) -> dict[str, Any]:
    return {"request_id": future.request_id, "model_id": future.model_id, **extra}


# -- bootstrap -------------------------------------------------------------------------------------


async def client_config(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    # The JWT exchange is what lets MinT's SDK use its `sk-` keys (see mint/tinker/auth.py).
    return {
        "pjwt_auth_enabled": True,
        "sample_use_retrieve_futures": False,
        "fwdbwd_max_chunk_len": api.chunk_datums,
    }


async def dynamic_config(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    return {}


async def auth_token(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    verified = api.keys.verify_key(request.headers.get("x-api-key", ""))
    if verified is None:
        raise WireError("X-API-Key", "unknown key", 401)
    return {"jwt": api.keys.issue_jwt(verified)}


async def telemetry(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    return {"status": "accepted"}


async def healthz(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    # The SDK's `health_check()` (tinker 0.38) reads exactly this; probes carry no key.
    return {"status": "ok"}


async def create_session(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    body = wire.decode(await request.body(), wire.CreateSession)
    metadata = metadata_strings(body.user_metadata)
    session_id = await api.service.create_session(owner, metadata, body.display_name)
    return {"session_id": session_id, "type": "create_session"}


async def heartbeat(api: Api, request: Request, owner: Grant) -> Reply:
    body = wire.decode(await request.body(), wire.SessionRef)
    try:
        api.service.sessions.get(body.session_id, owner)
    except WireError as exc:  # 410 ends the SDK's heartbeat loop for a session this server forgot
        return error(WireError(exc.field, exc.problem, 410))
    return {"type": "session_heartbeat"}


async def finish(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    session = api.service.sessions.get(request.path_params["session_id"], owner)
    await api.service.finish_session(session.session_id)
    return {}


# -- training --------------------------------------------------------------------------------------


async def create_model(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    body = wire.decode(await request.body(), wire.CreateModel)
    return future_reply(await api.service.clients.create_model(owner, body))


async def get_info(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    body = wire.decode(await request.body(), wire.ModelRef)
    return await api.service.clients.info(body.model_id, owner)


async def forward_backward(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    raw = await request.body()
    if is_protobuf(request):
        if "zstd" in request.headers.get("content-encoding", ""):
            raise WireError("Content-Encoding", "zstd bodies are not accepted (proto_compress_fwdbwd is off)")
        sequenced = proto.decode_forward_backward(raw)
    else:
        body = wire.decode(raw, wire.ForwardBackward)
        sequenced = Sequenced(body.model_id, body.seq_id, body.forward_backward_input.work(False))
    return future_reply(api.service.clients.forward_backward(owner, sequenced))


async def forward(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    body = wire.decode(await request.body(), wire.Forward)
    sequenced = Sequenced(body.model_id, body.seq_id, body.forward_input.work(True))
    return future_reply(api.service.clients.forward_backward(owner, sequenced))


async def optim_step(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    body = wire.decode(await request.body(), wire.OptimStep)
    sequenced = Sequenced(body.model_id, body.seq_id, body.adam_params)
    return future_reply(api.service.clients.optim_step(owner, sequenced))


async def save_weights(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    body = wire.decode(await request.body(), wire.SaveWeights)
    sequenced = Sequenced(body.model_id, body.seq_id, (body.path, body.overwrite, body.ttl_seconds))
    return future_reply(api.service.weights.save_weights(owner, sequenced))


async def save_for_sampler(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    body = wire.decode(await request.body(), wire.SaveWeightsForSampler)
    work = (body.path, body.sampling_session_seq_id, body.ttl_seconds)
    sequenced = Sequenced(body.model_id, body.seq_id, work)
    return future_reply(api.service.weights.save_weights_for_sampler(owner, sequenced))


async def save_external(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    body = wire.decode(await request.body(), wire.SaveWeightsExternal)
    sequenced = Sequenced(body.model_id, body.seq_id, body)
    return future_reply(api.service.weights.save_weights_external(owner, sequenced))


async def load_weights(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    body = wire.decode(await request.body(), wire.LoadWeights)
    return future_reply(await api.service.weights.load_weights(owner, body))


async def weights_info(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    body = wire.decode(await request.body(), wire.WeightsInfo)
    return api.service.weights.weights_info(owner, body.tinker_path)


# -- sampling --------------------------------------------------------------------------------------


async def create_sampling_session(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    body = wire.decode(await request.body(), wire.CreateSamplingSession)
    sampler_id = await api.service.samplers.create_sampling_session(owner, body)
    return {"sampling_session_id": sampler_id, "type": "create_sampling_session"}


async def sampler(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    return api.service.samplers.info(request.path_params["sampler_id"], owner)


async def asample(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    body = wire.decode(await request.body(), wire.Sample)
    future, sequence_ids = api.service.samplers.sample(owner, body)
    return future_reply(future, sample_sequence_ids=sequence_ids)


# -- futures ---------------------------------------------------------------------------------------


async def retrieve_future(api: Api, request: Request, owner: Grant) -> Reply:
    body = wire.decode(await request.body(), wire.RetrieveFuture)
    futures = api.service.futures
    future = futures.get(body.request_id, owner.tenant)
    if future is None:
        raise WireError("request_id", f"no request {body.request_id!r} (unknown or expired)", 404)
    if not await futures.wait(future, LONG_POLL_S):
        return {"type": "try_again", "request_id": future.request_id, "queue_state": futures.queue_state}
    written.note(future.position)  # the answer carries where the future's work appended
    if future.error is not None:
        return {"error": future.error.message, "category": future.error.category}
    result = future.result
    if isinstance(result, ForwardBackwardResult | SampleResult):
        if PROTOBUF in request.headers.get("accept", ""):
            return Response(result.protobuf(), media_type=PROTOBUF)
        return result.json()
    assert isinstance(result, dict)
    return result


# -- REST ------------------------------------------------------------------------------------------


def query_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise WireError(name, f"{raw[:40]!r} is not an integer") from None


def page(request: Request, default_limit: int) -> tuple[int, int]:
    """The listing's `limit` and `offset` query parameters, checked."""
    limit = query_int(request, "limit", default_limit)
    offset = query_int(request, "offset", 0)
    if not 1 <= limit <= MAX_PAGE:
        raise WireError("limit", f"must be in 1..{MAX_PAGE}, got {limit}")
    if offset < 0:
        raise WireError("offset", f"must be >= 0, got {offset}")
    return limit, offset


async def capabilities(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    return api.service.listings.capabilities()


async def training_runs(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    return api.service.listings.training_runs(owner, *page(request, 20))


async def training_run(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    return api.service.listings.training_run(owner, request.path_params["run_id"])


async def run_checkpoints(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    return api.service.listings.checkpoints_of(owner, request.path_params["run_id"], *page(request, 100))


async def user_checkpoints(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    return api.service.listings.checkpoints_of(owner, None, *page(request, 100))


def checkpoint_path(request: Request) -> TinkerPath:
    """The checkpoint a `/training_runs/{run_id}/checkpoints/{kind}/{name}` route names."""
    params = request.path_params
    return TinkerPath.of_checkpoint(params["run_id"], params["kind"], params["name"])


async def delete_checkpoint(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    await api.service.weights.delete(owner, checkpoint_path(request))
    return {}


async def checkpoint_ttl(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    body = wire.decode(await request.body(), wire.SetTtl)
    await api.service.weights.set_ttl(owner, checkpoint_path(request), body.ttl_seconds)
    return {}


async def external_weights_urls(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    path = checkpoint_path(request)
    files = api.service.weights.external_files(owner, path)
    urls, expires = external.signed_urls(api.keys, str(request.base_url), path, sorted(files))
    return {"urls": urls, "expires": datetime.fromtimestamp(expires, UTC).isoformat()}


async def download(api: Api, request: Request, owner: Grant) -> Response:
    """One file of an external checkpoint, to whoever holds a URL signed for it (no key: the URL is
    the credential, as with a presigned S3 URL)."""
    query = request.query_params
    path = TinkerPath.parse(query.get("path", ""))
    name = query.get("file", "")
    external.check_signed(api.keys, path, name, query_int(request, "expires", 0), query.get("signature", ""))
    try:
        info = api.service.checkpoints.info(path)
    except RequestFailed:
        raise WireError("path", f"no checkpoint {path}", 404) from None
    if name not in info.files or info.expired(time.time()):
        raise WireError("file", f"no file {name!r} in {path}", 404)
    data = await api.service.weights.external_file(info.files[name])
    return Response(data, media_type="application/octet-stream")


async def sessions(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    return api.service.listings.sessions_of(owner, *page(request, 20))


async def session(api: Api, request: Request, owner: Grant) -> dict[str, Any]:
    return api.service.listings.session(owner, request.path_params["session_id"])


DOORS = [
    Door("POST", "/client/config", None, client_config),
    Door("POST", "/client/dynamic_config", None, dynamic_config),
    Door("POST", "/auth/token", None, auth_token),
    Door("POST", "/telemetry", None, telemetry),
    Door("GET", "/healthz", None, healthz),
    Door("POST", "/create_session", READ, create_session, starts=True),
    Door("POST", "/session_heartbeat", READ, heartbeat),
    Door("POST", "/sessions/{session_id}/finish", READ, finish),
    Door("POST", "/create_model", TRAIN, create_model, starts=True),
    Door("POST", "/get_info", READ, get_info),
    Door("POST", "/forward_backward", TRAIN, forward_backward, starts=True, sequenced=True),
    Door("POST", "/forward", TRAIN, forward, starts=True, sequenced=True),
    Door("POST", "/optim_step", TRAIN, optim_step, starts=True, sequenced=True),
    Door("POST", "/save_weights", TRAIN, save_weights, starts=True, sequenced=True),
    Door("POST", "/save_weights_for_sampler", TRAIN, save_for_sampler, starts=True, sequenced=True),
    Door("POST", "/save_weights_external", TRAIN, save_external, starts=True, sequenced=True),
    Door("POST", "/load_weights", TRAIN, load_weights, starts=True, sequenced=True),
    Door("POST", "/weights_info", READ, weights_info),
    Door("POST", "/create_sampling_session", READ, create_sampling_session, starts=True),
    Door("GET", "/samplers/{sampler_id}", READ, sampler),
    Door("POST", "/asample", READ, asample, starts=True),
    Door("POST", "/retrieve_future", READ, retrieve_future),
    Door("GET", "/get_server_capabilities", READ, capabilities),
    Door("GET", "/training_runs", READ, training_runs),
    Door("GET", "/training_runs/{run_id}", READ, training_run),
    Door("GET", "/training_runs/{run_id}/checkpoints", READ, run_checkpoints),
    Door("GET", "/checkpoints", READ, user_checkpoints),
    Door("DELETE", "/training_runs/{run_id}/checkpoints/{kind}/{name}", TRAIN, delete_checkpoint),
    Door("PUT", "/training_runs/{run_id}/checkpoints/{kind}/{name}/ttl", TRAIN, checkpoint_ttl),
    Door(
        "GET",
        "/training_runs/{run_id}/checkpoints/{kind}/{name}/external_weights_urls",
        READ,
        external_weights_urls,
    ),
    Door("GET", DOWNLOAD_ROUTE, None, download),
    Door("GET", "/sessions", READ, sessions),
    Door("GET", "/sessions/{session_id}", READ, session),
]


def routes(service: TinkerService, keys: Keys, chunk_datums: int = 1024) -> list[Route]:
    api = Api(service, keys, chunk_datums)
    return [Route(PREFIX + door.path, endpoint(api, door), methods=[door.method]) for door in DOORS]
