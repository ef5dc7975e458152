"""The actor runtime: a store-backed actor loop and a supervisor.

An actor here is a mailbox (a log subscription that starts at the actor's own checkpoint), state (a
ProjectionStore file) and outputs (facts it appends). Per batch it folds records and decides, appends
its facts, then commits rows and checkpoint in one transaction. A crash anywhere before that commit
replays the batch on restart; decisions are deterministic in their ids, so the second copy of a fact
is refused (SQLite) or skipped by every fold (Kafka).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from actors.faults import NO_FAULTS, Faults
from actors.progress import Progress
from events.envelope import Record
from events.log import EventLog, Position, Stored
from events.partitioning import partition_for
from events.system import ActorRestarted
from mint.projection.store import Fold, ProjectionStore

log = logging.getLogger(__name__)


class Ownership:
    """Which partitions this replica decides for, under which epoch (events/claims.py). The embedded
    system's: every partition, unfenced (epoch 0). actors/owned.py gives a replica of a group its own."""

    partitions = 0  # 0: every partition

    def epoch(self, partition: int) -> int | None:
        """The epoch of this replica's counted claim on `partition`; None when it does not decide there."""
        return 0

    def partition_of(self, key: str) -> int:
        return partition_for(key, self.partitions) if self.partitions else 0

    def decides(self, key: str) -> bool:
        """Whether a record keyed `key` is this replica's to write (it lands on a partition it owns)."""
        return self.epoch(self.partition_of(key)) is not None

    def keeps(self, key: str) -> bool:
        """Whether a fact keyed `key` that this replica decides now is kept: written now, or held
        until its claim counts (a partition owner catching up). Others are the owner's to decide."""
        return self.decides(key)


OWNS_EVERYTHING = Ownership()


class StoreActor:
    """Folds the log into its own store. Its hooks, each called by `run` at one point of a batch:
    `opened` once the store is open, `on_record` per record (decide), `act` per batch (effects),
    `committed` once the batch's facts are on the log and its state is committed, and `claimed` when
    a replica of a group has just become the owner of a partition."""

    batch_size = 2000
    decode_types: frozenset[str] = frozenset()
    # Records whose decision must survive a change of owner: a replica that folded one while its
    # partition had no owner decides it once it claims the partition (actors/owned.py).
    redecide_types: frozenset[str] = frozenset()

    def __init__(self, name: str, fold: Fold, path: Path, faults: Faults = NO_FAULTS) -> None:
        self.name = name
        self.fold = fold
        self.path = path
        self.faults = faults
        self.progress = Progress()
        self.ownership: Ownership = OWNS_EVERYTHING

    def claimed(self, partition: int, store: ProjectionStore) -> None:
        """Called once this replica's claim on `partition` counts, before it decides anything there."""

    def opened(self, store: ProjectionStore) -> None:
        """Called once the store is open (at start and after each restart), before any record."""

    def on_record(self, record: Record, store: ProjectionStore) -> list[Record]:
        """Facts to append in answer to `record` (already folded). Projectors answer nothing. A
        decision is a pure function of the record and the store: one that raises is a fault of that
        record (it goes to the dead letters), never a reason to stop."""
        return []

    async def act(self, batch: Batch, store: ProjectionStore) -> list[Record]:
        """Effects of this batch that need awaiting, like loading an adapter a wave planned; returns
        the facts that report them. Runs after the records were folded and decided, and before the
        checkpoint moves past them, so a crash repeats an effect rather than losing it: effects
        must be idempotent, and their facts' ids derived from the records that asked."""
        return []

    def committed(self, facts: list[Record], store: ProjectionStore) -> None:
        """Called once a batch's facts are on the log and its state is committed: the moment an
        actor may start effects that those facts announce."""

    async def beside(self, log: EventLog) -> None:
        """Long work beside the loop (a trainer's runs), for as long as the loop runs: started once the
        store is open, whoever runs the actor (`run`, or a group's owner in actors/owned.py). It must
        never hold the loop up; by default there is none."""

    def handle(self, stored_batch: list[Stored], store: ProjectionStore) -> Batch:
        """Fold a batch and decide: its decoded records, and the facts to append before the store
        may commit."""
        batch = Batch()
        out = batch.decided
        for stored in stored_batch:
            record = store.apply(stored)
            if record is not None:
                batch.records.append(record)
                try:
                    decided = self.on_record(record, store)
                except Exception as exc:  # a record that breaks the decider must not stop it: set it aside
                    log.exception("%s: deciding %s failed", self.name, stored.id)
                    store.dead_letter(stored, f"deciding {stored.type} failed: {type(exc).__name__}: {exc}")
                    continue
                for fact in decided:
                    # A replica writes only onto partitions it owns; the owner decides the rest.
                    if self.ownership.keeps(fact.key):
                        store.apply_own(fact)
                        out.append(fact)
        return batch

    def open_store(self, log: EventLog, end: Position | None = None) -> ProjectionStore:
        # With a log that refuses duplicate ids there is no second copy to skip, and deciders fold
        # their own facts eagerly, which the store tracks separately; so only Kafka needs the window.
        dedupe = not log.refuses_duplicates or bool(self.decode_types)
        return self.open_store_at(self.path, dedupe, end)

    def open_store_at(self, path: Path, dedupe: bool = True, end: Position | None = None) -> ProjectionStore:
        """A store of this actor's fold at `path`: its own file, or one partition's (actors/owned.py).
        Given `end`, the log's end offsets, a store whose checkpoint is beyond them (the broker's storage
        was lost, or the topic recreated) describes records that no longer exist: it is deleted and
        opened empty, so the actor rebuilds it from the log as it is now."""
        store = ProjectionStore(path, self.fold, dedupe=dedupe, decode_types=self.decode_types)
        beyond = {p: o for p, o in store.position.items() if end is not None and o > end.get(p, 0)}
        if not beyond:
            return store
        log.warning(
            "%s: checkpoint %s of %s is beyond the log's end %s: rebuilding it from the log",
            self.name,
            beyond,
            path,
            {p: (end or {}).get(p, 0) for p in beyond},
        )
        store.close()
        for stale in path.parent.glob(path.name + "*"):  # the database and its -wal and -shm
            stale.unlink()
        return ProjectionStore(path, self.fold, dedupe=dedupe, decode_types=self.decode_types)

    async def run(self, log: EventLog, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        store = self.open_store(log, await log.end_offsets())
        try:
            self.opened(store)
            self.progress.update(store.position)
            async with (
                log.subscribe(self.name, start=store.position) as mailbox,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(self.beside, log)
                task_status.started()
                while True:
                    batch = await mailbox.next_batch(max_records=self.batch_size, timeout=1.0)
                    if not batch:
                        continue
                    handled = self.handle(batch, store)
                    out = handled.decided + await self.act(handled, store)
                    self.faults.point(f"{self.name}: before append")
                    if out:
                        await log.append(out)  # record before effect: durable before we move on
                    self.faults.point(f"{self.name}: before commit")
                    store.commit()
                    self.committed(out, store)
                    self.faults.point(f"{self.name}: after commit")
                    self.progress.update(store.position)
                    await mailbox.commit(store.position)  # lag metrics only; the store is the truth
        finally:
            store.close()


@dataclass
class Batch:
    """One batch as the actor saw it: the records it folded or decoded, in log order, and the facts
    it decided in answer (already folded into its own store)."""

    records: list[Record] = field(default_factory=list)
    decided: list[Record] = field(default_factory=list)


@dataclass(frozen=True)
class Backoff:
    first_s: float = 0.05
    max_s: float = 5.0
    # A run this long counts as healthy: the next crash starts the backoff over.
    healthy_s: float = 30.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_s, self.first_s * 2 ** (attempt - 1)))


