"""The broker under faults (SCALE_OUT.md): killed with -9 and restarted while a producer writes (its
log in S3, so it survives), and restarted with its storage lost (in memory, so the log comes back empty,
shorter than every replica's checkpoint)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from events import codec
from events.catalog import RegisterPolicy
from mint.catalog.fold import CATALOG_FOLD
from mint.chaos.checks import read_everything, replay_equals_live
from mint.home import Home
from replay.verify import verify
from tests.cluster import RunningCluster, running_cluster
from tests.test_catalog_replicas import health, outcomes_of, registrations, until
from tests.test_engine_hosts import answered
from tests.test_fault_regressions import policies_in

pytestmark = [pytest.mark.anyio, pytest.mark.chaos, pytest.mark.timeout(300)]

PARTITIONS = 2
BATCH = 3
# A produce that gets no answer within this is retried on a new connection (the broker is down).
PRODUCE_TIMEOUT_S = 10.0
# How soon after the broker is back a replica must have noticed that its checkpoint is beyond the log:
# a fetch or a group heartbeat (seconds), with a loaded 2-core machine's slack.
DETECT_S = 15.0
# An HTTP answer slower than this is a hang; the broker stays down this long while writes come in.
HANG_S, DOWN_S = 40.0, 10.0


async def produce_with_retries(cluster: RunningCluster, batch: list[RegisterPolicy]) -> int:
    """Append `batch` until the broker acknowledges it, as a producer does: a batch whose answer was
    lost is sent again, so its records may be on the log twice. How many sends failed first."""
    failed = 0
    while True:
        try:
            with anyio.fail_after(PRODUCE_TIMEOUT_S):
                async with cluster.log(request_timeout=PRODUCE_TIMEOUT_S / 2) as log:
                    await log.append(batch)
            return failed
        except Exception:  # the broker is down or restarting: any failure is a retry
            failed += 1
            await anyio.sleep(0.5)  # a producer's retry backoff


def catalog_homes(cluster: RunningCluster, *names: str) -> dict[str, Path]:
    return {name: Path(cluster.process(name)["home"]) for name in names}


async def test_a_broker_killed_while_producing_keeps_every_acknowledged_write_and_folds_skip_retried_copies(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path, catalog=1, projectors=1, partitions=PARTITIONS) as cluster:
        commands = registrations("k", 8 * BATCH)
        batches = [commands[i : i + BATCH] for i in range(0, len(commands), BATCH)]
        acknowledged: list[str] = []
        failures = 0
        for i, batch in enumerate(batches):
            if i == 3:  # mid-stream: kill the broker; restart it while the producer retries
                cluster.kill("broker", "KILL")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(anyio.to_thread.run_sync, cluster.restart, "broker")
                    failures += await produce_with_retries(cluster, batch)
            else:
                failures += await produce_with_retries(cluster, batch)
            acknowledged.extend(c.id for c in batch)
        assert failures, "the producer never saw the broker down: the fault was not injected"
        # A producer whose answer was lost after the broker had written: the same records once more.
        await produce_with_retries(cluster, batches[0] + batches[3])

        async with cluster.log() as log:
            answers = await outcomes_of(log, commands, tmp_path)
            doubled = {c: a for c, a in answers.items() if len(a) != 1}
            assert not doubled, f"commands with more than one counted outcome: {doubled}"
            on_log = Counter(s.id for s in await read_everything(log))
            lost = [i for i in acknowledged if not on_log[i]]
            assert not lost, f"acknowledged and not on the log after the broker's restart: {lost}"
            assert any(on_log[c.id] > 1 for c in batches[0]), "no command is on the log twice"

            wrong = await replay_equals_live(log, catalog_homes(cluster, "projector-1"))
            assert not wrong, wrong
            state = Path(cluster.process("catalog-1")["home"]) / "actors" / "catalog"
            for p in range(PARTITIONS):
                verdict = await verify(log, CATALOG_FOLD, state / f"p{p}.db")
                assert verdict.equal, f"catalog-1 p{p}.db differs from a replay: {verdict.diffs}"


async def rebuilt(cluster: RunningCluster, name: str, timeout_s: float = 120.0) -> None:
    """Until `name` is ready with a position within the log's end as it is now."""
    async with cluster.log() as log:
        with anyio.move_on_after(timeout_s):
            while True:
                end = await log.end_offsets()
                body = await anyio.to_thread.run_sync(health, cluster, name)
                if body.get("ready") and all(o <= end.get(p, 0) for p, o in position_of(body).items()):
                    return
                await anyio.sleep(0.2)
    raise AssertionError(f"{name} not ready within the log's end after {timeout_s:.0f} s: {body}")


def position_of(body: dict[str, Any]) -> dict[int, int]:
    return {int(p): int(o) for p, o in body.get("position", {}).items()}


