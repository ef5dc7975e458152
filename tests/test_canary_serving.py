"""Canaries through the OpenAI API over a real engine host and torch engine: the split answers by
request id and says who answered; a shadow candidate runs unseen and never changes an answer, and is
scored beside the answer the client got; /metrics counts per revision."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from starlette.applications import Starlette

from actors.system import System
from events.catalog import AbortCanary, CanaryRules, ConfigurePolicy, Gate, StartCanary
from events.serving import PairedScores
from mint.api.app import create_app
from mint.api.openai import Admission
from mint.auth.tokens import TokenStore
from mint.catalog.canary import takes_candidate
from mint.catalog.queries import Catalog
from mint.catalog.rows import TrafficRow
from mint.training.rewards import length
from tests.log_contract import read_all
from tests.serving_system import ready, serving_system

pytestmark = pytest.mark.anyio
BODY = {"model": "acme/a", "prompt": "The weather today is", "max_tokens": 6, "temperature": 0}
# Never decided by the evaluator within a test: the numbers stay the test's to read.
PATIENT = {"min_requests": 10_000, "max_duration_s": 3600.0}


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    async with serving_system(tmp_path) as system:
        yield system


@pytest.fixture
def tokens(system: System) -> TokenStore:
    return TokenStore(system.home.tokens)


@pytest.fixture
def app(system: System, tokens: TokenStore) -> Starlette:
    return create_app(system, tokens)


def _client(app: Starlette, tokens: TokenStore, tenant: str = "acme") -> httpx.AsyncClient:
    secret = tokens.issue(tenant, "reader").secret
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://mint",
        headers={"Authorization": f"Bearer {secret}"},
    )


async def _canary(system: System, rules: CanaryRules) -> str:
    start = StartCanary.create(policy="acme/a", revision="r2", rules=rules)
    await system.log.append([start])
    with anyio.fail_after(20):
        await system.until(lambda: Catalog(system.home.catalog).canary(f"{start.id}/0") is not None)
    return f"{start.id}/0"


async def test_the_split_answers_by_request_id_and_names_the_revision(
    system: System, app: Starlette, tokens: TokenStore
) -> None:
    r1, r2 = await ready(system)
    canary = await _canary(system, CanaryRules(fraction=0.5, **PATIENT))  # type: ignore[arg-type]
    client = _client(app, tokens)
    answers = {}
    for i in range(16):
        reply = await client.post("/v1/completions", json=BODY, headers={"x-request-id": f"q{i}"})
        assert reply.status_code == 200 and reply.headers["x-request-id"] == f"q{i}"
        expected = r2 if takes_candidate(canary, f"q{i}", 0.5) else r1
        assert reply.headers["x-mint-revision"] == expected
        answers[reply.headers["x-mint-revision"]] = reply.json()["choices"][0]["text"]
    assert set(answers) == {r1, r2} and answers[r1] != answers[r2]
    again = await client.post("/v1/completions", json=BODY, headers={"x-request-id": "q3"})
    assert again.headers["x-mint-revision"] == (r2 if takes_candidate(canary, "q3", 0.5) else r1)
    # Without a request id of its own, the completion's id is the request id, and decides the split.
    plain = await client.post("/v1/completions", json=BODY)
    ident = plain.json()["id"]
    assert plain.headers["x-request-id"] == ident
    assert plain.headers["x-mint-revision"] == (r2 if takes_candidate(canary, ident, 0.5) else r1)
    bad = await client.post("/v1/completions", json=BODY, headers={"x-request-id": "no spaces here"})
    assert bad.status_code == 400 and "x-request-id" in bad.json()["error"]["message"]
    # A pinned request is never split.
    pinned = await client.post("/v1/completions", json={**BODY, "model": r1}, headers={"x-request-id": "q1"})
    assert pinned.headers["x-mint-revision"] == r1
    admission: Admission = app.state.admission
    assert admission.answered[r1] + admission.answered[r2] == 19
    operator = _client(app, tokens, "_system")
    metrics = (await operator.get("/metrics")).text
    assert f'mint_revision_requests_total{{revision="{r2}"}} {float(admission.answered[r2])}' in metrics


async def test_a_shadow_candidate_never_changes_an_answer_and_is_dropped_under_load(
    system: System, app: Starlette, tokens: TokenStore
) -> None:
    r1, r2 = await ready(system)
    client = _client(app, tokens)
    stable = [
        (await client.post("/v1/completions", json={**BODY, "model": r1, "prompt": f"Item {i} is"})).json()
        for i in range(8)
    ]
    await _canary(system, CanaryRules(fraction=1.0, mode="shadow", **PATIENT))  # type: ignore[arg-type]
    admission: Admission = app.state.admission
    for i in range(8):
        reply = await client.post(
            "/v1/completions", json={**BODY, "prompt": f"Item {i} is"}, headers={"x-request-id": f"s{i}"}
        )
        assert reply.headers["x-mint-revision"] == r1
        assert reply.json()["choices"][0]["text"] == stable[i]["choices"][0]["text"]
        with anyio.fail_after(30):
            await admission.shadow.idle()  # one at a time here, so none is dropped
    assert admission.shadow.ran[r2] == 8 and admission.shadow.dropped[r2] == 0
    # The engine host counted the candidate's shadow runs as its live traffic.
    with anyio.fail_after(30):
        await system.until(
            lambda: any(
                t.revision == "r2" and t.requests >= 8 for t in Catalog(system.home.catalog).traffic("acme/a")
            )
        )
    admission.shadow.limit = 0  # under load: no room for shadow work
    reply = await client.post("/v1/completions", json=BODY, headers={"x-request-id": "busy"})
    assert reply.status_code == 200 and reply.headers["x-mint-revision"] == r1
    assert admission.shadow.dropped[r2] == 1 and admission.shadow.running() == 0
    metrics = (await _client(app, tokens, "_system").get("/metrics")).text
    assert f'mint_shadow_dropped_total{{revision="{r2}"}} 1.0' in metrics
    await system.log.append([AbortCanary.create(policy="acme/a", reason="done")])


def _r2_traffic(system: System) -> TrafficRow | None:
    return next((t for t in Catalog(system.home.catalog).traffic("acme/a") if t.revision == "r2"), None)


async def test_a_shadow_run_is_scored_beside_the_answer_the_client_got_to_the_same_prompt(
    system: System, app: Starlette, tokens: TokenStore
) -> None:
    r1, r2 = await ready(system)
    # A gate suite with a live scorer, and no watch: pairs are scored without sampling.
    await system.log.append([ConfigurePolicy.create(policy="acme/a", gate=Gate(suite="reward:length:12"))])
    await system.settle()
    client = _client(app, tokens)
    prompts = [f"Item {i} is" for i in range(6)]
    pinned = {
        ref: [
            (await client.post("/v1/completions", json={**BODY, "model": ref, "prompt": p})).json()[
                "choices"
            ][0]["text"]
            for p in prompts
        ]
        for ref in (r1, r2)
    }
    canary = await _canary(system, CanaryRules(fraction=1.0, mode="shadow", **PATIENT))  # type: ignore[arg-type]
    admission: Admission = app.state.admission
    for i, prompt in enumerate(prompts[:5]):
        reply = await client.post(
            "/v1/completions", json={**BODY, "prompt": prompt}, headers={"x-request-id": f"p{i}"}
        )
        assert reply.headers["x-mint-revision"] == r1
        assert reply.json()["choices"][0]["text"] == pinned[r1][i]  # the shadow changed nothing
        with anyio.fail_after(30):
            await admission.shadow.idle()
    streamed = {**BODY, "prompt": prompts[5], "stream": True}
    async with client.stream(
        "POST", "/v1/completions", json=streamed, headers={"x-request-id": "p5"}
    ) as answer:
        lines = [line async for line in answer.aiter_lines() if line.startswith("data: {")]
    told = "".join(json.loads(line.removeprefix("data: "))["choices"][0]["text"] for line in lines)
    assert answer.headers["x-mint-revision"] == r1 and told == pinned[r1][5]
    with anyio.fail_after(30):
        await admission.shadow.idle()
    assert admission.shadow.ran[r2] == admission.shadow.paired[r2] == 6
    # The engine host scored each shadow answer against the stable one the client got, same prompt.
    score = length(12)
    diffs = [score(p, pinned[r2][i], []) - score(p, pinned[r1][i], []) for i, p in enumerate(prompts)]
    with anyio.fail_after(30):
        # Reports are per interval: the six pairs may arrive in more than one.
        await system.until(
            lambda: (t := _r2_traffic(system)) is not None and t.paired.get("r1", PairedScores()).pairs >= 6
        )
    traffic = _r2_traffic(system)
    assert traffic is not None and traffic.scored == 0  # no watch: nothing sampled, every pair scored
    pairs = traffic.paired["r1"]
    assert pairs.pairs == 6 and math.isclose(pairs.diff_sum, sum(diffs), abs_tol=1e-9)
    assert (pairs.wins, pairs.losses) == (sum(d > 0 for d in diffs), sum(d < 0 for d in diffs))
    # The engine host tagged what it served under the canary, and only that: its evidence. (The
    # pinned requests before it are no part of it.)
    under = {t.revision: t for t in Catalog(system.home.catalog).canary_traffic(canary)}
    assert under["r1"].requests == 6 and under["r2"].requests == 6 and under["r2"].paired == traffic.paired
    metrics = (await _client(app, tokens, "_system").get("/metrics")).text
    assert f'mint_shadow_paired_total{{revision="{r2}"}} 6.0' in metrics
    await system.log.append([AbortCanary.create(policy="acme/a", reason="done")])


async def _demand_reports(system: System) -> set[str]:
    return {s.id for s in await read_all(system.log) if s.type == "ReportDemand"}


async def _rebalanced(system: System, client: httpx.AsyncClient, resident: str) -> set[str]:
    """Send a request pinned to `resident` only, so the engine host's next demand report names
    nothing else; once the scheduler has answered that report (a wave or none) and the engine host
    has executed what it planned, the revisions resident on e1."""
    before = await _demand_reports(system)
    reply = await client.post("/v1/completions", json={**BODY, "model": resident})
    assert reply.status_code == 200, reply.text
    with anyio.fail_after(30):
        while not await _demand_reports(system) - before:  # one report per interval: wait for it
            await system.projector.progress.changed()
        await system.settle()
    return set(system.engines[0].engine.resident())


async def test_a_running_canarys_candidate_stays_resident_through_intervals_without_its_requests(
    system: System, app: Starlette, tokens: TokenStore
) -> None:
    r1, r2 = await ready(system)
    client = _client(app, tokens)
    await _canary(system, CanaryRules(fraction=0.1, **PATIENT))  # type: ignore[arg-type]
    # An interval in which the candidate's slice had no request: it is still the canary's to answer.
    assert await _rebalanced(system, client, r1) == {r1, r2}
    # The canary over, the candidate serves nothing: the next rebalance lets it go.
    await system.log.append([AbortCanary.create(policy="acme/a", reason="done")])
    await system.settle()
    assert await _rebalanced(system, client, r1) == {r1}
