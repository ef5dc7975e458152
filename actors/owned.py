"""Replicas of an actor that split the topic's partitions: the owners.

Both owners join the actor's consumer group (actors/membership.py) and decide only on partitions they
have claimed (events/claims.py): on assign, an owner folds the partition up to the end it saw, appends a
claim with the next epoch, folds on until it reads its own claim back, checks that it is the one that
counts, and only then decides there, stamping every fact with that epoch. A replica whose group
heartbeat is too old stops deciding before it appends (`SelfFenced`), and starts over from its
committed state.

- `PartitionOwner` keeps one store per owned partition (`$MINT_HOME/actors/NAME/pN.db`: rows,
  checkpoint and dedupe window in one transaction, locked while owned). It suits a decider whose
  decisions read only its key's rows: the catalog. While it catches up it decides as it folds, as the
  previous owner did (its decisions are pure functions of the partition, with ids derived from what they
  answer), but holds what it decided; at its claim it appends what the log does not already hold.
- `GlobalOwner` keeps one store of the whole log (Kafka Streams' GlobalKTable) for deciders that join
  across partitions: the scheduler (pointers and sizes beside an engine's demand), the evaluator
  (traffic of engines against policies) and the trainer (a run's policies). Every replica folds
  everything; each writes only onto partitions it has claimed. A record of `redecide_types` that it
  folded while its partition had no owner (a rebalance, a dead owner) and that nobody answered is
  decided when the partition is claimed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec
from anyio.abc import TaskStatus

from actors.locks import held_lock
from actors.membership import DEFAULT_SESSION_TIMEOUT_S, GroupMembership
from actors.runtime import Batch, Ownership, StoreActor
from events.claims import PartitionClaimed, claim_key
from events.envelope import Fact, Record
from events.kafka_log import KafkaLog, KafkaPartitionReader
from events.log import Appended, Stored
from mint.projection.store import ProjectionStore

log = logging.getLogger(__name__)

# How many unanswered records a GlobalOwner keeps per unowned partition for its future claim.
REDECIDE_WINDOW = 10_000


class SelfFenced(RuntimeError):
    """The group has not confirmed this replica for longer than its session timeout allows: its
    partitions may be someone else's now. Nothing of the batch was appended or committed."""


@dataclass
class Claiming:
    """Where this replica stands on one assigned partition: the end it must fold to before it claims,
    the claim it appended (if any), and its epoch once the claim counts."""

    catch_up_to: int | None = None
    claim_id: str | None = None
    claim_offset: int = -1
    epoch: int | None = None


class Claims(Ownership):
    """A replica's ownership, claim by claim: what `StoreActor.ownership` reads."""

    def __init__(self, actor: str, replica: str, partitions: int, hold_until_claimed: bool) -> None:
        self.actor = actor
        self.replica = replica
        self.partitions = partitions
        self.assigned: dict[int, Claiming] = {}
        # A partition owner decides while it catches up and holds the facts until its claim counts;
        # a global owner leaves unclaimed partitions to their owner (and redecides what it left).
        self.hold_until_claimed = hold_until_claimed

    def keeps(self, key: str) -> bool:
        if self.hold_until_claimed:
            return self.partition_of(key) in self.assigned
        return self.decides(key)

    def epoch(self, partition: int) -> int | None:
        claiming = self.assigned.get(partition)
        return claiming.epoch if claiming is not None else None

    def claimed(self) -> list[int]:
        return sorted(p for p, c in self.assigned.items() if c.epoch is not None)

    def ready(self) -> bool:
        return all(c.epoch is not None for c in self.assigned.values())

    def claim_for(self, partition: int, store: ProjectionStore) -> PartitionClaimed:
        latest = store.claim_of(f"actor:{self.actor}", partition)
        return PartitionClaimed.create(
            key=claim_key(self.actor, partition, self.partitions),
            source=self.actor,
            actor=self.actor,
            partition=partition,
            replica=self.replica,
            epoch=(latest.epoch if latest else 0) + 1,
        )

    def settle(self, partition: int, store: ProjectionStore) -> bool:
        """After folding: whether this replica's pending claim on `partition` has just come to count.
        A claim read back that does not count (another with a higher epoch was there first, a stale
        owner's) is dropped, so the next pass claims again above it."""
        claiming = self.assigned[partition]
        if claiming.claim_id is None or claiming.epoch is not None:
            return False
        if store.position.get(partition, 0) <= claiming.claim_offset:
            return False
        latest = store.claim_of(f"actor:{self.actor}", partition)
        if latest is not None and latest.claim == claiming.claim_id:
            claiming.epoch = latest.epoch
            log.info(
                "%s/%s: claimed partition %d at epoch %d", self.actor, self.replica, partition, latest.epoch
            )
            return True
        log.warning(
            "%s/%s: claim on partition %d did not count; claiming again", self.actor, self.replica, partition
        )
        claiming.claim_id, claiming.claim_offset, claiming.catch_up_to = None, -1, None
        return False


