"""The OpenAI-compatible API over a real engine host and torch engine: waves load adapters, requests
follow the serving pointer or pin a revision, errors name the model or field."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from actors.system import System
from events.catalog import Promote, RegisterPolicy
from events.serving import WavePlanned
from mint.api.app import create_app
from mint.auth.tokens import TokenStore
from mint.catalog.queries import Catalog
from tests.log_contract import read_all
from tests.serving_system import export_unloadable, publish, ready, serving_system

pytestmark = pytest.mark.anyio


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    async with serving_system(tmp_path) as system:
        yield system


@pytest.fixture
def tokens(system: System) -> TokenStore:
    return TokenStore(system.home.tokens)


@pytest.fixture
def client(system: System, tokens: TokenStore) -> httpx.AsyncClient:
    app = create_app(system, tokens)
    secret = tokens.issue("acme", "reader").secret
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://mint",
        headers={"Authorization": f"Bearer {secret}"},
    )


async def test_completions_follow_the_pointer_or_a_pinned_revision(
    system: System, client: httpx.AsyncClient
) -> None:
    r1, r2 = await ready(system)
    body = {"model": "acme/a", "prompt": "The weather today is", "max_tokens": 8, "temperature": 0}
    pointer = (await client.post("/v1/completions", json=body)).json()
    pinned_r1 = (await client.post("/v1/completions", json={**body, "model": r1})).json()
    pinned_r2 = (await client.post("/v1/completions", json={**body, "model": r2})).json()
    assert pointer["choices"][0]["text"] == pinned_r1["choices"][0]["text"]
    assert pinned_r1["choices"][0]["text"] != pinned_r2["choices"][0]["text"]
    assert pointer["usage"]["completion_tokens"] == 8 and pointer["choices"][0]["finish_reason"] == "length"
    models = (await client.get("/v1/models")).json()["data"]
    assert [(m["id"], m["root"]) for m in models] == [("acme/a", r1)]


async def test_chat_streams_server_sent_events(system: System, client: httpx.AsyncClient) -> None:
    await ready(system)
    body = {
        "model": "acme/a",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 6,
        "stream": True,
    }
    async with client.stream("POST", "/v1/chat/completions", json={**body, "temperature": 0}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    whole = (
        await client.post("/v1/chat/completions", json={**body, "stream": False, "temperature": 0})
    ).json()
    assert (
        "".join(c["choices"][0]["delta"]["content"] for c in chunks)
        == whole["choices"][0]["message"]["content"]
    )


async def test_errors_name_the_model_or_the_field(system: System, client: httpx.AsyncClient) -> None:
    await ready(system)
    unknown = await client.post("/v1/completions", json={"model": "acme/nope", "prompt": "x"})
    assert unknown.status_code == 404 and "acme/nope" in unknown.json()["error"]["message"]
    bad = await client.post("/v1/completions", json={"model": "acme/a", "prompt": "x", "max_tokens": "many"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    unpinned = await client.post("/v1/completions", json={"model": "acme/a@r9", "prompt": "x"})
    assert unpinned.status_code == 404 and "no revision 'r9'" in unpinned.json()["error"]["message"]


async def test_tokens_gate_every_route_and_tenants_never_see_each_other(
    system: System, client: httpx.AsyncClient, tokens: TokenStore
) -> None:
    await ready(system)
    body = {"model": "acme/a", "prompt": "x", "max_tokens": 2}
    anonymous = await client.post("/v1/completions", json=body, headers={"Authorization": ""})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"
    producer = tokens.issue("acme", "producer").secret
    denied = await client.post(
        "/v1/completions", json=body, headers={"X-API-Key": producer, "Authorization": ""}
    )
    assert denied.status_code == 403 and "'reader'" in denied.json()["error"]["message"]
    # Another tenant's reader: acme/a is answered like a policy that does not exist.
    globex = {"Authorization": f"Bearer {tokens.issue('globex', 'reader').secret}"}
    hidden = await client.post("/v1/completions", json=body, headers=globex)
    missing = await client.post("/v1/completions", json={**body, "model": "globex/nope"}, headers=globex)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["message"] == "model 'acme/a': no such policy"
    assert (await client.get("/v1/models", headers=globex)).json()["data"] == []
    operator = {"Authorization": f"Bearer {tokens.issue('_system', 'admin').secret}"}
    assert (await client.post("/v1/completions", json=body, headers=operator)).status_code == 200


async def test_an_adapter_that_cannot_load_fails_its_requests_with_retry_after(
    system: System, client: httpx.AsyncClient
) -> None:
    await ready(system)
    missing = await export_unloadable(system, "acme/a", "r3")
    cold = await client.post("/v1/completions", json={"model": "acme/a@r3", "prompt": "x", "max_tokens": 2})
    assert cold.status_code == 503 and cold.headers["retry-after"] == "1"
    assert "was not loaded within 2s" in cold.json()["error"]["message"]
    await system.settle()
    stored = [s for s in await read_all(system.log) if s.type == "AdapterLoadFailed"]
    assert stored and missing in stored[0].raw.decode()


async def test_the_scheduler_loads_what_requests_wait_for_and_follows_promotions(
    system: System, client: httpx.AsyncClient
) -> None:
    system.engines[0].load_deadline_s = 30.0
    await system.log.append([RegisterPolicy.create(policy="acme/b", base_id="tiny")])
    r1 = await publish(system, "acme/b", "r1", seed=4)
    r2 = await publish(system, "acme/b", "r2", seed=5)
    await system.log.append([Promote.create(policy="acme/b", revision="r1")])
    await system.settle()
    assert system.engines[0].engine.resident() == []
    # Nothing is resident: the request waits while the engine host reports the demand at once and
    # the scheduler plans a wave that loads r1.
    with anyio.fail_after(60):
        answer = await client.post(
            "/v1/completions", json={"model": "acme/b", "prompt": "x", "max_tokens": 2}
        )
    assert answer.status_code == 200, answer.text
    assert list(system.engines[0].engine.resident()) == [r1]
    # A promotion moves the pointer: r1 is no longer served, so the next wave evicts it.
    await system.log.append([Promote.create(policy="acme/b", revision="r2")])
    with anyio.fail_after(60):
        await system.until(lambda: r1 not in system.engines[0].engine.resident())
        answer = await client.post(
            "/v1/completions", json={"model": "acme/b", "prompt": "x", "max_tokens": 2}
        )
    assert answer.status_code == 200 and list(system.engines[0].engine.resident()) == [r2]
    waves = Catalog(system.home.catalog).counts()
    assert waves["engines"] == 1


async def test_a_prefetch_brings_the_adapter_local_before_its_wave(system: System) -> None:
    await system.log.append([RegisterPolicy.create(policy="acme/c", base_id="tiny")])
    ref = await publish(system, "acme/c", "r1", seed=6)
    await system.log.append(
        [WavePlanned.create(engine="e1", wave=7, load=[], keep=[], evict=[], prefetch=[ref])]
    )
    await system.settle()
    await system.log.append([WavePlanned.create(engine="e1", wave=8, load=[ref], keep=[], evict=[])])
    await system.settle()
    moves = [s.decode() for s in await read_all(system.log) if s.type == "AdapterLoaded"]
    found = [(m.tier, m.found_in) for m in moves if m.policy == "acme/c"]  # type: ignore[union-attr]
    assert found == [("disk", "store"), ("gpu", "disk")], "the load found what the prefetch fetched"
