"""Catalog replicas as OS processes on a real `mint cluster`: they split the partitions, hand them over
in a rebalance without losing or doubling an outcome, and fence a zombie (SIGSTOP past its session
timeout, another replica claims, SIGCONT): nothing it decides after the claim counts anywhere."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import pytest

from events.catalog import RegisterPolicy
from events.kafka_log import KafkaLog
from events.log import caught_up
from events.partitioning import partition_for
from mint.catalog.fold import CATALOG_FOLD
from mint.chaos.checks import counted_outcomes
from mint.home import Home
from replay.verify import verify
from tests.cluster import RunningCluster, running_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(420)]

SESSION_TIMEOUT_S = 3


def health(cluster: RunningCluster, name: str) -> dict[str, Any]:
    port = cluster.process(name)["port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            body: dict[str, Any] = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    except OSError as exc:  # stopped, or not listening yet
        return {"ready": False, "reason": str(exc)}
    return body


async def until(check: Callable[[], Any], what: str, timeout_s: float = 90.0) -> Any:
    """Poll `check` (a condition on real processes) until it answers something true, within a deadline."""
    with anyio.move_on_after(timeout_s):
        # Other processes change what `check` sees: there is no event to wait on, only their answers.
        while not (answer := await anyio.to_thread.run_sync(check)):  # noqa: ASYNC110
            await anyio.sleep(0.2)
        return answer
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}")


async def outcomes_of(
    log: KafkaLog, commands: Iterable[RegisterPolicy], tmp: Path
) -> dict[str, dict[str, int]]:
    """Wait until every command has an outcome that counts; then its counted outcomes."""
    named = {c.id: c.policy for c in commands}
    deadline = anyio.current_time() + 120
    while True:
        answers = await counted_outcomes(log, tmp)
        missing = sorted(policy for i, policy in named.items() if not answers.get(i))
        if not missing:
            return {i: answers[i] for i in named}
        assert anyio.current_time() < deadline, f"no outcome that counts within 120 s for {missing}"
        await anyio.sleep(0.5)


def registrations(
    prefix: str, count: int, partition: int | None = None, partitions: int = 0
) -> list[RegisterPolicy]:
    out: list[RegisterPolicy] = []
    i = 0
    while len(out) < count:
        policy = f"acme/{prefix}-{i}"
        i += 1
        if partition is None or partition_for(policy, partitions) == partition:
            out.append(RegisterPolicy.create(source="test", policy=policy, base_id="tiny"))
    return out


async def test_a_rebalance_hands_partitions_over_without_losing_or_doubling_an_outcome(
    tmp_path: Path,
) -> None:
    partitions = 4
    with running_cluster(tmp_path, catalog=2, projectors=2, partitions=partitions) as cluster:
        commands = registrations("p", 48)
        async with cluster.log() as log:

            async def produce() -> None:
                for i in range(0, len(commands), 4):
                    await log.append(commands[i : i + 4])
                    await anyio.sleep(0.25)  # a steady flow across the rebalances, not a burst

            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                added = await anyio.to_thread.run_sync(cluster.add, "catalog")
                await anyio.to_thread.run_sync(cluster.remove, "catalog-1")

            answers = await outcomes_of(log, commands, tmp_path)
            doubled = {c: a for c, a in answers.items() if len(a) != 1}
            assert not doubled, f"commands with more than one counted outcome: {doubled}"

            # Once the group settles, the two replicas left own every partition between them, once.
            def owned_between_them() -> list[int]:
                owners = [health(cluster, name) for name in ("catalog-2", added)]
                return sorted(p for o in owners for p in o.get("owned", []))

            await until(
                lambda: owned_between_them() == list(range(partitions)),
                "catalog-2 and the added replica own every partition once between them",
            )
            end = await log.end_offsets()

            def folded_to(name: str) -> bool:  # what it reports folding: its partitions, to the end
                seen = health(cluster, name)
                position = {int(p): o for p, o in seen.get("position", {}).items()}
                if sorted(position) != seen.get("owned"):  # assigned, its state files not open yet
                    return False
                return all(o >= end[p] for p, o in position.items())

            for name in ("catalog-2", added):
                await until(lambda n=name: folded_to(n), f"{name} folds what it owns to the log's end")

            # Every projector replica folds the same log into the same digest, and it equals a replay.
            digests = set()
            for name in cluster.names("projector"):
                home = Home.resolve(cluster.process(name)["home"])
                await until(lambda h=home: caught_up(_checkpoint(h), end), f"{name} caught up")
                verdict = await verify(log, CATALOG_FOLD, home.catalog)
                assert verdict.equal, f"{name}: replay differs from live: {verdict.diffs}"
                digests.add(verdict.live_digest)
            assert len(digests) == 1, f"projector replicas disagree: {digests}"


def _checkpoint(home: Home) -> dict[int, int]:
    import sqlite3

    if not home.catalog.exists():
        return {}
    con = sqlite3.connect(f"file:{home.catalog}?mode=ro", uri=True)
    try:
        return {int(p): int(o) for p, o in con.execute("SELECT partition, next_offset FROM _checkpoint")}
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


async def test_a_zombie_owner_decides_nothing_that_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINT_SESSION_TIMEOUT", str(SESSION_TIMEOUT_S))
    partitions = 2
    with running_cluster(tmp_path, catalog=2, partitions=partitions) as cluster:
        owned = await until(
            lambda: health(cluster, "catalog-1").get("claimed"), "catalog-1 claims a partition"
        )
        partition = int(next(iter(owned)))
        old_epoch = int(owned[str(partition)])
        async with cluster.log() as log:
            before = registrations("before", 3, partition, partitions)
            await log.append(before)
            await outcomes_of(log, before, tmp_path)

            cluster.kill("catalog-1", "STOP")
            during = registrations("during", 3, partition, partitions)
            await log.append(during)  # the zombie will find these in its mailbox when it wakes
            taken = await until(
                lambda: health(cluster, "catalog-2").get("claimed", {}).get(str(partition)),
                "catalog-2 claims the zombie's partition",
            )
            new_epoch = int(taken)
            assert new_epoch > old_epoch

            cluster.kill("catalog-1", "CONT")
            after = registrations("after", 3, partition, partitions)
            await log.append(after)
            answers = await outcomes_of(log, before + during + after, tmp_path)
            doubled = {c: a for c, a in answers.items() if len(a) != 1}
            assert not doubled, f"commands with more than one counted outcome: {doubled}"

            # The zombie stopped deciding by itself: it fenced itself (and restarted from its committed
            # state), and whatever it claims now is a claim above the one that fenced it.
            zombie = health(cluster, "catalog-1")
            assert zombie["restarts"] >= 1 and "SelfFenced" in zombie["last_error"], zombie
            assert int(zombie.get("claimed", {}).get(str(partition), new_epoch + 1)) > new_epoch, zombie
            # What counts after the new claim was decided under the new epoch, wherever it came from.
            epochs = [e for c in during + after for e in answers[c.id].values()]
            assert all(e >= new_epoch for e in epochs), epochs
