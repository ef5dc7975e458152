"""The router of an API replica without engines: which engine host it chooses (warm, then planned, then
least loaded; never a silent, lost or in-process one), and a routed request end to end against a real
engine host's HTTP server: headers naming who answered, SSE streaming, failover before any byte, 503
with Retry-After when no host can take it, and the engine endpoint's own refusals."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest
import uvicorn

from actors.system import System
from events.catalog import ConfigurePolicy, Gate
from events.envelope import Record
from events.seal import Seal
from events.serving import EngineHeartbeat, EngineRegistered, WavePlanned
from mint.api.app import create_app
from mint.api.engine_http import EngineServer, drain
from mint.auth.tokens import TokenStore
from mint.catalog.queries import Catalog
from mint.serving.liveness import Liveness
from mint.serving.router import Router, candidates
from mint.serving.wire import GENERATE_PATH, SEAL_HEADER, STATE_HEADER
from mint.training.rewards import length

pytestmark = pytest.mark.anyio

SEAL = Seal.from_secret("router-test-cluster-key")
REF = "acme/a@r1"


def alive(
    engine: str,
    *,
    holds: tuple[str, ...] = (),
    in_flight: int = 0,
    url: str | None = None,
    heard: datetime | None = None,
    base_id: str = "tiny",
) -> list[Record]:
    """An engine host's registration and one heartbeat of it (heard `heard`, default now)."""
    incarnation = f"{engine}.test"
    return [
        EngineRegistered.create(
            engine=engine,
            base_id=base_id,
            kind="torch",
            gpu_slots=2,
            cpu_slots=2,
            incarnation=incarnation,
            at=heard,
        ),
        EngineHeartbeat.create(
            engine=engine,
            incarnation=incarnation,
            base_id=base_id,
            url=url or f"http://{engine}.invalid:1",
            holds=list(holds),
            in_flight=in_flight,
            interval_s=1.0,
            at=heard,
        ),
    ]


def chosen(system: System, ref: str = REF, sent: dict[str, int] | None = None) -> tuple[list[str], str]:
    view = Catalog(system.home.catalog)
    try:
        found, skipped = candidates(view, "tiny", ref, datetime.now(UTC), Liveness(), sent or {})
    finally:
        view.close()
    return [c.engine for c in found], "; ".join(skipped)


async def test_warm_engines_come_first_then_planned_ones_then_the_least_loaded(bare_system: System) -> None:
    facts = [
        *alive("e1", holds=(REF,), in_flight=5),
        *alive("e2", holds=(REF, "acme/b@r1"), in_flight=1),
        *alive("e3", in_flight=0),
        *alive("e4", in_flight=0),
        *alive("other-base", holds=(REF,), base_id="small"),
        WavePlanned.create(engine="e3", wave=1, load=[REF], keep=[], evict=[]),
    ]
    await bare_system.log.append(facts)
    await bare_system.settle()
    assert chosen(bare_system)[0] == ["e2", "e1", "e3", "e4"]
    # What this router sent counts when the host has not reported it yet: e2 now carries 9.
    assert chosen(bare_system, sent={"e2": 9})[0] == ["e1", "e2", "e3", "e4"]
    # Another revision is warm nowhere: least loaded first (e4 ties e3 on load; names break the tie).
    assert chosen(bare_system, "acme/b@r1")[0] == ["e2", "e3", "e4", "e1"]


async def test_silent_lost_and_in_process_engines_get_no_requests(bare_system: System) -> None:
    silent_since = datetime.now(UTC) - timedelta(seconds=4)  # past T1 (3 s), not yet T2 (8 s)
    embedded = EngineRegistered.create(
        engine="inside", base_id="tiny", kind="torch", gpu_slots=1, cpu_slots=1
    )
    facts = [*alive("fresh"), *alive("silent", holds=(REF,), heard=silent_since), embedded]
    await bare_system.log.append(facts)
    await bare_system.settle()
    engines, why = chosen(bare_system)
    assert engines == ["fresh"]
    assert "silent has been silent for 4." in why and "inside serves only inside its own process" in why


