"""The hostile probes of a security review (issue 11), replayed against the OpenAI routes over a real
engine host and torch engine on the tiny base (a 512-token context): every request is bounded by the
model's context, the body limit, the token's concurrency and rate, and its client's presence; bad
bodies get a 400 naming the field; and a SIGTERM drains a real `mint up` within its bound."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

import uvicorn
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from starlette.applications import Starlette

from actors.system import System
from events.catalog import RegisterPolicy
from events.sqlite_log import SqliteLog
from events.training import RevisionExported
from mint.api.app import DEFAULT_MAX_BODY_BYTES, create_app, drain
from mint.api.openai import Admission, InferenceLimits
from mint.auth.tokens import TokenStore
from mint.bases.tiny import create_tiny_base
from mint.home import Home
from mint.ingest import IngestLimits
from tests.serving_system import export_unloadable, ready, serving_system, torch_engine

pytestmark = pytest.mark.anyio

CONTEXT = 512  # the tiny base's max_position_embeddings
UNBOUNDED = {"concurrency": 1000, "requests_per_s": 1e6, "burst": 1000}


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    # A slot to spare beside r1 and r2: the scheduler places a cold revision (export_unloadable) there,
    # so a request held waiting for it never makes the served revision cold for the others.
    async with serving_system(tmp_path, load_deadline_s=120.0, slots=3) as system:
        await ready(system)
        yield system


@pytest.fixture
def tokens(system: System) -> TokenStore:
    return TokenStore(system.home.tokens)


def _bearer(tokens: TokenStore, roles: str = "reader") -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.issue('acme', roles).secret}"}


def _app(system: System, tokens: TokenStore, **limits: Any) -> Starlette:
    return create_app(system, tokens, inference=InferenceLimits(**{**UNBOUNDED, **limits}))


def _client(app: Starlette, headers: dict[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mint", headers=headers)


def _admission(app: Starlette) -> Admission:
    admission: Admission = app.state.admission
    return admission


def _refused(response: httpx.Response, status: int, param: str | None) -> str:
    """The message of an OpenAI-shaped error with this status that names `param`."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    assert error["param"] == param, error
    message: str = error["message"]
    return message


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test process keeps its own signal handlers


@contextlib.asynccontextmanager
async def _served(app: Starlette) -> AsyncIterator[str]:
    """`app` on a real uvicorn on loopback, so a client can really disconnect."""
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    listener = socket.create_server(("127.0.0.1", 0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [listener])
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        tg.cancel_scope.cancel()


def _over_http(address: str, tokens: TokenStore) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=address, headers=_bearer(tokens), timeout=120)


# -- the context ------------------------------------------------------------------------------------


async def test_max_tokens_beyond_the_context_is_refused_naming_it(system: System, tokens: TokenStore) -> None:
    async with _client(_app(system, tokens), _bearer(tokens)) as client:
        for max_tokens in (10**6, 2**63 - 1, 2**63, 10**30):
            for route, body in (
                ("/v1/completions", {"prompt": "The weather today is"}),
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
            ):
                answer = await client.post(route, json={"model": "acme/a", "max_tokens": max_tokens, **body})
                _refused(answer, 400, "max_tokens")
        near = await client.post(
            "/v1/completions", json={"model": "acme/a", "prompt": "one two", "max_tokens": CONTEXT}
        )
        assert f"model's context of {CONTEXT}" in _refused(near, 400, "max_tokens")
    assert torch_engine(system).active == 0, "nothing refused reached the batch"


async def test_a_prompt_longer_than_the_context_is_refused_naming_it(
    system: System, tokens: TokenStore
) -> None:
    megabyte = "lorem ipsum " * (2**20 // 12)
    async with _client(_app(system, tokens), _bearer(tokens)) as client:
        with anyio.fail_after(60):  # the review saw a 1 MB prompt run past 60 s
            long = await client.post("/v1/completions", json={"model": "acme/a", "prompt": megabyte})
        assert f"the model's context is {CONTEXT}" in _refused(long, 400, "prompt")
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": "acme/a", "messages": [{"role": "user", "content": "word " * 2 * CONTEXT}]},
        )
        _refused(chat, 400, "messages")


# -- the body limit ---------------------------------------------------------------------------------


