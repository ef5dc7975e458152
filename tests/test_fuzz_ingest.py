"""POST /v1/events and /v1/commands fuzzed with records drawn from the published schema and broken
one way each (tests/fuzz_strategies.py), on the real app over a running system and its SQLite log:
every refused batch is a 400 naming each bad record's field, a batch holding any bad record appends
nothing (its good records neither), a good batch after each refused one still lands whole, and nothing
is ever a 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette

from actors.runtime import Backoff
from actors.system import System, running
from events import codec
from events.envelope import new_record_id
from events.log import EventLog, Position, Stored
from events.sqlite_log import SqliteLog
from mint.api.app import create_app
from mint.auth.tokens import TokenStore
from mint.home import Home
from mint.ingest import IngestLimits
from tests.api_system import client_for
from tests.fuzz_strategies import (
    FOREIGN_URI,
    ROUTES,
    WAYS,
    Draw,
    Malformed,
    bad_record,
    fuzz_settings,
    kind_for,
    top_field,
    types_of,
    valid_record,
)
from tests.records import exported

pytestmark = pytest.mark.anyio
# Rate limits are not what is fuzzed here: a bucket no example empties.
LIMITS = IngestLimits(max_bytes=256 * 1024, max_records=50, records_per_s=1e9, burst=10**9)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    # One system for every example of the module: that it stays up through them is checked too.
    home = Home(tmp_path_factory.mktemp("fuzz-ingest"))
    async with (
        SqliteLog(home.log, partitions=2) as log,
        running(home, log, backoff=Backoff(0.001, 0.01)) as system,
    ):
        yield system


@pytest.fixture(scope="module")
def app(system: System) -> Starlette:
    return create_app(system, TokenStore(system.home.tokens), LIMITS)


@pytest.fixture(scope="module")
async def producer(system: System, app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app, TokenStore(system.home.tokens), "acme", "producer") as client:
        yield client


def body_of(raws: list[bytes], ndjson: bool) -> bytes:
    return b"\n".join(raws) + b"\n" if ndjson else b"[" + b",".join(raws) + b"]"


def fresh(fields: dict[str, Any]) -> bytes:
    return msgspec.json.encode({**fields, "id": new_record_id()})


async def stored_since(log: EventLog, before: Position) -> list[Stored]:
    """The records appended since the log's end was `before`."""
    found: list[Stored] = []
    for partition, end in (await log.end_offsets()).items():
        start = before.get(partition, 0)
        while start < end:
            batch = await log.read(partition, start, limit=500)
            found += batch
            start = batch[-1].offset + 1
    return found


async def ids_since(log: EventLog, before: Position) -> set[str]:
    return {stored.id for stored in await stored_since(log, before)}


def refused_batch(response: httpx.Response) -> dict[str, Any]:
    """The error object of a refused batch, in the API's one error shape."""
    assert response.status_code == 400, (response.status_code, response.text[:600])
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == 400
    assert "nothing was appended" in error["message"]
    problems = error["records"]
    assert problems and error["param"] == problems[0]["field"], error
    return error


def names_fault(problem: dict[str, Any], bad: Malformed) -> bool:
    field = problem["field"]
    named = bad.named(top_field(field))
    # A field named in the problem is named in its message too, as `field: why` or msgspec's `$.field`.
    return named and (field is None or field in problem["message"])


@dataclass(frozen=True)
class Batch:
    """Records of one kind, some broken: `broken` by index in `raws`; `good` the fields of the
    others; `ids` every id the batch was given (broken records' included)."""

    kind: str
    raws: list[bytes]
    broken: dict[int, Malformed]
    good: list[dict[str, Any]]
    ids: frozenset[str]


@st.composite
def mixed_batch(draw: Draw, way: str) -> Batch:
    """Up to 4 good records of one kind with 1 to 3 records broken in `way` among them."""
    kind = draw(st.sampled_from(kind_for(way)))
    good = [
        {**fields, "id": new_record_id()}
        for fields in draw(st.lists(st.sampled_from(types_of(kind)).flatmap(valid_record), max_size=4))
    ]
    raws = [msgspec.json.encode(fields) for fields in good]
    ids = {fields["id"] for fields in good}
    broken: dict[int, Malformed] = {}
    for _ in range(draw(st.integers(1, 3))):
        ident = new_record_id()
        ids.add(ident)
        record = draw(bad_record(kind, ident, way))
        at = draw(st.integers(0, len(raws)))
        raws.insert(at, record.raw)
        broken = {(i + 1 if i >= at else i): b for i, b in broken.items()}
        broken[at] = record
    return Batch(kind, raws, broken, good, frozenset(ids))


# Every example breaks a batch in each way of WAYS. The batches are drawn before the test runs (not
# with st.data() inside it): hypothesis ends a draw past its budget with a BaseException that would
# take anyio's test runner down with it.
@fuzz_settings(examples=6)
@given(batches=st.tuples(*(mixed_batch(way) for way in WAYS)), ndjson=st.booleans())
async def test_a_batch_with_a_bad_record_is_refused_whole_naming_the_field(
    system: System, producer: httpx.AsyncClient, batches: tuple[Batch, ...], ndjson: bool
) -> None:
    for drawn in batches:
        await refused_whole_then_good(system, producer, drawn, ndjson)


