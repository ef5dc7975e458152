"""Trainer failover on a real `mint cluster` (tansu, moto S3, every replica an OS process): the trainer
replica training a run is killed with kill -9 mid-run. The other replica takes the run's partition in
the group's rebalance, finds the lease silent, claims the next epoch and finishes the run from the last
checkpoint the dead one stored in S3, with no step doubled and one export per policy."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from events.catalog import RegisterPolicy
from events.codec import UnknownRecord
from events.envelope import Record
from events.kafka_log import KafkaLog
from events.training import RevisionExported, StartTraining, StepCompleted, TrainingFailed, TrainingFinished
from mint.artifacts.s3 import S3ArtifactStore
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.queries import Catalog
from mint.catalog.rows import RunRow
from mint.cluster.launcher import S3_CREDENTIALS
from mint.home import Home
from mint.projection.store import ProjectionStore
from mint.training import stored_checkpoints
from replay.verify import verify
from tests.cluster import RunningCluster, running_cluster
from tests.test_catalog_replicas import until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(420)]

POLICIES = ["acme/a", "acme/b"]
# Enough steps that the holder is still mid-run when the kill lands: on a quiet machine ten tiny steps
# were all done between the poll that saw three and the signal.
RUN, STEPS = "acme/run-failover", 40
SESSION_TIMEOUT_S = 3  # the trainers' group: the dead replica's partitions move after this
LEASE = {"MINT_TRAINER_HEARTBEAT_S": "0.5", "MINT_TRAINER_LEASE_TIMEOUT_S": "3"}


def run_row(home: Home) -> RunRow | None:
    if not home.catalog.exists():
        return None
    catalog = Catalog(home.catalog)
    try:
        return catalog.run(RUN)
    finally:
        catalog.close()


def registered_in(state: Path) -> bool:
    """Whether a trainer's own store holds every policy: it decides StartTraining against it."""
    if not state.exists():
        return False
    catalog = Catalog(state)
    try:
        return all(catalog.policy(p) is not None for p in POLICIES)
    except sqlite3.OperationalError:  # its tables are being created
        return False
    finally:
        catalog.close()


async def counted(log: KafkaLog, tmp: Path) -> tuple[list[Record | UnknownRecord], list[Record]]:
    """Every record on the log, and those that count: folded from offset 0 like any reader, so a
    fenced or repeated copy is not one."""
    store = ProjectionStore(tmp / "counted.db", CATALOG_FOLD, dedupe=True)
    everything: list[Record | UnknownRecord] = []
    counting: list[Record] = []
    try:
        for p in range(log.partitions):
            start = 0
            while batch := await log.read(p, start, 1000):
                for stored in batch:
                    everything.append(stored.decode())
                    if (record := store.apply(stored)) is not None:
                        counting.append(record)
                start = batch[-1].offset + 1
    finally:
        store.close()
    return everything, counting


async def stored_checkpoints_of(cluster: RunningCluster) -> list[stored_checkpoints.StoredCheckpoint]:
    async with S3ArtifactStore.connect(
        cluster.table["bucket"],
        endpoint_url=cluster.table["s3"],
        region="us-east-1",
        access_key=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ) as s3:
        return await stored_checkpoints.stored(s3, RUN)


async def test_a_trainer_killed_mid_run_is_replaced_and_the_run_finishes_from_its_last_checkpoint(
    tmp_path: Path, base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINT_SESSION_TIMEOUT", str(SESSION_TIMEOUT_S))
    for name, value in LEASE.items():
        monkeypatch.setenv(name, value)
    with running_cluster(
        tmp_path,
        catalog=1,
        projectors=1,
        trainers=2,
        partitions=4,
        base_dir=base_dir,
        broker_storage="memory",
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
            await log.append(
                [
                    StartTraining.create(
                        source="test",
                        run=RUN,
                        policies=POLICIES,
                        base_id="tiny",
                        algo="sft",
                        task="sft-repeat:hello",
                        steps=STEPS,
                    )
                ]
            )
            first: RunRow = await until(
                lambda: (r := run_row(projector)) is not None and r.holder and r.progress >= 3 and r,
                "a trainer holds the run a few steps in",
            )
            assert first.epoch == 1 and first.holder in trainers
            cluster.kill(first.holder, "KILL")
            killed_at = time.monotonic()
            (survivor,) = set(trainers) - {first.holder}

            await until(
                lambda: (r := run_row(projector)) is not None and r.epoch == 2,
                "the survivor claims the next epoch",
                timeout_s=120,
            )
            # Not before the lease could have expired: the group moves the run's partition, then the
            # survivor waits out the dead holder's silence.
            takeover_s = time.monotonic() - killed_at
            lease_s, beat_s = (
                float(LEASE["MINT_TRAINER_LEASE_TIMEOUT_S"]),
                float(LEASE["MINT_TRAINER_HEARTBEAT_S"]),
            )
            assert takeover_s >= lease_s - beat_s, takeover_s
            last: RunRow = await until(
                lambda: (r := run_row(projector)) is not None and r.status != "running" and r,
                "the run ends",
                timeout_s=180,
            )
            assert (last.status, last.epoch, last.holder) == ("finished", 2, survivor), last

            everything, counting = await counted(log, tmp_path)
            # No step doubled: the survivor appended only the steps the dead one had not.
            on_log = Counter((r.policy, r.step) for r in everything if isinstance(r, StepCompleted))
            assert on_log == Counter({(p, s): 1 for p in POLICIES for s in range(1, STEPS + 1)}), on_log
            by_epoch = Counter(r.epoch for r in counting if isinstance(r, StepCompleted))
            assert set(by_epoch) == {1, 2}, by_epoch
            # One export per policy, and one completion, both the survivor's.
            exports = [r for r in counting if isinstance(r, RevisionExported)]
            assert sorted((r.policy, r.epoch) for r in exports) == [(p, 2) for p in POLICIES]
            assert len([r for r in everything if isinstance(r, RevisionExported)]) == len(POLICIES)
            ends = [
                (type(r).__name__, r.epoch)
                for r in counting
                if isinstance(r, TrainingFinished | TrainingFailed)
            ]
            assert ends == [("TrainingFinished", 2)], ends
            for policy in POLICIES:
                (revision,) = Catalog(projector.catalog).revisions(policy)
                assert (revision.revision, revision.run) == ("run-failover", RUN)

            # From the last checkpoint: the survivor stored the checkpoints of the steps after the
            # newest one the dead replica had stored, and no other.
            found = await stored_checkpoints_of(cluster)
            dead = [c.step for c in found if c.epoch == 1]
            resumed = [c.step for c in found if c.epoch == 2]
            assert dead and resumed == list(range(max(dead) + 1, STEPS + 1)), found

            # Replay equals live, for the projector and the survivor's own store.
            for path in (projector.catalog, trainers[survivor].actor_state("trainer")):
                verdict = await verify(log, CATALOG_FOLD, path)
                assert verdict.equal, (path, verdict.diffs)
