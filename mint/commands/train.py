"""`mint train`: post-train policies without writing events by hand.

It registers the policies that are new, appends a StartTraining command and follows the run on the
catalog projection with a progress bar. When no `mint up` runs on this home, it starts the actors in
this process for the run's duration; when one does, it is only a client of it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import anyio
import click

from actors.locks import ActorAlreadyRunning
from actors.system import running
from events.catalog import RegisterPolicy
from events.codec import checked, field_of
from events.log import EventLog
from events.names import tenant_of
from events.training import StartTraining
from mint.catalog.queries import Catalog, ProjectionMissing
from mint.catalog.rows import RunRow
from mint.commands.common import (
    ProgressBar,
    artifacts_option,
    artifacts_spec,
    context,
    home_option,
    log_option,
    run,
)
from mint.config import ArtifactSpec, open_artifacts, open_log
from mint.home import Home

POLL_S = 0.2  # how often a client re-reads the projection another process writes
# A StartTraining field -> the option that sets it, for errors that name what the user typed.
CLI_OPTION = {"policies": "policy", "base_id": "base", "run": "run", "steps": "steps", "task": "task"}


def resolve_base(home: Home, base: str) -> str:
    """A base id installed under $MINT_HOME/bases, or a base directory (linked in under its name)."""
    path = Path(base).expanduser()
    if (path / "config.json").is_file():
        base_id = path.resolve().name
        link = home.base(base_id)
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path.resolve(), link)
        elif link.resolve() != path.resolve():
            raise click.BadParameter(
                f"{link} already holds another base named {base_id!r}", param_hint="--base"
            )
        return base_id
    if (home.base(base) / "config.json").is_file():
        return base
    raise click.BadParameter(
        f"{base!r} is neither a base directory nor a base installed in {home.bases} "
        f"(create one: mint base create tiny {home.base('tiny')})",
        param_hint="--base",
    )


@contextlib.asynccontextmanager
async def actors_unless_running(home: Home, log: EventLog, artifacts: ArtifactSpec) -> AsyncIterator[None]:
    try:
        async with open_artifacts(artifacts) as store, running(home, log, artifacts=store):
            yield
    except ActorAlreadyRunning as exc:
        click.echo(f"using the running actors ({exc})", err=True)
        yield


def _catalog(home: Home) -> Catalog | None:
    try:
        return Catalog(home.catalog)
    except ProjectionMissing:
        return None


async def _wait_for(home: Home, check: str, predicate: object) -> None:
    while True:
        catalog = _catalog(home)
        if catalog is not None:
            try:
                if predicate(catalog):  # type: ignore[operator]
                    return
            finally:
                catalog.close()
        await anyio.sleep(POLL_S)


@click.command("train")
@click.option(
    "--policy", "policies", multiple=True, required=True, help="tenant/name; repeat to train several at once."
)
@click.option("--base", required=True, help="A base id under $MINT_HOME/bases, or a base directory.")
@click.option("--algo", type=click.Choice(["grpo", "sft"]), required=True)
@click.option(
    "--task",
    required=True,
    help="token:WORD, exact:TEXT, regex:PATTERN, length:N (grpo); sft:FILE.jsonl, sft-repeat:WORD.",
)
@click.option("--steps", default=50, show_default=True)
@click.option("--run", "run_id", default=None, help="tenant/run-id (default: tenant/run-<time>).")
@click.option("--rank", default=8, show_default=True)
@click.option("--lr", default=5e-3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@home_option
@log_option
@artifacts_option
def train(
    policies: tuple[str, ...],
    base: str,
    algo: str,
    task: str,
    steps: int,
    run_id: str | None,
    rank: int,
    lr: float,
    seed: int,
    home_dir: str | None,
    log_url: str | None,
    artifacts_url: str | None,
) -> None:
    """Train POLICIES together on one resident base and export adapter-only revisions."""
    home, spec = context(home_dir, log_url)
    artifacts = artifacts_spec(home, artifacts_url)
    tenants = {tenant_of(p) for p in policies}
    if len(tenants) != 1:
        raise click.BadParameter("a run's policies belong to one tenant", param_hint="--policy")
    base_id = resolve_base(home, base)
    run_name = run_id or f"{tenants.pop()}/run-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    try:  # the schema's checks (each policy once, steps in range) before anything is appended
        command = checked(
            StartTraining.create(
                source="cli",
                run=run_name,
                policies=list(policies),
                base_id=base_id,
                algo=algo,
                task=task,
                steps=steps,
                config={"rank": rank, "lr": lr, "seed": seed},
            )
        )
    except ValueError as exc:  # a RecordError, or a check of the record's own
        field = field_of(str(exc)) or "policies"
        raise click.BadParameter(str(exc), param_hint=f"--{CLI_OPTION.get(field, field)}") from None

    async def go() -> RunRow | str:
        async with open_log(spec) as log, actors_unless_running(home, log, artifacts):
            await _register_missing(home, log, policies, base_id)
            await log.append([command])
            click.echo(
                f"run {run_name}: {algo} on {base_id}, {len(policies)} policies, {steps} steps", err=True
            )
            return await _outcome(home, command)

    row = run(go)
    if isinstance(row, str):
        raise click.ClickException(row)
    _report(home, row, policies)


async def _register_missing(home: Home, log: EventLog, policies: Sequence[str], base_id: str) -> None:
    """Register the policies the catalog does not know yet, and wait until each is decided."""
    catalog = _catalog(home)
    known = {p for p in policies if catalog and catalog.policy(p)}
    if catalog:
        catalog.close()
    fresh = [
        RegisterPolicy.create(source="cli", policy=p, base_id=base_id) for p in policies if p not in known
    ]
    if fresh:
        await log.append(fresh)
        await _wait_for(home, "registered", lambda c: all(c.policy(p) or c.rejections(p) for p in policies))


async def _outcome(home: Home, command: StartTraining) -> RunRow | str:
    """The run's final row, or why it was refused; a progress bar of its steps meanwhile."""
    bar = ProgressBar("train")
    began = time.perf_counter()
    outcome: list[RunRow | str] = []

    def done(c: Catalog) -> bool:
        rejected = [r for r in c.rejections(command.run) if r.command_id == command.id]
        if rejected:
            outcome.append(f"run refused: {rejected[0].reason}")
            return True
        bar(len(c.steps(command.run)), command.steps * len(command.policies))
        row = c.run(command.run)
        if row is not None and row.status != "running":
            outcome.append(row)
            return True
        return False

    await _wait_for(home, "finished", done)
    bar.close()
    click.echo(f"finished in {time.perf_counter() - began:.1f}s", err=True)
    return outcome[0]


def _report(home: Home, row: RunRow, policies: Sequence[str]) -> None:
    catalog = Catalog(home.catalog)
    last = {s.policy: s for s in catalog.steps(row.run)}
    for policy in policies:
        s = last.get(policy)
        reward = f" reward={s.reward_mean:.3f}" if s and s.reward_mean is not None else ""
        revisions = [r for r in catalog.revisions(policy) if r.run == row.run]
        exported = (
            f"exported {policy}@{revisions[0].revision} ({revisions[0].bytes:,} bytes)"
            if revisions
            else "no revision"
        )
        failed = row.failed_policies.get(policy)
        click.echo(
            f"{policy}: loss={s.loss:.4f}{reward} {exported}"
            if s and not failed
            else f"{policy}: failed ({failed})"
        )
    click.echo(f"run {row.run} {row.status}")
