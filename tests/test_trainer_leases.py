"""Trainer replicas owning runs through lease facts, in one process over the real tansu broker: two
trainers, each with its own home and its own event loop in a thread, share one topic and one artifact
store. Stopping a trainer's loop thread is what SIGSTOP does to a process: every task of it stops,
heartbeats included, while the other one goes on."""

from __future__ import annotations

import itertools
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from actors.owned import GlobalOwner
from actors.run_lease import LeaseTimings, RunLease
from actors.runtime import Backoff
from actors.system import System, running
from actors.trainer import TrainerActor, TrainerSettings, resume_bound
from events.catalog import CommandRejected, RegisterPolicy, RevisionPromoted
from events.envelope import Record
from events.kafka_log import KafkaLog
from events.log import EventLog
from events.training import (
    RevisionExported,
    RunHeartbeat,
    StartTraining,
    StepCompleted,
    TrainingFailed,
    TrainingFinished,
)
from mint.artifacts.keys import adapter_key, checkpoint_key
from mint.artifacts.local import LocalArtifactStore
from mint.artifacts.store import ArtifactCorrupt
from mint.bases.tiny import create_tiny_base
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.queries import Catalog
from mint.catalog.rows import RunRow
from mint.home import Home
from mint.projection.store import FENCED
from mint.training import stored_checkpoints
from mint.training.stored_checkpoints import StoredCheckpoint
from replay.verify import verify
from tests.log_contract import read_all
from tests.records import evaluated, promote

pytestmark = pytest.mark.anyio

FAST = Backoff(first_s=0.001, max_s=0.01)
POLICIES = ["acme/a", "acme/b"]
# Far below a run's length, as in production (1 s / 6 s), only scaled down for the test.
LEASE = LeaseTimings(heartbeat_s=0.3, timeout_s=3.0)
SETTINGS = TrainerSettings(LEASE, checkpoint_every=1)
# The trainers' consumer group's (production's is 10 s). Dynamic members: Tansu 0.6's static ones livelock.
SESSION_TIMEOUT_S = 2.0
ZOMBIE_LOSS = 99.0


@dataclass
class TrainerThread:
    """A trainer replica whose event loop runs in a thread of its own, in the trainers' consumer
    group (actors/owned.py): it decides and takes runs only on the partitions the group gives it."""

    actor: TrainerActor
    portal: BlockingPortal
    home: Home
    owner: GlobalOwner | None = None

    def ready(self) -> bool:
        return self.owner is not None and self.owner.ready()

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """Stop this replica's loop, as SIGSTOP would, until the block ends (SIGCONT)."""
        frozen, thawed = threading.Event(), threading.Event()

        async def freeze() -> None:
            frozen.set()
            thawed.wait()  # blocks the loop itself: no task of this replica runs until it is set

        self.portal.start_task_soon(freeze)
        assert frozen.wait(10), "the replica's loop took its stop"
        try:
            yield
        finally:
            thawed.set()


@contextmanager
def trainer_thread(
    bootstrap: str,
    topic: str,
    root: Path,
    base: Path,
    replica: str,
    settings: TrainerSettings = SETTINGS,
) -> Iterator[TrainerThread]:
    home = Home(root / replica)
    shutil.copytree(base, home.base("tiny"))
    artifacts = LocalArtifactStore(root / "artifacts")  # shared by every replica, like a bucket
    actor = TrainerActor(home, artifacts, replica=replica, settings=settings)

    async def serve(replica_thread: TrainerThread, *, task_status: TaskStatus[None]) -> None:
        async with KafkaLog(bootstrap, topic=topic) as log:
            task_status.started()
            while True:  # as `mint actor` does: a crash (a self-fence) restarts the owner
                replica_thread.owner = GlobalOwner(
                    actor, log, replica, session_timeout_s=SESSION_TIMEOUT_S, static=False
                )
                try:
                    await replica_thread.owner.run()
                except Exception:
                    logging.getLogger(__name__).exception("%s crashed; restarting", replica)

    with start_blocking_portal() as portal:
        replica_thread = TrainerThread(actor, portal, home)
        future, _ = portal.start_task(serve, replica_thread)
        try:
            yield replica_thread
        finally:
            future.cancel()


