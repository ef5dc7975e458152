"""Regressions for faults the chaos tests (tests/chaos/test_infra_*.py) found, each fast and in the
default run."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.lowlevel
import msgspec
import pytest
from starlette.applications import Starlette

from actors.progress import Progress
from actors.projector import CatalogProjector
from actors.runtime import Backoff
from actors.system import running
from events import codec
from events.catalog import PolicyRegistered, Promote, RegisterPolicy
from events.kafka_log import KafkaLog, KafkaLogError
from events.log import LogUnavailable, Position
from events.sqlite_log import SqliteLog
from mint.api import ingest
from mint.api.app import create_app
from mint.auth.tokens import TokenStore
from mint.catalog.decide import decide
from mint.catalog.fold import CATALOG_FOLD
from mint.commands.serve_roles import ApiReadiness, unready_while_rebuilding
from mint.home import Home
from mint.ingest import IngestLimits
from mint.local_services import LocalKafka
from mint.projection.store import ProjectionStore
from tests.api_system import client_for
from tests.test_kafka_log import fresh_topic

pytestmark = pytest.mark.anyio


def test_deciding_a_command_again_later_yields_the_same_fact(tmp_path: Path) -> None:
    """A new catalog owner catching up decides each command again and folds its own copy (the log's is
    then skipped as a duplicate): unless the copy is the same fact, its store differs from a replay.
    It was not: the fact's time was the wall clock at the decision (test_infra_state.py)."""
    command = RegisterPolicy.create(
        source="test", policy="acme/p", base_id="tiny", at=datetime.now(UTC) - timedelta(hours=1)
    )
    refused = Promote.create(source="test", policy="acme/unknown", revision="r1")
    store = ProjectionStore(tmp_path / "catalog.db", CATALOG_FOLD)
    try:
        for each in (command, refused):
            first, again = decide(each, store.rows), decide(each, store.rows)
            assert [msgspec.json.encode(f) for f in first] == [msgspec.json.encode(f) for f in again]
            assert all(f.at == each.at for f in first), "a decision's time is its command's"
    finally:
        store.close()


def registered(policy: str) -> PolicyRegistered:
    return PolicyRegistered.create(source="catalog", policy=policy, base_id="tiny")


