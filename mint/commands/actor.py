"""`mint actor NAME`: one actor replica per process, on Kafka and S3.

Replicas of one actor share a consumer group and split the topic's partitions (actors/owned.py). Each
serves `/healthz` on `--port`: 200 once it has caught up and every partition it was given is claimed,
503 before (a rebalance makes a replica unready until it has claimed again). It crashes into a restart
of its owner (a self-fence, a broker that went away), never into exiting, and exits 0 on SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Protocol

import anyio
import click
from anyio.abc import TaskStatus

from actors.owned import GlobalOwner, PartitionOwner
from actors.runtime import DEFAULT_BACKOFF, StoreActor
from events.kafka_log import KafkaLog
from mint.artifacts.store import ArtifactStore
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

log = logging.getLogger(__name__)

DECIDERS = ("catalog", "trainer", "evaluator", "scheduler")
ROLES = ("catalog", "projector", "trainer", "evaluator", "scheduler", "engine-host", "api")


class Replica(Protocol):
    """What the health route reads of a running replica."""

    def ready(self) -> bool: ...

    def status(self) -> dict[str, object]: ...


@click.command("actor")
@click.argument("name", type=click.Choice(ROLES))
@click.option(
    "--replica", required=True, help="This replica's id: its static group member id (e.g. catalog-1)."
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port", type=int, default=0, show_default=True, help="HTTP port for /healthz (0: any free port)."
)
@click.option(
    "--session-timeout",
    "session_timeout_s",
    envvar="MINT_SESSION_TIMEOUT",
    type=click.FloatRange(min=1.0),
    default=10.0,
    show_default=True,
    help="Seconds without a group heartbeat before this replica's partitions move (and it stops deciding).",
)
@click.option(
    "--membership",
    type=click.Choice(["static", "dynamic"]),
    envvar="MINT_GROUP_MEMBERSHIP",
    default="static",
    show_default=True,
    help="Consumer-group membership: static (Kafka; a restart within the session timeout keeps the "
    "partitions) or dynamic (Tansu 0.6, whose static membership livelocks).",
)
@click.option(
    "--base", "base", default=None, help="engine-host: the base it serves, BASE[:SLOTS[:CPU_SLOTS]]."
)
@click.option(
    "--engine",
    "engine_kind",
    type=click.Choice(["torch", "vllm"]),
    default="torch",
    show_default=True,
    help="engine-host: the engine.",
)
@click.option(
    "--tokens", "tokens_path", default=None, help="api: the token store shared by the API replicas."
)
@inference_limit_options
@training_slots_option
@placement_options
@home_option
@log_option
@artifacts_option
def actor(
    name: str,
    replica: str,
    host: str,
    port: int,
    session_timeout_s: float,
    membership: str,
    base: str | None,
    engine_kind: str,
    tokens_path: str | None,
    inference_concurrency: int | None,
    inference_rate: float | None,
    inference_burst: int | None,
    home_dir: str | None,
    log_url: str | None,
    artifacts_url: str | None,
) -> None:
    """Run one replica of actor NAME in this process (one process per actor, on Kafka + S3)."""
    home, spec = context(home_dir, log_url)
    artifacts = artifacts_spec(home, artifacts_url)
    if spec.kind != "kafka" and name in DECIDERS:
        raise click.BadParameter(
            f"{name} replicas split a Kafka topic's partitions: give --log kafka://HOST:PORT/TOPIC "
            "(one process on SQLite is `mint up`)",
            param_hint="--log",
        )
    if name == "engine-host" and base is None:
        raise click.BadParameter(
            "engine-host serves one base: give --base BASE[:SLOTS[:CPU_SLOTS]]", param_hint="--base"
        )

    inference = inference_limits(inference_concurrency, inference_rate, inference_burst)

    async def go() -> None:
        async with open_log(spec) as event_log, open_artifacts(artifacts) as store:
            if name in ("engine-host", "api"):
                from mint.commands import serve_roles

                role: Any = (
                    serve_roles.run_engine_host if name == "engine-host" else serve_roles.run_api_replica
                )
                options = (
                    {"base": base, "engine_kind": engine_kind}
                    if name == "engine-host"
                    else {"tokens": tokens_path, "inference": inference}
                )
                await role(
                    home=home,
                    log=event_log,
                    artifacts=store,
                    replica=replica,
                    host=host,
                    port=port,
                    **options,
                )
                return
            build = partial(
                _replica, name, home, event_log, store, replica, session_timeout_s, membership == "static"
            )
            await _serve(build, name, replica, host, port)

    run(go)


def _replica(
    name: str,
    home: Home,
    log: Any,
    artifacts: ArtifactStore,
    replica: str,
    session_timeout_s: float,
    static: bool,
) -> ReplicaRunner:
    actor = _actor(name, home, artifacts, replica)
    if name == "projector":
        return FoldRunner(actor, log)
    assert isinstance(log, KafkaLog)
    if name == "catalog":
        return PartitionOwner(actor, log, replica, home.actors / name, session_timeout_s, static)
    return GlobalOwner(actor, log, replica, session_timeout_s, static)


def _actor(name: str, home: Home, artifacts: ArtifactStore, replica: str) -> StoreActor:
    if name == "catalog":
        from actors.catalog import CatalogActor

        return CatalogActor(home)
    if name == "projector":
        from actors.projector import CatalogProjector

        return CatalogProjector(home)
    if name == "scheduler":
        from actors.scheduler import WaveScheduler

        return WaveScheduler(home)
    if name == "trainer":
        from actors.trainer import TrainerActor

        return TrainerActor(home, artifacts, replica=replica)
    from actors.evaluator import EvaluatorActor
    from mint.serving.fetch import AdapterFetcher

    return EvaluatorActor(home, AdapterFetcher(artifacts, home.cache / "adapters"))


class ReplicaRunner(Replica, Protocol):
    async def run(self, *, task_status: TaskStatus[None] = ...) -> None: ...


class FoldRunner:
    """A replica that only folds (the projector): ready once it has reached the end it saw at start."""

    def __init__(self, actor: StoreActor, log: Any) -> None:
        self.actor = actor
        self.log = log
        self._target: dict[int, int] | None = None

    def ready(self) -> bool:
        target = self._target
        position = self.actor.progress.position
        return target is not None and all(position.get(p, 0) >= o for p, o in target.items())

    def status(self) -> dict[str, object]:
        return {"position": self.actor.progress.position}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._target = await self.log.end_offsets()
        await self.actor.run(self.log, task_status=task_status)


class _Current:
    """The replica the health route reports on: replaced at each restart."""

    def __init__(self) -> None:
        self.replica: ReplicaRunner | None = None
        self.restarts = 0
        self.last_error = ""
        self.draining = False


async def _serve(build: Callable[[], ReplicaRunner], name: str, replica: str, host: str, port: int) -> None:
    current = _Current()
    async with anyio.create_task_group() as tg:
        address = await tg.start(serve_health, partial(_health, current, name, replica), host, port)
        click.echo(f"{name} replica {replica}: /healthz on {address}", err=True)
        tg.start_soon(_supervise, build, current)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                click.echo(f"{replica}: stopping on {signal.Signals(signum).name}", err=True)
                current.draining = True
                break
        tg.cancel_scope.cancel()


async def _supervise(build: Callable[[], ReplicaRunner], current: _Current) -> None:
    """Run the replica; on a crash, build it again from its committed state after a backoff."""
    attempt = 0
    while True:
        began = time.monotonic()
        current.replica = build()
        try:
            await current.replica.run()
            return
        except Exception as exc:
            if time.monotonic() - began > DEFAULT_BACKOFF.healthy_s:
                attempt = 0
            attempt += 1
            current.restarts += 1
            cause: BaseException = exc
            while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
                cause = cause.exceptions[0]  # a task group's wrapping says nothing of what failed
            current.last_error = f"{type(cause).__name__}: {cause}"
            delay = DEFAULT_BACKOFF.delay(attempt)
            log.warning("replica crashed (%s); restart %d in %.2fs", current.last_error, attempt, delay)
            current.replica = None
            await anyio.sleep(delay)


def _health(current: _Current, name: str, replica: str) -> tuple[bool, dict[str, object]]:
    runner = current.replica
    body: dict[str, object] = {"actor": name, "replica": replica, "restarts": current.restarts}
    if current.last_error:
        body["last_error"] = current.last_error
    if current.draining:
        return False, {**body, "ready": False, "reason": "draining"}
    if runner is None:
        return False, {**body, "ready": False, "reason": "restarting"}
    body.update(runner.status())
    if not runner.ready():
        return False, {**body, "ready": False, "reason": "catching up or claiming its partitions"}
    return True, {**body, "ready": True}


async def serve_health(
    health: Callable[[], tuple[bool, dict[str, object]]],
    host: str,
    port: int,
    *,
    task_status: TaskStatus[str],
) -> None:
    """Serve GET /healthz (200 when `health` says ready, else 503) until cancelled."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def healthz(request: Request) -> JSONResponse:
        ready, body = health()
        return JSONResponse(body, status_code=200 if ready else 503)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the replica owns SIGINT and SIGTERM

    app = Starlette(routes=[Route("/healthz", healthz)])
    server = Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    listener = socket.create_server((host, port))
    task_status.started(f"http://{host}:{listener.getsockname()[1]}")
    await server.serve(sockets=[listener])
