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

from actors.runtime import Backoff
from actors.system import System, running
from events.catalog import Promote, RegisterPolicy
from events.serving import WavePlanned
from events.sqlite_log import SqliteLog
from events.training import RevisionExported
from mint.adapters.peft_layout import encode_peft
from mint.adapters.synthetic import random_adapter
from mint.api.app import create_app
from mint.artifacts.keys import adapter_key
from mint.auth.tokens import TokenStore
from mint.bases.info import read_base_info
from mint.bases.tiny import create_tiny_base
from mint.catalog.queries import Catalog
from mint.home import Home
from mint.serving.torch_engine import TorchEngine
from tests.log_contract import read_all
from tests.records import evaluated

pytestmark = pytest.mark.anyio


async def _publish(system: System, policy: str, revision: str, seed: int) -> str:
    """Export a revision the way the trainer does: bytes in the store, a RevisionExported fact."""
    info = read_base_info(system.home.base("tiny"))
    adapter = random_adapter(
        info, r=4, alpha=8.0, targets=("q_proj", "v_proj", "up_proj"), seed=seed, b_std=0.5
    )
    data = encode_peft(adapter)
    stored = await system.artifacts.put(
        adapter_key(policy, revision, __import__("hashlib").sha256(data).hexdigest()), data
    )
    await system.log.append(
        [
            RevisionExported.create(
                policy=policy,
                revision=revision,
                base_id="tiny",
                uri=stored.key,
                sha256=stored.sha256,
                bytes=stored.size,
                rank=4,
                alpha=8.0,
                targets=["q_proj", "v_proj", "up_proj"],
            ),
            evaluated(policy, revision),
        ]
    )
    return f"{policy}@{revision}"


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    home = Home(tmp_path)
    create_tiny_base(home.base("tiny"), seed=0)
    engine = TorchEngine(home.base("tiny"), slots=2)
    async with (
        SqliteLog(home.log, partitions=2) as log,
        running(home, log, backoff=Backoff(0.001, 0.01), engines={"e1": engine}) as system,
    ):
        system.engines[0].load_deadline_s = 2.0
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


async def _ready(system: System) -> tuple[str, str]:
    await system.log.append([RegisterPolicy.create(policy="acme/a", base_id="tiny")])
    r1 = await _publish(system, "acme/a", "r1", seed=1)
    r2 = await _publish(system, "acme/a", "r2", seed=2)
    await system.log.append([Promote.create(policy="acme/a", revision="r1")])
    await system.log.append([WavePlanned.create(engine="e1", wave=1, load=[r1, r2], keep=[], evict=[])])
    with anyio.fail_after(60):
        await system.until(lambda: set(system.engines[0].engine.resident()) == {r1, r2})
        await system.settle()
    return r1, r2


async def test_completions_follow_the_pointer_or_a_pinned_revision(
    system: System, client: httpx.AsyncClient
) -> None:
    r1, r2 = await _ready(system)
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
    await _ready(system)
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
    await _ready(system)
    unknown = await client.post("/v1/completions", json={"model": "acme/nope", "prompt": "x"})
    assert unknown.status_code == 404 and "acme/nope" in unknown.json()["error"]["message"]
    bad = await client.post("/v1/completions", json={"model": "acme/a", "prompt": "x", "max_tokens": "many"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    unpinned = await client.post("/v1/completions", json={"model": "acme/a@r9", "prompt": "x"})
    assert unpinned.status_code == 404 and "no revision 'r9'" in unpinned.json()["error"]["message"]


async def test_tokens_gate_every_route_and_tenants_never_see_each_other(
    system: System, client: httpx.AsyncClient, tokens: TokenStore
) -> None:
    await _ready(system)
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
    await _ready(system)
    missing = "adapters/acme/a/r3/" + "0" * 64 + "/adapter_model.safetensors"
    await system.log.append(
        [
            RevisionExported.create(
                policy="acme/a",
                revision="r3",
                base_id="tiny",
                uri=missing,
                sha256="0" * 64,
                bytes=1,
                rank=4,
                alpha=8.0,
                targets=["q_proj"],
            )
        ]
    )
    await system.settle()
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
    r1 = await _publish(system, "acme/b", "r1", seed=4)
    r2 = await _publish(system, "acme/b", "r2", seed=5)
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
    ref = await _publish(system, "acme/c", "r1", seed=6)
    await system.log.append(
        [WavePlanned.create(engine="e1", wave=7, load=[], keep=[], evict=[], prefetch=[ref])]
    )
    await system.settle()
    await system.log.append([WavePlanned.create(engine="e1", wave=8, load=[ref], keep=[], evict=[])])
    await system.settle()
    moves = [s.decode() for s in await read_all(system.log) if s.type == "AdapterLoaded"]
    found = [(m.tier, m.found_in) for m in moves if m.policy == "acme/c"]  # type: ignore[union-attr]
    assert found == [("disk", "store"), ("gpu", "disk")], "the load found what the prefetch fetched"
