"""/v1/completions and /v1/chat/completions fuzzed (tests/fuzz_strategies.py) on the real app over a
torch engine host on the tiny base: a good body of any shape the API documents is answered 200
(streamed or not); a body broken in one way is a 4xx in OpenAI's error shape whose `param` names the
field (None only when the body is not a JSON object), never a 500; and a good request after every bad
one is still answered.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from hypothesis import example, given
from starlette.applications import Starlette

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from actors.system import System
from events.serving import WavePlanned
from mint.api.app import create_app
from mint.api.openai import InferenceLimits
from mint.auth.tokens import TokenStore
from tests.api_system import client_for
from tests.fuzz_strategies import (
    BadBody,
    bad_openai_body,
    chat_body,
    completion_body,
    fuzz_settings,
    top_field,
)
from tests.serving_system import ready, serving_system

pytestmark = pytest.mark.anyio
ROUTES = {False: "/v1/completions", True: "/v1/chat/completions"}
# Admission limits are not what is fuzzed here: none that an example reaches.
UNBOUNDED = InferenceLimits(concurrency=1000, requests_per_s=1e6, burst=1000)
GOOD = {"model": "acme/a", "prompt": "hello", "max_tokens": 2, "temperature": 0.0}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    # One engine host for every example of the module: that it stays up through them is checked too.
    async with serving_system(tmp_path_factory.mktemp("fuzz-openai")) as system:
        await ready(system)
        yield system


@pytest.fixture(scope="module")
def app(system: System) -> Starlette:
    return create_app(system, TokenStore(system.home.tokens), inference=UNBOUNDED)


@pytest.fixture(scope="module")
async def reader(system: System, app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app, TokenStore(system.home.tokens), "acme", "reader") as client:
        yield client


def answered(response: httpx.Response, stream: bool) -> None:
    assert response.status_code == 200, response.text[:600]
    assert response.headers["x-mint-revision"].startswith("acme/a@")
    if stream:
        assert response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]
    else:
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


def refused(response: httpx.Response, bad: BadBody) -> dict[str, Any]:
    """OpenAI's error shape, the status `bad` calls for, and `param` naming its field."""
    assert response.status_code == bad.status, (bad.how, response.status_code, response.text[:600])
    assert response.headers["content-type"] == "application/json", response.text[:200]
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == bad.status and error["type"] == "invalid_request_error", error
    assert bad.named(top_field(error["param"])), (bad.how, bad.field, error)
    assert error["message"], error
    # The message names the field too: each name on its path (msgspec writes a missing member apart).
    assert all(name in error["message"] for name in re.findall(r"[A-Za-z_]\w*", error["param"] or "")), error
    return error


async def bad_then_good(reader: httpx.AsyncClient, bad: BadBody, chat: bool) -> None:
    headers = {"content-type": "application/json"}
    refused(await reader.post(ROUTES[chat], content=bad.raw, headers=headers), bad)
    # The server is still up: a good request after each bad one is answered.
    answered(await reader.post("/v1/completions", json=GOOD), stream=False)


@fuzz_settings(examples=40)
@given(bad=bad_openai_body(chat=False))
# A prompt past the model's context, and a deep body (the field past msgspec's depth is still named).
@example(BadBody(msgspec.json.encode({**GOOD, "prompt": "word " * 2000}), 400, "prompt", "too-long"))
@example(BadBody(b'{"model": "acme/a", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "prompt", "deep"))
async def test_a_bad_completion_body_is_a_4xx_naming_the_field(
    reader: httpx.AsyncClient, bad: BadBody
) -> None:
    await bad_then_good(reader, bad, chat=False)


@fuzz_settings(examples=40)
@given(bad=bad_openai_body(chat=True))
async def test_a_bad_chat_body_is_a_4xx_naming_the_field(reader: httpx.AsyncClient, bad: BadBody) -> None:
    await bad_then_good(reader, bad, chat=True)


@fuzz_settings(examples=15)
@given(body=completion_body())
# Found by the fuzzer: a top_p below float32's resolution kept no token, a temperature that rounds
# to 0 divided by it; either made torch.multinomial raise in the engine's loop, which took the
# engine host (and every request batched with it) down.
@example({**GOOD, "temperature": 2.0, "top_p": 1e-300})
@example({**GOOD, "temperature": 1e-300})
@example({**GOOD, "temperature": 1e-40, "top_p": 5e-324, "stream": True})
async def test_a_good_completion_body_is_answered(reader: httpx.AsyncClient, body: dict[str, Any]) -> None:
    answered(await reader.post("/v1/completions", json=body), stream=body.get("stream", False))


@fuzz_settings(examples=15)
@given(body=chat_body())
async def test_a_good_chat_body_is_answered(reader: httpx.AsyncClient, body: dict[str, Any]) -> None:
    answered(await reader.post("/v1/chat/completions", json=body), stream=body.get("stream", False))


async def test_slots_loaded_and_evicted_during_a_decode_fail_no_request(tmp_path: Path) -> None:
    # Found by the fuzz profile: the scheduler evicted a slot while a decode ran in its thread; every
    # forward stacks all slots, so it raised KeyError there and took the engine host down.
    async with serving_system(tmp_path) as system:
        r1, r2 = await ready(system)
        tokens = TokenStore(system.home.tokens)
        answers: list[httpx.Response] = []
        async with (
            client_for(create_app(system, tokens, inference=UNBOUNDED), tokens, "acme", "reader") as reader,
            anyio.create_task_group() as tg,
        ):

            async def ask() -> None:
                for _ in range(8):
                    answers.append(await reader.post("/v1/completions", json={**GOOD, "max_tokens": 48}))

            tg.start_soon(ask)
            for wave in range(2, 26):
                evicting = wave % 2 == 0
                plan = {"load": [], "evict": [r2]} if evicting else {"load": [r2], "evict": []}
                await system.log.append([WavePlanned.create(engine="e1", wave=wave, keep=[r1], **plan)])
                # Paced by the host having executed this wave, not by the engine's residency read at a
                # projector commit: the scheduler runs too and may move r2 again in between.
                end = await system.log.end_offsets()
                with anyio.fail_after(60):
                    await system.engines[0].progress.reached(end)
        assert [a.status_code for a in answers] == [200] * 8, [a.text[:200] for a in answers]
