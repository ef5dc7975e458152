"""`mint up`: every actor in one process on the embedded defaults (or Kafka), until Ctrl-C."""

from __future__ import annotations

import sys

import anyio
import click

from actors.faults import Faults
from actors.system import running
from mint.commands.common import context, home_option, log_option, run
from mint.config import open_log


@click.command("up")
@click.option(
    "--chaos", type=float, default=None, help="Crash actors at random points with this probability."
)
@click.option("--seed", type=int, default=None, help="Seed for --chaos.")
@click.option(
    "--walkthrough", is_flag=True, help="Run the scripted control-plane session, verify replay, exit."
)
@home_option
@log_option
def up(
    chaos: float | None, seed: int | None, walkthrough: bool, home_dir: str | None, log_url: str | None
) -> None:
    """Start the catalog actor and projector (and, as they land, the other actors)."""
    home, spec = context(home_dir, log_url)
    try:
        faults = Faults(rate=chaos if chaos is not None else (0.1 if walkthrough else 0.0), seed=seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--chaos") from None

    async def go() -> bool:
        async with open_log(spec) as log, running(home, log, faults) as system:
            where = spec.path if spec.kind == "sqlite" else f"kafka://{spec.bootstrap}/{spec.topic}"
            click.echo(f"MinT up: home {home.root}, log {where}")
            click.echo(f"actors ready: {', '.join(a.name for a in system.actors)}")
            if walkthrough:
                from mint.walkthrough import walkthrough as session

                verdict = await session(system, click.echo)
                return verdict.equal
            click.echo("Ctrl-C to stop")
            await anyio.sleep_forever()
        return True

    try:
        ok = run(go)
    except KeyboardInterrupt:
        click.echo("stopped")
        return
    sys.exit(0 if ok else 1)
