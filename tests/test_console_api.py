"""The console's JSON API and /metrics over a real system: tenant walls on every route, the audit trail
with causation, admin commands followed to their outcome."""

from __future__ import annotations

import re

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from actors.system import System
from events.serving import AdapterLoaded, AdapterLoadFailed, EngineRegistered, WavePlanned
from events.training import TrainingStarted
from mint.auth.tokens import TokenStore
from mint.catalog.queries import Catalog
from mint.commands.up import serve_http
from tests.api_system import client_for, two_revisions_served

pytestmark = pytest.mark.anyio


async def test_tenants_see_only_their_policies(
    bare_system: System, api_app: Starlette, token_store: TokenStore
) -> None:
    await two_revisions_served(bare_system)
    operator = client_for(api_app, token_store, "_system", "admin")
    acme = client_for(api_app, token_store, "acme", "reader")
    everyone = (await operator.get("/admin/api/policies")).json()["policies"]
    assert [p["policy"] for p in everyone] == ["acme/a", "globex/b"]
    assert [p["policy"] for p in (await acme.get("/admin/api/policies")).json()["policies"]] == ["acme/a"]
    assert (await acme.get("/admin/api/policies?prefix=globex/")).json()["policies"] == []
    assert (await acme.get("/admin/api/policies?prefix=a")).json()["policies"][0]["policy"] == "acme/a"
    hidden = await acme.get("/admin/api/policies/globex/b")
    missing = await acme.get("/admin/api/policies/acme/nope")
    assert hidden.status_code == missing.status_code == 404
    assert (await acme.get("/admin/api/dead-letters")).status_code == 403
    assert (await operator.get("/admin/api/dead-letters")).json() == {"dead_letters": []}
    bad = await acme.get("/admin/api/policies?status=sleeping")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"
    # A page is 1 to 200 policies: 0 once failed with a 500, and -1 was SQLite's "no limit".
    for limit in ("0", "-1", "201"):
        bad = await operator.get(f"/admin/api/policies?limit={limit}")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit", limit
    # One error shape (mint.api.errors): the type follows the status, the code is the status.
    refused = (await acme.get("/admin/api/dead-letters")).json()["error"]
    assert (refused["type"], refused["code"]) == ("permission_error", 403)


