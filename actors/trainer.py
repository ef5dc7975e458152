"""The trainer actor: decides StartTraining (the single writer of run keys), and trains runs beside
its loop, each under a lease (actors/run_lease.py), appending a StepCompleted per policy per step and a
RevisionExported per policy at the end.

Replicas: every trainer replica folds the whole log. A replica may take a run when it may decide for
the run's partition (`ownership`; the embedded system owns everything) and the run's lease is free: never
claimed, held by an earlier incarnation of this same replica, or silent for the lease timeout. It claims
the next epoch and resumes from the newest checkpoint in the artifact store that the log's counted steps
reach, so a replica on another machine finishes a run whose worker died.

No step doubled: ids derive from (run, policy, step), and a resumed worker appends only the steps,
failures and exports that do not already count on the log (it has folded everything before its
claims, so it knows). A stale worker's appends after the claim are fenced in every fold.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from actors.faults import NO_FAULTS, Faults, InjectedCrash
from actors.run_lease import LeaseLost, LeaseTimings, RunLease, claim
from actors.runtime import StoreActor
from events.catalog import CommandRejected
from events.envelope import Record
from events.log import EventLog
from events.training import (
    RevisionExported,
    RunClaimed,
    RunHeartbeat,
    StartTraining,
    StepCompleted,
    TrainingFailed,
    TrainingFinished,
    TrainingStarted,
)
from mint.adapters.peft_layout import WEIGHTS_FILE
from mint.artifacts.keys import adapter_key
from mint.artifacts.store import ArtifactStore
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.rows import POLICIES, REVISIONS, RUNS, PolicyRow, RunRow
from mint.home import Home
from mint.projection.store import ProjectionStore
from mint.training import stored_checkpoints
from mint.training.tasks import TaskError, parse_task

if TYPE_CHECKING:  # torch: imported where a run is trained, not when the control plane starts
    from mint.training.multi_policy import StepMetrics
    from mint.training.session import TrainingSession

logger = logging.getLogger(__name__)
SOURCE = "trainer"


@dataclass(frozen=True)
class TrainerSettings:
    """The lease's timings and how often a run is checkpointed to the artifact store. From the
    environment: MINT_TRAINER_HEARTBEAT_S (1), MINT_TRAINER_LEASE_TIMEOUT_S (6),
    MINT_TRAINER_CHECKPOINT_EVERY (1 step)."""

    lease: LeaseTimings = field(default_factory=LeaseTimings)
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every: must be 1 or more steps, got {self.checkpoint_every}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> TrainerSettings:
        def number(name: str, default: float) -> float:
            try:
                return float(env.get(name, default))
            except ValueError:
                raise ValueError(f"{name}: expected a number of seconds, got {env[name]!r}") from None

        try:
            every = int(env.get("MINT_TRAINER_CHECKPOINT_EVERY", 1))
        except ValueError:
            raise ValueError(
                f"MINT_TRAINER_CHECKPOINT_EVERY: expected a whole number of steps, "
                f"got {env['MINT_TRAINER_CHECKPOINT_EVERY']!r}"
            ) from None
        lease = LeaseTimings(
            heartbeat_s=number("MINT_TRAINER_HEARTBEAT_S", LeaseTimings.heartbeat_s),
            timeout_s=number("MINT_TRAINER_LEASE_TIMEOUT_S", LeaseTimings.timeout_s),
        )
        return cls(lease, every)


class TrainerActor(StoreActor):
    decode_types = frozenset({"StartTraining"})
    redecide_types = frozenset({"StartTraining"})

    def __init__(
        self,
        home: Home,
        artifacts: ArtifactStore,
        faults: Faults = NO_FAULTS,
        *,
        replica: str = SOURCE,
        settings: TrainerSettings | None = None,
    ) -> None:
        super().__init__("trainer", CATALOG_FOLD, home.actor_state("trainer"), faults)
        self.home = home
        self.artifacts = artifacts
        self.replica = replica
        self.settings = settings or TrainerSettings.from_env()
        self._store: ProjectionStore | None = None
        self._wake = anyio.Event()
        # Per run, when this replica last saw a sign of its lease's life (a start, a claim, a counted
        # heartbeat), by its own clock: a lease is expired when that is older than the timeout.
        self._sightings: dict[str, float] = {}
        self._opened_at = time.monotonic()
        self.holding: RunLease | None = None
        # Runs this incarnation has held a lease on: whatever its store still says (a completion it
        # appended and has not folded yet, a lease it lost), it takes them again only once expired.
        self._held: set[str] = set()
        # A replica without the [train] extra decides StartTraining (it refuses it) but trains nothing.
        self._can_train = importlib.util.find_spec("torch") is not None

    # -- deciding --------------------------------------------------------------------------------

    def on_record(self, record: Record, store: ProjectionStore) -> list[Record]:
        if isinstance(record, TrainingStarted | RunClaimed | RunHeartbeat):
            # Not a decision: an observation of the lease's life, for `_free` to judge by. A fenced
            # heartbeat (a stale worker's) never gets here.
            self._sightings[record.run] = time.monotonic()
        if not isinstance(record, StartTraining):
            return []
        refusal = self._refusal(record, store)
        if refusal is not None:
            return [CommandRejected.refusing(record, SOURCE, *refusal)]
        started = TrainingStarted.create(
            id=f"{record.id}/0",
            cause=record,
            source=SOURCE,
            run=record.run,
            policies=list(record.policies),
            base_id=record.base_id,
            algo=record.algo,
            task=record.task,
            steps=record.steps,
            config=dict(record.config),
        )
        return [started]

    def _refusal(self, command: StartTraining, store: ProjectionStore) -> tuple[str, str] | None:
        if not self._can_train:
            return "this MinT has no training installed: pip install 'mint-lora[train]'", "run"
        from mint.training.multi_policy import TrainConfig  # torch: only once there is a run to train

        # The schema already holds a run to its tenant's policies, each once, and steps to a range.
        if store.rows.get(RUNS, command.run) is not None:
            return f"run {command.run!r} already exists", "run"
        if not (self.home.base(command.base_id) / "config.json").is_file():
            return (
                f"base {command.base_id!r} is not installed at {self.home.base(command.base_id)}",
                "base_id",
            )
        for policy in command.policies:
            row: PolicyRow | None = store.rows.get(POLICIES, policy)
            if row is None or row.status != "active":
                return f"policy {policy!r} is not registered and active", "policies"
            if row.base_id != command.base_id:
                return f"policy {policy!r} is on base {row.base_id!r}, not {command.base_id!r}", "base_id"
        try:
            task = parse_task(command.task, lambda word: 0)
            TrainConfig.from_dict(command.config, command.steps)
        except TaskError as exc:
            return str(exc), "task"
        except (TypeError, ValueError) as exc:
            return str(exc), "config"
        if task.algo != command.algo:
            return f"task {command.task!r} is a {task.algo} task, not {command.algo}", "algo"
        return None

    # -- which runs to take ------------------------------------------------------------------------

    def opened(self, store: ProjectionStore) -> None:
        self._store = store
        self._opened_at = time.monotonic()

    def committed(self, facts: list[Record], store: ProjectionStore) -> None:
        if any(isinstance(f, TrainingStarted) for f in facts):
            self.look_for_runs()

    def claimed(self, partition: int, store: ProjectionStore) -> None:
        self.look_for_runs()  # runs of a partition this replica has just taken may be free

    def look_for_runs(self) -> None:
        """Look for a run to take now rather than at the next heartbeat interval."""
        self._wake.set()

    def may_take(self, run: str) -> bool:
        """Whether this replica may start or resume `run`: it decides for the run's partition."""
        return self.ownership.decides(run)

    def _free(self, run: RunRow) -> bool:
        """Whether `run` is this replica's to take now (see the module's docstring)."""
        # A run started by any other writer (the walkthrough's script, a Tinker client) is not this
        # actor's to train.
        if not (self._can_train and run.status == "running" and run.decided_by == SOURCE):
            return False
        if not self.may_take(run.run):
            return False
        if run.holder == "" or (run.holder == self.replica and run.run not in self._held):
            return True  # never claimed, or claimed by this replica before it restarted
        seen = self._sightings.get(run.run, self._opened_at)
        return time.monotonic() - seen > self.settings.lease.timeout_s

    def _running(self) -> list[RunRow]:
        """The runs this actor may have to train, as folded so far (a batch under way may have moved
        a row on since it was committed)."""
        store = self._store
        assert store is not None
        committed = store.query("SELECT data FROM runs WHERE status = 'running'")
        current = [store.rows.get(RUNS, r.run) or r for r in (RUNS.from_data(d) for (d,) in committed)]
        return [r for r in current if r.status == "running" and r.decided_by == SOURCE]

    def _next_free(self, running: list[RunRow]) -> RunRow | None:
        free = sorted((r for r in running if self._free(r)), key=lambda r: (r.started_at, r.run))
        return free[0] if free else None

    # -- training ----------------------------------------------------------------------------------

    async def beside(self, log: EventLog) -> None:
        """Take free runs one after another, beside the actor loop rather than inside it: a run
        outlives many batches, and the loop must keep folding (the lease's claims included) and
        deciding meanwhile. The work appends its facts itself, outside the batch's
        append-then-commit, which is safe because nothing the trainer's store commits depends on
        them: they decide nothing (every id derives from the run, its policies and steps), and the
        store learns of them from the log, like every other reader's."""
        self.holding = None
        self._held = set()
        async with anyio.create_task_group() as tg:
            warming = False
            while True:
                running = self._running()
                live = {r.run for r in running}
                self._sightings = {r: t for r, t in self._sightings.items() if r in live}
                if running and self._can_train and not warming:
                    # A replica that may take over a run should not wait for torch then.
                    warming = True
                    tg.start_soon(_import_training)
                run = self._next_free(running)
                if run is None:
                    with anyio.move_on_after(self.settings.lease.heartbeat_s):
                        await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                await self._take(log, run)

    async def _take(self, log: EventLog, run: RunRow) -> None:
        assert self._store is not None
        await _import_training()  # before the lease's clock starts
        # Judge the lease on state that has caught up with the log: a replica that was stopped itself,
        # or lags, must not take a run for expired on a silence it has not read past.
        with anyio.move_on_after(self.settings.lease.timeout_s):
            await self.progress.reached(await log.end_offsets())
        now: RunRow | None = self._store.rows.get(RUNS, run.run)
        if now is None or not self._free(now):
            return
        run = now
        lease = await claim(
            log,
            self._store,
            self.progress,
            run.run,
            run.policies,
            self.replica,
            run.epoch + 1,
            self.settings.lease,
        )
        self._sightings[run.run] = time.monotonic()  # whoever won, the lease has just been taken
        if lease is None:
            return
        self.holding = lease
        self._held.add(run.run)
        try:
            await _holding(lease, lambda: self._train(run, lease))
        except LeaseLost as exc:
            logger.warning("%s: stopped: %s", self.replica, exc)
        except InjectedCrash:
            raise  # chaos testing: crash the actor as a real fault would, and resume
        except Exception as exc:  # a run that cannot go on (its base is gone, ...) fails; the actor goes on
            logger.exception("run %s failed", run.run)
            failed = TrainingFailed.create(
                id=f"{run.run}/failed", source=SOURCE, run=run.run, reason=f"{type(exc).__name__}: {exc}"
            )
            try:
                await lease.append([failed])
            except LeaseLost as lost:
                logger.warning("%s: run %s failed, but: %s", self.replica, run.run, lost)
        finally:
            self.holding = None

    async def _train(self, run: RunRow, lease: RunLease) -> None:
        from mint.training.session import TrainingSession  # torch loads here, not at control-plane start

        assert self._store is not None
        # The lease's claims are folded, so everything appended before them is: what counts is known.
        current: RunRow = self._store.rows.get(RUNS, run.run) or run
        if current.status != "running":
            return  # its completion counted before our claims (a stalled worker's, just in time)
        failed = dict(current.failed_policies)
        counted = self._counted_steps(run.run)
        bound = resume_bound(run, counted, failed)
        lease.progress = bound  # what its heartbeats report until it has appended a step of its own
        start = stored_checkpoints.newest(await stored_checkpoints.stored(self.artifacts, run.run), bound)
        with tempfile.TemporaryDirectory(prefix="mint-resume-") as fetched:
            resume_from = None
            if start is not None:
                resume_from = await stored_checkpoints.download(self.artifacts, run.run, start, Path(fetched))
            session = await anyio.to_thread.run_sync(
                TrainingSession.open, self.home, run, resume_from, failed
            )
        logger.info(
            "%s: run %s from step %d (the log holds every step to %d) at epoch %d",
            self.replica,
            run.run,
            session.completed,
            bound,
            lease.epoch,
        )
        await lease.beat()  # the new holder's heartbeat says how far the run has come at once
        for step in range(session.completed + 1, run.steps + 1):
            # In a thread: the loop keeps heartbeating (and folding) while the step computes.
            metrics = await anyio.to_thread.run_sync(session.trainer.step, step)
            fresh = _step_facts(run, step, metrics, session.newly_failed())
            await lease.append([f for f in fresh if not _counted(f, counted, failed)])
            lease.progress = step
            self.faults.point(f"{self.name}: after step {step}")
            if step % self.settings.checkpoint_every == 0 or step == run.steps:
                directory = await anyio.to_thread.run_sync(session.checkpoint, step)
                await stored_checkpoints.upload(self.artifacts, run.run, lease.epoch, step, directory)
        await lease.append(await self._export(run, session))
        if not session.trainer.live:
            failed_run = TrainingFailed.create(
                id=f"{run.run}/failed", source=SOURCE, run=run.run, reason="every policy failed"
            )
            await lease.append([failed_run])
            return
        await lease.append(
            [TrainingFinished.create(id=f"{run.run}/finished", source=SOURCE, run=run.run, steps=run.steps)]
        )

    def _counted_steps(self, run: str) -> dict[str, set[int]]:
        assert self._store is not None
        counted: dict[str, set[int]] = {}
        for policy, step in self._store.query("SELECT policy, step FROM steps WHERE run = ?", (run,)):
            counted.setdefault(policy, set()).add(step)
        return counted

    async def _export(self, run: RunRow, session: TrainingSession) -> list[Record]:
        """Each policy's adapter in the artifact store (write-once: a retried export is a no-op), and
        the facts that name them; the parent is what the policy serves now. A policy whose revision
        already counts (exported before a takeover) is not exported again."""
        from mint.training.session import revision_of

        assert self._store is not None
        revision = revision_of(run.run)
        waiting = [p for p in session.trainer.live if self._store.rows.get(REVISIONS, p, revision) is None]
        parents = {
            p: (row.pointer if (row := self._store.rows.get(POLICIES, p)) else None) for p in run.policies
        }
        written = await anyio.to_thread.run_sync(session.write_adapters, waiting)
        exported: list[Record] = []
        for adapter in written:
            key = adapter_key(adapter.policy, adapter.revision, adapter.sha256)
            await self.artifacts.put(key, adapter.directory / WEIGHTS_FILE)
            exported.append(
                RevisionExported.create(
                    id=f"{run.run}/{adapter.policy}/export",
                    source=SOURCE,
                    policy=adapter.policy,
                    revision=adapter.revision,
                    base_id=run.base_id,
                    uri=key,
                    sha256=adapter.sha256,
                    bytes=adapter.bytes,
                    rank=adapter.rank,
                    alpha=adapter.alpha,
                    targets=list(adapter.targets),
                    parent=parents.get(adapter.policy),
                    run=run.run,
                )
            )
        return exported


