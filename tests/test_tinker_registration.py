"""A Tinker client's new policy is registered through the catalog's command path: the service appends
`RegisterPolicy` and waits for the catalog actor's outcome before the client exists. A refusal is a
409 naming the field, a catalog that does not answer in time a 503 with Retry-After; neither leaves a
training client behind, and the retry of a 503 is decided once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from actors.runtime import Backoff
from actors.system import running
from events.catalog import CommandRejected, PolicyRegistered, RegisterPolicy
from events.envelope import Record
from events.log import EventLog
from events.sqlite_log import SqliteLog
from events.tinker import TrainingClientCreated
from mint.artifacts.local import LocalArtifactStore
from mint.auth.tokens import TokenStore
from mint.bases.tiny import create_tiny_base
from mint.catalog.queries import Catalog
from mint.home import Home
from mint.tinker.app import tinker_routes
from tests.log_contract import read_all
from tests.test_tinker_sdks import new_model, tinker_server

pytestmark = pytest.mark.anyio
FAST = Backoff(0.001, 0.01)


async def records(log: EventLog) -> list[tuple[int, Record]]:
    """Every record on the log with its offset (the tests' records share one partition per key)."""
    found: list[tuple[int, Record]] = []
    for stored in await read_all(log):
        record = stored.decode()
        assert isinstance(record, Record)
        found.append((stored.offset, record))
    return found


@asynccontextmanager
async def tinker_api(home: Home, log: EventLog) -> AsyncIterator[httpx.AsyncClient]:
    """The Tinker routes over `log` with whatever actors the test runs (maybe none), as acme's trainer."""
    key = TokenStore(home.tokens).issue("acme", ["trainer"]).secret
    async with tinker_routes(
        home, log, LocalArtifactStore(home.artifacts), partial(Catalog, home.catalog), TokenStore(home.tokens)
    ) as routes:
        transport = httpx.ASGITransport(app=Starlette(routes=routes))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://mint/api/v1", headers={"X-API-Key": key}
        ) as http:
            yield http


async def test_a_new_policy_is_the_catalogs_decision_before_its_client_exists(tmp_path: Path) -> None:
    async with tinker_server(Home(tmp_path)) as server:
        key = server.tokens.issue("acme", ["trainer"]).secret
        async with httpx.AsyncClient(base_url=server.url + "/api/v1", headers={"X-API-Key": key}) as http:
            model_id = await new_model(http)
        log = await records(server.system.log)
    (created_at, created) = next((o, r) for o, r in log if isinstance(r, TrainingClientCreated))
    assert created.model_id == model_id
    (command,) = [r for _, r in log if isinstance(r, RegisterPolicy) and r.policy == created.policy]
    assert command.source == "tinker"
    (registered_at, registered) = next((o, r) for o, r in log if isinstance(r, PolicyRegistered))
    # The catalog decided it (the fact is its, caused by the command), and before the client existed.
    assert (registered.source, registered.causation, registered.policy) == (
        "catalog",
        command.id,
        created.policy,
    )
    assert registered_at < created_at


async def test_a_policy_the_catalog_refuses_is_a_409_naming_the_field_and_no_client(tmp_path: Path) -> None:
    home = Home(tmp_path)
    create_tiny_base(home.base("tiny"), seed=0)
    # Only the catalog actor runs: its read model (the projector's) never learns of `acme/taken`, so
    # the service asks the catalog, which knows the policy is on another base.
    async with (
        SqliteLog(home.log, partitions=2) as log,
        running(home, log, backoff=FAST, only=frozenset({"catalog"})) as system,
        tinker_api(home, log) as http,
    ):
        await log.append([RegisterPolicy.create(policy="acme/taken", base_id="other")])
        with anyio.fail_after(30):
            await system.settle()
        session = (await http.post("/create_session", json={})).json()["session_id"]
        body = {"session_id": session, "base_model": "tiny", "user_metadata": {"policy": "taken"}}
        response = await http.post("/create_model", json=body)
        assert response.status_code == 409, response.text
        assert response.json()["field"] == "user_metadata.policy"
        assert "already registered" in response.json()["detail"]
        refusals = [r for _, r in await records(log) if isinstance(r, CommandRejected)]
        assert [r.command_type for r in refusals] == ["RegisterPolicy"]
        assert not [r for _, r in await records(log) if isinstance(r, TrainingClientCreated)]
        # The same model_seq_id is still free: nothing was marked as being created.
        retried = await http.post("/create_model", json={**body, "user_metadata": {"policy": "free"}})
        assert retried.status_code == 200, retried.text


async def test_a_catalog_that_does_not_answer_is_a_503_and_the_retry_is_decided_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = Home(tmp_path)
    create_tiny_base(home.base("tiny"), seed=0)
    monkeypatch.setattr("mint.tinker.policies.REGISTER_TIMEOUT_S", 0.5)
    async with SqliteLog(home.log, partitions=2) as log, tinker_api(home, log) as http:
        session = (await http.post("/create_session", json={})).json()["session_id"]
        body = {"session_id": session, "base_model": "tiny", "model_seq_id": 3}
        response = await http.post("/create_model", json=body)  # no actor runs: nobody decides
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        assert response.json()["field"] == "user_metadata.policy"
        assert not [r for _, r in await records(log) if isinstance(r, TrainingClientCreated)]
        async with running(home, log, backoff=FAST, only=frozenset({"catalog"})):
            retried = await http.post("/create_model", json=body)
            assert retried.status_code == 200, retried.text
            with anyio.fail_after(60):
                built = (await http.post("/retrieve_future", json=retried.json())).json()
        assert built["model_id"] == f"{session}:train:3"
        log_records = [r for _, r in await records(log)]
        assert (
            len([r for r in log_records if isinstance(r, RegisterPolicy)]) == 1
        )  # the retry's was a duplicate
        assert len([r for r in log_records if isinstance(r, PolicyRegistered)]) == 1
        assert not [r for r in log_records if isinstance(r, CommandRejected)]
