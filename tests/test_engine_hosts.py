"""Engine hosts as their own processes: heartbeats folded into the engines row (residency only from what
an engine reports), EngineLost after T2 with the lost engine's adapters planned onto another engine of
its base, a host declared lost while alive coming back, the engine-host role's readiness and drain, and
real processes (`mint actor engine-host`, `mint actor api`) serving through the router over tansu."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest

from actors.runtime import Backoff
from actors.system import System, running
from events.catalog import Promote, RegisterPolicy
from events.serving import AdapterLoaded, EngineHeartbeat, EngineLost, EngineRegistered
from events.sqlite_log import SqliteLog
from mint.catalog.queries import Catalog
from mint.cluster.publish import publish_random_revision
from mint.cluster.table import ClusterDir
from mint.home import Home
from mint.local_services import free_port
from mint.serving.liveness import Liveness
from tests.cluster import RunningCluster, running_cluster
from tests.records import evaluated, exported, register

pytestmark = pytest.mark.anyio

MINT = str(Path(sys.executable).with_name("mint"))
CLUSTER_KEY = "engine-hosts-test-cluster-key"


def registered(engine: str, incarnation: str | None = "i1", base_id: str = "tiny") -> EngineRegistered:
    return EngineRegistered.create(
        engine=engine, base_id=base_id, kind="torch", gpu_slots=2, cpu_slots=2, incarnation=incarnation
    )


def beat(engine: str, holds: list[str], incarnation: str = "i1", **kw: object) -> EngineHeartbeat:
    fields: dict[str, object] = {"url": f"http://{engine}:1", "in_flight": 0, "interval_s": 1.0, **kw}
    return EngineHeartbeat.create(
        engine=engine, incarnation=incarnation, base_id="tiny", holds=holds, **fields
    )


def residency(system: System, engine: str) -> dict[str, str]:
    view = Catalog(system.home.catalog)
    try:
        return {f"{r.policy}@{r.revision}": r.tier for r in view.residency(engine)}
    finally:
        view.close()


def engine_row(system: System, engine: str) -> dict[str, object]:
    """The engine's row as a dict ({} while the catalog has none)."""
    view = Catalog(system.home.catalog)
    try:
        rows = [e for e in view.engines() if e.engine == engine]
    finally:
        view.close()
    return {f: getattr(rows[0], f) for f in rows[0].__struct_fields__} if rows else {}


async def answered(check: Callable[[], Awaitable[bool]], every_s: float = 0.1) -> None:
    """Until `check` holds, asking every `every_s` (for state behind HTTP; bound it by the caller)."""
    while True:
        if await check():
            return
        await anyio.sleep(every_s)


async def test_heartbeats_fill_the_engine_row_and_residency_follows_what_the_engine_holds(
    bare_system: System,
) -> None:
    disk = AdapterLoaded.create(engine="e1", policy="acme/c", revision="r1", tier="disk", ms=3.0)
    await bare_system.log.append(
        [registered("e1"), beat("e1", ["acme/a@r1", "acme/b@r1"], in_flight=4, url="http://h:9"), disk]
    )
    await bare_system.settle()
    row = engine_row(bare_system, "e1")
    assert (row["incarnation"], row["url"], row["in_flight"], row["status"]) == ("i1", "http://h:9", 4, "up")
    assert row["holds"] == ("acme/a@r1", "acme/b@r1") and row["heard_at"] is not None
    assert residency(bare_system, "e1") == {"acme/a@r1": "gpu", "acme/b@r1": "gpu", "acme/c@r1": "disk"}
    # It no longer holds b (nor ever held c on the GPU): b leaves, the disk copy of c stays.
    await bare_system.log.append([beat("e1", ["acme/a@r1"])])
    await bare_system.settle()
    assert residency(bare_system, "e1") == {"acme/a@r1": "gpu", "acme/c@r1": "disk"}


async def test_a_replaced_incarnations_heartbeat_says_nothing_and_a_malformed_hold_is_a_dead_letter(
    bare_system: System,
) -> None:
    await bare_system.log.append([registered("e1", "old"), registered("e1", "new"), beat("e1", [], "new")])
    await bare_system.log.append([beat("e1", ["acme/zombie@r1"], "old", url="http://zombie:1")])
    malformed = beat("e1", ["not a ref"], "new")
    await bare_system.log.append([malformed])
    await bare_system.settle()
    row = engine_row(bare_system, "e1")
    assert row["url"] == "http://e1:1" and row["holds"] == () and residency(bare_system, "e1") == {}
    view = Catalog(bare_system.home.catalog)
    try:
        (letter,) = [d for d in view.dead_letters() if d.id == malformed.id]
    finally:
        view.close()
    assert "holds:" in letter.reason