DEFAULT_BACKOFF = Backoff()


class _FirstStart:
    """Passes the first `started()` through to the supervisor's caller; restarts are silent."""

    def __init__(self, status: TaskStatus[None]) -> None:
        self._status: TaskStatus[None] | None = status

    def started(self, value: Any = None) -> None:
        if self._status is not None:
            self._status.started()
            self._status = None


class Supervisor:
    """Runs actors in one task group; restarts a crashed actor with exponential backoff and records
    each restart as an ActorRestarted fact. Cancel the group to shut down."""

    def __init__(self, log: EventLog, actors: list[StoreActor], backoff: Backoff = DEFAULT_BACKOFF) -> None:
        self.log = log
        self.actors = actors
        self.backoff = backoff
        self.restarts = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            for actor in self.actors:
                await tg.start(self.supervise, actor)
            task_status.started()

    async def supervise(
        self, actor: StoreActor, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        first = _FirstStart(task_status)
        attempt = 0
        while True:
            began = time.monotonic()
            try:
                await actor.run(self.log, task_status=first)
                return
            except Exception as exc:
                if time.monotonic() - began > self.backoff.healthy_s:
                    attempt = 0
                attempt += 1
                self.restarts += 1
                delay = self.backoff.delay(attempt)
                log.warning("actor %s crashed (%r); restart %d in %.2fs", actor.name, exc, attempt, delay)
                await self._record(actor.name, attempt, exc, delay)
                await anyio.sleep(delay)

    async def _record(self, name: str, attempt: int, exc: Exception, delay: float) -> None:
        fact = ActorRestarted.create(
            source="supervisor", actor=name, attempt=attempt, error=repr(exc), backoff_s=delay
        )
        try:
            await self.log.append([fact])
        except Exception:  # the log may be why it crashed; the restart goes on regardless
            log.exception("could not record the restart of %s", name)
