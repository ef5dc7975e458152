"""The admin console: a page at `/admin/` and the JSON API it reads, `/admin/api/…`.

Everything here reads projections (the catalog read model); the only writes are the admin buttons,
which append Promote / Rollback commands to the log and let the page follow their outcome (the fact
they caused, or their CommandRejected). Reads need the reader role, the buttons the admin role; a
token sees its own tenant (an operator token every tenant), and another tenant's policy is answered
like a missing one. The page itself carries no data, so it is served without a token; it asks for one.

JSON API (all GET unless said):
  /admin/api/me                                   the caller's token id, tenant, roles
  /admin/api/policies?prefix=&status=&base=&after=&limit=
                                                  a page of policies in name order; `next` pages on
  /admin/api/policies/{tenant}/{name}             revisions, lineage, evaluations, serving history,
                                                  rejections, and the audit trail with causation
  POST /admin/api/policies/{tenant}/{name}/promote   {"revision", "reason"} -> {"command": id}
  POST /admin/api/policies/{tenant}/{name}/rollback  {"to_revision"?, "reason"} -> {"command": id}
  /admin/api/policies/{tenant}/{name}/outcomes/{command}
                                                  {"status": pending | applied | rejected, …}
  /admin/api/engines                              slots, residency per tier, waves, in-flight requests
                                                  (a tenant: its own adapters only, no engine-wide counts)
  /admin/api/runs, /admin/api/runs/{tenant}/{name}   runs, and a run's steps (loss, reward curves)
  /admin/api/dead-letters                         records the projector refused (operator only)
  /admin/api/stream                               Server-Sent Events each time facts land: `position`
                                                  (the checkpoint) for the operator, a bare `changed`
                                                  for a tenant
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from events.catalog import Promote, Rollback
from events.codec import field_of
from events.envelope import Command
from events.log import EventLog
from events.names import POLICY_PATTERN, RevisionId
from mint.api.auth import AuthError, require
from mint.auth.tokens import Principal, Role
from mint.catalog.queries import Catalog, ProjectionMissing
from mint.catalog.rows import RejectionRow, ServingMove

STREAM_POLL_S = 0.25
PAGE_LIMIT = 200
_POLICY = re.compile(POLICY_PATTERN)
NOT_BUILT = "the catalog projection is not built yet (is `mint up` running?)"
# What a tenant sees of an engine besides its own adapters: what the engine is, not what it did.
# Its wave counter, load counts and requests in flight add up every tenant's traffic, and a new
# EngineRow field stays the operator's until it is added here.
ENGINE_FIELDS_FOR_TENANTS = (
    "engine",
    "base_id",
    "kind",
    "gpu_slots",
    "cpu_slots",
    "status",
    "registered_at",
    "lost_reason",
)


class ConsoleError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param}}
        return JSONResponse(body, status_code=self.status)


# Typed like the commands' fields, so a bad revision is refused here, naming it, and never reaches
# the log (msgspec checks patterns when decoding, not when a record is built).
class PromoteBody(msgspec.Struct, forbid_unknown_fields=True):
    revision: RevisionId
    reason: str = ""


class RollbackBody(msgspec.Struct, forbid_unknown_fields=True):
    to_revision: RevisionId | None = None
    reason: str = ""


def _json(value: Any) -> JSONResponse:
    return JSONResponse(msgspec.to_builtins(value))


def _scope_prefix(principal: Principal, prefix: str) -> str | None:
    """The prefix a search may use: an operator's as given; a tenant's confined to `tenant/` (None
    when the prefix names another tenant: nothing to show)."""
    if principal.operator:
        return prefix
    own = f"{principal.tenant}/"
    if prefix.startswith(own):
        return prefix
    return own if own.startswith(prefix) else None


def _policy_name(request: Request, principal: Principal) -> str:
    tenant, name = request.path_params["tenant"], request.path_params["name"]
    policy = f"{tenant}/{name}"
    if not _POLICY.match(policy):
        raise ConsoleError(400, f"policy: {policy!r} is not tenant/name", "policy")
    if not principal.sees(tenant):
        raise ConsoleError(404, f"policy {policy!r}: no such policy", "policy")
    return policy


def _audit(detail: dict[str, Any]) -> list[dict[str, Any]]:
    """A policy's history from its projection rows, oldest first: what, when, why, caused by what."""
    policy = detail["policy"]
    trail: list[dict[str, Any]] = [
        {"at": policy["registered_at"], "what": "registered", "detail": f"base {policy['base_id']}"}
    ]
    for r in detail["revisions"]:
        parent = f", parent {r['parent']}" if r["parent"] else ""
        run = f"run {r['run']}" if r["run"] else "no run (exported by a producer)"
        trail.append(
            {
                "at": r["exported_at"],
                "what": "exported",
                "revision": r["revision"],
                "detail": f"{run}{parent}",
            }
        )
    for e in detail["evaluations"]:
        trail.append(
            {
                "at": e["at"],
                "what": f"evaluated: {e['verdict']}",
                "revision": e["revision"],
                "detail": f"{e['suite']} v{e['suite_version']} score {e['score']:.4g}",
                "id": e["id"],
            }
        )
    for m in detail["serving"]:
        trail.append(
            {
                "at": m["at"],
                "what": m["kind"],
                "revision": m["revision"],
                "detail": f"from {m['previous'] or '-'}: {m['reason']}",
                "id": m["id"],
                "causation": m["causation"],
            }
        )
    for r in detail["rejections"]:
        trail.append(
            {
                "at": r["at"],
                "what": f"{r['command_type']} rejected",
                "detail": r["reason"],
                "id": r["id"],
                "causation": r["command_id"],
            }
        )
    trail.sort(key=lambda t: t["at"])
    return trail


