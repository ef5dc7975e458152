"""Whether a cluster process is ready: an actor when its `GET /healthz` answers 200 (it has caught up),
the broker when it answers a Kafka metadata request listing itself, S3 when it lists its buckets."""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import httpx

from mint.cluster.processes import log_tail, state
from mint.cluster.table import HOST, ClusterError, Process
from mint.local_services import probe_broker

PROBE_TIMEOUT_S = 1.0
_POLL_S = 0.1  # between rounds of probes while waiting for readiness


def probe(process: Process) -> str | None:
    """None when `process` is ready, else why not (one attempt)."""
    if process.role == "broker":
        return probe_broker(HOST, process.port, PROBE_TIMEOUT_S)
    path = "/" if process.role == "s3" else "/healthz"
    try:
        response = httpx.get(f"http://{HOST}:{process.port}{path}", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.status_code == 200:
        return None
    try:
        reason = response.json().get("reason")
    except ValueError:
        reason = None
    return f"{path} answered {response.status_code}" + (f": {reason}" if reason else "")


def why_not_ready(process: Process) -> str | None:
    """Like `probe`, but a dead or stopped process is not asked (a stopped one would not answer)."""
    now = state(process)
    return probe(process) if now == "running" else now


def probe_all(processes: list[Process]) -> list[str | None]:
    """`why_not_ready` of each, asked at once (a cluster has tens of processes)."""
    if not processes:
        return []
    with ThreadPoolExecutor(max_workers=len(processes)) as pool:
        return list(pool.map(why_not_ready, processes))


def wait_ready(processes: Iterable[Process], timeout_s: float) -> None:
    """Return once every process is ready. A ClusterError, naming each one that is not and ending with
    its log, when one dies or `timeout_s` passes first."""
    pending = list(processes)
    deadline = time.monotonic() + timeout_s
    while pending:
        reasons = probe_all(pending)
        dead = [p for p, why in zip(pending, reasons, strict=True) if why == "dead"]
        if dead:
            raise ClusterError(_report(dead, ["exited"] * len(dead)))
        waiting = [(p, why) for p, why in zip(pending, reasons, strict=True) if why is not None]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise ClusterError(
                _report(
                    [p for p, _ in waiting],
                    [f"not ready after {timeout_s:.0f}s ({why})" for _, why in waiting],
                )
            )
        pending = [p for p, _ in waiting]
        time.sleep(_POLL_S)


def _report(processes: list[Process], reasons: list[str]) -> str:
    return "\n".join(
        f"{p.name} (pid {p.pid}, port {p.port}) {why}; {p.log} ends:\n{log_tail(p)}"
        for p, why in zip(processes, reasons, strict=True)
    )
