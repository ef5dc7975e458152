"""`mint bench soak`: the chaos workload (mint/chaos/workload.py) at a fixed rate on a fresh `mint cluster`
for minutes, faults optional, while a sampler records every few seconds each replica's log lag (the
log's end minus the position its /healthz reports folding) and each process's resident memory. A leak
shows as a slope of memory over time, a replica that falls behind as a rising lag.

It reports requests served, errors by kind, p50/p99 latency per route, the largest lag per actor, the
memory slope per process, and writes a plot (latency, lag and memory over time, faults marked), the
series as JSON and the workload's ledger (every answer, with its error's first bytes) beside it. The
cluster's broker keeps its log in memory: on moto's S3 a broker's fetches slow down over minutes of
heartbeats (README, "Engine hosts"), which would be what is measured.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx

from events.kafka_log import KafkaLog
from events.seal import Seal
from mint.chaos.faults import KINDS, FaultPlan, inject
from mint.chaos.ledger import Answer, FaultInjected, Ledger, read_ledger
from mint.chaos.run import RUN_COUNTS
from mint.chaos.workload import Workload
from mint.cluster import launcher
from mint.cluster.roles import ROLES
from mint.cluster.table import HOST, ClusterDir
from mint.percentiles import percentile

SAMPLE_EVERY_S = 5.0
HEALTH_TIMEOUT_S = 2.0
FAULT_EVERY_S = 30.0
LATENCY_WINDOW_S = 30.0  # the plot's latency percentiles are per window of this many seconds
MIB = 1024 * 1024

Say = Callable[[str], None]


@dataclass
class Samples:
    """Per process name: (seconds since the start, value)."""

    lag: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    rss_mib: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))


def bench_soak(
    minutes: float, rate_per_s: float, faults: bool, seed: int, plot: Path, say: Say
) -> dict[str, float]:
    plot.parent.mkdir(parents=True, exist_ok=True)  # before the run: a bad path fails in seconds
    ledger = plot.with_suffix(".ledger.jsonl")  # every answer in words, for what the plot shows
    ledger.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="mint-bench-soak-") as tmp:
        cluster = ClusterDir(Path(tmp) / "cluster")
        say(f"soak: starting a cluster in {cluster.root}")
        launcher.up(cluster.root, RUN_COUNTS, broker_storage="memory", say=say)
        try:
            began = time.time()
            samples = anyio.run(_soak, cluster, ledger, minutes, rate_per_s, faults, seed, say)
            entries = read_ledger(ledger)
        finally:
            launcher.down(cluster.root)
    answers = [e for e in entries if isinstance(e, Answer)]
    injected = [e for e in entries if isinstance(e, FaultInjected)]
    results = summary(answers, injected, samples, minutes, rate_per_s)
    series = plot.with_suffix(".json")
    series.write_text(json.dumps(_series(answers, injected, samples, began), indent=1))
    draw(plot, answers, injected, samples, began)
    say(f"soak: plot in {plot}, series in {series}, every answer in {ledger}")
    return results


async def _soak(
    cluster: ClusterDir,
    ledger_path: Path,
    minutes: float,
    rate_per_s: float,
    faults: bool,
    seed: int,
    say: Say,
) -> Samples:
    samples = Samples()
    ledger = Ledger(ledger_path)
    try:
        workload = Workload(cluster, ledger, seed=seed, rate_per_s=rate_per_s)
        stop = anyio.Event()
        say(f"soak: {rate_per_s}/s for {minutes:g} min, faults {'on' if faults else 'off'}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(workload.run, stop)
            tg.start_soon(_sample, cluster, samples, stop)
            if faults:
                tg.start_soon(
                    inject, cluster, FaultPlan(seed, KINDS, FAULT_EVERY_S, spare_one=True), stop, ledger
                )
            await anyio.sleep(minutes * 60)
            stop.set()
    finally:
        ledger.close()
    return samples


async def _sample(cluster: ClusterDir, samples: Samples, stop: anyio.Event) -> None:
    """Every SAMPLE_EVERY_S until `stop`: each replica's lag, each process's RSS."""
    table = cluster.read()
    seal = Seal.from_secret(cluster.key.read_text().strip())
    began = anyio.current_time()
    async with (
        KafkaLog(table.kafka, topic=table.topic, seal=seal) as log,
        httpx.AsyncClient(timeout=HEALTH_TIMEOUT_S) as http,
    ):
        while not stop.is_set():
            at = anyio.current_time() - began
            end = await log.end_offsets()
            for process in cluster.read().processes:  # re-read: a fault restarts processes under new pids
                rss = rss_mib(process.pid)
                if rss is not None:
                    samples.rss_mib[process.name].append((at, rss))
                if process.role in ROLES:
                    position = await _position(http, process.port)
                    if position is not None:
                        samples.lag[process.name].append((at, lag(end, position, process.role)))
            with anyio.move_on_after(SAMPLE_EVERY_S):
                await stop.wait()


async def _position(http: httpx.AsyncClient, port: int) -> dict[int, int] | None:
    """The position a replica's /healthz reports (None while it does not answer: killed or stopped)."""
    try:
        answer = await http.get(f"http://{HOST}:{port}/healthz")
        position = answer.json().get("position")
    except (httpx.HTTPError, ValueError):
        return None
    return {int(p): int(o) for p, o in position.items()} if isinstance(position, dict) else None