def _lineage(revisions: list[dict[str, Any]], served: list[str], pointer: str | None) -> dict[str, Any]:
    nodes = [
        {
            "id": r["revision"],
            "run": r["run"],
            "served": r["revision"] in served,
            "pointer": r["revision"] == pointer,
        }
        for r in revisions
    ]
    edges = [{"from": r["parent"], "to": r["revision"]} for r in revisions if r["parent"]]
    return {"nodes": nodes, "edges": edges}


def routes(
    catalog: Callable[[], Catalog], log: EventLog, in_flight: Callable[[], dict[str, int]]
) -> list[Route | Mount]:
    def reading(role: Role = "reader") -> Callable[[Callable[[Request, Principal, Catalog], Response]], Any]:
        """A GET handler with its principal and an open catalog; errors become JSON responses."""

        def wrap(handler: Callable[[Request, Principal, Catalog], Response]) -> Any:
            async def endpoint(request: Request) -> Response:
                try:
                    principal = require(request, role)
                    view = catalog()
                except AuthError as exc:
                    return exc.response()
                except ProjectionMissing:
                    return ConsoleError(503, NOT_BUILT).response()
                try:
                    return handler(request, principal, view)
                except ConsoleError as exc:
                    return exc.response()
                finally:
                    view.close()

            return endpoint

        return wrap

    @reading()
    def me(request: Request, principal: Principal, view: Catalog) -> Response:
        return JSONResponse(
            {
                "token_id": principal.token_id,
                "tenant": principal.tenant,
                "roles": sorted(principal.roles),
                "operator": principal.operator,
            }
        )

    @reading()
    def policies(request: Request, principal: Principal, view: Catalog) -> Response:
        q = request.query_params
        try:
            limit = min(int(q.get("limit", "50")), PAGE_LIMIT)
        except ValueError:
            raise ConsoleError(400, f"limit: {q.get('limit')!r} is not an integer", "limit") from None
        status = q.get("status") or None
        if status not in (None, "active", "retired"):
            raise ConsoleError(400, f"status: {status!r} is not active or retired", "status")
        prefix = _scope_prefix(principal, q.get("prefix", ""))
        rows = (
            []
            if prefix is None
            else view.search(prefix, status, q.get("base") or None, q.get("after", ""), limit)
        )
        return JSONResponse(
            {
                "policies": msgspec.to_builtins(rows),
                "next": rows[-1].policy if len(rows) == limit else None,
            }
        )

    @reading()
    def policy(request: Request, principal: Principal, view: Catalog) -> Response:
        name = _policy_name(request, principal)
        row = view.policy(name)
        if row is None:
            raise ConsoleError(404, f"policy {name!r}: no such policy", "policy")
        detail: dict[str, Any] = {
            "policy": msgspec.to_builtins(row),
            "revisions": msgspec.to_builtins(view.revisions(name)),
            "evaluations": msgspec.to_builtins(view.evaluations(name)),
            "serving": msgspec.to_builtins(view.serving_history(name)),
            "rejections": msgspec.to_builtins(view.rejections(name)),
            "traffic": msgspec.to_builtins(view.traffic(name)),
        }
        detail["lineage"] = _lineage(detail["revisions"], list(row.served), row.pointer)
        detail["audit"] = _audit(detail)
        return JSONResponse(detail)

    @reading()
    def outcome(request: Request, principal: Principal, view: Catalog) -> Response:
        name = _policy_name(request, principal)
        found = view.outcome(name, request.path_params["command"])
        if isinstance(found, ServingMove):
            return JSONResponse({"status": "applied", "move": msgspec.to_builtins(found)})
        if isinstance(found, RejectionRow):
            return JSONResponse({"status": "rejected", "rejection": msgspec.to_builtins(found)})
        return JSONResponse({"status": "pending"})

    @reading()
    def engines(request: Request, principal: Principal, view: Catalog) -> Response:
        def mine(ref: str) -> bool:
            return principal.sees(ref.split("/", 1)[0])

        waiting = in_flight()
        out = []
        for engine in view.engines():
            resident = [r for r in view.residency(engine.engine) if mine(r.policy)]
            tiers: dict[str, int] = {}
            for r in resident:
                tiers[r.tier] = tiers.get(r.tier, 0) + 1
            waves = []
            for w in view.waves(engine.engine, limit=10):
                load, keep, evict = ([x for x in refs if mine(x)] for refs in (w.load, w.keep, w.evict))
                if principal.operator or load or keep or evict:  # another tenant's wave is not news
                    waves.append({**msgspec.to_builtins(w), "load": load, "keep": keep, "evict": evict})
            row: dict[str, Any] = msgspec.to_builtins(engine)
            if principal.operator:
                row["in_flight"] = waiting.get(engine.engine, 0)
            else:
                row = {field: row[field] for field in ENGINE_FIELDS_FOR_TENANTS}
            out.append(
                {
                    **row,
                    "tiers": tiers,
                    "resident": msgspec.to_builtins(resident),
                    "waves": waves,
                    "failures": [
                        msgspec.to_builtins(f) for f in view.load_failures(engine.engine) if mine(f.policy)
                    ],
                }
            )
        return JSONResponse({"engines": out})

    @reading()
    def runs(request: Request, principal: Principal, view: Catalog) -> Response:
        rows = view.runs(None if principal.operator else principal.tenant)
        return _json({"runs": rows})

    @reading()
    def run(request: Request, principal: Principal, view: Catalog) -> Response:
        tenant, name = request.path_params["tenant"], request.path_params["name"]
        found = view.run(f"{tenant}/{name}") if principal.sees(tenant) else None
        if found is None:
            raise ConsoleError(404, f"run {tenant}/{name!r}: no such run", "run")
        return _json({"run": found, "steps": view.steps(found.run)})

    @reading()
    def dead_letters(request: Request, principal: Principal, view: Catalog) -> Response:
        if not principal.operator:
            raise ConsoleError(403, "dead letters: only an operator token (tenant _system, admin) reads them")
        return _json({"dead_letters": view.dead_letters()})

    async def command(request: Request, build: Callable[[str, bytes, Principal], Command]) -> Response:
        try:
            principal = require(request, "admin")
            name = _policy_name(request, principal)
            view = catalog()
            try:
                known = view.policy(name) is not None
            finally:
                view.close()
            if not known:
                raise ConsoleError(404, f"policy {name!r}: no such policy", "policy")
            record = build(name, await request.body(), principal)
        except (AuthError, ConsoleError) as exc:
            return exc.response()
        except ProjectionMissing:
            return ConsoleError(503, NOT_BUILT).response()
        await log.append([record])
        return JSONResponse({"command": record.id, "type": type(record).__name__}, status_code=202)

    def _body(kind: type[Any], raw: bytes) -> Any:
        try:
            return msgspec.json.decode(raw or b"{}", type=kind)
        except msgspec.ValidationError as exc:
            raise ConsoleError(400, f"invalid request: {exc}", field_of(str(exc))) from None
        except msgspec.DecodeError as exc:
            raise ConsoleError(400, f"the body is not JSON: {exc}") from None

    def _record(cls: type[Command], principal: Principal, **fields: Any) -> Command:
        try:
            return cls.create(source=f"console:{principal.token_id}", **fields)
        except (msgspec.ValidationError, ValueError) as exc:
            raise ConsoleError(400, str(exc)) from None

    async def promote(request: Request) -> Response:
        def build(name: str, raw: bytes, principal: Principal) -> Command:
            body: PromoteBody = _body(PromoteBody, raw)
            return _record(Promote, principal, policy=name, revision=body.revision, reason=body.reason)

        return await command(request, build)

    async def rollback(request: Request) -> Response:
        def build(name: str, raw: bytes, principal: Principal) -> Command:
            body: RollbackBody = _body(RollbackBody, raw)
            return _record(Rollback, principal, policy=name, to_revision=body.to_revision, reason=body.reason)

        return await command(request, build)

    async def stream(request: Request) -> Response:
        try:
            principal = require(request, "reader")
        except AuthError as exc:
            return exc.response()
        return StreamingResponse(
            _changes(catalog, principal.operator),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store"},
        )

    static = StaticFiles(directory=str(resources.files("mint.console")), html=True)
    return [
        Route("/admin/api/me", me),
        Route("/admin/api/policies", policies),
        Route("/admin/api/policies/{tenant}/{name}", policy),
        Route("/admin/api/policies/{tenant}/{name}/promote", promote, methods=["POST"]),
        Route("/admin/api/policies/{tenant}/{name}/rollback", rollback, methods=["POST"]),
        Route("/admin/api/policies/{tenant}/{name}/outcomes/{command}", outcome),
        Route("/admin/api/engines", engines),
        Route("/admin/api/runs", runs),
        Route("/admin/api/runs/{tenant}/{name}", run),
        Route("/admin/api/dead-letters", dead_letters),
        Route("/admin/api/stream", stream),
        Mount("/admin", app=static, name="console"),
    ]


async def _changes(catalog: Callable[[], Catalog], operator: bool) -> AsyncIterator[bytes]:
    """One event each time the catalog's checkpoint moves, which it does exactly when facts were
    folded in. The checkpoint counts every tenant's facts per partition, so only the operator gets
    it (`position`); a tenant learns that something changed (`changed`) and re-reads what it sees."""
    last: dict[int, int] | None = None
    while True:
        view = catalog()
        try:
            now = view.position()
        finally:
            view.close()
        if now != last:
            last = now
            if operator:
                payload = msgspec.json.encode({"position": now, "facts": sum(now.values())})
                yield b"event: position\ndata: " + payload + b"\n\n"
            else:
                yield b"event: changed\ndata: {}\n\n"
        await anyio.sleep(STREAM_POLL_S)
