"""Processes stopped, not killed (SIGSTOP): alive to the OS, silent to the cluster, and back after
SIGCONT with whatever they held before. A trainer past its run's lease (SCALE_OUT.md: exactly one
completion counts, the stale output is never promoted; the kill -9 case is tests/test_trainer_failover.py)
and an engine host ("engine host kill -9, or SIGSTOP"; the kill -9 case is tests/test_engine_hosts.py's
acceptance test). Both reuse those tests' helpers."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest

from events.catalog import RegisterPolicy
from events.serving import AdapterLoaded
from events.training import RevisionExported, StartTraining, TrainingFailed, TrainingFinished
from mint.catalog.queries import Catalog
from mint.catalog.rows import RunRow
from mint.chaos.checks import read_everything
from mint.home import Home
from tests.cluster import RunningCluster, running_cluster
from tests.test_catalog_replicas import health, until
from tests.test_engine_hosts import _holds, _lost, answered, engines_seen, two_engines_serving
from tests.test_trainer_failover import LEASE, POLICIES, RUN, counted, registered_in, run_row

pytestmark = [pytest.mark.anyio, pytest.mark.chaos, pytest.mark.kafka, pytest.mark.timeout(400)]

HEARTBEAT_S, STALE_S, LOST_S = 0.5, 2.0, 5.0  # T1 and T2 kept short (README: MINT_ENGINE_*)
ROUTE_DEADLINE_S = 5.0  # an API replica's deadline on a request to a host (serve_roles.run_api_replica)
# What the loaded 2-core machine adds to a bound: a heartbeat to fold, a scheduler pass, a load.
SLACK_S = 15.0
# Steps of the run a trainer is stopped in: enough that it is still running when the SIGSTOP lands (on a
# quiet machine ten tiny steps finish between the poll that sees three done and the signal).
STOPPED_RUN_STEPS = 60


async def resident_without_a_report(
    client: httpx.AsyncClient, cluster: RunningCluster
) -> dict[str, list[str]]:
    """Per engine, what the catalog has resident on its GPU that the engine never reported: neither in
    its last heartbeat's holds nor in an AdapterLoaded of its own on the log."""
    seen = await engines_seen(client)
    async with cluster.log() as log:
        records = [s.decode() for s in await read_everything(log) if s.type == "AdapterLoaded"]
    loaded = {(r.engine, f"{r.policy}@{r.revision}") for r in records if isinstance(r, AdapterLoaded)}
    out = {}
    for engine, row in seen.items():
        holds = row.get("holds")
        resident = row.get("resident")
        assert isinstance(holds, list | tuple) and isinstance(resident, list), row
        reported = set(holds) | {ref for e, ref in loaded if e == engine}
        gpu = [f"{r['policy']}@{r['revision']}" for r in resident if r["tier"] == "gpu"]
        if missing := [ref for ref in gpu if ref not in reported]:
            out[engine] = missing
    return out