def lag(end: dict[int, int], position: dict[int, int], role: str) -> int:
    """Records on the log this replica has not folded: over the partitions it reports, or (a replica
    that folds the whole log, before it reported any) over all of them. A catalog owner reports only
    the partitions it owns."""
    partitions = position.keys() if position or role == "catalog" else end.keys()
    return sum(max(0, end.get(p, 0) - position.get(p, 0)) for p in partitions)


def rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / MIB
    return None


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of value over time, per minute (0 with fewer than two points)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 60


def error_kind(answer: Answer) -> str | None:
    """None for a success; else `timeout`, `transport`, or the status (`429`, `503`, `500`, ...)."""
    if answer.failure is not None:
        return answer.failure
    return None if 200 <= answer.status < 300 else str(answer.status)


def summary(
    answers: list[Answer], injected: list[FaultInjected], samples: Samples, minutes: float, rate_per_s: float
) -> dict[str, float]:
    results: dict[str, float] = {
        "minutes": minutes,
        "rate_per_s": rate_per_s,
        "requests": float(len(answers)),
        "served": float(sum(error_kind(a) is None for a in answers)),
        "faults": float(len(injected)),
    }
    for kind, count in sorted(Counter(k for a in answers if (k := error_kind(a)) is not None).items()):
        results[f"errors_{kind}"] = float(count)
    by_route: dict[str, list[float]] = defaultdict(list)
    for a in answers:
        if error_kind(a) is None:
            by_route[a.route].append(a.elapsed_s)
    for route, times in sorted(by_route.items()):
        name = _key(route)
        results[f"{name}_p50_ms"] = percentile(times, 0.5) * 1000
        results[f"{name}_p99_ms"] = percentile(times, 0.99) * 1000
    worst: dict[str, int] = {}
    for name, points in samples.lag.items():
        role = name.rsplit("-", 1)[0]
        worst[role] = max(worst.get(role, 0), max(v for _, v in points))
    for role, value in sorted(worst.items()):
        results[f"lag_max_{_key(role)}"] = float(value)
    for name, rss in sorted(samples.rss_mib.items()):
        results[f"rss_mib_{_key(name)}"] = rss[-1][1]
        results[f"rss_slope_mib_per_min_{_key(name)}"] = slope_per_min(rss)
    return results


def _key(name: str) -> str:
    """`POST /v1/chat/completions` -> `post_v1_chat_completions`: a JSON key of letters and `_`."""
    return "_".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def _series(
    answers: list[Answer], injected: list[FaultInjected], samples: Samples, began: float
) -> dict[str, object]:
    return {
        "latency": [
            [round(a.at - began, 3), a.route, a.status, round(a.elapsed_s * 1000, 2)] for a in answers
        ],
        "lag": {name: points for name, points in samples.lag.items()},
        "rss_mib": {name: points for name, points in samples.rss_mib.items()},
        "faults": [[round(f.at - began, 3), f.kind, f.target] for f in injected],
    }


def draw(
    plot: Path, answers: list[Answer], injected: list[FaultInjected], samples: Samples, began: float
) -> None:
    """Three panels over the run's minutes: latency p50/p99 per route (per window), lag per replica,
    RSS per process; a vertical line at each fault."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file
    import matplotlib.pyplot as plt

    figure, (latency, lags, memory) = plt.subplots(3, 1, figsize=(11, 11), sharex=True)
    colours = plt.get_cmap("tab20")
    for axis in (latency, lags, memory):  # a cluster has more lines than the default ten colours
        axis.set_prop_cycle(color=[colours(i) for i in range(20)])
    windows: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for a in answers:
        if error_kind(a) is None:
            windows[a.route][int((a.at - began) // LATENCY_WINDOW_S)].append(a.elapsed_s * 1000)
    for route, by_window in sorted(windows.items()):
        ticks = sorted(by_window)
        minutes = [(w + 0.5) * LATENCY_WINDOW_S / 60 for w in ticks]
        (line,) = latency.plot(minutes, [percentile(by_window[w], 0.5) for w in ticks], label=f"{route} p50")
        latency.plot(minutes, [percentile(by_window[w], 0.99) for w in ticks], "--", color=line.get_color())
    latency.set_yscale("log")
    latency.set_ylabel(f"latency, ms (p50 solid, p99 dashed; per {LATENCY_WINDOW_S:g} s)")
    latency.legend(fontsize=7, loc="upper left")
    for name, points in sorted(samples.lag.items()):
        lags.plot([t / 60 for t, _ in points], [v for _, v in points], label=name)
    lags.set_ylabel("log lag, records")
    lags.legend(fontsize=7, loc="upper left", ncol=2)
    for name, rss in sorted(samples.rss_mib.items()):
        memory.plot([t / 60 for t, _ in rss], [v for _, v in rss], label=name)
    memory.set_ylabel("RSS, MiB")
    memory.set_xlabel("minutes")
    memory.legend(fontsize=7, loc="upper left", ncol=2)
    for fault in injected:
        for axis in (latency, lags, memory):
            axis.axvline((fault.at - began) / 60, color="red", alpha=0.3, linewidth=0.8)
    figure.suptitle(f"mint bench soak: {len(answers)} requests, {len(injected)} faults (red lines)")
    figure.tight_layout()
    figure.savefig(plot, dpi=90)
    plt.close(figure)
