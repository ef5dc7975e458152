"""`D/cluster.json`, the process table of a local cluster, and where everything else lives under D.

The keys `processes` (each with `name`, `role`, `pid`, `port`, `home`), `api`, `kafka`, `topic`, `s3`,
`bucket` and `admin_token` are a contract: tests, scripts and users read them. The rest is what the
launcher needs to restart a process exactly as it was started.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

HOST = "127.0.0.1"  # everything listens on loopback only


class ClusterError(RuntimeError):
    """A cluster operation that cannot be done, with the reason (and what exists, where that helps)."""


class Process(msgspec.Struct, kw_only=True):
    name: str  # `catalog-1`, `engine-host-2`, `broker`, `s3`
    role: str  # an actor's name, or `broker` / `s3`
    pid: int
    port: int
    home: str | None  # the replica's home; None for the broker and S3
    command: list[str]  # restart runs exactly this again, on the same port and home
    log: str  # stdout and stderr, appended to across restarts
    # When the process started (clock ticks after boot, /proc/PID/stat): a pid the kernel has given to
    # another process since is not taken for this one.
    started: int | None


class ClusterTable(msgspec.Struct, kw_only=True):
    processes: list[Process]
    api: list[str]  # the API replicas' base URLs
    kafka: str  # HOST:PORT of the broker
    topic: str
    log: str  # the `--log` URL every actor was given
    s3: str  # the S3 endpoint URL
    bucket: str  # the artifacts bucket (`--artifacts s3://BUCKET`)
    # Where the broker keeps its log: s3://BUCKET/ on the cluster's S3 (it survives a broker restart),
    # or memory:// (it does not).
    broker_storage: str
    artifacts: str  # the `--artifacts` URL every actor was given
    partitions: int
    admin_token: str  # a file holding the first admin token of the API replicas' token store
    # The engine hosts' `--base` (BASE[:SLOTS[:CPU_SLOTS]]); BASE is linked into every replica's home.
    base: str
    base_source: str | None  # a base directory copied in instead of building one
    ready: bool  # False while `mint cluster up` is still starting it (or failed to)

    def named(self, name: str) -> Process:
        for process in self.processes:
            if process.name == name:
                return process
        raise ClusterError(f"no process named {name!r} in this cluster (processes: {self.names()})")

    def names(self) -> str:
        return ", ".join(p.name for p in self.processes) or "none"

    def of_role(self, role: str) -> list[Process]:
        return [p for p in self.processes if p.role == role]


class ClusterDir:
    """The directory a cluster lives in: its table, key, lock, logs, token store, bases and homes."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    @property
    def table(self) -> Path:
        return self.root / "cluster.json"

    @property
    def key(self) -> Path:
        """MINT_CLUSTER_KEY of every process (mode 0600)."""
        return self.root / "cluster.key"

    @property
    def lock(self) -> Path:
        """Held by each command that changes the table, so two of them never interleave."""
        return self.root / "cluster.lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tokens(self) -> Path:
        """The token store the API replicas share."""
        return self.root / "tokens.db"

    @property
    def admin_token(self) -> Path:
        return self.root / "admin.token"

    @property
    def bases(self) -> Path:
        """Bases built (or copied) once, linked into every replica's home."""
        return self.root / "bases"

    def home(self, name: str) -> Path:
        return self.root / name

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def read(self) -> ClusterTable:
        try:
            raw = self.table.read_bytes()
        except FileNotFoundError:
            raise ClusterError(f"no cluster in {self.root} (no {self.table.name}; mint cluster up)") from None
        try:
            return msgspec.json.decode(raw, type=ClusterTable)
        except msgspec.ValidationError as exc:
            raise ClusterError(f"{self.table}: {exc}") from None

    def write(self, table: ClusterTable) -> None:
        """Atomically: a reader sees the old table or the new one, never half of one."""
        table.api = [f"http://{HOST}:{p.port}" for p in table.of_role("api")]
        draft = self.table.with_name(f".{self.table.name}.{os.getpid()}")
        draft.write_bytes(msgspec.json.format(msgspec.json.encode(table), indent=2) + b"\n")
        draft.replace(self.table)