async def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `check` until it holds, within a deadline. What it reads lives in other threads (a
    replica's loop) and files, which no event of this loop can announce."""
    with anyio.fail_after(timeout_s):
        while not check():  # noqa: ASYNC110
            await anyio.sleep(0.02)
    assert check(), what


def caught_up(actor: TrainerActor, end: dict[int, int]) -> bool:
    return all(actor.progress.position.get(p, 0) >= o for p, o in end.items())


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bases") / "tiny"
    create_tiny_base(directory, seed=0)
    return directory


def _run_row(system: System, run: str) -> RunRow | None:
    catalog = Catalog(system.home.catalog)
    try:
        return catalog.run(run)
    finally:
        catalog.close()


def _fenced_ids(path: Path) -> set[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {FENCED.from_data(d).id for (d,) in con.execute("SELECT data FROM _fenced")}
    finally:
        con.close()


async def _start(
    system: System, log: EventLog, trainers: list[TrainerThread], run: str, **kw: object
) -> None:
    await eventually(lambda: all(t.ready() for t in trainers), 60, "every trainer owns its partitions")
    await log.append([RegisterPolicy.create(policy=p, base_id="tiny") for p in POLICIES])
    await system.settle()
    end = await log.end_offsets()  # each trainer decides against the registrations it has folded
    await eventually(lambda: all(caught_up(t.actor, end) for t in trainers), 30, "trainers caught up")
    await log.append([StartTraining.create(run=run, policies=POLICIES, base_id="tiny", **kw)])  # type: ignore[arg-type]


@pytest.mark.kafka
async def test_a_stalled_worker_loses_its_run_to_another_and_nothing_it_appends_after_counts(
    kafka_bootstrap: str, tmp_path: Path, tiny_base: Path
) -> None:
    topic = f"mint.leases.{uuid.uuid4().hex[:8]}"
    # Enough steps that the holder is still mid-run when it is stalled (ten were done before the stall
    # landed on a quiet machine).
    run, steps = "acme/run-lease", 60
    home = Home(tmp_path / "main")
    async with (
        KafkaLog(kafka_bootstrap, topic=topic, partitions=4) as log,
        running(home, log, only=frozenset({"catalog", "projector"}), backoff=FAST) as system,
    ):
        with (
            trainer_thread(kafka_bootstrap, topic, tmp_path, tiny_base, "trainer-a") as a,
            trainer_thread(kafka_bootstrap, topic, tmp_path, tiny_base, "trainer-b") as b,
        ):
            by_replica = {t.actor.replica: t for t in (a, b)}
            await _start(system, log, [a, b], run, algo="sft", task="sft-repeat:hello", steps=steps)

            # Both may take the run; one claim counts. Stall its holder a few steps in.
            def holding_a_few_steps_in() -> bool:
                row = _run_row(system, run)
                return row is not None and row.holder != "" and row.progress >= 3

            await eventually(holding_a_few_steps_in, 60, "a holder trains the run")
            first = _run_row(system, run)
            assert first is not None
            stalled = by_replica[first.holder]
            other = b if stalled is a else a
            old_lease = stalled.actor.holding
            assert old_lease is not None and old_lease.epoch == 1
            with stalled.stopped():
                stalled_at = time.monotonic()

                def taken_over() -> bool:
                    row = _run_row(system, run)
                    return row is not None and row.epoch == 2 and row.holder == other.actor.replica

                await eventually(taken_over, 30, "the other replica claims the next epoch")
                takeover_s = time.monotonic() - stalled_at
                await eventually(
                    lambda: (r := _run_row(system, run)) is not None and r.status != "running",
                    60,
                    "the run ends",
                )
            # SIGCONT: the stalled worker finds its lease gone and stops without appending.
            await eventually(lambda: stalled.actor.holding is None, 30, "the stalled worker gives up")
            assert old_lease.lost is not None and "no heartbeat acknowledged" in old_lease.lost

            # What a zombie without a self-fence would append next, under its old epoch: none of it
            # may count anywhere, whether its ids are new or repeat the rightful holder's.
            zombie = _zombie_facts(old_lease, run, steps)
            await log.append(zombie)
            end = await log.end_offsets()
            await system.settle()
            await eventually(lambda: all(caught_up(t.actor, end) for t in (a, b)), 30, "trainers folded it")

            # The stale revision cannot be promoted: no fold knows it. The rightful one can.
            await log.append([evaluated("acme/a", "run-lease")])
            await system.settle()
            await log.append([promote("acme/a", "stale"), promote("acme/a", "run-lease")])
            await system.settle()
        stored = [(s, s.decode()) for s in await read_all(log)]
        outcomes = [r for _, r in stored if isinstance(r, CommandRejected | RevisionPromoted)]
        assert [type(r).__name__ for r in outcomes] == ["CommandRejected", "RevisionPromoted"], outcomes
        assert (
            isinstance(outcomes[0], CommandRejected) and "unknown revision acme/a@stale" in outcomes[0].reason
        )
        assert Catalog(home.catalog).resolve("acme/a") == "run-lease"

        stores = [
            home.catalog,
            home.actor_state("catalog"),
            a.home.actor_state("trainer"),
            b.home.actor_state("trainer"),
        ]
        # A zombie's fact with a rightful fact's id may also be skipped as that fact's copy; every
        # other one is fenced.
        repeated = {f.id for f in zombie if isinstance(f, StepCompleted) and f.step <= steps}
        for path in stores:
            assert {f.id for f in zombie} - repeated <= _fenced_ids(path), (
                f"{path}: every stale fact is fenced"
            )
            catalog = Catalog(path)
            row = catalog.run(run)
            assert row is not None and (row.status, row.epoch, row.holder) == (
                "finished",
                2,
                other.actor.replica,
            )
            assert Counter((s.policy, s.step) for s in catalog.steps(run)) == Counter(
                {(p, n): 1 for p in POLICIES for n in range(1, steps + 1)}
            ), f"{path}: every step once, none of the zombie's"
            assert all(s.loss != ZOMBIE_LOSS for s in catalog.steps(run)), "the rightful step stands"
            for policy in POLICIES:
                (revision,) = catalog.revisions(policy)
                assert (revision.revision, revision.run) == ("run-lease", run)
            catalog.close()
            verdict = await verify(log, CATALOG_FOLD, path)
            assert verdict.equal, (path, [(d.table, d.live_only, d.rebuilt_only) for d in verdict.diffs])

        # On the log itself: what counts holds each step once, one export per policy, one completion.
        fenced = _fenced_ids(home.catalog)
        # (The zombie's repeat of a rightful step's id is skipped as that step's copy, unfenced.)
        counted = [r for s, r in stored if s.id not in fenced and r not in zombie]
        steps_on_log = Counter((r.policy, r.step) for r in counted if isinstance(r, StepCompleted))
        assert steps_on_log == Counter({(p, n): 1 for p in POLICIES for n in range(1, steps + 1)}), (
            "no step doubled"
        )
        exports = [r for r in counted if isinstance(r, RevisionExported)]
        assert sorted(r.policy for r in exports) == POLICIES and {r.epoch for r in exports} == {2}
        finished = [r for r in counted if isinstance(r, TrainingFinished | TrainingFailed)]
        assert [(type(r).__name__, r.epoch) for r in finished] == [("TrainingFinished", 2)], "one completion"
        # The new holder resumed from a checkpoint the stalled one had stored (it was stopped at step 3
        # or later, perhaps before storing that step's), not from step 0: it stored only the steps
        # after that one.
        found = await stored_checkpoints.stored(LocalArtifactStore(tmp_path / "artifacts"), run)
        resumed = min(c.step for c in found if c.epoch == 2) - 1
        assert resumed >= 2 and StoredCheckpoint(resumed, 1) in found, found
        assert [c.step for c in found if c.epoch == 2] == list(range(resumed + 1, steps + 1))
        # Not before the lease could have expired, and soon after (its partition moved first).
        assert LEASE.timeout_s - LEASE.heartbeat_s <= takeover_s < LEASE.timeout_s + 15, takeover_s


def _zombie_facts(lease: RunLease, run: str, steps: int) -> list[Record]:
    sha = "f" * 64
    facts: list[Record] = [
        # The step it was computing when it stopped (its successor's id), and one nobody wrote.
        StepCompleted.create(
            id=f"{run}/acme/a/step/{lease.progress + 1}",
            source="trainer",
            run=run,
            policy="acme/a",
            step=lease.progress + 1,
            loss=ZOMBIE_LOSS,
        ),
        StepCompleted.create(
            id=f"{run}/acme/a/step/{steps + 1}",
            source="trainer",
            run=run,
            policy="acme/a",
            step=steps + 1,
            loss=ZOMBIE_LOSS,
        ),
        RevisionExported.create(
            id=f"{run}/acme/a/export-stale",
            source="trainer",
            policy="acme/a",
            revision="stale",
            base_id="tiny",
            uri=adapter_key("acme/a", "stale", sha),
            sha256=sha,
            bytes=1,
            rank=8,
            alpha=16.0,
            targets=["q_proj"],
            run=run,
        ),
        RunHeartbeat.create(
            id=f"{run}/zombie/beat",
            source="trainer",
            run=run,
            replica=lease.replica,
            step=steps,
            interval_s=0.2,
        ),
        TrainingFailed.create(id=f"{run}/failed", source="trainer", run=run, reason="a zombie's verdict"),
        TrainingFinished.create(id=f"{run}/finished-stale", source="trainer", run=run, steps=steps),
    ]
    return lease.stamped(facts)


@pytest.mark.kafka
async def test_heartbeats_keep_flowing_while_a_step_computes(
    kafka_bootstrap: str, tmp_path: Path, tiny_base: Path
) -> None:
    """A GRPO step of the tiny base takes many heartbeat intervals; it runs in a thread, so the
    holder's loop heartbeats through it rather than after it."""
    topic = f"mint.leases.{uuid.uuid4().hex[:8]}"
    run = "acme/run-beats"
    home = Home(tmp_path / "main")
    async with (
        KafkaLog(kafka_bootstrap, topic=topic, partitions=2) as log,
        running(home, log, only=frozenset({"catalog", "projector"}), backoff=FAST) as system,
    ):
        quick = TrainerSettings(LeaseTimings(heartbeat_s=0.02, timeout_s=1.5))
        with trainer_thread(kafka_bootstrap, topic, tmp_path, tiny_base, "trainer-a", quick) as a:
            slow = {"group_size": 16, "max_new_tokens": 24}
            await _start(system, log, [a], run, algo="grpo", task="token:the", steps=3, config=slow)
            await eventually(
                lambda: (r := _run_row(system, run)) is not None and r.status != "running",
                120,
                "the run ends",
            )
        records = [s.decode() for s in await read_all(log)]
    steps_at = [r.at for r in records if isinstance(r, StepCompleted) and r.policy == POLICIES[0]]
    beats_at = sorted(
        r.at for r in records if isinstance(r, RunHeartbeat) and steps_at[0] <= r.at <= steps_at[-1]
    )
    longest_silence = max(b - a for a, b in itertools.pairwise(beats_at))
    shortest_step = min(b - a for a, b in itertools.pairwise(steps_at))
    assert longest_silence < shortest_step / 2, (longest_silence, shortest_step)


async def test_a_checkpoint_counts_only_whole_and_every_file_is_checked(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    written = tmp_path / "step"
    written.mkdir()
    (written / "state.json").write_text('{"step": 2}')
    (written / "acme__a.adapter.safetensors").write_bytes(b"tensors")
    await stored_checkpoints.upload(store, "acme/r", 1, 2, written)
    await stored_checkpoints.upload(store, "acme/r", 1, 2, written)  # a retry: a no-op
    # A writer that died uploading step 3 left files and no manifest: that checkpoint does not exist.
    await store.put(checkpoint_key("acme/r", 3, 1, "state.json"), b'{"step": 3}')
    found = await stored_checkpoints.stored(store, "acme/r")
    assert found == [StoredCheckpoint(2, 1)]
    assert stored_checkpoints.newest(found, at_most=1) is None, "none the log's steps reach"
    fetched = await stored_checkpoints.download(store, "acme/r", found[0], _empty(tmp_path / "a"))
    assert (fetched / "acme__a.adapter.safetensors").read_bytes() == b"tensors"
    # Bytes changed in the store after the manifest named them are refused.
    (tmp_path / "artifacts" / checkpoint_key("acme/r", 2, 1, "acme__a.adapter.safetensors")).write_bytes(
        b"other"
    )
    with pytest.raises(ArtifactCorrupt):
        await stored_checkpoints.download(store, "acme/r", found[0], _empty(tmp_path / "b"))


def _empty(directory: Path) -> Path:
    directory.mkdir()
    return directory


def test_a_run_resumes_no_later_than_every_policy_still_in_it_has_steps_on_the_log() -> None:
    run = RunRow(
        "acme/r",
        "acme",
        "tiny",
        "sft",
        "sft-repeat:x",
        {},
        ("acme/a", "acme/b"),
        9,
        "running",
        "t",
        None,
        None,
    )
    assert resume_bound(run, {}, {}) == 0
    assert resume_bound(run, {"acme/a": {1, 2, 3, 5}, "acme/b": {1, 2, 3, 4}}, {}) == 3, "a gap at 4"
    assert resume_bound(run, {"acme/a": {1, 2, 3}, "acme/b": {1}}, {"acme/b": "nan loss"}) == 3, "b left it"


def test_trainer_settings_come_from_the_environment_and_bad_ones_are_named() -> None:
    settings = TrainerSettings.from_env(
        {
            "MINT_TRAINER_HEARTBEAT_S": "0.5",
            "MINT_TRAINER_LEASE_TIMEOUT_S": "4",
            "MINT_TRAINER_CHECKPOINT_EVERY": "5",
        }
    )
    assert settings == TrainerSettings(LeaseTimings(0.5, 4.0), checkpoint_every=5)
    assert TrainerSettings.from_env({}) == TrainerSettings(LeaseTimings(1.0, 6.0), checkpoint_every=1)
    for env, named in (
        ({"MINT_TRAINER_HEARTBEAT_S": "soon"}, "MINT_TRAINER_HEARTBEAT_S"),
        ({"MINT_TRAINER_LEASE_TIMEOUT_S": "1"}, "timeout_s"),  # below twice the heartbeat
        ({"MINT_TRAINER_CHECKPOINT_EVERY": "0"}, "checkpoint_every"),
        ({"MINT_TRAINER_CHECKPOINT_EVERY": "2.5"}, "MINT_TRAINER_CHECKPOINT_EVERY"),
    ):
        with pytest.raises(ValueError, match=named):
            TrainerSettings.from_env(env)
