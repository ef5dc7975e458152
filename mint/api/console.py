"""The admin console: a page at `/admin/` and the JSON API it reads, `/admin/api/…`.

Everything here reads projections (the catalog read model); the only writes are the admin buttons,
which append Promote / Rollback commands to the log and let the page follow their outcome (the fact
they caused, or their CommandRejected). Reads need the reader role, the buttons the admin role; a
token sees its own tenant (an operator token every tenant), and another tenant's policy is answered
like a missing one. The page itself carries no data, so it is served without a token; it asks for one.
The JSON is exact (ISO times, milliseconds as floats, bytes as integers); the page formats it for people.

JSON API (all GET unless said):
  /admin/api/me                                   the caller's token id, tenant, roles
  /admin/api/policies?prefix=&status=&base=&after=&limit=
                                                  a page of policies in name order (limit 1 to 200,
                                                  50 if not given); `next` pages on
  /admin/api/policies/{tenant}/{name}             revisions, lineage, evaluations, serving history,
                                                  rejections, and the audit trail with causation
  POST /admin/api/policies/{tenant}/{name}/promote   {"revision", "reason"} -> {"command": id, "type",
                                                  "outcome": its fact's type, "position"} (200, with
                                                  x-mint-position), or {"command", "type"} (202: not
                                                  decided within OUTCOME_WAIT_S; follow it)
  POST /admin/api/policies/{tenant}/{name}/rollback  {"to_revision"?, "reason"} -> the same
  /admin/api/policies/{tenant}/{name}/outcomes/{command}
                                                  {"status": pending | applied | rejected, …}
  /admin/api/engines                              slots, residency per tier, waves, in-flight requests
                                                  (a tenant: its own adapters only, no engine-wide counts)
  /admin/api/runs, /admin/api/runs/{tenant}/{name}   runs, and a run's steps (loss, reward curves)
  /admin/api/dead-letters                         records the projector refused (operator only)
  /admin/api/stream                               Server-Sent Events each time facts land: `position`
                                                  (the checkpoint) for the operator, a bare `changed`
                                                  for a tenant

Each route is a module-level handler over a small context: a read gets a `Read` (who asks, the catalog
opened for this request, the path's and query's parameters) and returns what to answer as JSON; a
refusal is an `HttpError`, answered in OpenAI's error shape.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Annotated, Any, Literal

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from events.catalog import AbortCanary, CanaryRules, Promote, PromoteCanary, Rollback, StartCanary
from events.codec import field_of
from events.envelope import Command
from events.log import EventLog
from events.log import outcome as decision_of
from events.names import POLICY_PATTERN, RevisionId
from mint.api.auth import require
from mint.api.console_views import audit, canary_panel, engine_seen, lineage
from mint.api.errors import HttpError, decoded, retry_later
from mint.api.positions import positioned
from mint.auth.tokens import Principal
from mint.catalog.queries import Catalog, ProjectionMissing
from mint.catalog.rows import CanaryRow, RejectionRow, ServingMove

STREAM_POLL_S = 0.25
OUTCOME_WAIT_S = 10.0  # how long a button's answer waits for the catalog's decision
PAGE_LIMIT = 200
_POLICY = re.compile(POLICY_PATTERN)
NOT_BUILT = "the catalog projection is not built yet (is `mint up` running?)"


@dataclass(frozen=True)
class Console:
    """What every console route works over: the catalog (opened per request), the log the admin
    buttons append to, and the requests in flight per engine."""

    catalog: Callable[[], Catalog]
    log: EventLog
    in_flight: Callable[[], Mapping[str, int]]


@dataclass(frozen=True)
class Read:
    """One GET of the JSON API: who asks, the catalog opened for it, its path and query parameters."""

    console: Console
    principal: Principal
    view: Catalog
    path: Mapping[str, str]
    query: Mapping[str, str]


class PolicySearch(msgspec.Struct, forbid_unknown_fields=True):
    """The query of `/admin/api/policies`, typed so that a bad parameter is refused by its name."""

    prefix: str = ""
    status: Literal["", "active", "retired"] = ""
    base: str = ""
    after: str = ""
    limit: Annotated[int, msgspec.Meta(ge=1, le=PAGE_LIMIT)] = 50


# Typed like the commands' fields, so a bad revision is refused here, naming it, and never reaches
# the log (msgspec checks patterns when decoding, not when a record is built).
class PromoteBody(msgspec.Struct, forbid_unknown_fields=True):
    revision: RevisionId
    reason: str = ""


class RollbackBody(msgspec.Struct, forbid_unknown_fields=True):
    to_revision: RevisionId | None = None
    reason: str = ""


class StartCanaryBody(msgspec.Struct, forbid_unknown_fields=True):
    revision: RevisionId
    rules: CanaryRules | None = None  # None: the policy's canary rules, or the defaults
    reason: str = ""


class EndCanaryBody(msgspec.Struct, forbid_unknown_fields=True):
    canary: str | None = None  # the canary the button was shown for: a later one is left alone
    reason: str = ""


@contextmanager
def _opened(console: Console) -> Iterator[Catalog]:
    """The catalog for one request, closed after it; 503 while the projection is not built."""
    try:
        view = console.catalog()
    except ProjectionMissing:
        raise retry_later(503, NOT_BUILT) from None
    try:
        yield view
    finally:
        view.close()


def _no_such_policy(policy: str) -> HttpError:
    return HttpError(404, f"policy {policy!r}: no such policy", "policy")


def _policy_name(principal: Principal, path: Mapping[str, str]) -> str:
    """The `{tenant}/{name}` of the path, if well formed and the principal sees the tenant; another
    tenant's policy is refused exactly like a missing one."""
    tenant, name = path["tenant"], path["name"]
    policy = f"{tenant}/{name}"
    if not _POLICY.match(policy):
        raise HttpError(400, f"policy: {policy!r} is not tenant/name", "policy")
    if not principal.sees(tenant):
        raise _no_such_policy(policy)
    return policy