async def test_a_loss_of_a_replaced_incarnation_is_ignored_and_a_new_registration_brings_an_engine_back(
    bare_system: System,
) -> None:
    await bare_system.log.append([registered("e1", "i1"), beat("e1", [])])
    await bare_system.log.append([EngineLost.create(engine="e1", reason="silent", incarnation="i1")])
    await bare_system.settle()
    assert (engine_row(bare_system, "e1")["status"], engine_row(bare_system, "e1")["lost_reason"]) == (
        "lost",
        "silent",
    )
    await bare_system.log.append([registered("e1", "i2")])
    await bare_system.log.append([EngineLost.create(engine="e1", reason="late", incarnation="i1")])
    await bare_system.settle()
    assert engine_row(bare_system, "e1")["status"] == "up"


async def test_the_console_shows_liveness_as_it_is_and_a_tenant_not_the_engines_traffic(
    bare_system: System,
) -> None:
    from mint.api.console_views import engine_seen
    from mint.auth.tokens import Principal

    now = datetime.now(UTC)
    await bare_system.log.append(
        [
            *[registered(e) for e in ("fresh", "stale", "lost")],
            beat("fresh", ["acme/a@r1", "globex/b@r1"], in_flight=7),
            beat("stale", [], at=now - timedelta(seconds=4)),
            beat("lost", []),
            EngineLost.create(engine="lost", reason="no heartbeat for 9.0s", incarnation="i1"),
            registered("inside", incarnation=None),
        ]
    )
    await bare_system.settle()
    operator = Principal(token_id="op", tenant="_system", roles=frozenset({"admin"}))
    acme = Principal(token_id="acme", tenant="acme", roles=frozenset({"reader"}))
    view = Catalog(bare_system.home.catalog)
    try:
        seen = {e.engine: engine_seen(view, e, operator, {}, now=now) for e in view.engines()}
        fresh_for_acme = engine_seen(view, next(e for e in view.engines() if e.engine == "fresh"), acme, {})
    finally:
        view.close()
    assert {name: e["liveness"] for name, e in seen.items()} == {
        "fresh": "up",
        "stale": "stale",
        "lost": "lost",
        "inside": "up",  # an embedded engine's liveness is its process's
    }
    assert seen["stale"]["heard_s"] == pytest.approx(4.0, abs=0.5) and seen["inside"]["heard_s"] is None
    assert seen["fresh"]["in_flight"] == 7 and seen["lost"]["lost_reason"] == "no heartbeat for 9.0s"
    # A tenant sees whether the engine is alive and its own adapters, not what else it holds or serves.
    assert fresh_for_acme["liveness"] == "up" and [r["policy"] for r in fresh_for_acme["resident"]] == [
        "acme/a"
    ]
    assert not {"holds", "url", "in_flight", "incarnation"} & set(fresh_for_acme)


FAST = {"MINT_ENGINE_HEARTBEAT_S": "0.2", "MINT_ENGINE_STALE_S": "0.6", "MINT_ENGINE_LOST_S": "1.5"}


@pytest.fixture
async def fast_liveness_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[System]:
    """The embedded system with liveness thresholds of 0.2 s (heartbeat), 0.6 s (T1), 1.5 s (T2)."""
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    home = Home(tmp_path)
    async with (
        SqliteLog(home.log, partitions=2) as log,
        running(home, log, backoff=Backoff(0.001, 0.01)) as system,
    ):
        yield system


async def served(system: System, policy: str = "acme/a", revision: str = "r1") -> str:
    await system.log.append([register(policy)])
    await system.log.append([exported(policy, revision), evaluated(policy, revision)])
    await system.log.append([Promote.create(policy=policy, revision=revision)])
    with anyio.fail_after(30):
        await system.until(lambda: Catalog(system.home.catalog).resolve(policy) == revision)
    return f"{policy}@{revision}"