async def refused_whole_then_good(
    system: System, producer: httpx.AsyncClient, drawn: Batch, ndjson: bool
) -> None:
    """`drawn` is refused naming each bad record's field and appends nothing; then its good records
    alone land."""
    route = ROUTES[drawn.kind]
    before = await system.log.end_offsets()
    error = refused_batch(await producer.post(route, content=body_of(drawn.raws, ndjson)))
    problems = {p["index"]: p for p in error["records"]}
    broken = drawn.broken
    if not ndjson and problems.get(0, {}).get("field") == "body":
        # An array holding bytes that are not JSON is refused as a whole body, at index 0.
        assert any(None in (b.field, *b.also) for b in broken.values()), error
        assert problems[0]["message"].startswith("body: not a JSON array"), problems[0]
        broken = {}
    for index, bad in broken.items():
        assert index in problems, (bad.how, index, error)
        assert names_fault(problems[index], bad), (bad.how, bad.field, bad.also, problems[index])
    assert set(problems) <= set(broken) | {0}, ("a good record was refused", error)
    # Nothing of the refused batch is on the log (what the actors appended meanwhile is theirs).
    after = await system.log.end_offsets()
    assert not drawn.ids & await ids_since(system.log, before)
    # The server is still up and whole: the good records alone, under fresh ids, land.
    if drawn.good:
        resent = [{**fields, "id": new_record_id()} for fields in drawn.good]
        body = body_of([msgspec.json.encode(fields) for fields in resent], ndjson)
        landed = await producer.post(route, content=body)
        assert landed.status_code == 200, landed.text[:600]
        answer = landed.json()
        assert (answer["appended"], answer["duplicates"]) == (len(resent), 0)
        assert [r["id"] for r in answer["records"]] == [fields["id"] for fields in resent]
        assert {fields["id"] for fields in resent} <= await ids_since(system.log, after)


@fuzz_settings(examples=10)
@given(
    batch=st.lists(st.sampled_from(types_of("command")).flatmap(valid_record), min_size=1, max_size=6),
    ndjson=st.booleans(),
)
async def test_a_good_batch_lands_whole_and_a_resend_only_once(
    system: System, producer: httpx.AsyncClient, batch: list[dict[str, Any]], ndjson: bool
) -> None:
    records = [{**fields, "id": new_record_id()} for fields in batch]
    body = body_of([msgspec.json.encode(fields) for fields in records], ndjson)
    before = await system.log.end_offsets()
    first = await producer.post("/v1/commands", content=body)
    assert first.status_code == 200, first.text[:600]
    assert (first.json()["appended"], first.json()["duplicates"]) == (len(records), 0)
    again = (await producer.post("/v1/commands", content=body)).json()
    assert (again["appended"], again["duplicates"]) == (0, len(records))
    landed = [stored.id for stored in await stored_since(system.log, before)]
    assert all(landed.count(fields["id"]) == 1 for fields in records)


async def _streamed(body: bytes, chunk: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), chunk):
        yield body[start : start + chunk]


@fuzz_settings(examples=8)
@given(
    fields=valid_record("Promote"),
    size=st.integers(LIMITS.max_bytes + 1, 2 * LIMITS.max_bytes),
    streamed=st.booleans(),
)
async def test_a_body_over_the_limit_is_a_413_naming_the_body_and_appends_nothing(
    system: System, producer: httpx.AsyncClient, fields: dict[str, Any], size: int, streamed: bool
) -> None:
    # A huge string in a field with no bound of its own: the body's limit is what refuses it.
    good = {**fields, "id": new_record_id(), "reason": ""}
    huge = {**fields, "id": new_record_id(), "reason": "r" * size}
    body = body_of([msgspec.json.encode(good), msgspec.json.encode(huge)], ndjson=True)
    before = await system.log.end_offsets()
    # A streamed body declares no length: it is refused at the chunk that crosses the limit.
    content = _streamed(body, 64 * 1024) if streamed else body
    refused = await producer.post("/v1/commands", content=content)
    assert refused.status_code == 413, refused.text[:400]
    assert refused.json()["error"]["message"].startswith("body: "), refused.json()
    assert not {good["id"], huge["id"]} & await ids_since(system.log, before)
    assert (await producer.post("/v1/commands", content=msgspec.json.encode(good))).status_code == 200


@pytest.mark.parametrize("uri", [FOREIGN_URI, "", "adapters/acme/elsewhere/r1/adapter_model.safetensors"])
async def test_an_export_of_another_policys_artifact_is_refused_at_the_door(
    system: System, producer: httpx.AsyncClient, uri: str
) -> None:
    # Found by the fuzzer: the door answered 200 and the catalog dead-lettered the fact, so the
    # producer was told its revision landed when no reader would ever see it.
    export = {**exported_fields("acme/mine", "r1"), "id": new_record_id(), "uri": uri}
    before = await system.log.end_offsets()
    error = refused_batch(await producer.post("/v1/events", content=msgspec.json.encode(export)))
    assert error["param"] == "uri" and "is not an artifact of 'acme/mine'" in error["message"]
    assert export["id"] not in await ids_since(system.log, before)
    own = {**export, "id": new_record_id(), "uri": "adapters/acme/mine/r1/adapter_model.safetensors"}
    assert (await producer.post("/v1/events", content=msgspec.json.encode(own))).status_code == 200


def exported_fields(policy: str, revision: str) -> dict[str, Any]:
    fields: dict[str, Any] = msgspec.json.decode(codec.encode(exported(policy, revision)))
    return fields
