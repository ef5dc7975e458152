"""Read your writes across replicas: every write answers the position of its outcome, and a read bound
by that position (`x-mint-after`, `--after`, the CLI's memory) reflects the write or is refused with
503 / a precise message, never the state before it. Over the real tansu broker, two replicas in one
process, each folding into its own home; the second one lags on purpose (its projector stopped)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette

from actors.runtime import Backoff
from actors.system import System, running
from events import codec
from events.catalog import Promote
from events.kafka_log import KafkaLog
from events.log import Position, outcome
from events.positions import PositionError, after_appended, format_position, merged, parse_position
from events.seal import Seal
from events.sqlite_log import SqliteLog
from mint.api.app import create_app
from mint.api.positions import POSITION_HEADER
from mint.auth.tokens import TokenStore
from mint.catalog.queries import Catalog
from mint.cli import cli
from mint.home import Home
from tests.cluster import MINT, RunningCluster, running_cluster
from tests.records import evaluated, exported, register

pytestmark = pytest.mark.anyio
FAST = Backoff(0.001, 0.01)
PROJECTOR = frozenset({"projector"})
LAGGING_WAIT_S = 0.5  # replica 2's bound: short, since its lag is made on purpose


# -- the wire form ---------------------------------------------------------------------------------


@given(st.dictionaries(st.integers(0, 1_000_000), st.integers(0, 2**62), max_size=12))
def test_a_position_round_trips_through_its_wire_form(position: Position) -> None:
    assert parse_position(format_position(position), "x") == position


@pytest.mark.parametrize(
    ("text", "wrong"),
    [
        ("0:12", "'0:12' in '0:12' is not PARTITION@OFFSET"),
        ("0@12,", "'' in '0@12,' is not PARTITION@OFFSET"),
        ("0@-1", "'0@-1'"),
        ("0@012", "'0@012'"),
        (" 0@1", "' 0@1'"),
        ("0@1\n", "'0@1\\n'"),
        ("0@1,0@2", "partition 0 is named twice"),
    ],
)
def test_a_malformed_position_is_refused_naming_where_and_what(text: str, wrong: str) -> None:
    with pytest.raises(PositionError) as refused:
        parse_position(text, "x-mint-after")
    assert str(refused.value).startswith("x-mint-after: ") and wrong in str(refused.value)


def test_positions_merge_per_partition_to_the_furthest() -> None:
    assert merged({0: 3, 1: 9}, {0: 5, 2: 1}, {}) == {0: 5, 1: 9, 2: 1}
    assert parse_position("", "x") == {} and format_position({3: 7, 0: 13}) == "0@13,3@7"


# -- two API replicas over Kafka -------------------------------------------------------------------


@dataclass
class Replicas:
    """Replica 1 runs every actor (it decides) and folds into its own home; replica 2 is an API over
    a home of its own whose projector runs only inside `replica_2_folding`."""

    url: str  # the log, as the CLI spells it
    key: str  # the cluster key both replicas (and the CLI) seal with
    first: System
    second: System  # built, not started: its app serves what its home has folded
    tokens: TokenStore
    one: Starlette
    two: Starlette

    def client(self, app: Starlette, tenant: str, roles: str) -> httpx.AsyncClient:
        secret = self.tokens.issue(tenant, roles).secret
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://mint",
            headers={"Authorization": f"Bearer {secret}"},
        )

    def replica_2_folding(self) -> AbstractAsyncContextManager[System]:
        return running(self.second.home, self.second.log, backoff=FAST, only=PROJECTOR)


def _log(bootstrap: str, topic: str, key: str) -> KafkaLog:
    return KafkaLog(bootstrap, topic=topic, partitions=4, seal=Seal.from_secret(key))


def _serves(home: Home, revision: str) -> bool:
    if not home.catalog.exists():
        return False
    catalog = Catalog(home.catalog)
    try:
        return catalog.resolve("acme/a") == revision
    finally:
        catalog.close()


@pytest.fixture
async def replicas(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Replicas]:
    topic, key = f"mint.ryw.{uuid.uuid4().hex[:8]}", secrets.token_hex(32)
    tokens = TokenStore(tmp_path / "tokens.db")  # one token store for every replica, as in a cluster
    async with (
        _log(kafka_bootstrap, topic, key) as log_1,
        _log(kafka_bootstrap, topic, key) as log_2,
        running(Home(tmp_path / "replica-1"), log_1, backoff=FAST) as first,
    ):
        second = System(Home(tmp_path / "replica-2"), log_2, only=PROJECTOR)
        replicas = Replicas(
            f"kafka://{kafka_bootstrap}/{topic}",
            key,
            first,
            second,
            tokens,
            create_app(first, tokens),
            create_app(second, tokens, read_wait_s=LAGGING_WAIT_S),
        )
        # acme/a serves r1 and has r2 exported and evaluated; both replicas have folded all of it (a
        # test's first write through replica 1 must not race replica 1's own fold of the set-up).
        await log_1.append([register("acme/a")])
        await log_1.append([exported("acme/a", "r1"), evaluated("acme/a", "r1"), exported("acme/a", "r2")])
        await log_1.append([evaluated("acme/a", "r2"), Promote.create(policy="acme/a", revision="r1")])
        with anyio.fail_after(30):
            await first.until(lambda: _serves(first.home, "r1"))
            async with replicas.replica_2_folding() as folding:
                await folding.until(lambda: _serves(second.home, "r1"))
        yield replicas  # replica 2's projector is stopped from here: it lags


async def test_a_promotion_through_one_replica_is_read_on_another_or_refused_never_stale(
    replicas: Replicas,
) -> None:
    admin = replicas.client(replicas.one, "acme", "admin")
    reader = replicas.client(replicas.two, "acme", "reader")
    promoted = await admin.post("/admin/api/policies/acme/a/promote", json={"revision": "r2"})
    assert promoted.status_code == 200 and promoted.json()["outcome"] == "RevisionPromoted"
    position = promoted.headers["x-mint-position"]
    assert promoted.json()["position"] == position
    (partition, offset) = next(iter(parse_position(position, "answer").items()))
    # The promotion's fact sits just before its position, so replica 1's read at it sees it at once.
    seen_1 = await replicas.client(replicas.one, "acme", "reader").get(
        "/admin/api/policies/acme/a", headers={"x-mint-after": position}
    )
    assert seen_1.json()["policy"]["pointer"] == "r2"

    # Replica 2 lags: unbound, it still shows r1; bound by the position, it refuses instead.
    assert (await reader.get("/admin/api/policies/acme/a")).json()["policy"]["pointer"] == "r1"
    for path in ("/admin/api/policies/acme/a", "/admin/api/policies", "/v1/models"):
        refused = await reader.get(path, headers={"x-mint-after": position})
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1", path
        error = refused.json()["error"]
        assert error["after"] == position and error["param"] == "x-mint-after"
        have = parse_position(error["position"], "error")
        assert list(have) == [partition] and have[partition] < offset  # only the partition asked
        assert f"not yet {position}" in error["message"]

    # Once replica 2 folds again, the same read waits for the promotion and reflects it.
    async with replicas.replica_2_folding():
        read = await read_when_folded(reader, "/admin/api/policies/acme/a", position)
    assert read.json()["policy"]["pointer"] == "r2"


async def read_when_folded(client: httpx.AsyncClient, path: str, position: str) -> httpx.Response:
    """`path` read bound by `position`, read again while the replica answers 503 (not folded that far
    yet): what a client that honours Retry-After sees, without the pause."""
    with anyio.fail_after(30):
        while True:
            read = await client.get(path, headers={"x-mint-after": position})
            if read.status_code != 503:
                return read


async def test_a_malformed_or_impossible_bound_is_a_400_naming_the_header(replicas: Replicas) -> None:
    reader = replicas.client(replicas.two, "acme", "reader")
    for value, wrong in (
        ("0:12", "is not PARTITION@OFFSET"),
        ("0@1,0@2", "partition 0 is named twice"),
        ("9@1", "partition 9 does not exist (the log has 4)"),
    ):
        refused = await reader.get("/admin/api/policies/acme/a", headers={"x-mint-after": value})
        assert refused.status_code == 400, value
        assert (
            refused.json()["error"]["param"] == "x-mint-after" and wrong in refused.json()["error"]["message"]
        )
    # An empty bound is no bound; so is a position replica 2 has already folded.
    for value in ("", "0@0"):
        read = await reader.get("/admin/api/policies/acme/a", headers={"x-mint-after": value})
        assert read.json()["policy"]["pointer"] == "r1", value


async def test_ingest_answers_the_position_just_past_its_records(replicas: Replicas) -> None:
    producer = replicas.client(replicas.one, "acme", "producer")
    body = b"".join(codec.encode(exported("acme/a", r)) + b"\n" for r in ("r3", "r4"))
    answered = await producer.post("/v1/events", content=body)
    assert answered.status_code == 200
    position = answered.headers["x-mint-position"]
    assert answered.json()["position"] == position
    (first, last) = answered.json()["records"]
    assert position == f"{last['partition']}@{last['offset'] + 1}" and last["offset"] == first["offset"] + 1
    # Replica 2 catches up to it when it folds again; a read bound by it then lists both revisions.
    async with replicas.replica_2_folding():
        reader = replicas.client(replicas.two, "acme", "reader")
        seen = await read_when_folded(reader, "/admin/api/policies/acme/a", position)
    assert {"r3", "r4"} <= {r["revision"] for r in seen.json()["revisions"]}


# -- the CLI ---------------------------------------------------------------------------------------


async def invoke(*args: str) -> Result:
    """The real CLI, in a worker thread: it runs its own event loop, as it does from a shell."""
    return await anyio.to_thread.run_sync(lambda: CliRunner().invoke(cli, list(args)))


async def test_the_cli_promotes_then_reads_another_replica_never_stale(
    replicas: Replicas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = tmp_path / "state" / "positions.json"
    monkeypatch.setenv("MINT_POSITION_FILE", str(memory))
    monkeypatch.setenv("MINT_CLUSTER_KEY", replicas.key)
    log, home_2 = ("--log", replicas.url), ("--home", str(replicas.second.home.root))
    cli_home = ("--home", str(tmp_path / "cli-home"))  # the CLI's own: on Kafka it starts no actors

    promoted = await invoke("policy", "promote", "acme/a@r2", *log, *cli_home, "--json", "--timeout", "30")
    assert promoted.exit_code == 0, promoted.output
    answer = json.loads(promoted.output)
    assert answer["ok"] and answer["outcome"] == "RevisionPromoted" and answer["fact"]["revision"] == "r2"
    assert json.loads(memory.read_text()) == {replicas.url: answer["position"]}

    # Replica 2 lags: the read waits for the remembered position, then says precisely why it cannot.
    shown = await invoke("catalog", "show", "acme/a", *home_2, *log, "--wait", str(LAGGING_WAIT_S))
    assert shown.exit_code == 1 and "serving:" not in shown.output
    assert (
        f"not {answer['position']} (the position of this CLI's last write to {replicas.url}" in shown.output
    )
    assert str(memory) in shown.output
    # --after overrides the memory: '' reads what replica 2 has now, knowingly.
    stale = await invoke("catalog", "show", "acme/a", *home_2, *log, "--after", "")
    assert stale.exit_code == 0 and "serving: r1" in stale.output
    bad = await invoke("catalog", "show", "acme/a", *home_2, *log, "--after", "0:12")
    assert bad.exit_code == 2 and "--after" in bad.output and "is not PARTITION@OFFSET" in bad.output

    async with replicas.replica_2_folding():
        shown = await invoke("catalog", "show", "acme/a", *home_2, *log, "--wait", "30")
    assert shown.exit_code == 0 and "serving: r2" in shown.output

    # A second write merges into the memory (per partition, the furthest).
    rolled = await invoke("policy", "rollback", "acme/a", *log, *cli_home, "--timeout", "30")
    assert rolled.exit_code == 0 and "RevisionRolledBack" in rolled.output
    later = parse_position(rolled.output.split("position: ")[1].strip(), "output")
    remembered = parse_position(json.loads(memory.read_text())[replicas.url], "memory")
    assert remembered == merged(parse_position(answer["position"], "answer"), later)


async def test_on_one_home_the_cli_returns_once_its_write_is_folded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINT_POSITION_FILE", str(tmp_path / "positions.json"))
    home = Home(tmp_path / "home")
    at_home = ("--home", str(home.root))
    registered = await invoke("policy", "register", "acme/x", "--base", "tiny", *at_home, "--json")
    assert registered.exit_code == 0, registered.output
    position = parse_position(json.loads(registered.output)["position"], "answer")
    # The CLI ran the actors itself, and stopped them only once its outcome was folded into the home.
    catalog = Catalog(home.catalog)
    assert all(catalog.position().get(p, 0) >= o for p, o in position.items())
    catalog.close()
    shown = await invoke("catalog", "show", "acme/x", *at_home, "--wait", "0")
    assert shown.exit_code == 0 and "acme/x  status=active" in shown.output
    refused = await invoke("policy", "register", "acme/x", "--base", "tiny", *at_home)
    assert refused.exit_code == 1 and "already registered" in refused.output  # a refusal is an outcome too
    assert "position: " in refused.output


# -- Tinker ----------------------------------------------------------------------------------------


async def test_tinker_calls_that_append_answer_the_position_of_what_they_appended(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    from mint.bases.tiny import create_tiny_base
    from tests.test_tinker_registration import records, tinker_api

    home = Home(tmp_path)
    create_tiny_base(home.base("tiny"), seed=0)
    async with (
        SqliteLog(home.log, partitions=2) as log,
        running(home, log, backoff=FAST, only=frozenset({"catalog", "projector"})),
        tinker_api(home, log) as http,
    ):
        opened = await http.post("/create_session", json={})
        assert POSITION_HEADER not in opened.headers  # it appends nothing
        body = {"session_id": opened.json()["session_id"], "base_model": "tiny"}
        asked = await http.post("/create_model", json=body)  # registers the policy: the catalog decides
        built = await http.post("/retrieve_future", json=asked.json())  # the client's creation, later
        sampler = await http.post("/create_sampling_session", json=body)
        on_log = {type(r).__name__: offset for offset, r in await records(log)}
        answers = {"PolicyRegistered": asked, "TrainingClientCreated": built, "SamplerCreated": sampler}
        for fact, answer in answers.items():
            (offset,) = parse_position(answer.headers[POSITION_HEADER], fact).values()
            assert offset == on_log[fact] + 1, fact


# -- on a real cluster -----------------------------------------------------------------------------


async def _seed(cluster: RunningCluster) -> str:
    """acme/a registered (the catalog's decision awaited), with r1 and r2 exported and evaluated (the
    evaluations sealed as MinT's); the position just past all of it."""
    async with cluster.log() as log:
        command = register("acme/a")
        (appended,) = await log.append([command])
        decided = await outcome(log, appended, command.id, timeout_s=60)
        revisions = await log.append([exported("acme/a", r) for r in ("r1", "r2")])
        evaluations = await log.append([evaluated("acme/a", r) for r in ("r1", "r2")])
    return format_position(merged(decided.position, after_appended([*revisions, *evaluations])))


def _bounded_read(url: str, headers: dict[str, str], position: str) -> httpx.Response:
    """A read on another replica bound by `position`: again while it answers 503 (with Retry-After),
    and never anything else but the answer that reflects the write."""
    with httpx.Client(base_url=url, headers={**headers, "x-mint-after": position}, timeout=30) as http:
        for _ in range(30):
            read = http.get("/admin/api/policies/acme/a")
            if read.status_code != 503:
                return read
            assert read.headers["Retry-After"] and read.json()["error"]["after"] == position
    raise AssertionError(f"{url} stayed behind {position}")


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_read_your_writes_a_promotion_through_one_api_replica_is_seen_by_the_next_read_on_another(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path, catalog=1, api=2) as cluster:
        seeded = anyio.run(_seed, cluster)
        admin = {"Authorization": f"Bearer {cluster.admin_token()}"}
        one, two = cluster.api_url(0), cluster.api_url(1)
        for revision in ("r1", "r2"):  # r1 becomes the old pointer, which no read may show after r2
            # A write may be bound too: replica 1 checks the policy exists only once it has folded it.
            promoted = httpx.post(
                f"{one}/admin/api/policies/acme/a/promote",
                json={"revision": revision},
                headers={**admin, "x-mint-after": seeded},
                timeout=30,
            )
            assert promoted.status_code == 200 and promoted.json()["outcome"] == "RevisionPromoted", (
                promoted.text
            )
            read = _bounded_read(two, admin, promoted.headers["x-mint-position"])
            assert read.status_code == 200 and read.json()["policy"]["pointer"] == revision

        # The CLI, a client of the cluster: it rolls back, then reads the other replica's home.
        url = f"kafka://{cluster.table['kafka']}/{cluster.table['topic']}"
        env = {
            **os.environ,
            "MINT_CLUSTER_KEY": cluster.key(),
            "MINT_POSITION_FILE": str(tmp_path / "pos.json"),
        }
        home_2 = cluster.process("api-2")["home"]

        def mint(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [MINT, *args, "--log", url], capture_output=True, text=True, env=env, timeout=120
            )

        rolled = mint("policy", "rollback", "acme/a", "--home", str(tmp_path / "cli-home"), "--timeout", "60")
        assert rolled.returncode == 0 and "RevisionRolledBack" in rolled.stdout, rolled.stdout + rolled.stderr
        shown = mint("catalog", "show", "acme/a", "--home", home_2, "--wait", "30")
        assert shown.returncode == 0 and "serving: r1" in shown.stdout, shown.stdout + shown.stderr
