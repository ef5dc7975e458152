"""The console's handlers on their own: each is a function of a `Read` (who asks, an open catalog, the
path and query), called here over a real system's catalog without HTTP; and what the routes answer
when there is no catalog yet."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from actors.system import System
from events.serving import AdapterLoaded, EngineRegistered, WavePlanned
from events.sqlite_log import SqliteLog
from mint.api import console
from mint.api.errors import HttpError
from mint.auth.tokens import Principal, TokenStore
from mint.catalog.queries import Catalog
from tests.api_system import two_revisions_served

pytestmark = pytest.mark.anyio

OPERATOR = Principal(token_id="op", tenant="_system", roles=frozenset({"admin"}))
ACME = Principal(token_id="acme-reader", tenant="acme", roles=frozenset({"reader"}))


@contextmanager
def reading(
    system: System,
    principal: Principal,
    query: Mapping[str, str] | None = None,
    path: Mapping[str, str] | None = None,
    in_flight: Mapping[str, int] | None = None,
) -> Iterator[console.Read]:
    parts = console.Console(lambda: Catalog(system.home.catalog), system.log, lambda: in_flight or {})
    view = parts.catalog()
    try:
        yield console.Read(parts, principal, view, path or {}, query or {})
    finally:
        view.close()


def refusal(system: System, handler: Any, principal: Principal, **asked: Any) -> HttpError:
    with reading(system, principal, **asked) as read, pytest.raises(HttpError) as refused:
        handler(read)
    return refused.value


async def test_a_page_of_policies_is_one_to_two_hundred_rows_and_a_bad_query_names_its_parameter(
    bare_system: System,
) -> None:
    await two_revisions_served(bare_system)
    with reading(bare_system, OPERATOR, {"limit": "1"}) as read:
        first = console.policies(read)
    assert [p.policy for p in first["policies"]] == ["acme/a"] and first["next"] == "acme/a"
    with reading(bare_system, OPERATOR, {"limit": "1", "after": "acme/a"}) as read:
        assert [p.policy for p in console.policies(read)["policies"]] == ["globex/b"]
    # limit 0 once raised IndexError (a 500) and a negative one was SQLite's "no limit": every row.
    for limit in ("0", "-1", "201", "ten"):
        refused = refusal(bare_system, console.policies, OPERATOR, query={"limit": limit})
        assert (refused.status, refused.param) == (400, "limit"), limit
    assert refusal(bare_system, console.policies, OPERATOR, query={"stauts": "active"}).param == "stauts"
    assert refusal(bare_system, console.policies, ACME, query={"status": "asleep"}).param == "status"
    with reading(bare_system, ACME, {"prefix": "globex/"}) as read:
        assert console.policies(read) == {"policies": [], "next": None}


async def test_a_policy_another_tenant_owns_is_refused_like_a_missing_one(bare_system: System) -> None:
    await two_revisions_served(bare_system)
    hidden = refusal(bare_system, console.policy, ACME, path={"tenant": "globex", "name": "b"})
    missing = refusal(bare_system, console.policy, ACME, path={"tenant": "acme", "name": "zzz"})
    assert hidden.status == missing.status == 404 and hidden.param == missing.param == "policy"
    assert hidden.message == missing.message.replace("acme/zzz", "globex/b")
    malformed = refusal(bare_system, console.policy, ACME, path={"tenant": "acme", "name": "../x"})
    assert (malformed.status, malformed.param) == (400, "policy")
    with reading(bare_system, ACME, path={"tenant": "acme", "name": "a"}) as read:
        detail = console.policy(read)
    assert [n.id for n in detail["lineage"].nodes if n.pointer] == ["r2"]
    trail = detail["audit"]
    assert [e.at for e in trail] == sorted(e.at for e in trail)
    assert {"registered", "exported", "promoted"} <= {e.what for e in trail}


async def test_an_engine_shows_a_tenant_its_own_adapters_and_the_operator_its_requests_in_flight(
    bare_system: System,
) -> None:
    engine = EngineRegistered.create(engine="e1", base_id="tiny", kind="torch", gpu_slots=2, cpu_slots=2)
    loads = [
        AdapterLoaded.create(engine="e1", policy=p, revision="r1", tier="gpu", ms=1.0)
        for p in ("acme/a", "globex/b")
    ]
    waves = [
        WavePlanned.create(engine="e1", wave=1, load=["globex/b@r1"], keep=[], evict=[]),
        WavePlanned.create(engine="e1", wave=2, load=[], keep=["acme/a@r1", "globex/b@r1"], evict=[]),
    ]
    await bare_system.log.append([engine, *loads, *waves])
    await bare_system.settle()
    with reading(bare_system, ACME, in_flight={"e1": 3}) as read:
        (mine,) = console.engines(read)["engines"]
    assert [r["policy"] for r in mine["resident"]] == ["acme/a"] and mine["tiers"] == {"gpu": 1}
    assert [(w["wave"], w["keep"]) for w in mine["waves"]] == [(2, ["acme/a@r1"])]
    assert "in_flight" not in mine and "wave" not in mine
    with reading(bare_system, OPERATOR, in_flight={"e1": 3}) as read:
        (whole,) = console.engines(read)["engines"]
    assert whole["in_flight"] == 3 and whole["tiers"] == {"gpu": 2} and len(whole["waves"]) == 2


async def test_dead_letters_are_the_operators_refused_as_a_permission_error(bare_system: System) -> None:
    refused = refusal(bare_system, console.dead_letters, ACME)
    assert refused.status == 403
    body = refused.response().body
    assert b'"type":"permission_error"' in body and b'"code":403' in body


async def test_every_read_answers_503_with_retry_after_while_the_catalog_is_not_built(
    tmp_path: Path,
) -> None:
    async with SqliteLog(tmp_path / "log.db") as log:
        app = Starlette(routes=console.routes(lambda: Catalog(tmp_path / "none.db"), log, dict))
        app.state.tokens = tokens = TokenStore(tmp_path / "tokens.db")
        secret = tokens.issue("acme", "admin").secret
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://mint",
            headers={"Authorization": f"Bearer {secret}"},
        )
        for method, url in (
            ("GET", "/admin/api/policies"),
            ("GET", "/admin/api/policies/acme/a"),
            ("POST", "/admin/api/policies/acme/a/rollback"),
        ):
            response = await client.request(method, url)
            assert response.status_code == 503, url
            assert response.headers["retry-after"] == "1"
            error = response.json()["error"]
            assert error["type"] == "server_error" and error["code"] == 503
            assert "not built yet" in error["message"]
        assert await log.end_offsets() == {p: 0 for p in (await log.end_offsets())}
