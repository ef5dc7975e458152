"""A mixed workload on a `mint cluster` through its public HTTP interfaces only, at a fixed rate.

Each request is one of the kinds of `MIX`, drawn with a seeded generator, sent to the next API replica
in turn, and written to the ledger: its answer, the records a write was acknowledged for (with the
position it answered) and the training runs started. A 429 or 503 with Retry-After is honoured: the
answer is recorded, the client backs off and sends the same body again (a write keeps its record ids,
so the retry cannot double it). A replica that does not answer is recorded as such (a timeout is a
hang) and the request goes to the next replica, with the same body.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from events import codec
from events.catalog import RegisterPolicy
from events.envelope import Command, Record
from events.training import RevisionExported, StartTraining
from mint.auth.tokens import TokenStore
from mint.chaos.ledger import Acknowledged, Answer, Ledger, TrainingStarted
from mint.chaos.until import set_after, stop_event
from mint.cluster.publish import publish_random_revision
from mint.cluster.table import ClusterDir, ClusterTable

# How often each kind is drawn; kinds whose actors the cluster lacks are left out (see `_needs`).
MIX: Mapping[str, float] = {
    "register": 0.25,
    "events": 0.15,
    "promote": 0.1,
    "rollback": 0.05,
    "completion": 0.2,
    "chat": 0.2,
    "train": 0.05,
    "tinker": 0.05,
}
_NEEDS: Mapping[str, str] = {"completion": "engine-host", "chat": "engine-host", "train": "trainer"}
TINKER = "/api/v1"
FUTURE_POLLS = 20  # a Tinker future still running after this many long polls is a hang
TENANT = "chaos"
SERVED = 3  # policies published (served) before the load starts: promotions and inference use them
CLIENT_TIMEOUT_S = 30.0  # an answer later than this is a hang
MAX_TRIES = 5  # per request, across 429/503 and replicas that do not answer
MAX_BACKOFF_S = 5.0
SETUP_TIMEOUT_S = 180.0
POLICY_ROUTE = "/admin/api/policies/{tenant}/{name}"
PROBE_EVERY_S, PROBE_TIMEOUT_S = 1.0, 2.0  # a replica not known ready is asked its /healthz


@dataclass(frozen=True)
class _Request:
    kind: str
    method: str
    path: str
    body: bytes | dict[str, object] | None
    records: tuple[Record, ...] = ()  # what a write appends (the ids a retry repeats)
    route: str = ""  # the route's template, when the path names a policy

    @property
    def name(self) -> str:
        """`METHOD ROUTE` as the ledger records it (latencies are per route)."""
        return f"{self.method} {self.route or self.path}"


class Workload:
    """Seeded, at a fixed rate: `run` sends about `rate_per_s` requests a second until told to stop."""

    def __init__(
        self,
        cluster: ClusterDir,
        ledger: Ledger,
        *,
        seed: int,
        rate_per_s: float,
        mix: Mapping[str, float] | None = None,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s: {rate_per_s} is not above 0")
        chosen = dict(MIX if mix is None else mix)
        unknown = sorted(set(chosen) - set(MIX))
        if unknown:
            raise ValueError(f"mix: no kind named {', '.join(unknown)} (kinds: {', '.join(MIX)})")
        self.cluster, self.ledger, self.rate_per_s = cluster, ledger, rate_per_s
        self._random = random.Random(seed)
        self._seed = seed
        table = cluster.read()
        roles = {p.role for p in table.processes}
        self._mix = {k: w for k, w in chosen.items() if w > 0 and _NEEDS.get(k, "api") in roles}
        if not self._mix:
            raise ValueError(f"mix: no kind this cluster can serve (roles: {', '.join(sorted(roles))})")
        self.counts: Counter[str] = Counter()
        self._token = TokenStore(cluster.tokens).issue(TENANT, "admin").secret
        self._next_replica = 0
        self._ready: set[str] = set()  # API replicas whose /healthz said ready, until one fails
        self._probed: dict[str, float] = {}  # when each may be probed again
        self._served: list[str] = []  # policies with r1 promoted
        self._registered = 0
        self._revisions = Counter[str]()
        self._r1: dict[str, dict[str, Any]] = {}

    # -- the run ---------------------------------------------------------------------------------

    async def run(self, until: anyio.Event | float) -> None:
        """Send requests until `until` (an event set, or that many seconds)."""
        stop, seconds = stop_event(until)
        async with httpx.AsyncClient(
            timeout=CLIENT_TIMEOUT_S, headers={"Authorization": f"Bearer {self._token}"}
        ) as http:
            await self._setup(http)
            async with anyio.create_task_group() as tg:
                if seconds is not None:
                    tg.start_soon(set_after, stop, seconds)
                period = 1.0 / self.rate_per_s
                next_at = anyio.current_time()
                while not stop.is_set():
                    request = self._draw()
                    self.counts[request.kind] += 1
                    tg.start_soon(self._send, http, request)
                    next_at += period
                    with anyio.move_on_after(max(0.0, next_at - anyio.current_time())):
                        await stop.wait()
                tg.cancel_scope.deadline = anyio.current_time() + CLIENT_TIMEOUT_S * 2

    async def _setup(self, http: httpx.AsyncClient) -> None:
        """SERVED policies published (adapter in S3, export, evaluation, promotion), and seen by every
        API replica before the load starts."""
        names = [f"{TENANT}/served-{self._seed}-{i}" for i in range(SERVED)]
        for i, name in enumerate(names):
            await publish_random_revision(self.cluster, name, "r1", seed=self._seed + i)
        deadline = anyio.current_time() + SETUP_TIMEOUT_S
        for url in self._table().api:
            while True:
                try:
                    listed = await http.get(f"{url}/v1/models")
                    ids = (
                        {m["id"] for m in listed.json().get("data", [])}
                        if listed.status_code == 200
                        else set()
                    )
                except (httpx.HTTPError, ValueError):
                    ids = set()
                if set(names) <= ids:
                    break
                if anyio.current_time() > deadline:
                    raise TimeoutError(f"{url} did not list {names} within {SETUP_TIMEOUT_S:.0f} s")
                await anyio.sleep(0.5)
        self._served = names
        # r1's row, through the console's read: each new revision a producer exports reuses its adapter.
        url = self._table().api[0]
        for name in names:
            tenant, short = name.split("/")
            shown = await http.get(f"{url}/admin/api/policies/{tenant}/{short}")
            shown.raise_for_status()
            (r1,) = [r for r in shown.json()["revisions"] if r["revision"] == "r1"]
            self._r1[name] = r1

    def _table(self) -> ClusterTable:
        return self.cluster.read()

    # -- what to send ----------------------------------------------------------------------------

    def _draw(self) -> _Request:
        kinds, weights = zip(*self._mix.items(), strict=True)
        kind = self._random.choices(kinds, weights)[0]
        return getattr(self, f"_{kind}")()  # type: ignore[no-any-return]

    def _register(self) -> _Request:
        self._registered += 1
        command = RegisterPolicy.create(
            source="chaos", policy=f"{TENANT}/p-{self._seed}-{self._registered}", base_id=self._base_id()
        )
        return _ndjson("register", "/v1/commands", [command])

    def _events(self) -> _Request:
        """A new revision of a served policy, its adapter the one r1 has (its key, sha and size)."""
        policy = self._random.choice(self._served)
        self._revisions[policy] += 1
        r1 = self._r1[policy]
        export = RevisionExported.create(
            source="chaos",
            policy=policy,
            revision=f"x{self._revisions[policy]}",
            **{k: r1[k] for k in ("base_id", "uri", "sha256", "bytes", "rank", "alpha", "targets")},
        )
        return _ndjson("events", "/v1/events", [export])

    def _promote(self) -> _Request:
        policy = self._random.choice(self._served)
        # r1, or a revision a producer exported (unevaluated: the catalog refuses it, an outcome too).
        exported = [f"x{i}" for i in range(1, self._revisions[policy] + 1)]
        revision = self._random.choice(["r1", *exported])
        tenant, name = policy.split("/")
        path = f"/admin/api/policies/{tenant}/{name}/promote"
        return _Request("promote", "POST", path, {"revision": revision}, route=POLICY_ROUTE + "/promote")

    def _rollback(self) -> _Request:
        tenant, name = self._random.choice(self._served).split("/")
        path = f"/admin/api/policies/{tenant}/{name}/rollback"
        return _Request("rollback", "POST", path, {}, route=POLICY_ROUTE + "/rollback")

    def _completion(self) -> _Request:
        body = {"model": self._random.choice(self._served), "prompt": "hello", "max_tokens": 4}
        return _Request("completion", "POST", "/v1/completions", body)

    def _chat(self) -> _Request:
        messages = [{"role": "user", "content": "hi"}]
        body = {"model": self._random.choice(self._served), "messages": messages, "max_tokens": 4}
        return _Request("chat", "POST", "/v1/chat/completions", body)

    def _train(self) -> _Request:
        """What `mint train` appends (it runs actors of its own beside a home; on a cluster the
        trainers take the command from the log): a short run of one served policy."""
        self._registered += 1
        command = StartTraining.create(
            source="chaos",
            run=f"{TENANT}/run-{self._seed}-{self._registered}",
            policies=[self._random.choice(self._served)],
            base_id=self._base_id(),
            algo="sft",
            task="sft-repeat:hello",
            steps=2,
            config={"rank": 4, "lr": 5e-3, "seed": self._seed},
        )
        return _ndjson("train", "/v1/commands", [command])

    def _tinker(self) -> _Request:
        """A Tinker client's training: a session, a LoRA model, one forward_backward and one optim_step
        (each a future retrieved), all on one API replica (the model lives in its process)."""
        return _Request("tinker", "POST", TINKER + "/create_model", None)

    def _base_id(self) -> str:
        return self._table().base.split(":", 1)[0]

    # -- sending ---------------------------------------------------------------------------------

    async def _send(self, http: httpx.AsyncClient, request: _Request) -> None:
        if request.kind == "tinker":
            await self._tinker_steps(http)
            return
        for _ in range(MAX_TRIES):
            url = await self._replica(http)
            if url is None:
                return
            retry_s, _ = await self._attempt(http, url, request)
            if retry_s is None:
                return
            await anyio.sleep(retry_s)

    async def _replica(self, http: httpx.AsyncClient) -> str | None:
        """The next API replica in turn among those the table lists and that said they are ready, as
        a load balancer would pick: a replica joining is in the table before it listens."""
        listed = self._table().api
        for url in listed:
            if url not in self._ready and anyio.current_time() >= self._probed.get(url, 0.0):
                self._probed[url] = anyio.current_time() + PROBE_EVERY_S
                try:
                    health = await http.get(f"{url}/healthz", timeout=PROBE_TIMEOUT_S)
                except httpx.HTTPError:
                    continue
                if health.status_code == 200:
                    self._ready.add(url)
        ready = [u for u in listed if u in self._ready] or listed  # none ready: try them (and record)
        if not ready:
            return None
        self._next_replica += 1
        return ready[self._next_replica % len(ready)]

    async def _tinker_steps(self, http: httpx.AsyncClient) -> None:
        url = await self._replica(http)
        if url is None:
            return
        session = await self._tinker_call(http, url, "/create_session", {})
        if session is None:
            return
        body = {"session_id": session["session_id"], "base_model": self._base_id()}
        model = await self._tinker_call(http, url, "/create_model", body, future=True)
        if model is None:
            return
        model_id = str(model["model_id"])
        self.ledger.write(TrainingStarted(model_id, model_id))
        datum = {
            "model_input": {"chunks": [{"type": "encoded_text", "tokens": [5, 6, 7]}]},
            "loss_fn_inputs": {"target_tokens": {"data": [6, 7, 8], "dtype": "int64"}},
        }
        batch = {"data": [datum], "loss_fn": "cross_entropy"}
        step = {"model_id": model_id, "seq_id": 1, "forward_backward_input": batch}
        if await self._tinker_call(http, url, "/forward_backward", step, future=True) is None:
            return
        optim = {"model_id": model_id, "seq_id": 2, "adam_params": {}}
        await self._tinker_call(http, url, "/optim_step", optim, future=True)

    async def _tinker_call(
        self, http: httpx.AsyncClient, url: str, path: str, body: dict[str, object], *, future: bool = False
    ) -> dict[str, Any] | None:
        """One Tinker call on `url` (again after a 429/503), then its future retrieved when it is one;
        the result, or None when the client gives up (each answer is in the ledger)."""
        request = _Request("tinker", "POST", TINKER + path, body)
        answer = await self._answered(http, url, request)
        if answer is None or not future:
            return answer
        poll = _Request("tinker", "POST", TINKER + "/retrieve_future", answer)
        for _ in range(FUTURE_POLLS):
            result = await self._answered(http, url, poll)
            if result is None or result.get("type") != "try_again":
                return result
        return None

    async def _answered(self, http: httpx.AsyncClient, url: str, request: _Request) -> dict[str, Any] | None:
        for _ in range(MAX_TRIES):
            retry_s, answer = await self._attempt(http, url, request)
            if retry_s is None:
                return answer
            await anyio.sleep(retry_s)
        return None

    async def _attempt(
        self, http: httpx.AsyncClient, url: str, request: _Request
    ) -> tuple[float | None, dict[str, Any] | None]:
        """One attempt, recorded: the seconds to wait before the next try (None when done), and the
        answer's JSON object when it succeeded with one."""
        route = request.name
        sent_at, started = time.time(), anyio.current_time()
        kwargs: dict[str, object] = (
            {"content": request.body, "headers": {"content-type": "application/x-ndjson"}}
            if isinstance(request.body, bytes)
            else {"json": request.body}
        )
        if request.path.startswith(TINKER):
            kwargs["headers"] = {"X-API-Key": self._token}
        try:
            answer = await http.request(request.method, url + request.path, **kwargs)  # type: ignore[arg-type]
        except httpx.TimeoutException as exc:
            self._answer(route, 0, None, started, sent_at, "timeout", f"{url}: {exc!r}")
            return None if request.kind == "tinker" else 0.0, None
        except httpx.TransportError as exc:
            self._answer(route, 0, None, started, sent_at, "transport", f"{url}: {exc!r}")
            self._ready.discard(url)  # probed again before it gets more
            # A Tinker model lives in the process that does not answer: its client gives up.
            return None if request.kind == "tinker" else 0.5, None
        retry_after = answer.headers.get("retry-after")
        detail = url if answer.is_success else f"{url}: {answer.text[:200]}"
        self._answer(route, answer.status_code, retry_after, started, sent_at, None, detail)
        if answer.status_code in (429, 503) and retry_after:
            return min(float(retry_after), MAX_BACKOFF_S), None
        if not answer.is_success:
            return None, None
        self._acknowledge(route, request, answer)
        try:
            decoded = answer.json()
        except ValueError:
            return None, None
        return None, decoded if isinstance(decoded, dict) else None

    def _answer(
        self,
        route: str,
        status: int,
        retry_after: str | None,
        started: float,
        sent_at: float,
        failure: str | None,
        detail: str,
    ) -> None:
        elapsed = anyio.current_time() - started
        self.ledger.write(
            Answer(route, status, retry_after, elapsed, failure, detail, sent_at)  # type: ignore[arg-type]
        )

    def _acknowledge(self, route: str, request: _Request, answer: httpx.Response) -> None:
        position = answer.headers.get("x-mint-position", "")
        if request.records:
            ids = [r.id for r in request.records]
            commands = [r.id for r in request.records if isinstance(r, Command)]
            self.ledger.write(Acknowledged(route, ids, commands, position))
            for record in request.records:
                if isinstance(record, StartTraining):
                    for policy in record.policies:
                        self.ledger.write(TrainingStarted(record.run, policy))
        elif request.kind in ("promote", "rollback"):
            command = str(answer.json()["command"])  # 200 once decided, 202 when still deciding
            self.ledger.write(Acknowledged(route, [command], [command], position))


def _ndjson(kind: str, path: str, records: list[Record]) -> _Request:
    body = b"".join(codec.encode(r) + b"\n" for r in records)
    return _Request(kind, "POST", path, body, tuple(records))