async def test_a_silent_engine_is_lost_after_t2_and_its_adapters_are_planned_onto_another(
    fast_liveness_system: System,
) -> None:
    system = fast_liveness_system
    ref = await served(system)
    await system.log.append([registered("e1"), registered("e2"), beat("e1", [ref]), beat("e2", [])])
    began = time.monotonic()

    async def keep_e2_alive() -> None:
        while True:
            await system.log.append([beat("e2", [])])
            await anyio.sleep(0.2)

    async with anyio.create_task_group() as tg:
        tg.start_soon(keep_e2_alive)
        with anyio.fail_after(20):
            await system.until(lambda: engine_row(system, "e1").get("status") == "lost")
            lost_after = time.monotonic() - began
            await system.until(lambda: any(ref in w.load for w in Catalog(system.home.catalog).waves("e2")))
        tg.cancel_scope.cancel()
    assert 1.5 <= lost_after < 10, lost_after  # not before T2; soon after it
    assert engine_row(system, "e2")["status"] == "up"  # the engine still heard from is not lost
    assert "no heartbeat for" in str(engine_row(system, "e1")["lost_reason"])
    # Residency is what engines report: the plan moved nothing yet, and e1's last report stands.
    assert ref not in residency(system, "e2") and residency(system, "e1") == {ref: "gpu"}


# -- the engine-host role, in this process -------------------------------------------------------------


@dataclass
class Role:
    system: System  # the control plane the host joins: catalog, scheduler, projector
    home: Home  # the host's own home
    url: str
    stop: anyio.Event


@asynccontextmanager
async def engine_host_role(tmp_path: Path, base_dir: Path) -> AsyncIterator[Role]:
    from mint.artifacts.local import LocalArtifactStore
    from mint.commands.serve_roles import run_engine_host

    control = Home(tmp_path / "control")
    host_home = Home(tmp_path / "host")
    host_home.bases.mkdir(parents=True)
    (host_home.bases / "tiny").symlink_to(base_dir)
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    async with (
        SqliteLog(tmp_path / "log.db", partitions=2) as log,
        running(control, log, backoff=Backoff(0.001, 0.01), artifacts=artifacts) as system,
        anyio.create_task_group() as tg,
    ):
        stop = anyio.Event()
        url = await tg.start(
            lambda task_status: run_engine_host(
                home=host_home,
                log=log,
                artifacts=artifacts,
                replica="eh1",
                host="127.0.0.1",
                port=0,
                base="tiny:2:2",
                liveness=Liveness(0.2, 0.6, 1.5),
                grace_s=2.0,
                stop=stop,
                task_status=task_status,
            )
        )
        try:
            yield Role(system, host_home, url, stop)
        finally:
            stop.set()


async def health(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"{url}/healthz")


async def is_ready(url: str) -> bool:
    try:
        return (await health(url)).status_code == 200
    except httpx.TransportError:
        return False