def policies_in(path: Path) -> set[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {policy for (policy,) in con.execute("SELECT policy FROM policies")}
    finally:
        con.close()


async def _fold(home: Home, log: SqliteLog, until: Position) -> Position:
    """Run the projector over `log` until it has folded up to `until`; its position then."""
    projector = CatalogProjector(home)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(projector.run, log)
            await projector.progress.reached(until)
            tg.cancel_scope.cancel()
    return projector.progress.position


async def test_a_fold_whose_checkpoint_is_beyond_the_log_rebuilds_from_the_log_as_it_is_now(
    tmp_path: Path,
) -> None:
    """The broker's storage lost: the projector's checkpoint is past the end of the (new, shorter) log.
    Its state described records that no longer exist; it must follow the log that exists. Before, it
    subscribed from its stale checkpoint (on Kafka: OffsetOutOfRange on every restart, never ready)."""
    home = Home.resolve(tmp_path / "home")
    lost = [
        PolicyRegistered.create(source="catalog", policy=f"acme/lost-{i}", base_id="tiny") for i in range(6)
    ]
    kept = [PolicyRegistered.create(source="catalog", policy="acme/kept", base_id="tiny")]
    async with SqliteLog(tmp_path / "lost.db", partitions=1) as log:
        await log.append(lost)
        await _fold(home, log, await log.end_offsets())
    assert policies_in(home.catalog) == {f"acme/lost-{i}" for i in range(6)}

    async with SqliteLog(tmp_path / "now.db", partitions=1) as log:
        await log.append(kept)
        end = await log.end_offsets()
        assert await _fold(home, log, end) == end
    assert policies_in(home.catalog) == {"acme/kept"}


@pytest.mark.kafka
async def test_a_subscription_past_the_end_of_a_kafka_topic_says_so(kafka_bootstrap: str) -> None:
    """A broker that lost its storage (tansu on memory://, restarted) answers a fetch past its end with
    nothing, not OFFSET_OUT_OF_RANGE: a subscription started at a checkpoint beyond the log waited
    there forever, and its fold served the state of records that no longer exist (test_infra_broker)."""
    async with KafkaLog(kafka_bootstrap, topic=fresh_topic(), partitions=2) as log:
        await log.append([registered("acme/only")])
        end = await log.end_offsets()
        async with log.subscribe("g", start={p: o + 5 for p, o in end.items()}) as beyond:
            with anyio.fail_after(20), pytest.raises(KafkaLogError, match="past the end of the log"):
                while True:
                    await beyond.next_batch(timeout=0.2)
        async with log.subscribe("g", start=end) as within:
            assert await within.next_batch(timeout=0.2) == []  # at the end exactly: nothing, no error


async def until_true(check: Callable[[], bool], what: str) -> None:
    with anyio.move_on_after(10):
        # The task under test flips the flag: there is no event to wait on but its state.
        while not check():  # noqa: ASYNC110
            await anyio.sleep(0.01)
    assert check(), what


async def test_an_api_replica_is_not_ready_while_its_catalog_is_rebuilt(tmp_path: Path) -> None:
    """Its projector rebuilding from a log shorter than its checkpoint (the broker's storage lost), an
    API replica answered /healthz 200 over a partly rebuilt catalog: it was ready once, for good."""
    async with SqliteLog(tmp_path / "log.db", partitions=1) as log:
        await log.append([registered("acme/a"), registered("acme/b")])
        progress = Progress()
        progress.update({0: 2})
        readiness = ApiReadiness("api-1", progress, ready=True)
        stopping = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(unready_while_rebuilding, log, readiness, stopping)
            await anyio.lowlevel.checkpoint()  # let it note where the catalog stands
            progress.update({})  # rebuilt from nothing
            await until_true(lambda: not readiness.ready, "not ready once the catalog went back")
            progress.update({0: 1})
            assert not readiness.ready, "ready before it caught up again"
            progress.update({0: 2})
            await until_true(lambda: readiness.ready, "ready again once caught up")
            stopping.set()
            tg.cancel_scope.cancel()


@pytest.mark.kafka
async def test_a_write_while_the_broker_is_down_is_a_503_with_retry_after(tmp_path: Path) -> None:
    """POST /v1/commands while the broker was down answered 500 after the producer's timeout: the
    client could not tell it to retry (test_infra_broker.py). Now the log says LogUnavailable, and the
    route 503 with Retry-After."""
    kafka = LocalKafka().start()
    try:
        log = KafkaLog(kafka.bootstrap, topic=fresh_topic(), partitions=1, request_timeout=1)
        async with log:
            await log.append([registered("acme/before")])
            kafka.stop()
            with anyio.fail_after(30), pytest.raises(LogUnavailable):
                await log.append([registered("acme/during")])
            app = Starlette(routes=ingest.routes(log, IngestLimits()))
            app.state.tokens = tokens = TokenStore(tmp_path / "tokens.db")
            command = RegisterPolicy.create(source="test", policy="acme/during", base_id="tiny")
            with anyio.fail_after(30):
                async with client_for(app, tokens, "acme", "producer") as client:
                    answer = await client.post("/v1/commands", content=codec.encode(command) + b"\n")
            assert answer.status_code == 503 and answer.headers["retry-after"], answer.text
            assert "send it again" in answer.json()["error"]["message"]
    finally:
        kafka.stop()


@pytest.mark.kafka
async def test_a_console_write_while_the_broker_is_down_is_a_503_with_retry_after(tmp_path: Path) -> None:
    """Every route that appends, not only ingest: a console button (rollback) while the broker was down
    answered 500. The API's handler of LogUnavailable answers 503 with Retry-After."""
    kafka = LocalKafka().start()
    try:
        home = Home(tmp_path / "home")
        log = KafkaLog(kafka.bootstrap, topic=fresh_topic(), partitions=1, request_timeout=1)
        async with (
            log,
            running(home, log, only=frozenset({"projector"}), backoff=Backoff(0.01, 0.1)) as system,
        ):
            await log.append([registered("acme/a")])
            await system.settle()
            tokens = TokenStore(home.tokens)
            app = create_app(system, tokens)
            kafka.stop()
            with anyio.fail_after(30):
                async with client_for(app, tokens, "acme", "admin") as client:
                    answer = await client.post("/admin/api/policies/acme/a/rollback", json={})
            assert answer.status_code == 503 and answer.headers["retry-after"], answer.text
    finally:
        kafka.stop()
