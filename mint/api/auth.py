"""How a route learns who calls it: `Authorization: Bearer <secret>` or `X-API-Key: <secret>` (what
the Tinker SDK sends), verified against the app's TokenStore (`app.state.tokens`).

    principal = require(request, "reader")   # raises AuthError: 401 (who are you?) / 403 (not allowed)

`AuthError.response()` is a JSON body shaped like the OpenAI errors: {"error": {"message", "type"}}.
Tenant walls are the route's business (`principal.sees(tenant)`): a policy of another tenant is
answered like a missing one (404), so names do not leak.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from mint.api.errors import HttpError
from mint.auth.tokens import Principal, Role, TokenStore


class AuthError(HttpError):
    """401 (no or an unknown token: with the challenge a client expects) or 403 (a missing role)."""

    def __init__(self, status: int, message: str) -> None:
        challenge = {"WWW-Authenticate": 'Bearer realm="mint"'} if status == 401 else {}
        super().__init__(status, message, headers=challenge)


def secret_of(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization")
    if header:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise AuthError(401, "Authorization: expected 'Bearer <token>'")
        return secret.strip()
    return conn.headers.get("x-api-key") or None


def authenticate(conn: HTTPConnection) -> Principal:
    """The caller's principal, verified once per request (kept on `request.state`)."""
    known: Principal | None = getattr(conn.state, "principal", None)
    if known is not None:
        return known
    secret = secret_of(conn)
    if secret is None:
        raise AuthError(401, "no token: send 'Authorization: Bearer <token>' or 'X-API-Key: <token>'")
    store: TokenStore = conn.app.state.tokens
    principal = store.verify(secret)
    if principal is None:
        raise AuthError(401, "token: unknown or revoked")
    conn.state.principal = principal
    return principal


def require(conn: HTTPConnection, role: Role) -> Principal:
    """The caller's principal if its token has `role` (admin implies every role), else AuthError."""
    principal = authenticate(conn)
    if not principal.allows(role):
        roles = ", ".join(sorted(principal.roles))
        raise AuthError(403, f"token {principal.token_id} (roles: {roles}) lacks the {role!r} role")
    return principal
