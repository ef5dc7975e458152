"""Engine hosts as their own processes: heartbeats folded into the engines row (residency only from what
an engine reports), EngineLost after T2 with the lost engine's adapters planned onto another engine of
its base, a host declared lost while alive coming back, the engine-host role's readiness and drain, and
real processes (`mint actor engine-host`, `mint actor api`) serving through the router over tansu."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from actors.runtime import Backoff
from actors.system import System, running
from events.catalog import Promote
from events.serving import AdapterLoaded, EngineHeartbeat, EngineLost, EngineRegistered
from events.sqlite_log import SqliteLog
from mint.catalog.queries import Catalog
from mint.home import Home
from mint.serving.liveness import Liveness
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
