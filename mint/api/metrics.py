"""`GET /metrics` for Prometheus, and the request accounting behind it.

Scraped values are read when Prometheus asks: log end offsets and each local actor's checkpoint (lag),
the catalog's residency per engine and tier, waves and load failures; the API itself counts request
latency per route and requests in flight per engine (the engines' queues as the API sees them). It
needs a reader token of the operator tenant (`_system`), since it spans every tenant's traffic.

    mint_log_records_total                          records on the log (rate(): records/s)
    mint_actor_lag_records{actor}                   records on the log the actor has not handled yet
    mint_adapters_resident{engine,tier}             adapters resident per tier
    mint_engine_wave{engine}                        waves executed (a counter per engine)
    mint_adapter_loads_total{engine,tier}           adapters loaded, by the tier loaded into
    mint_adapter_load_failures_total{engine}        loads that failed
    mint_engine_requests_in_flight{engine}          inference requests queued or running
    mint_revision_requests_total{revision}          inference requests answered, per revision ref
    mint_shadow_requests_total{revision}            shadow runs finished on a shadowed candidate
    mint_shadow_dropped_total{revision}             shadow runs dropped under load
    mint_shadow_paired_total{revision}              shadow runs sent with the stable answer, to score the pair
    mint_http_request_duration_seconds{route,method,status}   request latency histogram
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.system import System
from events.names import SYSTEM_TENANT
from mint.api.auth import AuthError, require
from mint.api.shadow import ShadowWork
from mint.catalog.queries import Catalog, ProjectionMissing


class InFlight:
    """Inference requests per key (an engine; a bearer token) between arrival and their last token."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._changed = anyio.Event()  # set (and replaced) each time a request enters or leaves

    def enter(self, key: str) -> Callable[[], None]:
        """Count one request; the returned callable uncounts it (once, however often it is called)."""
        self._count(key, +1)
        done = False

        def leave() -> None:
            nonlocal done
            if not done:
                done = True
                self._count(key, -1)

        return leave

    def _count(self, key: str, change: int) -> None:
        self.counts[key] += change
        self._changed.set()
        self._changed = anyio.Event()

    def total(self) -> int:
        return sum(self.counts.values())

    async def until_total(self, total: int) -> None:
        """Return once exactly `total` requests are in flight (0: what a shutdown waits for)."""
        while self.total() != total:
            await self._changed.wait()

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


class _Scrape(Collector):
    """Values read at scrape time (set by the endpoint just before it renders the registry)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        v = self.values
        if not v:
            return
        yield _family(CounterMetricFamily, "mint_log_records", "Records on the log.", (), {(): v["records"]})
        yield _family(
            GaugeMetricFamily,
            "mint_actor_lag_records",
            "Records the actor has not handled.",
            ("actor",),
            {(a,): n for a, n in v["lag"].items()},
        )
        yield _family(
            GaugeMetricFamily,
            "mint_adapters_resident",
            "Adapters resident per engine and tier.",
            ("engine", "tier"),
            v["resident"],
        )
        engines = v["engines"].items()
        yield _family(
            CounterMetricFamily,
            "mint_engine_wave",
            "Waves executed per engine.",
            ("engine",),
            {(e,): wave for e, (wave, _) in engines},
        )
        yield _family(
            CounterMetricFamily,
            "mint_adapter_loads",
            "Adapters loaded per engine, by the tier loaded into.",
            ("engine", "tier"),
            v["loads"],
        )
        yield _family(
            CounterMetricFamily,
            "mint_adapter_load_failures",
            "Adapter loads that failed.",
            ("engine",),
            {(e,): failed for e, (_, failed) in engines},
        )
        yield _family(
            GaugeMetricFamily,
            "mint_engine_requests_in_flight",
            "Inference requests queued or running.",
            ("engine",),
            {(e,): n for e, n in v["in_flight"].items()},
        )
        for name, what, counts in (
            ("mint_revision_requests", "Inference requests answered, per revision.", v["answered"]),
            ("mint_shadow_requests", "Shadow runs finished on a shadowed candidate.", v["shadow_ran"]),
            ("mint_shadow_dropped", "Shadow runs dropped under load.", v["shadow_dropped"]),
            (
                "mint_shadow_paired",
                "Shadow runs finished with the stable answer, for the engine host to score the pair.",
                v["shadow_paired"],
            ),
        ):
            yield _family(
                CounterMetricFamily, name, what, ("revision",), {(r,): n for r, n in counts.items()}
            )


def _family(
    kind: type[CounterMetricFamily | GaugeMetricFamily],
    name: str,
    documentation: str,
    labels: tuple[str, ...],
    values: dict[tuple[str, ...], float],
) -> Metric:
    family = kind(name, documentation, labels=list(labels))
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


class Metrics:
    def __init__(
        self,
        system: System,
        catalog: Callable[[], Catalog],
        in_flight: InFlight,
        answered: Counter[str],
        shadow: ShadowWork,
    ) -> None:
        self.system = system
        self.catalog = catalog
        self.in_flight = in_flight  # inference requests per engine, counted by the inference routes
        self.answered = answered  # requests answered per revision ref, likewise
        self.shadow = shadow
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "mint_http_request_duration_seconds",
            "HTTP request latency until the response starts.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._scrape = _Scrape()
        self.registry.register(self._scrape)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            began = time.perf_counter()

            async def first(message: Message) -> None:
                if message["type"] == "http.response.start":
                    route = scope.get("route")
                    self.latency.labels(
                        getattr(route, "path", "unmatched"), scope["method"], str(message["status"])
                    ).observe(time.perf_counter() - began)
                await send(message)

            await app(scope, receive, first)

        return timed

    async def _read(self) -> dict[str, Any]:
        end = await self.system.log.end_offsets()
        lag = {
            a.name: sum(max(0, o - a.progress.position.get(p, 0)) for p, o in end.items())
            for a in self.system.actors
        }
        resident: dict[tuple[str, str], int] = {}
        engines: dict[str, tuple[int, int]] = {}
        loads: dict[tuple[str, str], int] = {}
        try:
            view = self.catalog()
        except ProjectionMissing:
            pass
        else:
            try:
                resident = view.residency_counts()
                failed = view.load_failure_counts()
                rows = view.engines()
                engines = {e.engine: (e.wave, failed.get(e.engine, 0)) for e in rows}
                loads = {(e.engine, tier): n for e in rows for tier, n in e.loads.items()}
            finally:
                view.close()
        return {
            "records": sum(end.values()),
            "lag": lag,
            "resident": resident,
            "engines": engines,
            "loads": loads,
            "in_flight": self.in_flight.snapshot(),
            "answered": dict(self.answered),
            "shadow_ran": dict(self.shadow.ran),
            "shadow_dropped": dict(self.shadow.dropped),
            "shadow_paired": dict(self.shadow.paired),
        }

    def routes(self) -> list[Route]:
        async def metrics(request: Request) -> Response:
            try:
                principal = require(request, "reader")
                if principal.tenant != SYSTEM_TENANT:
                    raise AuthError(
                        403, f"/metrics spans every tenant: use a token of tenant {SYSTEM_TENANT!r}"
                    )
            except AuthError as exc:
                return exc.response()
            self._scrape.values = await self._read()
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return [Route("/metrics", metrics)]
