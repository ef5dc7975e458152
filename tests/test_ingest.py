"""POST /v1/events and /v1/commands: validated whole, per-record errors, idempotent, limited, walled."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from actors.system import System
from events import codec
from events.catalog import Promote
from events.envelope import Record
from events.evaluation import RequestEvaluation
from events.serving import EngineRegistered, ReportDemand
from events.training import StartTraining
from mint.auth.tokens import TokenStore
from mint.catalog.queries import Catalog
from tests.api_system import client_for
from tests.log_contract import read_all
from tests.records import evaluated, exported, forged, register

pytestmark = pytest.mark.anyio


def _ndjson(records: list[Record]) -> bytes:
    return b"".join(codec.encode(r) + b"\n" for r in records)


def _array(records: list[Record]) -> bytes:
    return b"[" + b",".join(codec.encode(r) for r in records) + b"]"


async def test_commands_and_facts_land_once_and_are_decided(
    bare_system: System, api_app: Starlette, token_store: TokenStore
) -> None:
    producer = client_for(api_app, token_store, "acme", "producer")
    commands = [register("acme/a")]
    first = await producer.post("/v1/commands", content=_ndjson(commands))
    assert first.status_code == 200, first.text
    assert first.json()["appended"] == 1
    # RevisionExported is the fact meant for producers: an adapter trained outside MinT.
    facts = [exported("acme/a", "r1")]
    assert (await producer.post("/v1/events", content=_array(facts))).json()["appended"] == 1
    # A producer's retry of the same batch appends nothing new.
    again = (await producer.post("/v1/events", content=_array(facts))).json()
    assert (again["appended"], again["duplicates"]) == (0, 1)
    # Its evaluation is the evaluator's word, not the producer's: refused on `type`.
    forged = await producer.post("/v1/events", content=_array([evaluated("acme/a", "r1")]))
    assert forged.status_code == 400 and forged.json()["error"]["param"] == "type"
    assert "evaluator" in forged.json()["error"]["records"][0]["message"]
    promote = Promote.create(policy="acme/a", revision="r1")
    assert (await producer.post("/v1/commands", content=_ndjson([promote]))).status_code == 200
    with anyio.fail_after(30):
        await bare_system.until(lambda: bool(Catalog(bare_system.home.catalog).rejections("acme/a")))
    (rejection,) = Catalog(bare_system.home.catalog).rejections("acme/a")
    assert rejection.command_id == promote.id, "an unevaluated revision is not promoted"
    types = [s.type for s in await read_all(bare_system.log)]
    assert types.count("RevisionExported") == 1 and "RevisionPromoted" not in types


async def test_one_bad_record_refuses_the_batch_naming_record_and_field(
    bare_system: System, api_app: Starlette, token_store: TokenStore
) -> None:
    producer = client_for(api_app, token_store, "acme", "producer")
    good = codec.encode(register("acme/a"))
    bad_type = json.loads(codec.encode(register("acme/b")))
    bad_type["base_id"] = 7
    missing = json.loads(codec.encode(register("acme/c")))
    del missing["policy"]
    body = b"\n".join([good, json.dumps(bad_type).encode(), json.dumps(missing).encode(), b"{nope"])
    refused = await producer.post("/v1/commands", content=body)
    assert refused.status_code == 400
    problems = refused.json()["error"]["records"]
    assert [(p["index"], p["field"]) for p in problems] == [(1, "base_id"), (2, "policy"), (3, None)]
    assert problems[0]["id"] == bad_type["id"] and problems[0]["type"] == "RegisterPolicy"
    assert "nothing was appended" in refused.json()["error"]["message"]
    # A fact on the command route, and a command on the fact route, are refused by `type`.
    wrong = await producer.post("/v1/commands", content=_ndjson([exported("acme/a", "r1")]))
    assert wrong.json()["error"]["records"][0]["field"] == "type"
    assert "/v1/events" in wrong.json()["error"]["records"][0]["message"]
    assert (await producer.post("/v1/events", content=_ndjson([register("acme/a")]))).status_code == 400
    assert sum((await bare_system.log.end_offsets()).values()) == 0


async def test_tenants_roles_and_limits(
    bare_system: System, api_app: Starlette, token_store: TokenStore
) -> None:
    acme = client_for(api_app, token_store, "acme", "producer")
    foreign = await acme.post("/v1/commands", content=_ndjson([register("globex/a")]))
    assert foreign.status_code == 400 and foreign.json()["error"]["records"][0]["field"] == "tenant"
    spoofed = forged(register("globex/a", tenant="globex"), tenant="acme")
    assert (await acme.post("/v1/commands", content=spoofed)).json()["error"]["param"] == "key"
    engine = EngineRegistered.create(engine="e1", base_id="tiny", kind="torch", gpu_slots=1, cpu_slots=1)
    infra = await acme.post("/v1/events", content=_ndjson([engine]))
    assert infra.json()["error"]["records"][0]["field"] == "type"
    # An engine's facts are its host's to write, so not even the operator appends them.
    operator = client_for(api_app, token_store, "_system", "admin")
    assert (await operator.post("/v1/events", content=_ndjson([engine]))).json()["error"]["param"] == "type"
    demand = ReportDemand.create(engine="e1", interval_start=engine.at, interval_s=1.0, counts={"acme/a": 1})
    assert (await acme.post("/v1/commands", content=_ndjson([demand]))).json()["error"]["param"] == "type"
    assert (await operator.post("/v1/commands", content=_ndjson([demand]))).status_code == 200
    reader = client_for(api_app, token_store, "acme", "reader")
    assert (await reader.post("/v1/commands", content=_ndjson([register("acme/a")]))).status_code == 403
    anonymous = httpx.AsyncClient(transport=httpx.ASGITransport(app=api_app), base_url="http://mint")
    assert (await anonymous.post("/v1/events", content=b"[]")).status_code == 401
    # Limits of this app: 100 records per request, 64 KiB, and a bucket of 100 records at 50/s.
    many = [register(f"acme/p{i}") for i in range(160)]
    assert (await acme.post("/v1/commands", content=_ndjson(many[:101]))).status_code == 413
    assert (await acme.post("/v1/commands", content=b" " * (65 * 1024))).status_code == 413

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(65):
            yield b" " * 1024

    assert (await acme.post("/v1/commands", content=chunked())).status_code == 413
    assert (await acme.post("/v1/commands", content=_ndjson(many[:90]))).status_code == 200
    # 10 records left in the bucket (plus 50/s since): 70 more must wait about a second.
    limited = await acme.post("/v1/commands", content=_ndjson(many[90:160]))
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert sum((await bare_system.log.end_offsets()).values()) >= 91


async def test_a_tenant_cannot_train_or_evaluate_another_tenants_policy(
    bare_system: System, api_app: Starlette, token_store: TokenStore
) -> None:
    operator = client_for(api_app, token_store, "_system", "admin")
    await operator.post("/v1/commands", content=_ndjson([register("globex/b"), register("acme/a")]))
    await bare_system.settle()  # every actor, the trainer included, has seen both registrations
    acme = client_for(api_app, token_store, "acme", "producer")
    evaluate = RequestEvaluation.create(policy="globex/b", revision="r1")
    refused = await acme.post("/v1/commands", content=_ndjson([evaluate]))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tenant"
    # A run of acme's that names globex's policy does not even pass the schema: the door names the field.
    train = {
        **json.loads(
            codec.encode(
                StartTraining.create(
                    run="acme/run1",
                    policies=["acme/a"],
                    base_id="tiny",
                    algo="sft",
                    task="sft-repeat:hi",
                    steps=1,
                )
            )
        ),
        "policies": ["acme/a", "globex/b"],
    }
    crossing = await acme.post("/v1/commands", content=json.dumps(train).encode())
    assert crossing.status_code == 400 and crossing.json()["error"]["param"] == "policies"
    assert "globex/b" in crossing.json()["error"]["message"]
