"""`mint chaos`: the mixed workload on a `mint cluster` with faults injected, then the invariants checked
(mint/chaos/). It exits non-zero when any invariant broke."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import click

from mint.cluster.table import ClusterDir, ClusterError

if TYPE_CHECKING:
    from mint.chaos.checks import Report

root_option = click.option(
    "--root",
    "root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A running cluster's directory, or an empty one to start a cluster in (stopped at the end).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")


def _faults(value: str) -> tuple[str, ...]:
    from mint.chaos.faults import KINDS

    if value == "none":
        return ()
    kinds = tuple(k.strip() for k in value.split(","))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise click.BadParameter(
            f"{', '.join(map(repr, unknown)) or repr(value)} is not a fault "
            f"(faults: {', '.join(KINDS)}, or none)",
            param_hint="--faults",
        )
    return kinds


@click.group("chaos")
def chaos_group() -> None:
    """Proof under faults: a mixed workload through a cluster's public interfaces, processes killed
    and stopped meanwhile, and at the end: replay equals live on every replica, every acknowledged
    write on the log, nothing applied twice, one outcome per command, no hang and no 500."""


@chaos_group.command("run")
@root_option
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the workload and the faults.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), help="How long the load runs.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), help="How long the load runs.")
@click.option(
    "--rate", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Requests/s."
)
@click.option(
    "--faults", "faults", default="kill,stop", show_default=True, help="Fault kinds: kill,stop, or none."
)
@click.option(
    "--every",
    "every_s",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between faults.",
)
@click.option("--keep", is_flag=True, help="Leave a cluster this run started running (to look into it).")
@json_option
def run(
    root: Path,
    seed: int,
    minutes: float | None,
    seconds: float | None,
    rate: float,
    faults: str,
    every_s: float,
    keep: bool,
    as_json: bool,
) -> None:
    """Start a cluster in ROOT (or use the one running there), run the workload and the faults, check."""
    if minutes is not None and seconds is not None:
        raise click.BadParameter("give --minutes or --seconds, not both", param_hint="--seconds")
    duration = 60.0 if minutes is None and seconds is None else (seconds or (minutes or 0) * 60)
    kinds = _faults(faults)
    from mint.chaos.run import run_chaos

    cluster = ClusterDir(root)
    try:
        report = anyio.run(
            run_chaos,
            cluster,
            cluster.root / "chaos" / f"ledger-{seed}-{int(time.time())}.jsonl",
            seed,
            duration,
            rate,
            kinds,
            every_s,
            lambda line: click.echo(line, err=True),
            keep,
        )
    except (ClusterError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _print(report, as_json)


@chaos_group.command("check")
@root_option
@click.option(
    "--ledger",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The ledger a chaos run wrote (JSON lines).",
)
@json_option
def check(root: Path, ledger: Path, as_json: bool) -> None:
    """Only the checks, over ROOT's running cluster and a run's LEDGER."""
    from mint.chaos.checks import check_cluster

    try:
        report = anyio.run(check_cluster, ClusterDir(root), ledger)
    except (ClusterError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _print(report, as_json)


def _print(report: Report, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"ok": report.ok, "violations": report.violations, "counts": report.counts}))
    else:
        for name, count in report.counts.items():
            click.echo(f"{name}: {count}")
        for check_name, broken in report.violations.items():
            click.echo(f"{'FAIL' if broken else 'ok  '} {check_name}")
            for line in broken[:20]:
                click.echo(f"     {line}")
            if len(broken) > 20:
                click.echo(f"     ... and {len(broken) - 20} more")
    if not report.ok:
        raise SystemExit(1)