# -- a routed request against a real engine host ------------------------------------------------------


@asynccontextmanager
async def serving(app: object) -> AsyncIterator[str]:
    """`app` on a real loopback port (uvicorn): its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [listener])
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            server.should_exit = True


@contextmanager
def closed_port() -> Iterator[str]:
    """A loopback URL nobody listens on (connections are refused), for as long as this holds it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@dataclass
class Routed:
    system: System
    server: EngineServer
    url: str
    client: httpx.AsyncClient
    direct: httpx.AsyncClient  # the same API with the engine in its process, for comparison


@pytest.fixture
async def routed(tmp_path: Path) -> AsyncIterator[Routed]:
    """The serving system's engine host e1 behind its own HTTP server, heartbeating as a process
    would, and an API without engines that routes to it (deadline 1.5 s)."""
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    from tests.serving_system import ready, serving_system

    async with serving_system(tmp_path) as system:
        await ready(system)
        host = system.engines[0]
        server = EngineServer(host, SEAL, ready=True)
        tokens = TokenStore(system.home.tokens)
        secret = tokens.issue("acme", "reader").secret
        auth = {"Authorization": f"Bearer {secret}"}
        async with (
            serving(server.app()) as url,
            Router(lambda: Catalog(system.home.catalog), SEAL, Liveness(), deadline_s=1.5) as router,
        ):
            await system.log.append(alive("e1", holds=tuple(host.engine.resident()), url=url))
            await system.settle()
            # An API replica's view: the same catalog, no engines of its own.
            replica = System(system.home, system.log, only=frozenset({"projector"}))
            api = create_app(replica, tokens, router=router)
            async with (
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=api), base_url="http://api", headers=auth
                ) as client,
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=create_app(system, tokens)),
                    base_url="http://in",
                    headers=auth,
                ) as direct,
            ):
                yield Routed(system, server, url, client, direct)


BODY = {"model": "acme/a", "prompt": "The weather today is", "max_tokens": 6, "temperature": 0}


async def test_a_routed_completion_names_its_engine_and_revision_and_equals_the_in_process_one(
    routed: Routed,
) -> None:
    answer = await routed.client.post("/v1/completions", json=BODY)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-mint-engine"] == "e1" and answer.headers["x-mint-revision"] == REF
    direct = await routed.direct.post("/v1/completions", json=BODY)
    assert answer.json()["choices"] == direct.json()["choices"]
    assert answer.json()["usage"] == direct.json()["usage"] and answer.json()["usage"]["prompt_tokens"] > 0
    chat = {**BODY, "messages": [{"role": "user", "content": "hi"}]}
    del chat["prompt"]
    routed_chat = await routed.client.post("/v1/chat/completions", json=chat)
    direct_chat = await routed.direct.post("/v1/chat/completions", json=chat)
    assert routed_chat.json()["choices"] == direct_chat.json()["choices"]


