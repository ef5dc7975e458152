"""The trainer actor: decides StartTraining (the single writer of run keys), then runs each accepted
run to completion on one resident base, appending a StepCompleted per policy per step and a
RevisionExported per policy at the end.

Crash safety: a step's facts are appended before its checkpoint is written, and their ids derive from
(run, policy, step). After a restart the run resumes from its newest checkpoint and recomputes any
step past it; steps are deterministic for the run's seed, so a recomputed step appends the same ids,
which the log refuses (SQLite) or every fold skips (Kafka). The log never shows a step twice.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors.faults import NO_FAULTS, Faults, InjectedCrash
from actors.runtime import StoreActor
from events.catalog import CommandRejected
from events.envelope import Record
from events.log import EventLog
from events.training import (
    RevisionExported,
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
from mint.catalog.rows import POLICIES, RUNS, PolicyRow, RunRow
from mint.home import Home
from mint.projection.store import ProjectionStore
from mint.training.tasks import TaskError, parse_task

if TYPE_CHECKING:  # torch: imported where a run is trained, not when the control plane starts
    from mint.training.multi_policy import StepMetrics
    from mint.training.session import TrainingSession

logger = logging.getLogger(__name__)
SOURCE = "trainer"


class TrainerActor(StoreActor):
    decode_types = frozenset({"StartTraining"})

    def __init__(self, home: Home, artifacts: ArtifactStore, faults: Faults = NO_FAULTS) -> None:
        super().__init__("trainer", CATALOG_FOLD, home.actor_state("trainer"), faults)
        self.home = home
        self.artifacts = artifacts
        self._queue: MemoryObjectSendStream[RunRow] | None = None
        self._store: ProjectionStore | None = None

    # -- deciding --------------------------------------------------------------------------------

    def on_record(self, record: Record, store: ProjectionStore) -> list[Record]:
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
        if importlib.util.find_spec("torch") is None:
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

    # -- running ---------------------------------------------------------------------------------

    async def run(self, log: EventLog, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        send, receive = anyio.create_memory_object_stream[RunRow](1000)
        self._queue = send
        async with anyio.create_task_group() as tg, send, receive:
            tg.start_soon(self._work, log, receive)
            await super().run(log, task_status=task_status)

    def committed(self, facts: list[Record], store: ProjectionStore) -> None:
        for fact in facts:
            if isinstance(fact, TrainingStarted):
                run: RunRow | None = store.rows.get(RUNS, fact.run)
                if run is not None:
                    self._enqueue(run)

    def opened(self, store: ProjectionStore) -> None:
        self._store = store
        for (data,) in store.query("SELECT data FROM runs WHERE status = 'running'"):
            run = RUNS.from_data(data)
            # Interrupted by a crash: resume it, if this trainer decided it. A run started by any
            # other writer (the walkthrough's script, a Tinker client) is not this actor's to train.
            if run.decided_by == SOURCE:
                self._enqueue(run)

    def _enqueue(self, run: RunRow) -> None:
        assert self._queue is not None
        self._queue.send_nowait(run)

    async def _work(self, log: EventLog, runs: MemoryObjectReceiveStream[RunRow]) -> None:
        """Train the queued runs one after another, beside the actor loop rather than inside it: a run
        outlives many batches, and the loop must keep deciding meanwhile. So the work appends its
        facts itself, outside the batch's append-then-commit, which is safe because nothing the
        trainer's store commits depends on them:
        - they decide nothing: every id derives from (run, policy, step) or the run, so a repeat after
          a crash is refused by the SQLite log or skipped by every fold on Kafka;
        - record before effect still holds: a step's facts are durable before its checkpoint is
          written, and an export's before the run is reported finished;
        - the trainer's own state learns of them from the log, like every other reader's."""
        done: set[str] = set()
        async for run in runs:
            if run.run in done:
                continue
            try:
                await self._execute(log, run)
            except InjectedCrash:
                raise  # chaos testing: crash the actor as a real fault would, and resume
            except (
                Exception
            ) as exc:  # a run that cannot go on (its base is gone, ...) fails; the actor goes on
                logger.exception("run %s failed", run.run)
                reason = f"{type(exc).__name__}: {exc}"
                await log.append(
                    [TrainingFailed.create(id=f"{run.run}/failed", source=SOURCE, run=run.run, reason=reason)]
                )
            done.add(run.run)

    async def _execute(self, log: EventLog, run: RunRow) -> None:
        from mint.training.session import TrainingSession  # torch loads here, not at control-plane start

        session = await anyio.to_thread.run_sync(TrainingSession.open, self.home, run)
        for step in range(session.completed + 1, run.steps + 1):
            metrics = await anyio.to_thread.run_sync(session.trainer.step, step)
            await log.append(_step_facts(run, step, metrics, session.newly_failed()))
            self.faults.point(f"{self.name}: after step {step}")
            await anyio.to_thread.run_sync(session.checkpoint, step)
        await log.append(await self._export(run, session))
        if not session.trainer.live:
            failed = TrainingFailed.create(
                id=f"{run.run}/failed", source=SOURCE, run=run.run, reason="every policy failed"
            )
            await log.append([failed])
            return
        await log.append(
            [TrainingFinished.create(id=f"{run.run}/finished", source=SOURCE, run=run.run, steps=run.steps)]
        )

    async def _export(self, run: RunRow, session: TrainingSession) -> list[Record]:
        """Each policy's adapter in the artifact store (write-once: a retried export is a no-op), and
        the facts that name them; the parent is what the policy serves now."""
        assert self._store is not None
        parents = {
            p: (row.pointer if (row := self._store.rows.get(POLICIES, p)) else None) for p in run.policies
        }
        written = await anyio.to_thread.run_sync(session.write_adapters)
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
