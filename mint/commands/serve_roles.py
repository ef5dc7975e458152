"""The serving roles of `mint actor` (mint/commands/actor.py): `engine-host` and `api`.

Each serves its own HTTP on --port, `/healthz` included (200 once caught up, 503 before and while
draining), and drains on SIGTERM or SIGINT (or when `stop` is set): readiness fails first, new work goes
elsewhere, the requests in flight get `grace_s` to finish, then the function returns.

- `run_engine_host`: one resident base on a torch or vLLM engine, its EngineHost actor (registration,
  waves, loads through the tiers, demand and traffic reports, heartbeats) and its inference endpoint
  (mint/api/engine_http.py). Its engine id is the replica id; its incarnation is new at every start.
- `run_api_replica`: the whole log folded into this replica's own catalog (the projector alone), and
  the full HTTP API over it, each generation routed to an engine host (mint/serving/router.py).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import click
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from actors.engine_host import EngineHost, Heartbeats
from actors.locks import actor_locks
from actors.progress import Progress
from actors.runtime import Supervisor
from actors.system import running
from events.log import EventLog
from mint.api.openai import InferenceLimits
from mint.artifacts.store import ArtifactStore
from mint.config import cluster_seal
from mint.home import Home
from mint.serving.fetch import AdapterFetcher
from mint.serving.liveness import Liveness

# After the grace, how long a server waits for what still runs before cancelling it.
CANCEL_AFTER_S = 1


async def run_engine_host(
    *,
    home: Home,
    log: EventLog,
    artifacts: ArtifactStore,
    replica: str,
    host: str,
    port: int,
    base: str,
    engine_kind: str = "torch",
    advertise: str | None = None,
    grace_s: float = 10.0,
    load_deadline_s: float = 30.0,
    liveness: Liveness | None = None,
    stop: anyio.Event | None = None,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `base` (BASE[:SLOTS[:CPU_SLOTS]], from the home's bases) as engine `replica` until
    stopped. Routers reach it at `advertise` (default http://HOST:PORT, the bound port). Started
    with `task_status`, it reports that URL once it serves HTTP (ready or not)."""
    from mint.api.engine_http import EngineServer, drain
    from mint.commands.up import engine_spec, start_engines

    liveness = liveness or Liveness.from_env()
    _, spec = engine_spec(home, base, option="--base")
    listener = socket.create_server((host, port))
    url = advertise or f"http://{_reachable(host)}:{listener.getsockname()[1]}"
    engine = start_engines({replica: spec}, engine_kind)[replica]
    heartbeats = Heartbeats(f"{replica}.{uuid.uuid4().hex[:12]}", url, liveness.heartbeat_s)
    fetcher = AdapterFetcher(artifacts, home.cache / "adapters")
    actor = EngineHost(home, engine, replica, fetcher, load_deadline_s=load_deadline_s, heartbeats=heartbeats)
    server = EngineServer(actor, cluster_seal(home))
    http = _Http(server.app(), listener)
    stopping = stop or anyio.Event()
    try:
        with actor_locks(home, [actor.name]):
            async with anyio.create_task_group() as tg:
                await tg.start(engine.serve)
                await tg.start(Supervisor(log, [actor]).run)
                tg.start_soon(http.serve)
                click.echo(f"engine host {replica} ({heartbeats.incarnation}) serving on {url}", err=True)
                task_status.started(url)
                if stop is None:
                    tg.start_soon(_stop_on_signal, stopping, replica)
                await _caught_up(log, actor.progress, stopping)
                server.ready = True
                await stopping.wait()
                left = await drain(server, grace_s)
                if left:
                    click.echo(f"{replica}: {left} requests still running after the grace", err=True)
                await http.stop()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await engine.aclose()


@dataclass
class ApiReadiness:
    """What an API replica's /healthz reports: ready once its catalog caught up, not while draining."""

    replica: str
    progress: Progress
    ready: bool = False
    draining: bool = False


def api_health(readiness: ApiReadiness) -> Response:
    body: dict[str, Any] = {
        "actor": "api",
        "replica": readiness.replica,
        "owned": [],
        "position": readiness.progress.position,
    }
    if readiness.draining:
        return JSONResponse({**body, "ready": False, "reason": "draining"}, status_code=503)
    if not readiness.ready:
        return JSONResponse({**body, "ready": False, "reason": "catching up with the log"}, status_code=503)
    return JSONResponse({**body, "ready": True})


