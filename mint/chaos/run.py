"""One chaos run: a cluster (started here, or the one running in its directory), the workload and the
fault plan side by side for a while, then the checks over what the ledger recorded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from mint.chaos.checks import Report, check_cluster
from mint.chaos.faults import FaultPlan, inject
from mint.chaos.ledger import Ledger
from mint.chaos.workload import Workload
from mint.cluster import launcher
from mint.cluster.roles import DEFAULT_COUNTS
from mint.cluster.table import ClusterDir

# A cluster started for a run: the default one with a second API replica, so a killed one has a twin.
RUN_COUNTS = {**DEFAULT_COUNTS, "api": 2}


async def run_chaos(
    cluster: ClusterDir,
    ledger_path: Path,
    seed: int,
    duration_s: float,
    rate_per_s: float,
    kinds: Sequence[str],
    every_s: float,
    say: Callable[[str], None],
    keep: bool = False,
) -> Report:
    started = not cluster.table.exists()
    if started:
        say(f"starting a cluster in {cluster.root}")
        await anyio.to_thread.run_sync(lambda: launcher.up(cluster.root, RUN_COUNTS, say=say))
    elif not cluster.read().ready:
        raise ValueError(
            f"--root: the cluster in {cluster.root} is not running (mint cluster up, or an empty directory)"
        )
    ledger = Ledger(ledger_path)
    try:
        workload = Workload(cluster, ledger, seed=seed, rate_per_s=rate_per_s)
        say(
            f"load at {rate_per_s}/s for {duration_s:.0f} s, faults {', '.join(kinds) or 'none'}; "
            f"ledger {ledger_path}"
        )
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(workload.run, stop)
            if kinds:
                tg.start_soon(inject, cluster, FaultPlan(seed, kinds, every_s), stop, ledger)
            await anyio.sleep(duration_s)
            stop.set()
        say(f"sent {sum(workload.counts.values())} requests ({dict(workload.counts)}); checking")
        return await check_cluster(cluster, ledger_path)
    finally:
        ledger.close()
        if started and not keep:
            say("stopping the cluster")
            await anyio.to_thread.run_sync(launcher.down, cluster.root)