async def test_a_stopped_engine_host_stops_being_routed_to_its_adapters_move_and_it_comes_back_after_sigcont(
    tmp_path: Path, base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    for name, value in (("HEARTBEAT", HEARTBEAT_S), ("STALE", STALE_S), ("LOST", LOST_S)):
        monkeypatch.setenv(f"MINT_ENGINE_{name}_S", str(value))
    async with two_engines_serving(tmp_path, base_dir) as serving:
        cluster, client, ref, body = serving.cluster, serving.client, serving.ref, serving.body
        first, victim, survivor = serving.first, serving.victim, serving.survivor
        cluster.kill(victim, "STOP")
        stopped = time.monotonic()
        answers: list[tuple[float, int, str]] = []  # (sent at, status, engine) after the stop
        with anyio.fail_after(STALE_S + ROUTE_DEADLINE_S + SLACK_S + 30):
            while True:
                sent = time.monotonic() - stopped
                answer = await client.post("/v1/completions", json=body)
                answers.append((sent, answer.status_code, answer.headers.get("x-mint-engine", "")))
                if answer.status_code == 200:
                    break
                assert answer.status_code == 503 and answer.headers["retry-after"], answer.text
        # Routing stopped within T1: nothing sent after it went to the stopped host.
        assert answers[-1][2] == survivor, answers
        assert answers[-1][0] <= STALE_S + ROUTE_DEADLINE_S + SLACK_S, answers
        for _ in range(3):
            again = await client.post("/v1/completions", json=body)
            assert again.status_code == 200 and again.headers["x-mint-engine"] == survivor, again.text

        # Past T2 it is lost and its adapters are placed on the survivor, which reports the load.
        with anyio.fail_after(LOST_S + SLACK_S + 30):
            await answered(lambda: _lost(client, victim), every_s=0.5)
            await answered(lambda: _holds(client, survivor, ref), every_s=0.5)
        lost_after_s = time.monotonic() - stopped
        assert lost_after_s <= LOST_S + SLACK_S, f"re-placed {lost_after_s:.1f} s after the stop"
        assert not (unreported := await resident_without_a_report(client, cluster)), unreported
        for _ in range(3):  # well past T1: every request goes to the survivor
            again = await client.post("/v1/completions", json=body)
            assert again.status_code == 200 and again.headers["x-mint-engine"] == survivor, again.text
        # What it last reported stays recorded for the lost host (mint/catalog/fold.py engine_lost:
        # a stopped host does still hold it); routers skip it, as the answers above show.
        assert (await engines_seen(client))[victim]["liveness"] == "lost"

        # Continued, the stopped host finds itself declared lost and registers again; residency
        # follows only what it reports.
        cluster.kill(victim, "CONT")
        with anyio.fail_after(90):
            await answered(lambda: _back(client, victim), every_s=0.5)
        assert not (unreported := await resident_without_a_report(client, cluster)), unreported
        served = await client.post("/v1/completions", json=body)
        assert served.status_code == 200 and served.json()["choices"] == first.json()["choices"]
    print(f"engine SIGSTOP: routed away after {answers[-1][0]:.1f}s, lost and re-placed {lost_after_s:.1f}s")


async def _back(client: httpx.AsyncClient, engine: str) -> bool:
    row = (await engines_seen(client)).get(engine, {})
    return row.get("liveness") == "up" and row.get("status") != "lost"


def folded_to(body: dict[str, object], end: dict[int, int]) -> bool:
    position = body.get("position")
    return isinstance(position, dict) and all(int(position.get(str(p), 0)) >= o for p, o in end.items())


async def test_a_trainer_stopped_past_its_lease_loses_the_run_and_nothing_it_does_after_sigcont_counts(
    tmp_path: Path, base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINT_SESSION_TIMEOUT", "3")
    for name, value in LEASE.items():
        monkeypatch.setenv(name, value)
    counts = {"catalog": 1, "projectors": 1, "trainers": 2}
    with running_cluster(
        tmp_path, partitions=4, base_dir=base_dir, broker_storage="memory", **counts
    ) as cluster:
        projector = Home.resolve(cluster.process("projector-1")["home"])
        trainers = {n: Home.resolve(cluster.process(n)["home"]) for n in cluster.names("trainer")}
        async with cluster.log() as log:
            await log.append(
                [RegisterPolicy.create(source="test", policy=p, base_id="tiny") for p in POLICIES]
            )
            await until(
                lambda: all(registered_in(h.actor_state("trainer")) for h in trainers.values()),
                "both trainers have folded the registrations",
            )
            start = StartTraining.create(
                source="test",
                run=RUN,
                policies=POLICIES,
                base_id="tiny",
                algo="sft",
                task="sft-repeat:hello",
                steps=STOPPED_RUN_STEPS,
            )
            await log.append([start])
            first: RunRow = await until(
                lambda: (r := run_row(projector)) is not None and r.holder and r.progress >= 3 and r,
                "a trainer holds the run a few steps in",
            )
            stale = first.holder
            cluster.kill(stale, "STOP")
            (survivor,) = set(trainers) - {stale}
            last: RunRow = await until(
                lambda: (r := run_row(projector)) is not None and r.status != "running" and r,
                "the survivor takes the run over and ends it",
                timeout_s=240,
            )
            assert (last.status, last.holder) == ("finished", survivor) and last.epoch > first.epoch, last

            # Continued, the stale holder carries on where it stopped until it learns it lost the lease.
            cluster.kill(stale, "CONT")
            end = await log.end_offsets()
            await until(
                lambda: all(
                    int(health(cluster, stale).get("position", {}).get(str(p), 0)) >= o
                    for p, o in end.items()
                ),
                f"{stale} has folded what was appended while it was stopped",
                timeout_s=120,
            )

            _, counting = await counted(log, tmp_path)
            ends = [
                (type(r).__name__, r.epoch)
                for r in counting
                if isinstance(r, TrainingFinished | TrainingFailed)
            ]
            assert ends == [("TrainingFinished", last.epoch)], ends
            # The stale holder's exports (if it got that far) do not count: the revision the catalog
            # holds, the one a promotion would serve, is the survivor's.
            exports = [r for r in counting if isinstance(r, RevisionExported)]
            by_epoch = sorted((r.policy, r.epoch) for r in exports)
            assert by_epoch == [(p, last.epoch) for p in POLICIES], exports
            for policy in POLICIES:
                (revision,) = Catalog(projector.catalog).revisions(policy)
                assert revision.sha256 in {e.sha256 for e in exports if e.policy == policy}, revision