def _scope_prefix(principal: Principal, prefix: str) -> str | None:
    """The prefix a search may use: an operator's as given; a tenant's confined to `tenant/` (None
    when the prefix names another tenant: nothing to show)."""
    if principal.operator:
        return prefix
    own = f"{principal.tenant}/"
    if prefix.startswith(own):
        return prefix
    return own if own.startswith(prefix) else None


def me(read: Read) -> dict[str, Any]:
    p = read.principal
    return {"token_id": p.token_id, "tenant": p.tenant, "roles": sorted(p.roles), "operator": p.operator}


def policies(read: Read) -> dict[str, Any]:
    try:
        search = msgspec.convert(dict(read.query), PolicySearch, strict=False)
    except msgspec.ValidationError as exc:
        raise HttpError(400, f"invalid query: {exc}", field_of(str(exc))) from None
    prefix = _scope_prefix(read.principal, search.prefix)
    if prefix is None:
        return {"policies": [], "next": None}
    rows = read.view.search(prefix, search.status or None, search.base or None, search.after, search.limit)
    return {"policies": rows, "next": rows[-1].policy if len(rows) == search.limit else None}


def policy(read: Read) -> dict[str, Any]:
    name = _policy_name(read.principal, read.path)
    row = read.view.policy(name)
    if row is None:
        raise _no_such_policy(name)
    revisions, evaluations = read.view.revisions(name), read.view.evaluations(name)
    serving, rejections = read.view.serving_history(name), read.view.rejections(name)
    return {
        "policy": row,
        "revisions": revisions,
        "evaluations": evaluations,
        "serving": serving,
        "rejections": rejections,
        "traffic": read.view.traffic(name),
        "canary": canary_panel(read.view, row),
        "canaries": read.view.canaries(name),
        "lineage": lineage(row, revisions),
        "audit": audit(row, revisions, evaluations, serving, rejections),
    }


def outcome(read: Read) -> dict[str, Any]:
    found = read.view.outcome(_policy_name(read.principal, read.path), read.path["command"])
    if isinstance(found, ServingMove):
        return {"status": "applied", "move": found}
    if isinstance(found, CanaryRow):
        return {"status": "applied", "canary": found}
    if isinstance(found, RejectionRow):
        return {"status": "rejected", "rejection": found}
    return {"status": "pending"}


def engines(read: Read) -> dict[str, Any]:
    in_flight = read.console.in_flight() if read.principal.operator else {}
    return {"engines": [engine_seen(read.view, e, read.principal, in_flight) for e in read.view.engines()]}


def runs(read: Read) -> dict[str, Any]:
    return {"runs": read.view.runs(None if read.principal.operator else read.principal.tenant)}


def run(read: Read) -> dict[str, Any]:
    tenant, name = read.path["tenant"], read.path["name"]
    found = read.view.run(f"{tenant}/{name}") if read.principal.sees(tenant) else None
    if found is None:
        raise HttpError(404, f"run {f'{tenant}/{name}'!r}: no such run", "run")
    return {"run": found, "steps": read.view.steps(found.run)}


def dead_letters(read: Read) -> dict[str, Any]:
    if not read.principal.operator:
        raise HttpError(403, "dead letters: only an operator token (tenant _system, admin) reads them")
    return {"dead_letters": read.view.dead_letters()}


async def _answer_read(console: Console, handler: Callable[[Read], object], request: Request) -> Response:
    """A GET: the reader's principal and an open catalog for `handler`; its answer as JSON."""
    try:
        principal = require(request, "reader")
        with _opened(console) as view:
            answer = handler(Read(console, principal, view, request.path_params, request.query_params))
    except HttpError as exc:
        return exc.response()
    return JSONResponse(msgspec.to_builtins(answer))


def _body(kind: type[Any], raw: bytes) -> Any:
    """The command's JSON body (none is `{}`) decoded as `kind`; a 400 naming the field otherwise."""
    return decoded(raw or b"{}", kind)