def stamped(facts: list[Record], ownership: Ownership) -> list[Record]:
    """Each fact with the epoch of its partition's claim; commands carry none (their decider fences)."""
    out: list[Record] = []
    for record in facts:
        epoch = ownership.epoch(ownership.partition_of(record.key))
        if isinstance(record, Fact) and epoch:
            record = msgspec.structs.replace(record, epoch=epoch)
        out.append(record)
    return out


@dataclass
class OwnedPartition:
    store: ProjectionStore
    locks: ExitStack
    held: list[Record] = field(default_factory=list)


class _Owner:
    """What both owners share: membership, claims, readiness and the append that self-fences."""

    def __init__(
        self,
        actor: StoreActor,
        log: KafkaLog,
        replica: str,
        session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S,
        static: bool = True,
    ) -> None:
        self.actor = actor
        self.log = log
        self.replica = replica
        self.claims = Claims(actor.name, replica, log.partitions, isinstance(self, PartitionOwner))
        actor.ownership = self.claims
        self.membership = GroupMembership(
            log, actor.name, replica, self._assigned, self._revoked, session_timeout_s, static
        )
        # Held while a batch is handled; a rebalance callback waits for it, so no partition is closed
        # under a batch, and no fetch ever waits on it.
        self._lock = anyio.Lock()
        self.caught_up = False

    def ready(self) -> bool:
        return self.caught_up and self.membership.settled and self.claims.ready()

    def status(self) -> dict[str, object]:
        return {
            "owned": sorted(self.claims.assigned),
            "claimed": {p: self.claims.epoch(p) for p in self.claims.claimed()},
            "heartbeat_age_s": round(self.membership.heartbeat_age(), 3),
            # Per partition it reads, the next offset to fold: the log's end minus this is its lag.
            "position": self.position(),
        }

    def position(self) -> dict[int, int]:
        return dict(self.actor.progress.position)

    async def _append(self, records: list[Record]) -> list[Appended]:
        if not records:
            return []
        if not self.membership.fresh():
            raise SelfFenced(
                f"{self.actor.name}/{self.replica}: no group heartbeat for "
                f"{self.membership.heartbeat_age():.1f}s"
            )
        self.actor.faults.point(f"{self.actor.name}: before append")
        return await self.log.append(records)

    async def _claim(self, partition: int, store: ProjectionStore) -> None:
        """Append the claim for `partition` once the store has folded to the end seen at assign."""
        claiming = self.claims.assigned[partition]
        if claiming.claim_id is not None:
            return
        if claiming.catch_up_to is None:
            claiming.catch_up_to = (await self.log.end_offsets()).get(partition, 0)
        if store.position.get(partition, 0) < claiming.catch_up_to:
            return
        claim = self.claims.claim_for(partition, store)
        (appended,) = await self._append([claim])
        claiming.claim_id, claiming.claim_offset = claim.id, appended.offset

    async def _assigned(self, partitions: frozenset[int]) -> None:
        raise NotImplementedError

    async def _revoked(self, partitions: frozenset[int]) -> None:
        raise NotImplementedError