async def test_sse_streaming_is_preserved_through_the_router(routed: Routed) -> None:
    async with routed.client.stream("POST", "/v1/completions", json={**BODY, "stream": True}) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        assert answer.headers["x-mint-engine"] == "e1"
        events = [line async for line in answer.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert len(chunks) >= 2  # one event per delta, not one answer
    direct = (await routed.direct.post("/v1/completions", json=BODY)).json()
    assert "".join(c["choices"][0]["text"] for c in chunks) == direct["choices"][0]["text"]


async def test_an_unreachable_engine_is_failed_over_before_any_byte(routed: Routed) -> None:
    with closed_port() as dead:
        # Warm and idle, so it ranks first; e1 is warm but busy.
        await routed.system.log.append(
            [*alive("dead", holds=(REF,), url=dead), *alive("e1", holds=(REF,), url=routed.url, in_flight=3)]
        )
        await routed.system.settle()
        answer = await routed.client.post("/v1/completions", json=BODY)
    assert answer.status_code == 200 and answer.headers["x-mint-engine"] == "e1"


async def test_with_no_engine_to_take_it_the_answer_is_503_with_retry_after_and_why(routed: Routed) -> None:
    with closed_port() as dead:
        silent = datetime.now(UTC) - timedelta(seconds=4)
        await routed.system.log.append(
            [*alive("dead", holds=(REF,), url=dead), *alive("e1", url=routed.url, heard=silent)]
        )
        await routed.system.settle()
        with anyio.fail_after(10):
            answer = await routed.client.post("/v1/completions", json=BODY)
    assert answer.status_code == 503 and answer.headers["retry-after"]
    message = answer.json()["error"]["message"]
    assert "within 1.5s" in message and "dead at http" in message and "e1 has been silent" in message


async def test_the_engine_endpoint_refuses_unsealed_bodies_and_sends_routers_away_while_draining(
    routed: Routed,
) -> None:
    raw = json.dumps(
        {"model": REF, "prompt": "hi", "params": {"max_tokens": 2, "temperature": 0, "top_p": 1}}
    )
    async with httpx.AsyncClient(base_url=routed.url) as engine:
        forged = await engine.post(GENERATE_PATH, content=raw, headers={SEAL_HEADER: "00" * 32})
        assert forged.status_code == 401 and SEAL_HEADER in forged.json()["error"]["message"]
        sealed = {SEAL_HEADER: SEAL.of(raw.encode()).hex()}
        unpinned = raw.replace(REF, "acme/a")
        bad = await engine.post(
            GENERATE_PATH, content=unpinned, headers={SEAL_HEADER: SEAL.of(unpinned.encode()).hex()}
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "model"
        assert (await engine.get("/healthz")).json()["ready"] is True
        assert await drain(routed.server, grace_s=1.0) == 0
        health = await engine.get("/healthz")
        assert health.status_code == 503 and health.json()["reason"] == "draining"
        refused = await engine.post(GENERATE_PATH, content=raw, headers=sealed)
        assert refused.status_code == 503 and refused.headers[STATE_HEADER] == "draining"
    assert routed.system.engines[0].silent  # no more heartbeats: routers stop choosing it within T1


async def test_a_routed_shadow_run_carries_the_stable_answer_and_the_engine_host_scores_the_pair(
    routed: Routed,
) -> None:
    system = routed.system
    await system.log.append([ConfigurePolicy.create(policy="acme/a", gate=Gate(suite="reward:length:12"))])
    await system.settle()
    params = {"max_tokens": 4, "temperature": 0, "top_p": 1}

    async def sent(body: dict[str, object]) -> httpx.Response:
        raw = json.dumps(body).encode()
        async with httpx.AsyncClient(base_url=routed.url) as engine:
            return await engine.post(GENERATE_PATH, content=raw, headers={SEAL_HEADER: SEAL.of(raw).hex()})

    for wrong in ("other/b@r1", "acme/a"):  # another policy's answer; an answer of no revision
        against = {"ref": wrong, "text": "hello", "tokens": []}
        refused = await sent({"model": REF, "prompt": "hi", "params": params, "against": against})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "against.ref"
        assert repr(wrong) in refused.json()["error"]["message"]
    stable = {"ref": "acme/a@r1", "text": "x" * 12, "tokens": [1, 2]}  # a perfect score on length:12
    answer = await sent({"model": "acme/a@r2", "prompt": "hi", "params": params, "against": stable})
    assert answer.status_code == 200
    lines = [json.loads(line) for line in answer.text.splitlines()]
    text = "".join(line["text"] for line in lines if line["type"] == "delta")
    assert lines[-1]["type"] == "end"

    def paired() -> float | None:
        rows = Catalog(system.home.catalog).traffic("acme/a")
        found = [t.paired["r1"] for t in rows if t.revision == "r2" and "r1" in t.paired]
        return found[0].diff_sum if found and found[0].pairs == 1 else None

    with anyio.fail_after(20):
        await system.until(lambda: paired() is not None)
    assert paired() == length(12)("hi", text, []) - 1.0
