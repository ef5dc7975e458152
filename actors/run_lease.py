"""A trainer replica's hold on one run: Temporal's activity attempt token, as facts on the log.

Taking a run (`claim`): append a `RunClaimed` with the next epoch on the run's partition, fold until it
is read back, and check that it is the claim that counts; then the same on each policy's partition.
Only then does the worker train, stamping every fact with the epoch (`RunLease.append`). The run's
claim decides a race for one epoch, and a policy's claim is only ever appended by that winner, so two
workers can never split a run's partitions between them.

Holding it: a heartbeat every `heartbeat_s`, carrying the last step on the log. A reader takes the
lease for expired when no heartbeat of its counted epoch has reached it for `timeout_s` by its own
clock (actors/trainer.py), so clocks of different machines are never compared.

Self-fencing: the holder counts its lease from the moment it began the append of its last heartbeat
that the log acknowledged. A reader's count starts later (when the heartbeat reached it), so the holder
always gives up first. A gap longer than `timeout_s` between two acknowledged heartbeats (the process
was stopped, the broker was away) loses the lease for good, as does a later claim in its own store:
someone else may be training the run by then. What a worker appends after losing its lease is fenced
in every fold anyway (events/claims.py); this keeps it from trying.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import msgspec

from actors.progress import Progress
from events.envelope import Fact, Record
from events.log import Appended, EventLog
from events.training import RunClaimed, RunHeartbeat, lease_scope
from mint.projection.store import ProjectionStore

logger = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another worker may hold the run now: stop, and append nothing more under this lease."""


@dataclass(frozen=True)
class LeaseTimings:
    """How often a holder heartbeats, and how long a silent lease lasts. Both are far below a run's
    length; a takeover needs `timeout_s` of silence, plus, on a cluster, the group's session timeout
    for the run's partition to move to another replica."""

    heartbeat_s: float = 1.0
    timeout_s: float = 6.0

    def __post_init__(self) -> None:
        if not self.heartbeat_s > 0:
            raise ValueError(f"heartbeat_s: must be above 0, got {self.heartbeat_s}")
        if not self.timeout_s >= 2 * self.heartbeat_s:
            raise ValueError(
                f"timeout_s: must be at least twice heartbeat_s ({self.heartbeat_s}), got {self.timeout_s}"
            )


def claim_id(run: str, epoch: int, replica: str, on: str) -> str:
    return f"{_prefix(run, epoch, replica)}{on}"


def _prefix(run: str, epoch: int, replica: str) -> str:
    return f"{run}/lease/{epoch}/{replica}/"


class RunLease:
    """A counted claim on a run, while it lasts (see the module's docstring)."""

    def __init__(
        self,
        log: EventLog,
        store: ProjectionStore,
        run: str,
        replica: str,
        epoch: int,
        run_partition: int,
        timings: LeaseTimings,
        renewed_at: float,
    ) -> None:
        self.log = log
        self.store = store
        self.run = run
        self.replica = replica
        self.epoch = epoch
        self.run_partition = run_partition
        self.timings = timings
        self.renewed_at = renewed_at
        self.progress = 0  # the last step whose facts are on the log
        self.lost: str | None = None
        self._beats = 0

    def check(self) -> None:
        """Raise LeaseLost unless this lease may still count."""
        if self.lost is None:
            silent = time.monotonic() - self.renewed_at
            latest = self.store.claim_of(lease_scope(self.run), self.run_partition)
            if silent > self.timings.timeout_s:
                self.lost = (
                    f"no heartbeat acknowledged for {silent:.1f}s (lease timeout {self.timings.timeout_s}s)"
                )
            elif latest is not None and not latest.claim.startswith(
                _prefix(self.run, self.epoch, self.replica)
            ):
                self.lost = f"claimed by {latest.replica} at epoch {latest.epoch}"
        if self.lost is not None:
            raise LeaseLost(f"{self.run}: lease of epoch {self.epoch} lost: {self.lost}")

    def stamped(self, facts: Sequence[Record]) -> list[Record]:
        return [msgspec.structs.replace(f, epoch=self.epoch) if isinstance(f, Fact) else f for f in facts]

    async def append(self, facts: Sequence[Record]) -> list[Appended]:
        """Append facts of this run under the lease's epoch, if the lease still holds."""
        if not facts:
            return []
        self.check()
        return await self.log.append(self.stamped(facts))

    async def beat(self) -> None:
        """One heartbeat; the lease is renewed from the moment it began, once the log has it."""
        began = time.monotonic()
        self.check()
        self._beats += 1
        heartbeat = RunHeartbeat.create(
            id=f"{_prefix(self.run, self.epoch, self.replica)}beat/{self._beats}",
            source="trainer",
            run=self.run,
            replica=self.replica,
            step=self.progress,
            interval_s=self.timings.heartbeat_s,
            epoch=self.epoch,
        )
        await self.log.append([heartbeat])
        self.renewed_at = began

    async def keep_alive(self) -> None:
        """Heartbeat until cancelled or lost. A failed append is only a missed beat: if beats stay
        missing past the timeout, `check` loses the lease."""
        while self.lost is None:
            await anyio.sleep(self.timings.heartbeat_s)
            try:
                await self.beat()
            except LeaseLost as exc:
                logger.warning("%s", exc)
                return
            except Exception:
                logger.exception("%s: heartbeat of epoch %d failed", self.run, self.epoch)


async def claim(
    log: EventLog,
    store: ProjectionStore,
    progress: Progress,
    run: str,
    policies: Sequence[str],
    replica: str,
    epoch: int,
    timings: LeaseTimings,
) -> RunLease | None:
    """Claim `run` at `epoch` for `replica`: the lease if every claim counts, None if another worker's
    claim came first (or the claims were not read back within the lease timeout)."""
    began = time.monotonic()
    scope = lease_scope(run)

    def claims(on: Sequence[str]) -> list[Record]:
        return [
            RunClaimed.create(
                id=claim_id(run, epoch, replica, key),
                source="trainer",
                run=run,
                on=key,
                replica=replica,
                epoch=epoch,
            )
            for key in on
        ]

    async def counted(records: list[Record]) -> list[Appended] | None:
        appended = await log.append(records)
        with anyio.move_on_after(timings.timeout_s):
            await progress.reached({a.partition: a.offset + 1 for a in appended})
            for a in appended:
                latest = store.claim_of(scope, a.partition)
                if latest is None or not latest.claim.startswith(_prefix(run, epoch, replica)):
                    return None
            return appended
        return None

    on_run = await counted(claims([run]))
    if on_run is None or await counted(claims(policies)) is None:
        logger.info("%s: %s's claim at epoch %d did not count", run, replica, epoch)
        return None
    logger.info("%s: %s holds the lease at epoch %d", run, replica, epoch)
    return RunLease(log, store, run, replica, epoch, on_run[0].partition, timings, began)