async def test_a_body_over_the_limit_gets_413_declared_or_streamed(
    system: System, tokens: TokenStore
) -> None:
    over = b"x" * (DEFAULT_MAX_BODY_BYTES + 1)

    async def streamed() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse up front
        for start in range(0, len(over), 2**20):
            yield over[start : start + 2**20]

    async with _client(_app(system, tokens), _bearer(tokens, "reader,producer")) as client:
        for route in ("/v1/completions", "/v1/chat/completions", "/v1/events", "/v1/commands"):
            declared = await client.post(route, content=over)
            assert "is over the limit" in _refused(declared, 413, None)
            chunked = await client.post(route, content=streamed())
            assert "more than the limit" in _refused(chunked, 413, None)
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(system, tokens, IngestLimits(max_bytes=2**20), max_body_bytes=2**19)


# -- malformed bodies -------------------------------------------------------------------------------


async def test_malformed_bodies_get_400_naming_the_field(system: System, tokens: TokenStore) -> None:
    deep = "[" * 100_000
    good = {"model": "acme/a", "prompt": "x", "max_tokens": 2}
    user = {"role": "user", "content": "x"}
    chat = {"model": "acme/a", "messages": [user], "max_tokens": 2}
    probes: list[tuple[str, str | dict[str, Any], str | None]] = [
        ("/v1/completions", deep, None),  # the body is no object at all
        ("/v1/completions", '{"model": "acme/a", "prompt": "x", "extra": ' + deep, "extra"),
        ("/v1/completions", '{"model": "acme/a", "prompt": "x", "stop": ' + deep, "stop[0]"),
        ("/v1/chat/completions", {"model": "acme/a", "messages": []}, "messages"),
        (
            "/v1/chat/completions",
            {**chat, "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            {**chat, "messages": [{"role": "user", "content": "x", "name": "y"}]},
            "messages[0].name",
        ),
        ("/v1/completions", {**good, "seed": 2**64}, "seed"),
        ("/v1/completions", {**good, "seed": -(2**63) - 1}, "seed"),
        ("/v1/completions", {**good, "frequency_penalty": 0.5}, "frequency_penalty"),
        ("/v1/chat/completions", {**chat, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/completions", {**good, "logprobs": -1}, "logprobs"),
        ("/v1/completions", {**good, "logprobs": 6}, "logprobs"),
        ("/v1/completions", {**good, "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {**good, "n": 2**64}, "n"),
        ("/v1/completions", {**good, "temperature": -1}, "temperature"),
        ("/v1/completions", {**good, "top_p": 0}, "top_p"),
        ("/v1/completions", {**good, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ]
    async with _client(_app(system, tokens), _bearer(tokens)) as client:
        for route, body, param in probes:
            content = body if isinstance(body, str) else json.dumps(body)
            _refused(await client.post(route, content=content), 400, param)
        # In range, each is served: the bounds are the API's, not accidents of the engine.
        edges = {**good, "seed": 2**63 - 1, "logprobs": 0, "stop": ["a", "b", "c", "d"], "temperature": 2}
        served = await client.post("/v1/completions", json=edges)
        assert served.status_code == 200, served.text
        assert len(served.json()["choices"][0]["logprobs"]["token_logprobs"]) >= 1


# -- a client that goes away ------------------------------------------------------------------------


async def test_a_client_that_leaves_mid_stream_cancels_its_generation(
    system: System, tokens: TokenStore
) -> None:
    engine = torch_engine(system)
    app = _app(system, tokens)
    body = {"model": "acme/a", "prompt": "hi", "max_tokens": CONTEXT - 8, "temperature": 0, "stream": True}
    async with (
        _served(app) as address,
        _over_http(address, tokens) as client,
    ):
        before = engine.generated_tokens
        with anyio.fail_after(60):
            async with client.stream("POST", "/v1/completions", json=body) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        break  # one event read: the client leaves (its connection closes)
            await engine.until_active(0)
            await _admission(app).in_flight.until_total(0)
        assert engine.generated_tokens - before < body["max_tokens"], "decoding stopped with the client"


async def test_a_client_that_leaves_a_non_streaming_request_cancels_its_generation(
    system: System, tokens: TokenStore
) -> None:
    engine = torch_engine(system)
    app = _app(system, tokens)
    body = {"model": "acme/a", "prompt": "hi", "max_tokens": CONTEXT - 8, "temperature": 0}
    async with (
        _served(app) as address,
        _over_http(address, tokens) as client,
    ):
        with anyio.fail_after(120):
            # Stayed for, the same request decodes every token it may: what leaving must cut short.
            whole = (await client.post("/v1/completions", json=body)).json()
            assert whole["usage"]["completion_tokens"] == body["max_tokens"]
            before = engine.generated_tokens
            # A bare connection: the request goes out whole, then the client hangs up mid-request.
            host, port = address.removeprefix("http://").split(":")
            payload = json.dumps(body).encode()
            async with await anyio.connect_tcp(host, int(port)) as connection:
                head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                head += f"Authorization: {client.headers['authorization']}\r\n"
                await connection.send(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                await engine.until_active(1)
            await engine.until_active(0)
            await _admission(app).in_flight.until_total(0)
        assert engine.generated_tokens - before < body["max_tokens"], "decoding stopped with the client"


# -- per-token limits -------------------------------------------------------------------------------


async def test_a_token_over_its_concurrency_gets_429_while_another_is_served(
    system: System, tokens: TokenStore
) -> None:
    await export_unloadable(system, "acme/a", "r3")
    app = _app(system, tokens, concurrency=1)
    busy, other = _client(app, _bearer(tokens)), _client(app, _bearer(tokens))
    body = {"model": "acme/a", "prompt": "x", "max_tokens": 2}
    with anyio.fail_after(60):
        async with busy, other, anyio.create_task_group() as tg:
            # Waits for a revision that never loads: in flight until the drain below ends it, the way
            # a server ends what it still runs (an answer), not by cancelling the client's call.
            hung = partial(busy.post, "/v1/completions", json={**body, "model": "acme/a@r3"})
            tg.start_soon(_answered_503, hung)
            await _admission(app).in_flight.until_total(1)
            refused = await busy.post("/v1/completions", json=body)
            assert "1 requests in flight, the limit is 1" in _refused(refused, 429, None)
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "rate_limit_error"
            assert (await other.post("/v1/completions", json=body)).status_code == 200
            assert await drain(app, grace_s=0) == 1


async def test_a_token_over_its_rate_gets_429_with_retry_after_while_another_is_served(
    system: System, tokens: TokenStore
) -> None:
    app = _app(system, tokens, requests_per_s=0.01, burst=2)
    body = {"model": "acme/a", "prompt": "x", "max_tokens": 2}
    async with _client(app, _bearer(tokens)) as busy, _client(app, _bearer(tokens)) as other:
        assert [(await busy.post("/v1/completions", json=body)).status_code for _ in range(2)] == [200, 200]
        refused = await busy.post("/v1/completions", json=body)
        assert "rate limit" in _refused(refused, 429, None)
        assert int(refused.headers["retry-after"]) >= 90  # a whole request at 0.01/s: about 100 s
        assert (await other.post("/v1/completions", json=body)).status_code == 200


@pytest.mark.parametrize(
    ("arguments", "environment", "named"),
    [
        (["--inference-rate", "0"], {}, "--inference-rate"),
        ([], {"MINT_INFERENCE_BURST": "0"}, "--inference-burst"),
        (["--inference-concurrency", "many"], {}, "--inference-concurrency"),
    ],
)
def test_api_replicas_take_the_inference_limits_and_refuse_bad_ones_by_name(
    tmp_path: Path, arguments: list[str], environment: dict[str, str], named: str
) -> None:
    from click.testing import CliRunner

    from mint.cli import cli
    from mint.commands.common import inference_limits

    assert inference_limits(None, 50.0, None) == InferenceLimits(requests_per_s=50.0)
    assert inference_limits(None, None, None) is None
    command = [
        "actor",
        "api",
        "--replica",
        "api-1",
        "--home",
        str(tmp_path),
        "--log",
        "kafka://127.0.0.1:1/t",
    ]
    command += arguments
    done = CliRunner().invoke(cli, command, env=environment)
    assert done.exit_code == 2 and named in done.output, done.output
    assert not (tmp_path / "catalog.db").exists()  # refused before anything started


# -- draining ---------------------------------------------------------------------------------------


async def test_a_drain_fails_healthz_and_refuses_new_inference_while_requests_finish(
    system: System, tokens: TokenStore
) -> None:
    await export_unloadable(system, "acme/a", "r3")
    app = _app(system, tokens)
    admission = _admission(app)
    async with _client(app, _bearer(tokens)) as client:
        assert (await client.get("/healthz")).status_code == 200
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                body = {"model": "acme/a@r3", "prompt": "x", "max_tokens": 2}
                tg.start_soon(_answered_503, partial(client.post, "/v1/completions", json=body))
                await admission.in_flight.until_total(1)
                assert await drain(app, grace_s=0) == 1, "the grace is over: one request still ran"
                health = await client.get("/healthz")
                assert health.status_code == 503 and health.json()["status"] == "draining"
                late = await client.post("/v1/completions", json={**body, "model": "acme/a"})
                assert late.status_code == 503 and late.headers["retry-after"] == "1"
            assert admission.in_flight.total() == 0, "the drain cancelled what outlived its grace"
            # Nothing in flight: the drain returns at once, however long its grace.
            assert await drain(app, grace_s=3600) == 0


# -- SIGTERM on a real `mint up` --------------------------------------------------------------------


async def _line_with(output: BufferedByteReceiveStream, text: str, seen: list[str]) -> str:
    """The next line of `mint up`'s output that holds `text` (the lines before it go to `seen`)."""
    while True:
        try:
            line = (await output.receive_until(b"\n", 1 << 20)).decode()
        except anyio.IncompleteRead:
            raise AssertionError(f"mint up ended before saying {text!r}:\n" + "\n".join(seen)) from None
        seen.append(line)
        if text in line:
            return line


async def test_sigterm_drains_mint_up_and_exits_within_the_bound(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    create_tiny_base(home.base("tiny"), seed=0)
    async with SqliteLog(home.log, partitions=2) as log:
        await log.append(
            [
                RegisterPolicy.create(policy="acme/a", base_id="tiny"),
                RevisionExported.create(
                    policy="acme/a",
                    revision="r1",
                    base_id="tiny",
                    uri="adapters/acme/a/r1/" + "0" * 64 + "/adapter_model.safetensors",
                    sha256="0" * 64,
                    bytes=1,
                    rank=4,
                    alpha=8.0,
                    targets=["q_proj"],
                ),
            ]
        )
    headers = {"Authorization": f"Bearer {TokenStore(home.tokens).issue('acme', 'reader').secret}"}
    grace_s = 1
    command = [str(Path(sys.executable).parent / "mint"), "-v", "up", "--home", str(home.root), "--port", "0"]
    command += [
        "--serve",
        "tiny",
        "--grace",
        str(grace_s),
        "--inference-rate",
        "1000",
        "--inference-burst",
        "1000",
    ]
    seen: list[str] = []
    process: Process = await anyio.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        assert process.stdout is not None
        output = BufferedByteReceiveStream(process.stdout)
        with anyio.fail_after(180):
            address = (await _line_with(output, "HTTP API on", seen)).split()[3]
        async with httpx.AsyncClient(base_url=address, headers=headers, timeout=120) as client:

            async def waits_for_a_load_that_fails() -> httpx.Response:
                body = {"model": "acme/a@r1", "prompt": "x", "max_tokens": 2}
                while (answer := await client.post("/v1/completions", json=body)).status_code == 404:
                    pass  # the engine host has not folded the revision yet
                return answer

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_answered_503, waits_for_a_load_that_fails)
                    await _line_with(output, "loading acme/a@r1 failed", seen)  # logged (-v): it waits
                    process.send_signal(signal.SIGTERM)
                    await _line_with(output, "draining", seen)
                    health = await client.get("/healthz")
                    assert health.status_code == 503 and health.json()["status"] == "draining"
                    await _line_with(output, "cancelled 1 inference requests", seen)
        # The grace, the server's second to cancel what is left, and the actors' teardown.
        with anyio.fail_after(grace_s + 20):
            assert await process.wait() == 0, "".join(seen)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _answered_503(request: Callable[[], Awaitable[httpx.Response]]) -> None:
    """The request outlives the grace: the drain cancels it and it is answered 503 (retry)."""
    cut = await request()
    assert "shut down before this request finished" in _refused(cut, 503, None)