def _record(cls: type[Command], principal: Principal, **fields: Any) -> Command:
    try:
        return cls.create(source=f"console:{principal.token_id}", **fields)
    except (msgspec.ValidationError, ValueError) as exc:
        raise HttpError(400, str(exc)) from None


def promote(policy: str, raw: bytes, principal: Principal) -> Command:
    body: PromoteBody = _body(PromoteBody, raw)
    return _record(Promote, principal, policy=policy, revision=body.revision, reason=body.reason)


def rollback(policy: str, raw: bytes, principal: Principal) -> Command:
    body: RollbackBody = _body(RollbackBody, raw)
    return _record(Rollback, principal, policy=policy, to_revision=body.to_revision, reason=body.reason)


def start_canary(policy: str, raw: bytes, principal: Principal) -> Command:
    body: StartCanaryBody = _body(StartCanaryBody, raw)
    return _record(
        StartCanary, principal, policy=policy, revision=body.revision, rules=body.rules, reason=body.reason
    )


def promote_canary(policy: str, raw: bytes, principal: Principal) -> Command:
    body: EndCanaryBody = _body(EndCanaryBody, raw)
    return _record(
        PromoteCanary, principal, policy=policy, canary=body.canary, reason=body.reason or "by hand"
    )


def abort_canary(policy: str, raw: bytes, principal: Principal) -> Command:
    body: EndCanaryBody = _body(EndCanaryBody, raw)
    return _record(AbortCanary, principal, policy=policy, canary=body.canary, reason=body.reason or "by hand")


COMMANDS: dict[str, Callable[[str, bytes, Principal], Command]] = {
    "promote": promote,
    "rollback": rollback,
    "canary": start_canary,
    "canary/promote": promote_canary,
    "canary/abort": abort_canary,
}


async def _append_command(
    console: Console, build: Callable[[str, bytes, Principal], Command], request: Request
) -> Response:
    """A POST of an admin button: the admin's principal, a policy it sees that exists, the command
    `build` makes of the body; appended, then answered 200 with its decision's type and position once
    the catalog has decided it, or 202 (its id only, for the page to follow) if that takes longer
    than OUTCOME_WAIT_S."""
    try:
        principal = require(request, "admin")
        name = _policy_name(principal, request.path_params)
        with _opened(console) as view:
            known = view.policy(name) is not None
        if not known:
            raise _no_such_policy(name)
        record = build(name, await request.body(), principal)
    except HttpError as exc:
        return exc.response()
    (appended,) = await console.log.append([record])
    sent = {"command": record.id, "type": type(record).__name__}
    try:
        decided = await decision_of(console.log, appended, record.id, OUTCOME_WAIT_S)
    except TimeoutError:
        return JSONResponse(sent, status_code=202)  # on the log, not decided yet: the page follows it
    return positioned({**sent, "outcome": type(decided.fact).__name__}, decided.position)


async def _stream(console: Console, request: Request) -> Response:
    try:
        principal = require(request, "reader")
    except HttpError as exc:
        return exc.response()
    return StreamingResponse(
        _changes(console, principal.operator),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )


async def _changes(console: Console, operator: bool) -> AsyncIterator[bytes]:
    """One event each time the catalog's checkpoint moves, which it does exactly when facts were
    folded in. The checkpoint counts every tenant's facts per partition, so only the operator gets
    it (`position`); a tenant learns that something changed (`changed`) and re-reads what it sees."""
    last: dict[int, int] | None = None
    while True:
        with _opened(console) as view:
            now = view.position()
        if now != last:
            last = now
            if operator:
                payload = msgspec.json.encode({"position": now, "facts": sum(now.values())})
                yield b"event: position\ndata: " + payload + b"\n\n"
            else:
                yield b"event: changed\ndata: {}\n\n"
        await anyio.sleep(STREAM_POLL_S)


def routes(
    catalog: Callable[[], Catalog], log: EventLog, in_flight: Callable[[], Mapping[str, int]]
) -> list[Route | Mount]:
    console = Console(catalog, log, in_flight)
    reads: dict[str, Callable[[Read], object]] = {
        "/admin/api/me": me,
        "/admin/api/policies": policies,
        "/admin/api/policies/{tenant}/{name}": policy,
        "/admin/api/policies/{tenant}/{name}/outcomes/{command}": outcome,
        "/admin/api/engines": engines,
        "/admin/api/runs": runs,
        "/admin/api/runs/{tenant}/{name}": run,
        "/admin/api/dead-letters": dead_letters,
    }
    static = StaticFiles(directory=str(resources.files("mint.console")), html=True)
    return [
        *(Route(path, partial(_answer_read, console, handler)) for path, handler in reads.items()),
        *(
            Route(
                f"/admin/api/policies/{{tenant}}/{{name}}/{action}",
                partial(_append_command, console, build),
                methods=["POST"],
            )
            for action, build in COMMANDS.items()
        ),
        Route("/admin/api/stream", partial(_stream, console)),
        Mount("/admin", app=static, name="console"),
    ]