async def _import_training() -> None:
    """torch and transformers take seconds to import: in a thread, so the loop folds and heartbeats
    meanwhile (a second import waits for the first)."""
    await anyio.to_thread.run_sync(importlib.import_module, "mint.training.session")


async def _holding(lease: RunLease, work: Callable[[], Awaitable[None]]) -> None:
    """Run `work` while the lease heartbeats beside it; `work`'s own error, unwrapped, is the result."""
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(lease.keep_alive)
        try:
            await work()
        except Exception as exc:
            error = exc
        finally:
            tg.cancel_scope.cancel()
    if error is not None:
        raise error


def resume_bound(run: RunRow, counted: Mapping[str, set[int]], failed: Mapping[str, str]) -> int:
    """The last step that every policy still in the run has on the log, without a gap: a checkpoint
    beyond it would skip steps that never counted."""
    bound = run.steps
    for policy in run.policies:
        if policy in failed:
            continue
        steps = counted.get(policy, set())
        reached = 0
        while reached + 1 in steps:
            reached += 1
        bound = min(bound, reached)
    return bound


def _counted(fact: Record, counted: Mapping[str, set[int]], failed: Mapping[str, str]) -> bool:
    """Whether the log already holds `fact` (a step or a failure computed again after a takeover)."""
    if isinstance(fact, StepCompleted):
        return fact.step in counted.get(fact.policy, set())
    return isinstance(fact, TrainingFailed) and fact.policy in failed


def _step_facts(
    run: RunRow, step: int, metrics: Mapping[str, StepMetrics], failed: Iterable[tuple[str, str]]
) -> list[Record]:
    """One StepCompleted per policy that trained this step, and a TrainingFailed per policy that has
    just left the run; ids derive from (run, policy, step), so a recomputed step repeats them."""
    facts: list[Record] = [
        StepCompleted.create(
            id=f"{run.run}/{policy}/step/{step}",
            source=SOURCE,
            run=run.run,
            policy=policy,
            step=step,
            loss=m.loss,
            reward_mean=m.reward_mean,
            reward_std=m.reward_std,
            kl=m.kl,
            tokens_per_s=m.tokens_per_s,
        )
        for policy, m in metrics.items()
    ]
    facts += [
        TrainingFailed.create(
            id=f"{run.run}/{policy}/failed", source=SOURCE, run=run.run, policy=policy, reason=reason
        )
        for policy, reason in failed
    ]
    return facts