async def test_policy_page_data_and_admin_commands(
    bare_system: System, api_app: Starlette, token_store: TokenStore
) -> None:
    second = await two_revisions_served(bare_system)
    reader = client_for(api_app, token_store, "acme", "reader")
    detail = (await reader.get("/admin/api/policies/acme/a")).json()
    assert detail["policy"]["pointer"] == "r2"
    assert detail["lineage"]["edges"] == [{"from": "r1", "to": "r2"}]
    promoted = [a for a in detail["audit"] if a["what"] == "promoted" and a["revision"] == "r2"]
    assert promoted and promoted[0]["causation"] == second
    assert {"registered", "exported", "evaluated: pass", "promoted"} <= {a["what"] for a in detail["audit"]}
    assert (await reader.post("/admin/api/policies/acme/a/rollback", json={})).status_code == 403
    globex_admin = client_for(api_app, token_store, "globex", "admin")
    assert (await globex_admin.post("/admin/api/policies/acme/a/rollback", json={})).status_code == 404
    admin = client_for(api_app, token_store, "acme", "admin")
    for revision in (3, "../r1"):
        bad = await admin.post("/admin/api/policies/acme/a/promote", json={"revision": revision})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "revision"
    unknown = await admin.post("/admin/api/policies/acme/a/rollback", json={"to": "r1"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "to"
    sent = await admin.post("/admin/api/policies/acme/a/rollback", json={"reason": "regression"})
    assert sent.status_code == 200 and sent.json()["type"] == "Rollback"  # decided within the wait
    assert sent.json()["outcome"] == "RevisionRolledBack"
    assert sent.headers["x-mint-position"] == sent.json()["position"] != ""
    command = sent.json()["command"]
    outcome_url = f"/admin/api/policies/acme/a/outcomes/{command}"
    with anyio.fail_after(30):
        await bare_system.until(lambda: Catalog(bare_system.home.catalog).resolve("acme/a") == "r1")
    outcome = (await admin.get(outcome_url)).json()
    assert outcome["status"] == "applied" and outcome["move"]["revision"] == "r1"
    assert outcome["move"]["kind"] == "rolled_back"
    # A promotion of a revision that does not exist is refused, and the refusal is the outcome.
    refused = (await admin.post("/admin/api/policies/acme/a/promote", json={"revision": "r9"})).json()
    with anyio.fail_after(30):
        await bare_system.until(lambda: bool(Catalog(bare_system.home.catalog).rejections("acme/a")))
    outcome = (await admin.get(f"/admin/api/policies/acme/a/outcomes/{refused['command']}")).json()
    assert outcome["status"] == "rejected" and "r9" in outcome["rejection"]["reason"]


async def test_every_route_but_health_and_the_page_needs_a_token(api_app: Starlette) -> None:
    anonymous = httpx.AsyncClient(transport=httpx.ASGITransport(app=api_app), base_url="http://mint")
    checked = []
    for route in api_app.routes:
        if not isinstance(route, Route) or route.path == "/healthz":
            continue
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        for method in route.methods or ["GET"]:
            if method == "HEAD":
                continue
            response = await anonymous.request(method, path)
            assert response.status_code == 401, (method, path, response.status_code)
            checked.append(path)
    assert {"/v1/completions", "/v1/events", "/admin/api/policies", "/metrics"} <= set(checked)
    assert (await anonymous.get("/healthz")).status_code == 200
    page = await anonymous.get("/admin/")
    assert page.status_code == 200 and "console.js" in page.text


async def test_metrics_for_prometheus(
    bare_system: System, api_app: Starlette, token_store: TokenStore
) -> None:
    await two_revisions_served(bare_system)
    engine = EngineRegistered.create(engine="e1", base_id="tiny", kind="torch", gpu_slots=2, cpu_slots=2)
    loads = [
        AdapterLoaded.create(engine="e1", policy="acme/a", revision=r, tier=t, ms=1.0)
        for r, t in (("r1", "gpu"), ("r2", "gpu"), ("r1", "cpu"))
    ]
    await bare_system.log.append([engine, *loads])
    await bare_system.settle()
    operator = client_for(api_app, token_store, "_system", "reader")
    await operator.get("/admin/api/policies")
    text = (await operator.get("/metrics")).text
    records = int(float(re.search(r"^mint_log_records_total (\S+)$", text, re.M).group(1)))  # type: ignore[union-attr]
    assert records == sum((await bare_system.log.end_offsets()).values())
    assert 'mint_actor_lag_records{actor="projector"} 0.0' in text
    assert 'mint_adapter_loads_total{engine="e1",tier="gpu"} 2.0' in text
    assert 'mint_adapters_resident{engine="e1",tier="cpu"} 1.0' in text
    assert (
        'mint_http_request_duration_seconds_count{method="GET",route="/admin/api/policies",status="200"} 1.0'
        in text
    )
    tenant = client_for(api_app, token_store, "acme", "admin")
    assert (await tenant.get("/metrics")).status_code == 403


def test_console_bench_runs_every_query_on_a_small_catalog() -> None:
    from mint.bench.console_bench import bench_console

    results = bench_console(count=3_000, requests=5, say=lambda _: None)
    assert results["policies"] == 3_000
    assert results["search_base_empty_pages"] == 0 and results["policy_page_p99_ms"] > 0


async def test_runs_engines_and_outcomes_stay_inside_the_tenant(
    bare_system: System, api_app: Starlette, token_store: TokenStore
) -> None:
    second = await two_revisions_served(bare_system)
    globex_run = TrainingStarted.create(
        run="globex/run1", policies=["globex/b"], base_id="tiny", algo="sft", task="sft-repeat:x", steps=1
    )
    engine = EngineRegistered.create(engine="e1", base_id="tiny", kind="torch", gpu_slots=2, cpu_slots=2)
    loads = [
        AdapterLoaded.create(engine="e1", policy=p, revision=r, tier="gpu", ms=1.0)
        for p, r in (("acme/a", "r2"), ("globex/b", "r1"))
    ]
    await bare_system.log.append([globex_run, engine, *loads])
    with anyio.fail_after(30):
        await bare_system.until(lambda: len(Catalog(bare_system.home.catalog).residency("e1")) == 2)
    acme = client_for(api_app, token_store, "acme", "reader")
    globex = client_for(api_app, token_store, "globex", "reader")
    assert (await acme.get("/admin/api/runs")).json() == {"runs": []}
    assert [r["run"] for r in (await globex.get("/admin/api/runs")).json()["runs"]] == ["globex/run1"]
    assert (await acme.get("/admin/api/runs/globex/run1")).status_code == 404
    assert (await globex.get("/admin/api/runs/globex/run1")).json()["steps"] == []
    (seen,) = (await acme.get("/admin/api/engines")).json()["engines"]
    assert [r["policy"] for r in seen["resident"]] == ["acme/a"] and seen["tiers"] == {"gpu": 1}
    assert (await globex.get(f"/admin/api/policies/acme/a/outcomes/{second}")).status_code == 404
    assert (await acme.get(f"/admin/api/policies/acme/a/outcomes/{second}")).json()["status"] == "applied"


async def _first_event(address: str, secret: str) -> str:
    """The first Server-Sent Event a token gets, over real HTTP (the ASGI transport would wait for
    the end of a stream that never ends)."""
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=address, headers=headers) as client:
        with anyio.fail_after(10):
            async with client.stream("GET", "/admin/api/stream") as response:
                assert response.status_code == 200
                async for chunk in response.aiter_text():
                    return chunk
    raise AssertionError("the stream ended before its first event")


async def test_hostile_tokens_learn_nothing_of_another_tenant(
    bare_system: System, api_app: Starlette, token_store: TokenStore
) -> None:
    """Every console route, asked about acme's things by a token that must not see them: another
    tenant's admin and reader, the system tenant's reader (not the operator), acme's own producer and
    no token. Another tenant's answer is the one a missing tenant gets, names swapped; a list holds
    nothing of acme; and no write reaches the log."""
    command = await two_revisions_served(bare_system)
    run = TrainingStarted.create(
        run="acme/run1", policies=["acme/a"], base_id="tiny", algo="sft", task="sft-repeat:x", steps=1
    )
    engine = EngineRegistered.create(engine="e1", base_id="tiny", kind="torch", gpu_slots=2, cpu_slots=2)
    loaded = AdapterLoaded.create(engine="e1", policy="acme/a", revision="r2", tier="gpu", ms=1.0)
    wave = WavePlanned.create(engine="e1", wave=1, load=["acme/a@r1"], keep=["acme/a@r2"], evict=[])
    failed = AdapterLoadFailed.create(engine="e1", policy="acme/a", revision="r1", reason="acme/a@r1 broke")
    await bare_system.log.append([run, engine, loaded, wave, failed])
    with anyio.fail_after(30):
        await bare_system.until(lambda: bool(Catalog(bare_system.home.catalog).load_failures("e1")))
    acme_a = "/admin/api/policies/acme/a"
    # The route templates, filled in with acme's names. A console route added later fails here until
    # it is listed, so no route goes unchecked.
    urls = {
        "/admin/api/me": "/admin/api/me",
        "/admin/api/policies": "/admin/api/policies",
        "/admin/api/policies/{tenant}/{name}": "/admin/api/policies/acme/a",
        "/admin/api/policies/{tenant}/{name}/promote": "/admin/api/policies/acme/a/promote",
        "/admin/api/policies/{tenant}/{name}/rollback": "/admin/api/policies/acme/a/rollback",
        "/admin/api/policies/{tenant}/{name}/canary": "/admin/api/policies/acme/a/canary",
        "/admin/api/policies/{tenant}/{name}/canary/promote": "/admin/api/policies/acme/a/canary/promote",
        "/admin/api/policies/{tenant}/{name}/canary/abort": "/admin/api/policies/acme/a/canary/abort",
        "/admin/api/policies/{tenant}/{name}/outcomes/{command}": f"{acme_a}/outcomes/{command}",
        "/admin/api/engines": "/admin/api/engines",
        "/admin/api/runs": "/admin/api/runs",
        "/admin/api/runs/{tenant}/{name}": "/admin/api/runs/acme/run1",
        "/admin/api/dead-letters": "/admin/api/dead-letters",
        "/admin/api/stream": "/admin/api/stream",
    }
    console = [r for r in api_app.routes if isinstance(r, Route) and r.path.startswith("/admin/api/")]
    assert {r.path for r in console} == set(urls)
    operator = client_for(api_app, token_store, "_system", "admin")
    assert "acme/a@r1" in (await operator.get("/admin/api/engines")).text, "the operator sees everything"
    secrets = {
        "globex admin": token_store.issue("globex", "admin").secret,
        "globex reader": token_store.issue("globex", "reader").secret,
        "system reader": token_store.issue("_system", "reader").secret,
    }
    others = {
        who: httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api_app),
            base_url="http://mint",
            headers={"Authorization": f"Bearer {secret}"},
        )
        for who, secret in secrets.items()
    }
    # acme's producer appends records but reads nothing; without a token nothing at all.
    locked_out = {
        "acme producer": (client_for(api_app, token_store, "acme", "producer"), 403),
        "no token": (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=api_app), base_url="http://mint"),
            401,
        ),
    }
    log_end = await bare_system.log.end_offsets()
    async with anyio.create_task_group() as tg:
        address = await tg.start(serve_http, bare_system, "127.0.0.1", 0)
        for route in console:
            url = urls[route.path]
            ghost = url.replace("/acme/", "/ghost/")  # the same request about a tenant that does not exist
            method = "POST" if "POST" in (route.methods or ()) else "GET"
            body = {"revision": "r1", "reason": "hostile"} if method == "POST" else None
            for who, client in others.items():
                where = (who, method, url)
                if route.path == "/admin/api/stream":
                    event = await _first_event(address, secrets[who])
                    assert event.startswith("event: changed\n") and "position" not in event, where
                    continue
                response = await client.request(method, url, json=body)
                if route.path == "/admin/api/dead-letters":
                    assert response.status_code == 403, where
                elif url != ghost:  # a route about one policy or run: hidden reads exactly as missing
                    missing = await client.request(method, ghost, json=body)
                    assert response.status_code == missing.status_code, where
                    assert response.status_code in (403, 404), where
                    assert response.text == missing.text.replace("ghost", "acme"), where
                else:
                    assert response.status_code == 200, where
                    assert "acme" not in response.text, where
                if route.path == "/admin/api/engines":
                    (seen,) = response.json()["engines"]
                    assert not {"wave", "loads", "in_flight"} & set(seen), (
                        "engine-wide counts are the operator's"
                    )
                    assert seen["waves"] == [] and seen["tiers"] == {}, where
            if route.path == "/admin/api/stream":
                continue  # no token and the producer are refused by the same check as every read
            for who, (client, status) in locked_out.items():
                response = await client.request(method, url, json=body)
                assert response.status_code == status, (who, method, url, response.status_code)
        acme_reader = token_store.issue("acme", "reader").secret
        assert "event: changed\n" in await _first_event(address, acme_reader)
        assert "event: position\n" in await _first_event(
            address, token_store.issue("_system", "admin").secret
        )
        tg.cancel_scope.cancel()
    reader = client_for(api_app, token_store, "acme", "reader")
    for write in ("promote", "rollback"):
        refused = await reader.post(f"/admin/api/policies/acme/a/{write}", json={"revision": "r1"})
        assert refused.status_code == 403, "a reader of the tenant itself cannot write"
    assert (await reader.get("/admin/api/dead-letters")).status_code == 403
    assert await bare_system.log.end_offsets() == log_end, "no hostile request appended anything"
    # acme itself sees its own adapters in the engine's waves, with keep filtered like load and evict.
    (mine,) = (await reader.get("/admin/api/engines")).json()["engines"]
    assert [(w["load"], w["keep"], w["evict"]) for w in mine["waves"]] == [(["acme/a@r1"], ["acme/a@r2"], [])]