async def test_a_broker_that_lost_its_storage_leaves_no_replica_serving_state_beyond_the_log(
    tmp_path: Path,
) -> None:
    replicas = ("catalog-1", "projector-1", "api-1")
    with running_cluster(
        tmp_path, catalog=1, projectors=1, api=1, partitions=PARTITIONS, broker_storage="memory"
    ) as cluster:
        before = registrations("lost", 12)
        async with cluster.log() as log:
            await log.append(before)
            await outcomes_of(log, before, tmp_path)
            end = await log.end_offsets()
        for name in replicas:
            await until(
                lambda n=name: all(position_of(health(cluster, n)).get(p, 0) >= o for p, o in end.items()),
                f"{name} has folded the log",
            )

        # The broker comes back with an empty log: every replica's checkpoint is beyond it.
        samples: list[tuple[float, str, bool, dict[int, int], dict[int, int]]] = []
        restarting = True

        async def sample(back: float) -> None:
            async with cluster.log() as watcher:
                while restarting:
                    with anyio.move_on_after(5):
                        now = await watcher.end_offsets()
                        for n in replicas:
                            body = await anyio.to_thread.run_sync(health, cluster, n)
                            at = anyio.current_time() - back
                            samples.append((at, n, bool(body.get("ready")), position_of(body), now))
                    await anyio.sleep(0.1)

        await anyio.to_thread.run_sync(cluster.restart, "broker")
        async with anyio.create_task_group() as tg:
            tg.start_soon(sample, anyio.current_time())
            # Each replica drops the state the log no longer holds, and is ready again over the new one.
            for name in replicas:
                await rebuilt(cluster, name)
            restarting = False

        # A replica learns of the loss from the broker, at its next fetch or rebalance: until then it
        # looks ready; from then on it is not, until it has rebuilt.
        stale = [
            (round(at, 1), n, position, end)
            for at, n, ready, position, end in samples
            if ready and any(o > end.get(p, 0) for p, o in position.items())
        ]
        late = [s for s in stale if s[0] > DETECT_S]
        assert not late, (
            f"ready while holding state beyond the log, {DETECT_S:.0f} s after the loss: {late[:5]}"
        )

        after = registrations("now", 4)
        async with cluster.log() as log:
            await log.append(after)
            answers = await outcomes_of(log, after, tmp_path)
            assert all(len(a) == 1 for a in answers.values()), answers
            wrong = await replay_equals_live(log, catalog_homes(cluster, "projector-1", "api-1"))
            assert not wrong, wrong
            for name, home in catalog_homes(cluster, "projector-1", "api-1").items():
                policies = policies_in(Home.resolve(str(home)).catalog)
                assert policies == {c.policy for c in after}, f"{name} serves {policies}"


async def test_writes_to_an_api_replica_while_the_broker_is_down_get_503_and_what_it_acknowledged_survives(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path, catalog=1, api=1, partitions=PARTITIONS) as cluster:
        auth = {"Authorization": f"Bearer {cluster.admin_token()}"}
        answers: list[tuple[str, int, str | None, str]] = []  # (command id, status, Retry-After, body)

        async def post(client: httpx.AsyncClient, command: RegisterPolicy) -> int:
            try:
                answer = await client.post("/v1/commands", content=codec.encode(command) + b"\n")
            except httpx.TimeoutException:
                answers.append((command.id, 0, None, "hang"))
                return 0
            answers.append(
                (command.id, answer.status_code, answer.headers.get("retry-after"), answer.text[:300])
            )
            return answer.status_code

        async def taken(client: httpx.AsyncClient, command: RegisterPolicy) -> bool:
            return await post(client, command) == 200

        commands = iter(registrations("h", 100))
        async with httpx.AsyncClient(base_url=cluster.api_url(), headers=auth, timeout=HANG_S) as client:
            assert await post(client, next(commands)) == 200, answers
            cluster.kill("broker", "KILL")
            down = anyio.current_time()
            while anyio.current_time() - down < DOWN_S:  # the broker is down: retry later, or a hang
                await post(client, next(commands))
            await anyio.to_thread.run_sync(cluster.restart, "broker")
            with anyio.fail_after(120):  # back: writes are taken again
                await answered(lambda: taken(client, next(commands)), every_s=0.5)
        bad = [a for a in answers if not (a[1] == 200 or (a[1] in (429, 503) and a[2]))]
        assert not bad, f"neither 200 nor 503/429 with Retry-After while the broker was down: {bad}"
        acknowledged = [a[0] for a in answers if a[1] == 200]
        async with cluster.log() as log:
            on_log = {s.id for s in await read_everything(log)}
        lost = [i for i in acknowledged if i not in on_log]
        assert not lost, f"acknowledged with 200 and not on the log: {lost}"