class PartitionOwner(_Owner):
    """One store per owned partition (see the module's docstring)."""

    def __init__(
        self,
        actor: StoreActor,
        log: KafkaLog,
        replica: str,
        state_dir: Path,
        session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S,
        static: bool = True,
    ) -> None:
        super().__init__(actor, log, replica, session_timeout_s, static)
        self.state_dir = state_dir
        self.parts: dict[int, OwnedPartition] = {}
        self._reader = KafkaPartitionReader(log)
        self._generation = 0  # rebalances seen; the reader is re-seeked after each
        self._seeked = -1

    def position(self) -> dict[int, int]:
        """Only the partitions it owns: the others are folded elsewhere."""
        return {p: part.store.position.get(p, 0) for p, part in sorted(self.parts.items())}

    def path(self, partition: int) -> Path:
        return self.state_dir / f"p{partition}.db"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with self._reader, anyio.create_task_group() as tg:
            try:
                await tg.start(self.membership.run)
                self.caught_up = True  # readiness is per partition: every assigned one claimed
                task_status.started()
                while True:
                    generation = self._generation
                    stored = await self._reader.next_batch(max_records=self.actor.batch_size, timeout=0.5)
                    async with self._lock:
                        if generation != self._generation:
                            stored = []  # fetched before a rebalance: read again from the stores
                        await self._reopen()
                        await self._handle(stored)
            finally:
                self._close(set(self.parts))
                tg.cancel_scope.cancel()

    async def _assigned(self, partitions: frozenset[int]) -> None:
        # Opening a store means checking it against the log: done by the loop, not the callback.
        async with self._lock:
            self.claims.assigned = {p: Claiming() for p in partitions}
            self._generation += 1

    async def _revoked(self, partitions: frozenset[int]) -> None:
        async with self._lock:
            for p in partitions:
                self.claims.assigned.pop(p, None)
            self._close(set(partitions) & set(self.parts))
            self._generation += 1

    def _close(self, partitions: set[int]) -> None:
        """Close without committing: what was folded and not committed is dropped with the fetched
        records, and the next owner folds it again from the committed checkpoint."""
        for p in partitions:
            part = self.parts.pop(p)
            part.store.close()
            part.locks.close()

    async def _reopen(self) -> None:
        """After a rebalance: open the stores of newly assigned partitions, and read every owned
        partition again from its store's checkpoint (what was fetched before is dropped)."""
        if self._seeked == self._generation:
            return
        opening = [p for p in self.claims.assigned if p not in self.parts]
        end = await self.log.end_offsets() if self.claims.assigned else {}
        for p in opening:
            self.parts[p] = self._open(p, end.get(p, 0))
        for p, claiming in self.claims.assigned.items():
            claiming.catch_up_to = end.get(p, 0)
        self._reader.assign({p: part.store.position.get(p, 0) for p, part in self.parts.items()})
        self._seeked = self._generation

    def _open(self, partition: int, end: int) -> OwnedPartition:
        path = self.path(partition)
        locks = ExitStack()
        locks.enter_context(held_lock(path.with_suffix(".lock"), f"{self.actor.name}/p{partition}"))
        # Checked against the log's end: a checkpoint beyond it is rebuilt from the log.
        store = self.actor.open_store_at(path, end={partition: end})
        return OwnedPartition(store, locks)

    async def _handle(self, stored: list[Stored]) -> None:
        by_partition: dict[int, list[Stored]] = {}
        for s in stored:
            by_partition.setdefault(s.partition, []).append(s)
        for p in sorted(self.parts):
            part = self.parts[p]
            batch = self.actor.handle(by_partition.get(p, []), part.store) if p in by_partition else Batch()
            if self.claims.epoch(p) is None:
                part.held.extend(batch.decided)
                await self._claim(p, part.store)
                if self.claims.settle(p, part.store):
                    await self._release_held(p, part)
                continue
            if not by_partition.get(p):
                continue
            out = stamped(batch.decided + await self.actor.act(batch, part.store), self.claims)
            await self._append(out)
            self.actor.faults.point(f"{self.actor.name}: before commit")
            part.store.commit()
            self.actor.committed(out, part.store)

    async def _release_held(self, partition: int, part: OwnedPartition) -> None:
        """Our claim counts: append what we decided while catching up and the log does not hold."""
        missing = [f for f in part.held if part.store.own_pending(f.id)]
        part.held = []
        out = stamped(missing, self.claims)
        await self._append(out)
        part.store.commit()
        self.actor.claimed(partition, part.store)
        self.actor.committed(out, part.store)