async def run_api_replica(
    *,
    home: Home,
    log: EventLog,
    artifacts: ArtifactStore,
    replica: str,
    host: str,
    port: int,
    tokens: str | Path | None = None,
    inference: InferenceLimits | None = None,
    grace_s: float = 10.0,
    route_deadline_s: float = 5.0,
    liveness: Liveness | None = None,
    stop: anyio.Event | None = None,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Fold the whole log into this replica's catalog and serve the HTTP API over it, with `tokens`
    (the token store the API replicas share; default the home's), `inference` (per-token limits; default
    InferenceLimits()) and a router to the engine hosts,
    until stopped. Started with `task_status`, it reports its base URL once it serves HTTP."""
    from mint.api.app import create_app
    from mint.api.app import drain as drain_api
    from mint.auth.tokens import TokenStore, issue_first_admin
    from mint.catalog.queries import Catalog
    from mint.serving.router import Router
    from mint.tinker.app import tinker_routes

    store = TokenStore(Path(tokens) if tokens else home.tokens)
    if issue_first_admin(store, home.admin_token):
        click.echo(
            f"no tokens yet: wrote an operator admin token to {home.admin_token} (mode 0600)", err=True
        )
    catalog = partial(Catalog, home.catalog)
    listener = socket.create_server((host, port))
    address = f"http://{_reachable(host)}:{listener.getsockname()[1]}"
    stopping = stop or anyio.Event()
    router = Router(catalog, cluster_seal(home), liveness, deadline_s=route_deadline_s)
    async with (
        running(home, log, only=frozenset({"projector"}), artifacts=artifacts) as system,
        router,
        tinker_routes(home, log, artifacts, catalog, store) as tinker,
        anyio.create_task_group() as tg,
    ):
        api = create_app(system, store, tinker=tinker, router=router, inference=inference)
        readiness = ApiReadiness(replica, system.projector.progress)

        async def healthz(request: Request) -> Response:
            return api_health(readiness)

        http = _Http(Starlette(routes=[Route("/healthz", healthz), Mount("/", app=api)]), listener)
        tg.start_soon(http.serve)
        click.echo(f"api replica {replica} serving on {address}", err=True)
        task_status.started(address)
        if stop is None:
            tg.start_soon(_stop_on_signal, stopping, replica)
        await _caught_up(log, readiness.progress, stopping)
        readiness.ready = True
        tg.start_soon(unready_while_rebuilding, log, readiness, stopping)
        await stopping.wait()
        readiness.draining = True
        left = await drain_api(api, grace_s)
        if left:
            click.echo(f"{replica}: cancelled {left} requests still running after the grace", err=True)
        await http.stop()
        tg.cancel_scope.cancel()


async def unready_while_rebuilding(log: EventLog, readiness: ApiReadiness, stopping: anyio.Event) -> None:
    """Whenever the catalog goes back (its projector found its checkpoint beyond the log, the broker's
    storage lost, and rebuilds it from the log as it is now), not ready until it has caught up again:
    a partly rebuilt catalog is not served as if it were whole."""
    seen = dict(readiness.progress.position)
    while not stopping.is_set():
        await readiness.progress.changed()
        now = readiness.progress.position
        if any(now.get(p, 0) < o for p, o in seen.items()):
            readiness.ready = False
            await _caught_up(log, readiness.progress, stopping)
            readiness.ready = True
        seen = dict(readiness.progress.position)


async def _caught_up(log: EventLog, progress: Progress, stopping: anyio.Event) -> None:
    """Until `progress` has passed the log's end as it is now, or a stop came first."""
    end = await log.end_offsets()
    async with anyio.create_task_group() as tg:

        async def until_stopped() -> None:
            await stopping.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(until_stopped)
        await progress.reached(end)
        tg.cancel_scope.cancel()


def _reachable(host: str) -> str:
    """The host name to advertise for a listener on `host`."""
    return socket.getfqdn() if host in ("0.0.0.0", "::", "") else host


async def _stop_on_signal(stopping: anyio.Event, replica: str) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            click.echo(f"{replica}: draining on {signal.Signals(signum).name}", err=True)
            stopping.set()
            return


class _Http:
    """uvicorn serving one app on a socket bound already (so its address is known before it
    accepts); signals stay with the role, which stops it with `stop`."""

    def __init__(self, app: Starlette, listener: socket.socket) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_graceful_shutdown=CANCEL_AFTER_S
        )
        self.server = Server(config)
        self.listener = listener
        self.stopped = anyio.Event()

    async def serve(self) -> None:
        try:
            await self.server.serve(sockets=[self.listener])
        finally:
            self.stopped.set()

    async def stop(self) -> None:
        """Stop accepting; what still runs after CANCEL_AFTER_S is cancelled."""
        self.server.should_exit = True
        with anyio.move_on_after(CANCEL_AFTER_S + 1):
            await self.stopped.wait()
