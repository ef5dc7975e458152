"""A real `mint cluster` for a test: started through the CLI in a directory of its own, always stopped.

    with running_cluster(tmp_path, catalog=2, api=1) as cluster:
        cluster.kill("catalog-1", "STOP")
        ...

Counts are `mint cluster up`'s options (catalog, projectors, schedulers, trainers, evaluators, engines,
api); a role not given gets none, so a test starts only what it uses. Trainers, evaluators and engine
hosts need a base: pass `base_dir=` (e.g. the `base_dir` fixture of tests/engine_fixtures.py) to copy
one in instead of building the tiny base in the cluster (about 15 s on 2 cores). The broker keeps its
log on the cluster's S3 (so it survives `cluster.restart("broker")`); a test that never restarts the
broker can pass `broker_storage="memory"`, which spares moto (Python, on the same cores) the broker's
writes and its group state on every heartbeat.

On a failure inside the block the tail of every process's log is printed (pytest shows it with the
failure); `mint cluster down` runs whatever happens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events.kafka_log import KafkaLog
from events.seal import Seal
from mint.cluster import launcher
from mint.commands.cluster import SIGNALS

MINT = str(Path(sys.executable).with_name("mint"))
COUNTS = ("catalog", "projectors", "schedulers", "trainers", "evaluators", "engines", "api")
# What `mint cluster up` may take beyond the readiness timeout it is given (starting, writing, stopping).
SLACK_S = 60.0


class ClusterCommandFailed(AssertionError):
    pass


@dataclass
class RunningCluster:
    root: Path
    table: dict[str, Any]  # cluster.json as read last (`refresh` reads it again)
    timeout_s: float

    def mint(self, *args: str, timeout_s: float | None = None) -> str:
        """`mint cluster ARGS --dir ROOT`: its stdout, or ClusterCommandFailed with its output."""
        command = [MINT, "cluster", *args, "--dir", str(self.root)]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=(timeout_s or self.timeout_s) + SLACK_S,
        )
        if done.returncode != 0:
            raise ClusterCommandFailed(
                f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def refresh(self) -> dict[str, Any]:
        self.table = json.loads((self.root / "cluster.json").read_text())
        return self.table

    def process(self, name: str) -> dict[str, Any]:
        for process in self.table["processes"]:
            if process["name"] == name:
                return dict(process)
        raise KeyError(f"no process {name!r} (processes: {[p['name'] for p in self.table['processes']]})")

    def names(self, role: str | None = None) -> list[str]:
        return [p["name"] for p in self.table["processes"] if role is None or p["role"] == role]

    def api_url(self, i: int = 0) -> str:
        urls: list[str] = self.table["api"]
        return urls[i]

    def admin_token(self) -> str:
        return Path(self.table["admin_token"]).read_text().strip()

    def key(self) -> str:
        """MINT_CLUSTER_KEY: a client that appends decisions, or reads them as MinT's, needs it."""
        return (self.root / "cluster.key").read_text().strip()

    def log(self, **options: Any) -> KafkaLog:
        """A KafkaLog on the cluster's topic, sealed with its key (enter it with `async with`)."""
        return KafkaLog(
            self.table["kafka"], topic=self.table["topic"], seal=Seal.from_secret(self.key()), **options
        )

    # status and kill start nothing, so they run here rather than through the CLI, which takes a couple
    # of seconds to import on 2 busy cores (tests/test_cluster_launcher.py runs their CLI forms).
    def status(self) -> dict[str, Any]:
        """`mint cluster status`: each process's state (running, stopped, dead) and readiness."""
        return launcher.status(self.root)

    def kill(self, name: str, signal: str = "KILL") -> None:
        """`mint cluster kill NAME --signal SIGNAL` (KILL, TERM, STOP or CONT)."""
        launcher.kill(self.root, name, SIGNALS[signal.upper()])

    def restart(self, name: str) -> dict[str, Any]:
        self.mint("restart", name, "--timeout", str(self.timeout_s))
        self.refresh()
        return self.process(name)

    def add(self, role: str) -> str:
        """Start one more replica of `role` (an actor's name, e.g. "catalog"); its name."""
        before = set(self.names())
        self.mint("add", role, "--timeout", str(self.timeout_s))
        self.refresh()
        (added,) = set(self.names()) - before
        return added

    def remove(self, name: str) -> None:
        self.mint("remove", name)
        self.refresh()

    def log_tails(self, lines: int = 40) -> str:
        tails = []
        for log in sorted((self.root / "logs").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"----- {log.name} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(tails)


@contextmanager
def running_cluster(
    tmp_path: Path,
    *,
    partitions: int | None = None,
    base_dir: Path | None = None,
    broker_storage: str = "s3",
    timeout_s: float = 120.0,
    **counts: int,
) -> Iterator[RunningCluster]:
    unknown = sorted(set(counts) - set(COUNTS))
    if unknown:
        raise TypeError(f"running_cluster: no count named {', '.join(unknown)} (counts: {', '.join(COUNTS)})")
    root = tmp_path / "cluster"
    options = [f"--{name}={counts.get(name, 0)}" for name in COUNTS]
    if partitions is not None:
        options.append(f"--partitions={partitions}")
    if base_dir is not None:
        options.append(f"--base-dir={base_dir}")
    options.append(f"--broker-storage={broker_storage}")
    cluster = RunningCluster(root, {}, timeout_s)
    try:
        cluster.mint("up", *options, "--timeout", str(timeout_s))
        cluster.refresh()
        yield cluster
    except BaseException:
        print(f"cluster in {root} at the failure:\n{cluster.log_tails()}", file=sys.stderr)
        raise
    finally:
        if (root / "cluster.json").exists():
            cluster.mint("down")