class GlobalOwner(_Owner):
    """One store of the whole log; decides on claimed partitions only (see the module's docstring)."""

    def __init__(
        self,
        actor: StoreActor,
        log: KafkaLog,
        replica: str,
        session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S,
        static: bool = True,
    ) -> None:
        super().__init__(actor, log, replica, session_timeout_s, static)
        self.store: ProjectionStore | None = None
        # Per partition without our claim: unanswered records of redecide_types, by id, in log order.
        self._unanswered: dict[int, OrderedDict[str, Stored]] = {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        target = await self.log.end_offsets()
        store = self.store = self.actor.open_store(self.log, target)
        try:
            self.actor.opened(store)
            async with (
                self.log.subscribe(f"{self.actor.name}.{self.replica}", start=store.position) as mailbox,
                anyio.create_task_group() as tg,
            ):
                await tg.start(self.membership.run)
                tg.start_soon(self.actor.beside, self.log)
                task_status.started()
                while True:
                    stored = await mailbox.next_batch(max_records=self.actor.batch_size, timeout=0.5)
                    async with self._lock:
                        await self._handle(stored, store)
                    if not self.caught_up and all(store.position.get(p, 0) >= o for p, o in target.items()):
                        self.caught_up = True
                    self.actor.progress.update(store.position)
                    await mailbox.commit(store.position)
        finally:
            self.store = None
            store.close()

    async def _assigned(self, partitions: frozenset[int]) -> None:
        async with self._lock:
            self.claims.assigned = {p: Claiming() for p in partitions}

    async def _revoked(self, partitions: frozenset[int]) -> None:
        async with self._lock:
            for p in partitions:
                self.claims.assigned.pop(p, None)

    async def _handle(self, stored: list[Stored], store: ProjectionStore) -> None:
        batch = self.actor.handle(stored, store)
        self._track_unanswered(stored, batch)
        newly: list[int] = []
        for p in list(self.claims.assigned):
            await self._claim(p, store)
            if self.claims.settle(p, store):
                self.actor.claimed(p, store)
                newly.append(p)
        redecided = Batch()
        for p in newly:
            self._redecide(p, store, redecided)
        mine = Batch(
            records=[r for r in batch.records if self.claims.decides(r.key)] + redecided.records,
            # handle kept only what lands on partitions claimed when it ran
            decided=batch.decided + redecided.decided,
        )
        acted = await self.actor.act(mine, store) if mine.records else []
        out = stamped([r for r in mine.decided + acted if self.claims.decides(r.key)], self.claims)
        await self._append(out)
        self.actor.faults.point(f"{self.actor.name}: before commit")
        store.commit()
        self.actor.committed(out, store)

    def _track_unanswered(self, stored: list[Stored], batch: Batch) -> None:
        kinds = self.actor.redecide_types
        if not kinds:
            return
        for s in stored:
            if s.type in kinds and self.claims.epoch(s.partition) is None:
                waiting = self._unanswered.setdefault(s.partition, OrderedDict())
                waiting[s.id] = s
                if len(waiting) > REDECIDE_WINDOW:
                    waiting.popitem(last=False)
        for record in batch.records:
            if isinstance(record, Fact) and record.causation is not None:
                for waiting in self._unanswered.values():
                    waiting.pop(record.causation, None)

    def _redecide(self, partition: int, store: ProjectionStore, into: Batch) -> None:
        """Decide what this partition's previous owner left unanswered, as if it had just arrived:
        into `into`, whose records `act` then takes up like any of the batch's."""
        waiting = self._unanswered.pop(partition, OrderedDict())
        for s in waiting.values():
            record = s.decode()
            if not isinstance(record, Record):
                continue
            into.records.append(record)
            for fact in self.actor.on_record(record, store):
                if self.claims.decides(fact.key):
                    store.apply_own(fact)
                    into.decided.append(fact)
        if waiting:
            log.info(
                "%s: %d records left unanswered on partition %d decided",
                self.actor.name,
                len(waiting),
                partition,
            )
