"""`mint cluster`: a local cluster, each actor replica its own OS process, on Kafka (tansu) and S3 (moto)."""

from __future__ import annotations

import json
import shlex
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from events.log import DEFAULT_PARTITIONS
from mint.cluster import roles
from mint.cluster.table import ClusterDir, ClusterError
from mint.local_services import LocalServiceError

dir_option = click.option(
    "--dir",
    "root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The cluster's directory: its cluster.json, logs, token store and every replica's home.",
)
timeout_option = click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=roles.READY_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for readiness.",
)
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "STOP": signal.SIGSTOP, "CONT": signal.SIGCONT}


@contextmanager
def _refused() -> Iterator[None]:
    """A refusal of the launcher as the command's error. (Each command imports the launcher itself, so
    only a `mint cluster` command pays for loading the Kafka and HTTP clients.)"""
    try:
        yield
    except (ClusterError, LocalServiceError) as exc:
        raise click.ClickException(str(exc)) from None


def _say(line: str) -> None:
    click.echo(line, err=True)


@click.group("cluster")
def cluster_group() -> None:
    """A local cluster: S3 (moto), a Kafka-protocol broker (tansu) keeping its log in that S3, and every
    actor replica as its own process with its own home, all on loopback.

    Processes are named ROLE-N (catalog-1, engine-host-2, ...), plus broker and s3."""


def _count(option: str, role: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        option,
        role.replace("-", "_"),
        type=click.IntRange(min=0),
        default=roles.DEFAULT_COUNTS[role],
        show_default=True,
        help=f"{role} replicas.",
    )


@cluster_group.command("up")
@dir_option
@_count("--catalog", "catalog")
@_count("--projectors", "projector")
@_count("--schedulers", "scheduler")
@_count("--trainers", "trainer")
@_count("--evaluators", "evaluator")
@_count("--engines", "engine-host")
@_count("--api", "api")
@click.option(
    "--base",
    default=roles.BUILDABLE_BASE,
    show_default=True,
    help="The engine hosts' base, BASE[:SLOTS[:CPU_SLOTS]]; built once (tiny) when a replica needs it.",
)
@click.option(
    "--base-dir",
    "base_source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Copy this base directory in instead of building the base.",
)
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=DEFAULT_PARTITIONS,
    show_default=True,
    help="Partitions of the topic: the replicas of a deciding actor split them.",
)
@click.option(
    "--broker-storage",
    type=click.Choice(["s3", "memory"]),
    default="s3",
    show_default=True,
    help="Where the broker keeps the log: in the cluster's S3 (survives a broker restart) or in memory.",
)
@timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print cluster.json on stdout.")
def up(
    root: Path,
    base: str,
    base_source: Path | None,
    partitions: int,
    broker_storage: str,
    timeout_s: float,
    as_json: bool,
    **counts: int,
) -> None:
    """Start a cluster in DIR (absent or empty); return once every process is ready.

    The processes keep running after this returns; `mint cluster down --dir DIR` stops them."""
    from mint.cluster import launcher

    with _refused():
        table = launcher.up(
            root,
            {role.replace("_", "-"): n for role, n in counts.items()},
            base=base,
            base_source=base_source,
            partitions=partitions,
            broker_storage=broker_storage,
            timeout_s=timeout_s,
            say=_say,
        )
    if as_json:
        click.echo(ClusterDir(root).table.read_text(), nl=False)
        return
    click.echo(f"cluster ready: {len(table.processes)} processes, {ClusterDir(root).table}")
    for url in table.api:
        click.echo(f"  API {url}")
    click.echo(f"  admin token in {table.admin_token}")
    click.echo(f'  eval "$(mint cluster env --dir {shlex.quote(str(root))})" to point mint commands at it')


@cluster_group.command("status")
@dir_option
def status(root: Path) -> None:
    """Each process as JSON: its state (running, stopped, dead) and whether it is ready."""
    from mint.cluster import launcher

    with _refused():
        click.echo(json.dumps(launcher.status(root), indent=2))


@cluster_group.command("down")
@dir_option
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=roles.STOP_TIMEOUT_S,
    show_default=True,
    help="Seconds a process gets to drain after SIGTERM before SIGKILL.",
)
def down(root: Path, timeout_s: float) -> None:
    """Stop every process: actors first, then the broker, then S3. DIR and its logs stay."""
    from mint.cluster import launcher

    with _refused():
        table = launcher.down(root, timeout_s)
    click.echo(f"stopped {len(table.processes)} processes")


@cluster_group.command("kill")
@dir_option
@click.argument("name")
@click.option(
    "--signal",
    "signal_name",
    type=click.Choice(sorted(SIGNALS), case_sensitive=False),
    default="KILL",
    show_default=True,
)
def kill(root: Path, name: str, signal_name: str) -> None:
    """Send a signal to the process NAME (and whatever it started)."""
    from mint.cluster import launcher

    with _refused():
        process = launcher.kill(root, name, SIGNALS[signal_name.upper()])
    click.echo(f"sent SIG{signal_name.upper()} to {name} (pid {process.pid})")


@cluster_group.command("restart")
@dir_option
@click.argument("name")
@timeout_option
def restart(root: Path, name: str, timeout_s: float) -> None:
    """Stop NAME if it runs, start it again with the same command line, port and home; wait ready."""
    from mint.cluster import launcher

    with _refused():
        process = launcher.restart(root, name, timeout_s, say=_say)
    click.echo(f"{name} restarted (pid {process.pid})")


@cluster_group.command("add")
@dir_option
@click.argument("role", type=click.Choice(roles.ROLES))
@timeout_option
def add(root: Path, role: str, timeout_s: float) -> None:
    """Start one more replica of ROLE and wait until it is ready."""
    from mint.cluster import launcher

    with _refused():
        process = launcher.add(root, role, timeout_s)
    click.echo(f"{process.name} started (pid {process.pid}, port {process.port})")


@cluster_group.command("remove")
@dir_option
@click.argument("name")
def remove(root: Path, name: str) -> None:
    """Stop the replica NAME (SIGTERM: it drains) and forget it; its home and log stay."""
    from mint.cluster import launcher

    with _refused():
        launcher.remove(root, name)
    click.echo(f"{name} stopped and removed")


@cluster_group.command("env")
@dir_option
def env(root: Path) -> None:
    """Shell exports that point `mint` commands at the cluster: eval "$(mint cluster env --dir DIR)"."""
    from mint.cluster import launcher

    with _refused():
        variables = launcher.environment(root)
    for name, value in variables.items():
        click.echo(f"export {name}={shlex.quote(value)}")
