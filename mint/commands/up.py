"""`mint up`: every actor in one process on the embedded defaults (or Kafka), until Ctrl-C."""

from __future__ import annotations

import signal
import sys

import anyio
import click

from actors.faults import Faults
from actors.system import ACTOR_NAMES, running
from mint.commands.common import artifacts_option, artifacts_spec, context, home_option, log_option, run
from mint.config import open_artifacts, open_log


@click.command("up")
@click.option(
    "--chaos", type=float, default=None, help="Crash actors at random points with this probability."
)
@click.option("--seed", type=int, default=None, help="Seed for --chaos.")
@click.option(
    "--walkthrough", is_flag=True, help="Run the scripted control-plane session, verify replay, exit."
)
@click.option(
    "--only",
    default=None,
    help=f"Comma-separated actors to run here ({', '.join(ACTOR_NAMES)}); one process per actor on Kafka.",
)
@home_option
@log_option
@artifacts_option
def up(
    chaos: float | None,
    seed: int | None,
    walkthrough: bool,
    only: str | None,
    home_dir: str | None,
    log_url: str | None,
    artifacts_url: str | None,
) -> None:
    """Start the actors: all in this process by default."""
    home, spec = context(home_dir, log_url)
    artifacts = artifacts_spec(home, artifacts_url)
    chosen = frozenset(n.strip() for n in only.split(",") if n.strip()) if only else None
    if chosen is not None and not chosen <= set(ACTOR_NAMES):
        unknown = ", ".join(sorted(chosen - set(ACTOR_NAMES)))
        raise click.BadParameter(
            f"no actor named {unknown} (actors: {', '.join(ACTOR_NAMES)})", param_hint="--only"
        )
    try:
        faults = Faults(rate=chaos if chaos is not None else (0.1 if walkthrough else 0.0), seed=seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--chaos") from None

    async def go() -> bool:
        async with (
            open_log(spec) as log,
            open_artifacts(artifacts) as store,
            running(home, log, faults, only=chosen, artifacts=store) as system,
        ):
            where = spec.path if spec.kind == "sqlite" else f"kafka://{spec.bootstrap}/{spec.topic}"
            click.echo(f"MinT up: home {home.root}, log {where}")
            click.echo(f"actors ready: {', '.join(a.name for a in system.actors)}")
            if walkthrough:
                from mint.walkthrough import walkthrough as session

                verdict = await session(system, click.echo)
                return verdict.equal
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                click.echo("Ctrl-C (or SIGTERM) to stop")
                async for signum in signals:
                    click.echo(
                        f"stopping on {signal.Signals(signum).name}: actors resume from their checkpoints"
                    )
                    break
        return True

    sys.exit(0 if run(go) else 1)
