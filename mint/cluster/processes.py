"""The cluster's OS processes: start one detached, tell whether it still runs, signal it, stop it.

Each process is the leader of its own session (so of its own process group): it outlives the shell or
the test that started the cluster, a signal reaches whatever it spawned too, and a later `mint cluster`
command, which is not its parent, finds it again by pid. A pid is trusted only while the process it
names started when the table says (`Process.started`), since the kernel reuses pids.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from mint.cluster.table import Process

State = Literal["running", "stopped", "dead"]

_POLL_S = 0.05  # between looks at a process that is being stopped


def spawn(command: list[str], env: Mapping[str, str], log: Path) -> tuple[int, int | None]:
    """Start `command` detached, stdout and stderr appended to `log`, stdin closed: its pid and start."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        try:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
            )
        except OSError as exc:
            raise OSError(f"cannot run {command[0]}: {exc}") from exc
    return child.pid, _stat(child.pid)[1]


def _stat(pid: int) -> tuple[str, int | None]:
    """(state letter, start time in clock ticks) of pid, from /proc; ("X", None) when there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return "X", None
    # The command name (field 2) is in parentheses and may hold spaces; the fields after it are fixed.
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def state(process: Process) -> State:
    letter, started = _stat(process.pid)
    if letter in "ZX" or (process.started is not None and started != process.started):
        return "dead"  # a zombie has exited: only its parent's wait is missing
    return "stopped" if letter in "Tt" else "running"


def send(process: Process, sig: signal.Signals) -> bool:
    """Send `sig` to the process's group; False when it is not running any more."""
    if state(process) == "dead":
        return False
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return False
    return True


def stop(processes: Iterable[Process], timeout_s: float) -> None:
    """SIGTERM each (they drain and exit), then SIGKILL whichever still runs after `timeout_s`."""
    remaining = [p for p in processes if send(p, signal.SIGTERM)]
    for process in remaining:
        send(process, signal.SIGCONT)  # a stopped process acts on its SIGTERM only once continued
    remaining = _wait_dead(remaining, time.monotonic() + timeout_s)
    for process in remaining:
        send(process, signal.SIGKILL)
    _wait_dead(remaining, time.monotonic() + timeout_s)


def _wait_dead(processes: list[Process], deadline: float) -> list[Process]:
    """Those of `processes` still alive at `deadline` (or none, as soon as all are gone)."""
    while True:
        processes = [p for p in processes if state(p) != "dead"]
        if not processes or time.monotonic() >= deadline:
            return processes
        time.sleep(_POLL_S)


def log_tail(process: Process, lines: int = 30) -> str:
    try:
        text = Path(process.log).read_bytes()[-16_000:].decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
