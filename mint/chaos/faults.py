"""A seeded schedule of process faults on a `mint cluster`, injected through its launcher.

About every `every_s` seconds (jittered, so faults land at random points of the work) the plan draws a
kind, and a target among the replicas of the next of its roles (in a seeded order, each role in turn):
`kill` is kill -9 then `mint cluster restart` (same command line, port and home, waited ready);
`stop` is SIGSTOP, `stop_s` seconds frozen, then SIGCONT. Each fault goes into the ledger with the
wall time it began and the time its target was back, so the checks can tell a request to a process
the plan had just killed from a hang, and the soak benchmark can plot them.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from mint.chaos.ledger import FaultInjected, Ledger
from mint.chaos.until import set_after, stop_event
from mint.cluster import launcher
from mint.cluster.roles import ROLES
from mint.cluster.table import HOST, ClusterDir, Process

KINDS = ("kill", "stop")
RESTART_TIMEOUT_S = 240.0  # an engine host or trainer imports torch again on busy cores


@dataclass(frozen=True)
class FaultPlan:
    seed: int
    kinds: Sequence[str] = KINDS
    every_s: float = 10.0
    roles: Sequence[str] = ROLES  # whose replicas may be hit (actors only: the broker and S3 are not)
    stop_s: float = 5.0
    # Only a role with more than one replica is hit when True, so the cluster always has one serving.
    spare_one: bool = False
    limit: int | None = None  # stop after this many faults
    injected: list[FaultInjected] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"kinds: no fault named {', '.join(unknown)} (faults: {', '.join(KINDS)})")
        strange = sorted(set(self.roles) - set(ROLES))
        if strange:
            raise ValueError(f"roles: no role named {', '.join(strange)} (roles: {', '.join(ROLES)})")
        if self.every_s <= 0:
            raise ValueError(f"every_s: {self.every_s} is not above 0")


def _targets(cluster: ClusterDir, plan: FaultPlan, role: str) -> list[Process]:
    processes = cluster.read().processes
    if plan.spare_one and sum(p.role == role for p in processes) < 2:
        return []
    return [p for p in processes if p.role == role]


async def inject(
    cluster: ClusterDir, plan: FaultPlan, until: anyio.Event | float, ledger: Ledger | None = None
) -> list[FaultInjected]:
    """Inject the plan's faults, one at a time, until `until` (an event, or seconds); each recorded in
    `plan.injected` and the ledger. A fault under way when `until` comes is finished (its target is
    restarted or continued), so the cluster is whole when this returns."""
    stop, seconds = stop_event(until)
    rng = random.Random(plan.seed)
    roles = list(plan.roles)
    rng.shuffle(roles)
    turn = 0
    async with anyio.create_task_group() as tg:
        if seconds is not None:
            tg.start_soon(set_after, stop, seconds)
        while plan.limit is None or len(plan.injected) < plan.limit:
            with anyio.move_on_after(plan.every_s * rng.uniform(0.5, 1.5)):
                await stop.wait()
            if stop.is_set():
                break
            # The next role in turn that has a replica to hit (a cluster may lack some roles).
            for _ in range(len(roles)):
                targets = _targets(cluster, plan, roles[turn % len(roles)])
                turn += 1
                if targets:
                    break
            else:
                continue
            kind = rng.choice(list(plan.kinds))
            fault = await _inject_one(cluster, plan, kind, rng.choice(targets))
            plan.injected.append(fault)
            if ledger is not None:
                ledger.write(fault)
        tg.cancel_scope.cancel()
    return plan.injected


async def _inject_one(cluster: ClusterDir, plan: FaultPlan, kind: str, target: Process) -> FaultInjected:
    url = f"http://{HOST}:{target.port}" if target.role == "api" else ""
    at = time.time()
    with anyio.CancelScope(shield=True):  # never leave a process dead or frozen behind
        if kind == "kill":
            await anyio.to_thread.run_sync(launcher.kill, cluster.root, target.name, signal.SIGKILL)
            await anyio.to_thread.run_sync(launcher.restart, cluster.root, target.name, RESTART_TIMEOUT_S)
        else:
            await anyio.to_thread.run_sync(launcher.kill, cluster.root, target.name, signal.SIGSTOP)
            await anyio.sleep(plan.stop_s)
            await anyio.to_thread.run_sync(launcher.kill, cluster.root, target.name, signal.SIGCONT)
    return FaultInjected(kind, target.name, url, at, time.time())


async def storm(
    cluster: ClusterDir,
    seed: int,
    roles: Sequence[str],
    every_s: float,
    until: anyio.Event | float,
    ledger: Ledger | None = None,
) -> list[FaultInjected]:
    """A rebalance storm: every `every_s` seconds (jittered) a replica of one of `roles` (in a seeded
    turn) joins (`mint cluster add`), and the oldest of that role leaves (`mint cluster remove`, it
    drains on SIGTERM), so each consumer group rebalances twice. Each leave is recorded like a fault
    (kind `leave`), so the checks excuse a request to an API replica that was leaving."""
    stop, seconds = stop_event(until)
    rng = random.Random(seed)
    done: list[FaultInjected] = []
    turn = 0
    async with anyio.create_task_group() as tg:
        if seconds is not None:
            tg.start_soon(set_after, stop, seconds)
        while True:
            with anyio.move_on_after(every_s * rng.uniform(0.5, 1.5)):
                await stop.wait()
            if stop.is_set():
                break
            role = roles[turn % len(roles)]
            turn += 1
            with anyio.CancelScope(shield=True):  # a join or leave under way is finished
                await anyio.to_thread.run_sync(launcher.add, cluster.root, role, RESTART_TIMEOUT_S)
                (oldest, *_) = [p for p in cluster.read().processes if p.role == role]
                url = f"http://{HOST}:{oldest.port}" if role == "api" else ""
                at = time.time()
                await anyio.to_thread.run_sync(launcher.remove, cluster.root, oldest.name)
                left = FaultInjected("leave", oldest.name, url, at, time.time())
            done.append(left)
            if ledger is not None:
                ledger.write(left)
        tg.cancel_scope.cancel()
    return done
