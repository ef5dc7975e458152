"""The router: an API replica without engines of its own sends each generation to an engine host.

Which host, from the replica's catalog projection (the whole log folded here):
- only engine hosts of the policy's base that are alive (mint/serving/liveness.py): a host silent
  past T1, or declared lost, gets no requests, nor does one that serves no URL (an embedded engine);
- warm first: hosts that hold the revision (their heartbeat's `holds`, or a load they reported);
  then hosts whose latest wave plans to load it; then any other (it loads on demand, as a cold
  request does);
- among equals, the least loaded: requests in flight, the larger of what the host last reported
  and what this router has sent it.
A host that cannot be reached, does not answer within `accept_s`, or says it is draining or starting,
is skipped for the next candidate, before any byte reached the client. With no candidate left the
router re-reads its projection until `deadline_s` has passed, then gives up with the reasons
(NoEngine: the API answers 503 with Retry-After). A host that hangs up mid-answer (it died or was
stopped) fails the request with 503 and Retry-After too: sent again, another host takes it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, Self

import anyio
import httpx
import msgspec

from events.seal import Seal
from mint.catalog.queries import Catalog, ProjectionMissing
from mint.catalog.rows import EngineRow
from mint.serving.engine import Delta, EngineError
from mint.serving.liveness import Liveness, heard_age
from mint.serving.wire import (
    ENGINE_HEADER,
    GENERATE_PATH,
    NDJSON,
    SEAL_HEADER,
    STATE_HEADER,
    DeltaLine,
    EndLine,
    ErrorLine,
    GenerateRequest,
    decode_line,
    seal_of,
)

# Between re-reads of the projection while no engine can take a request.
RETRY_PAUSE_S = 0.2


class NoEngine(Exception):
    """No engine host could take the request within the deadline; the message says why."""


class EngineRefused(EngineError):
    """The engine host refused the request, or failed it: `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param  # the request's field at fault, when the engine named one


class Counts(Protocol):
    """Requests in flight per engine, as the API counts them (mint/api/metrics.InFlight)."""

    counts: Counter[str]

    def enter(self, key: str) -> Callable[[], None]: ...


@dataclass(frozen=True)
class Candidate:
    engine: str
    url: str
    rank: int  # 0: holds the revision, 1: planned to load it, 2: neither
    load: int


def candidates(
    view: Catalog, base_id: str, ref: str, now: datetime, liveness: Liveness, sent: Mapping[str, int]
) -> tuple[list[Candidate], list[str]]:
    """The engine hosts that may serve `ref`, best first, and why each other engine of the base
    may not."""
    chosen, skipped = [], []
    for engine in view.engines():
        if engine.base_id != base_id:
            continue
        why = _unfit(engine, now, liveness)
        if why:
            skipped.append(f"{engine.engine} {why}")
            continue
        chosen.append(
            Candidate(
                engine.engine,
                engine.url,
                _rank(view, engine, ref),
                max(engine.in_flight, sent.get(engine.engine, 0)),
            )
        )
    return sorted(chosen, key=lambda c: (c.rank, c.load, c.engine)), skipped


def _unfit(engine: EngineRow, now: datetime, liveness: Liveness) -> str | None:
    if not engine.url:
        return "serves only inside its own process"
    state = liveness.state(engine, now)
    if state == "up":
        return None
    if engine.status == "lost":
        return f"is lost ({engine.lost_reason})"
    return f"has been silent for {heard_age(engine, now) or 0:.1f}s"


def _rank(view: Catalog, engine: EngineRow, ref: str) -> int:
    policy, _, revision = ref.partition("@")
    if ref in engine.holds or any(
        r.tier == "gpu" and r.policy == policy and r.revision == revision
        for r in view.residency(engine.engine)
    ):
        return 0
    latest = view.waves(engine.engine, 1)
    if latest and ref in (*latest[0].load, *latest[0].keep):
        return 1
    return 2


class Router:
    """Enter it (`async with`) to open its HTTP client. `catalog` opens the projection to route by;
    `seal` signs each request with the cluster's key; `accept_s` bounds how long a host may take
    to accept a request, `read_s` how long it may go quiet mid-answer (a cold load included)."""

    def __init__(
        self,
        catalog: Callable[[], Catalog],
        seal: Seal,
        liveness: Liveness | None = None,
        deadline_s: float = 5.0,
        accept_s: float = 2.0,
        read_s: float = 60.0,
    ) -> None:
        self.catalog = catalog
        self.seal = seal
        self.liveness = liveness or Liveness.from_env()
        self.deadline_s = deadline_s
        self.accept_s = accept_s
        self.read_s = read_s
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.read_s, connect=min(self.accept_s, 1.0)),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=64),
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def route(self, ref: str, base_id: str, request: GenerateRequest, in_flight: Counts) -> Routed:
        """The generation of `request` (for `ref`, on a host of `base_id`), started on its first
        `anext`: that is when a host is chosen and the request sent."""
        return Routed(self, ref, base_id, request, in_flight)

    async def _send(self, candidate: Candidate, body: bytes) -> httpx.Response | str:
        """The host's accepted response, or why it did not accept."""
        client = self._client
        assert client is not None, "the router is not open (async with Router(...))"
        request = client.build_request(
            "POST",
            candidate.url.rstrip("/") + GENERATE_PATH,
            content=body,
            headers={SEAL_HEADER: seal_of(self.seal, body), "content-type": "application/json"},
        )
        response: httpx.Response | None = None
        try:
            with anyio.fail_after(self.accept_s):
                response = await client.send(request, stream=True)
        except (httpx.TransportError, TimeoutError) as exc:
            return f"{candidate.engine} at {candidate.url} did not accept: {type(exc).__name__} {exc}".strip()
        if response.status_code == 200 and response.headers.get("content-type", "").startswith(NDJSON):
            return response
        state = response.headers.get(STATE_HEADER)
        try:
            await response.aread()
        finally:
            await response.aclose()
        if state:
            return f"{candidate.engine} is {state}"
        raise EngineRefused(response.status_code, *_error(response))

    def _candidates(self, routed: Routed) -> tuple[list[Candidate], list[str]]:
        try:
            view = self.catalog()
        except ProjectionMissing:
            return [], ["this replica has not built its catalog yet"]
        try:
            now = datetime.now(UTC)
            sent = routed.in_flight.counts
            return candidates(view, routed.base_id, routed.ref, now, self.liveness, sent)
        finally:
            view.close()

    async def _open(self, routed: Routed) -> tuple[httpx.Response, Callable[[], None]]:
        body = msgspec.json.encode(routed.request)
        tried: set[str] = set()
        reasons: list[str] = []
        with anyio.move_on_after(self.deadline_s):
            while True:
                found, skipped = self._candidates(routed)
                fresh = [c for c in found if c.engine not in tried]
                for candidate in fresh:
                    tried.add(candidate.engine)
                    leave = routed.in_flight.enter(candidate.engine)
                    try:
                        answer = await self._send(candidate, body)
                    except BaseException:
                        leave()
                        raise
                    if isinstance(answer, httpx.Response):
                        return answer, leave
                    leave()
                    reasons.append(answer)
                if not fresh:
                    reasons = [*reasons[-8:], *skipped]
                    tried.clear()  # a host that failed may come back within the deadline
                await anyio.sleep(RETRY_PAUSE_S)
        why = "; ".join(dict.fromkeys(reasons)) or f"no engine host serves base {routed.base_id!r}"
        raise NoEngine(f"no engine could take {routed.ref} within {self.deadline_s:g}s: {why}")


class Routed:
    """One routed generation: `deltas` streams it; once its first delta is out, `engine` names the
    host answering, and once it ended, `prompt_tokens` is the prompt's length (when asked for)."""

    def __init__(
        self, router: Router, ref: str, base_id: str, request: GenerateRequest, in_flight: Counts
    ) -> None:
        self.router = router
        self.ref = ref
        self.base_id = base_id
        self.request = request
        self.in_flight = in_flight
        self.engine = ""
        self.prompt_tokens: int | None = None
        self.deltas = self._deltas()

    async def _deltas(self) -> AsyncGenerator[Delta, None]:
        response, leave = await self.router._open(self)
        self.engine = response.headers.get(ENGINE_HEADER, "")
        try:
            async for raw in response.aiter_lines():
                if not raw:
                    continue
                line = decode_line(raw.encode())
                if isinstance(line, DeltaLine):
                    yield line.delta()
                elif isinstance(line, EndLine):
                    self.prompt_tokens = line.prompt_tokens
                    return
                elif isinstance(line, ErrorLine):
                    raise EngineRefused(line.status, line.message, line.param)
            raise EngineRefused(503, f"engine {self.engine} ended its answer before the end: retry")
        except httpx.TransportError as exc:
            raise EngineRefused(
                503, f"engine {self.engine} failed mid-answer ({type(exc).__name__}): retry"
            ) from None
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
            leave()


def _error(response: httpx.Response) -> tuple[str, str | None]:
    """The message and field of an engine host's error (OpenAI's shape)."""
    try:
        error = response.json()["error"]
        return str(error["message"]), error.get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.text[:500] or f"the engine host answered {response.status_code}", None
