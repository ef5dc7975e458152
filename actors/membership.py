"""Membership of an actor's consumer group: which partitions this replica owns, and whether it may still
decide.

Replicas of one actor join one Kafka consumer group (the group id is the actor's name) with the sticky
assignor and static membership (`group_instance_id` = the replica id), so a replica that restarts within
its session timeout gets its partitions back without a rebalance, and one that joins or leaves moves as
few partitions as it can. The group is used for ownership only: its consumer keeps every partition
paused and never fetches. Records are read by the owner's own reader from each partition's own
checkpoint (the store is the truth, not the group's committed offsets), so the rebalance callbacks
share no lock with a fetch (aiokafka's consumer docs warn of that deadlock).

Static membership is the default and what Kafka deployments should use. Tansu 0.6 (the broker of our
tests and of `mint cluster`) livelocks when two static members join one rebalance: the follower's
SyncGroup fails with REBALANCE_IN_PROGRESS round after round. So `static=False` (`mint actor
--membership dynamic`) joins as a dynamic member; every rule below holds either way, a restart just
costs a rebalance.

Self-fencing: aiokafka heartbeats from a background task, and a process that was stopped (SIGSTOP, a
long GC pause, a frozen VM) wakes up still believing it owns its partitions. `fresh()` is False once
the last successful group heartbeat is older than the session timeout minus a margin: by then the
coordinator may have given the partitions to another replica, so the owner stops deciding until the
group has spoken again. What it decided after losing them is fenced in every fold anyway
(events/claims.py); this keeps it from trying.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from anyio.abc import TaskStatus

from events.kafka_log import KafkaLog

log = logging.getLogger(__name__)

# Kafka's default session timeout is 45 s; ours is shorter so a dead owner's partitions move quickly.
DEFAULT_SESSION_TIMEOUT_S = 10.0
# Stop deciding this long before the coordinator may have given our partitions away.
SELF_FENCE_MARGIN = 0.2  # of the session timeout

Change = Callable[[frozenset[int]], Awaitable[None]]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, membership: GroupMembership) -> None:
        self._membership = membership

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._membership._revoked(frozenset(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._membership._assigned(frozenset(tp.partition for tp in assigned))


class GroupMembership:
    """Join `group` as static member `replica`; `on_assigned` and `on_revoked` are awaited inside the
    rebalance (the coordinator waits for them), so they must only stop, close and open local state:
    they publish nothing."""

    def __init__(
        self,
        log: KafkaLog,
        group: str,
        replica: str,
        on_assigned: Change,
        on_revoked: Change,
        session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S,
        static: bool = True,
    ) -> None:
        self.log = log
        self.static = static
        self.group = group
        self.replica = replica
        self.session_timeout_s = session_timeout_s
        self.owned: frozenset[int] = frozenset()
        self.generations = 0  # completed rebalances that gave this replica an assignment
        # False from a revocation until the next assignment: a rebalance is under way.
        self.settled = False
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._last_heartbeat = 0.0
        self._consumer: Any = None

    def heartbeat_age(self) -> float:
        return time.monotonic() - self._last_heartbeat

    def fresh(self) -> bool:
        """Whether the group has confirmed this member recently enough that it still owns its partitions."""
        return self._consumer is not None and self.heartbeat_age() < self.session_timeout_s * (
            1 - SELF_FENCE_MARGIN
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        session_ms = int(self.session_timeout_s * 1000)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.log.bootstrap,
            client_id=f"{self.log.client_id}-{self.replica}",
            group_id=self.group,
            group_instance_id=self.replica if self.static else None,
            partition_assignment_strategy=(StickyPartitionAssignor,),
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 10),
            # A rebalance waits this long for every member's callbacks: ours close files, in ms.
            rebalance_timeout_ms=max(session_ms, 10_000),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        consumer.subscribe([self.log.topic], listener=_Listener(self))
        await consumer.start()
        self._watch_heartbeats(consumer)
        self._consumer = consumer
        task_status.started()
        try:
            while True:
                # Every partition is paused: this returns nothing, but it runs the coordinator's
                # rebalances and tells it this member is alive (no max_poll_interval expulsion).
                await consumer.getmany(timeout_ms=500)
        finally:
            self._consumer = None
            with anyio.CancelScope(shield=True):
                await consumer.stop()

    def _watch_heartbeats(self, consumer: Any) -> None:
        # aiokafka keeps the time of its last good heartbeat in a local variable of its heartbeat
        # routine, so the check wraps the one call that routine makes per beat.
        coordinator = consumer._coordinator
        beat = coordinator._do_heartbeat

        async def recorded() -> bool:
            ok: bool = await beat()
            if ok:
                self._last_heartbeat = time.monotonic()
            return ok

        coordinator._do_heartbeat = recorded

    async def _assigned(self, partitions: frozenset[int]) -> None:
        consumer = self._consumer
        if consumer is not None and partitions:
            consumer.pause(*(TopicPartition(self.log.topic, p) for p in partitions))
        self._last_heartbeat = time.monotonic()  # a completed join is the group's word too
        self.owned = partitions
        self.generations += 1
        self.settled = True
        log.info("%s/%s: assigned %s", self.group, self.replica, sorted(partitions))
        await self._on_assigned(partitions)

    async def _revoked(self, partitions: frozenset[int]) -> None:
        log.info("%s/%s: revoked %s", self.group, self.replica, sorted(partitions))
        self.owned = self.owned - partitions
        self.settled = False
        await self._on_revoked(partitions)