async def test_the_engine_host_role_heartbeats_comes_back_when_declared_lost_and_stops_on_request(
    tmp_path: Path, base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    monkeypatch.setenv("MINT_CLUSTER_KEY", CLUSTER_KEY)
    with anyio.fail_after(60):
        async with engine_host_role(tmp_path, base_dir) as role:
            await answered(lambda: is_ready(role.url))
            await role.system.until(lambda: engine_row(role.system, "eh1").get("url") == role.url)
            body = (await health(role.url)).json()
            incarnation = body["incarnation"]
            assert body["ready"] is True and incarnation.startswith("eh1.")  # new at every process start
            assert engine_row(role.system, "eh1")["incarnation"] == incarnation
            # Declared lost while alive (a pause): the host registers again and is up once more.
            lost = EngineLost.create(engine="eh1", reason="test", incarnation=incarnation)
            await role.system.log.append([lost])
            await role.system.until(lambda: engine_row(role.system, "eh1")["status"] == "lost")
            await role.system.until(lambda: engine_row(role.system, "eh1")["status"] == "up")
            role.stop.set()  # the role drains and returns: the context's exit waits for it
        with pytest.raises(httpx.ConnectError):
            await health(role.url)


# -- real processes: `mint actor engine-host` and `mint actor api` over tansu ----------------------------


@dataclass
class Spawned:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def actor_process(
    role: str, replica: str, root: Path, log_url: str, *options: str, base_dir: Path | None = None
) -> Iterator[Spawned]:
    """`mint actor ROLE` as an OS process with a home of its own (`base_dir` linked into its bases);
    SIGTERM on exit, then SIGKILL."""
    home = root / replica
    (home / "bases").mkdir(parents=True, exist_ok=True)
    if base_dir is not None:
        (home / "bases" / base_dir.name).symlink_to(base_dir)
    port = free_port("127.0.0.1")
    command = [MINT, "actor", role, "--log", log_url, "--artifacts", f"file://{root / 'artifacts'}", *options]
    command += ["--home", str(home), "--replica", replica, "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "MINT_CLUSTER_KEY": CLUSTER_KEY, "PYTHONUNBUFFERED": "1"}
    out = root / f"{replica}.log"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    spawned = Spawned(replica, process, f"http://127.0.0.1:{port}", out)
    try:
        yield spawned
    except BaseException:
        print(f"----- {replica} (exit {process.poll()}):\n{spawned.tail()}", file=sys.stderr)
        raise
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


async def until_ready(*spawned: Spawned) -> None:
    for each in spawned:
        await answered(partial(_ready, each), every_s=0.2)


async def _ready(spawned: Spawned) -> bool:
    if spawned.process.poll() is not None:
        raise AssertionError(f"{spawned.name} exited {spawned.process.returncode}:\n{spawned.tail()}")
    return await is_ready(spawned.url)


@asynccontextmanager
async def control_plane(root: Path, bootstrap: str, base_dir: Path) -> AsyncIterator[tuple[System, str]]:
    """The catalog, scheduler and projector in this process on a fresh topic of the tansu broker, over
    the artifact directory the processes share; and the log URL the processes join."""
    from events.kafka_log import KafkaLog
    from events.seal import Seal
    from mint.artifacts.local import LocalArtifactStore

    topic = f"mint.hosts.{uuid.uuid4().hex[:8]}"
    home = Home(root / "control")
    home.bases.mkdir(parents=True)
    (home.bases / "tiny").symlink_to(base_dir)
    async with (
        KafkaLog(bootstrap, topic=topic, partitions=4, seal=Seal.from_secret(CLUSTER_KEY)) as log,
        running(
            home,
            log,
            backoff=Backoff(0.001, 0.01),
            only=frozenset({"catalog", "scheduler", "projector"}),
            artifacts=LocalArtifactStore(root / "artifacts"),
        ) as system,
    ):
        yield system, f"kafka://{bootstrap}/{topic}"


async def served_revision(system: System, policy: str, revision: str, seed: int) -> str:
    from tests.serving_system import publish

    ref = await publish(system, policy, revision, seed=seed)
    await system.log.append([Promote.create(policy=policy, revision=revision)])
    with anyio.fail_after(30):
        await system.until(lambda: Catalog(system.home.catalog).resolve(policy) == revision)
    return ref


@pytest.mark.kafka
@pytest.mark.timeout(240)
async def test_an_engine_host_process_serves_through_an_api_process_and_drains_on_sigterm(
    tmp_path: Path, kafka_bootstrap: str, base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    from mint.auth.tokens import TokenStore

    monkeypatch.setenv("MINT_CLUSTER_KEY", CLUSTER_KEY)
    tokens = tmp_path / "tokens.db"
    secret = TokenStore(tokens).issue("acme", "reader").secret
    async with control_plane(tmp_path, kafka_bootstrap, base_dir) as (system, log_url):
        await system.log.append([RegisterPolicy.create(policy="acme/a", base_id="tiny")])
        ref = await served_revision(system, "acme/a", "r1", seed=1)
        serving = ("engine-host", "eh-1", tmp_path, log_url, "--base", "tiny:2")
        with (
            actor_process(*serving, base_dir=base_dir) as host,
            actor_process("api", "api-1", tmp_path, log_url, "--tokens", str(tokens)) as api,
        ):
            with anyio.fail_after(120):
                await until_ready(host, api)
            body = {"model": "acme/a", "prompt": "The weather today is", "max_tokens": 6, "temperature": 0}
            auth = {"Authorization": f"Bearer {secret}"}
            async with httpx.AsyncClient(base_url=api.url, headers=auth, timeout=60) as client:
                answer = await client.post("/v1/completions", json=body)  # cold: the host loads it first
                assert answer.status_code == 200, answer.text
                assert answer.headers["x-mint-engine"] == "eh-1" and answer.headers["x-mint-revision"] == ref
                async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as stream:
                    assert stream.headers["x-mint-engine"] == "eh-1"
                    events = [line async for line in stream.aiter_lines() if line.startswith("data: ")]
                assert events[-1] == "data: [DONE]" and len(events) >= 3
                text = "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1])
                assert text == answer.json()["choices"][0]["text"]

                async def reported_resident() -> bool:  # the host's report may fold after its answer
                    residency = Catalog(system.home.catalog).residency("eh-1")
                    return [f"{r.policy}@{r.revision}" for r in residency if r.tier == "gpu"] == [ref]

                with anyio.fail_after(30):
                    await answered(reported_resident)
                host.process.send_signal(signal.SIGTERM)
                assert host.process.wait(timeout=30) == 0
                with anyio.fail_after(30):
                    refused = await client.post("/v1/completions", json=body)
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert "eh-1" in refused.json()["error"]["message"]


# -- the acceptance test of issue 13: engine loss in a `mint cluster` ----------------------------------


async def engines_seen(client: httpx.AsyncClient) -> dict[str, dict[str, object]]:
    answer = await client.get("/admin/api/engines")
    assert answer.status_code == 200, answer.text
    return {e["engine"]: e for e in answer.json()["engines"]}


@dataclass
class TwoEngines:
    """A cluster with two engine hosts behind one API replica, serving acme/a@r1 on `victim` (the host
    that answered `first` and reported the load); `survivor` is the other host."""

    cluster: RunningCluster
    client: httpx.AsyncClient
    ref: str
    body: dict[str, object]
    first: httpx.Response
    victim: str
    survivor: str


@asynccontextmanager
async def two_engines_serving(tmp_path: Path, base_dir: Path) -> AsyncIterator[TwoEngines]:
    # The broker's log in memory (it is never restarted here) spares moto a write per heartbeat.
    counts = {"catalog": 1, "schedulers": 1, "engines": 2, "api": 1}
    with running_cluster(tmp_path, base_dir=base_dir, broker_storage="memory", **counts) as cluster:
        ref = await publish_random_revision(ClusterDir(cluster.root), "acme/a", "r1")
        auth = {"Authorization": f"Bearer {cluster.admin_token()}"}
        body: dict[str, object] = {
            "model": "acme/a",
            "prompt": "The weather today is",
            "max_tokens": 4,
            "temperature": 0,
        }
        async with httpx.AsyncClient(base_url=cluster.api_url(), headers=auth, timeout=90) as client:
            with anyio.fail_after(120):
                await answered(partial(_serves, client, ref), every_s=0.5)
            first = await client.post("/v1/completions", json=body)
            assert first.status_code == 200, first.text
            victim = first.headers["x-mint-engine"]
            (survivor,) = set(cluster.names("engine-host")) - {victim}
            with anyio.fail_after(60):  # the victim reports the load it made
                await answered(lambda: _holds(client, victim, ref), every_s=0.5)
            yield TwoEngines(cluster, client, ref, body, first, victim, survivor)


@pytest.mark.kafka
@pytest.mark.timeout(600)
async def test_engine_loss_a_killed_host_is_lost_its_adapters_move_and_requests_see_at_most_one_503(
    tmp_path: Path, base_dir: Path
) -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    pytest.importorskip("aiobotocore", reason="the cluster's artifacts are on S3")
    async with two_engines_serving(tmp_path, base_dir) as serving:
        cluster, client, ref, body = serving.cluster, serving.client, serving.ref, serving.body
        first, victim, survivor = serving.first, serving.victim, serving.survivor
        cluster.kill(victim, "KILL")
        killed = time.monotonic()
        statuses: list[int] = []
        with anyio.fail_after(180):
            while True:
                answer = await client.post("/v1/completions", json=body)
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    break
                assert answer.status_code == 503 and answer.headers["retry-after"], answer.text
        served_after_s = time.monotonic() - killed
        assert statuses.count(503) <= 1, statuses
        assert answer.headers["x-mint-engine"] == survivor and answer.headers["x-mint-revision"] == ref
        assert answer.json()["choices"] == first.json()["choices"]  # the same revision, greedy
        with anyio.fail_after(60):  # declared lost past T2; the survivor reports what it loaded
            await answered(lambda: _lost(client, victim), every_s=0.5)
            await answered(lambda: _holds(client, survivor, ref), every_s=0.5)
        seen = await engines_seen(client)
        assert seen[victim]["liveness"] == "lost" and seen[survivor]["liveness"] == "up"
    print(f"engine loss: served again {served_after_s:.1f}s after kill -9, statuses {statuses}")


async def _serves(client: httpx.AsyncClient, ref: str) -> bool:
    models = (await client.get("/v1/models")).json()["data"]
    return any(m["root"] == ref for m in models)


async def _holds(client: httpx.AsyncClient, engine: str, ref: str) -> bool:
    seen = (await engines_seen(client)).get(engine, {})
    resident = seen.get("resident", [])
    assert isinstance(resident, list)
    return any(f"{r['policy']}@{r['revision']}" == ref and r["tier"] == "gpu" for r in resident)


async def _lost(client: httpx.AsyncClient, engine: str) -> bool:
    return (await engines_seen(client)).get(engine, {}).get("status") == "lost"
