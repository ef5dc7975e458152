"""Bearer tokens: each maps to one tenant and a set of roles, stored as a sha256 only.

A token's secret is shown once, when it is issued; the store keeps its sha256, so a copy of
`tokens.db` lets nobody in. Secrets start with `tml-` because the Tinker SDK refuses API keys that do
not. Every verify reads the file, so `mint tokens revoke` in another process takes effect at once.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, get_args

import msgspec

from events.names import SYSTEM_TENANT, TENANT_PATTERN

Role = Literal["reader", "producer", "trainer", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
SECRET_PREFIX = "tml-"

_TENANT = re.compile(rf"^{TENANT_PATTERN}$")


class Principal(msgspec.Struct, frozen=True):
    """The bearer of a verified token: what the HTTP layer checks every route against."""

    token_id: str
    tenant: str
    roles: frozenset[str]

    def allows(self, role: Role) -> bool:
        """Admin implies every other role."""
        return role in self.roles or "admin" in self.roles

    def sees(self, tenant: str) -> bool:
        """A token sees its own tenant; an operator admin (tenant `_system`) sees every tenant."""
        return tenant == self.tenant or self.operator

    @property
    def operator(self) -> bool:
        return self.tenant == SYSTEM_TENANT and "admin" in self.roles


class IssuedToken(msgspec.Struct, frozen=True):
    token_id: str
    secret: str  # shown once; the store keeps only its sha256


class TokenInfo(msgspec.Struct, frozen=True):
    token_id: str
    tenant: str
    roles: tuple[str, ...]
    label: str
    created_at: str
    revoked_at: str | None


def parse_roles(roles: str | list[str] | tuple[str, ...] | frozenset[str]) -> frozenset[str]:
    """Roles from a list or a comma-separated string; an unknown one is a ValueError naming it."""
    names = [r.strip() for r in (roles.split(",") if isinstance(roles, str) else roles) if r.strip()]
    if not names:
        raise ValueError(f"roles: give at least one of {', '.join(ROLES)}")
    unknown = sorted(set(names) - set(ROLES))
    if unknown:
        raise ValueError(f"roles: unknown role {', '.join(map(repr, unknown))} (roles: {', '.join(ROLES)})")
    return frozenset(names)


def check_tenant(tenant: str) -> str:
    if tenant != SYSTEM_TENANT and not _TENANT.match(tenant):
        raise ValueError(
            f"tenant: {tenant!r} is not a tenant name (lowercase letters, digits, '_' and '-', "
            f"starting with a letter or digit; or {SYSTEM_TENANT!r} for the operator)"
        )
    return tenant


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    roles TEXT NOT NULL,
    label TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
)
"""


class TokenStore:
    """Tokens in one SQLite file (`Home.tokens`). Safe to share between the API and the CLI."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Born owner-only whatever the umask (SQLite gives its -wal and -shm files the same mode): the
        # file names every tenant and token, even though it holds no secret.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self.path = path
        self._con = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute(_SCHEMA)

    def issue(
        self, tenant: str, roles: str | list[str] | tuple[str, ...] | frozenset[str], label: str = ""
    ) -> IssuedToken:
        chosen = parse_roles(roles)
        check_tenant(tenant)
        token_id = "tok_" + secrets.token_hex(8)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        self._con.execute(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (
                token_id,
                _digest(secret),
                tenant,
                ",".join(r for r in ROLES if r in chosen),
                label,
                datetime.now(UTC).isoformat(timespec="seconds"),
            ),
        )
        return IssuedToken(token_id, secret)

    def verify(self, secret: str) -> Principal | None:
        """The principal of a live token, or None (unknown, malformed or revoked)."""
        if not secret.startswith(SECRET_PREFIX):
            return None
        row = self._con.execute(
            "SELECT token_id, tenant, roles FROM tokens WHERE sha256 = ? AND revoked_at IS NULL",
            (_digest(secret),),
        ).fetchone()
        return Principal(row[0], row[1], frozenset(row[2].split(","))) if row else None

    def revoke(self, token_id: str) -> None:
        done = self._con.execute(
            "UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
            (datetime.now(UTC).isoformat(timespec="seconds"), token_id),
        )
        if done.rowcount == 0:
            known = self._con.execute("SELECT 1 FROM tokens WHERE token_id = ?", (token_id,)).fetchone()
            if not known:
                raise ValueError(f"token_id: no token {token_id!r}")

    def list(self, tenant: str | None = None) -> list[TokenInfo]:
        sql = "SELECT token_id, tenant, roles, label, created_at, revoked_at FROM tokens"
        rows = self._con.execute(
            sql + (" WHERE tenant = ?" if tenant else "") + " ORDER BY created_at, token_id",
            (tenant,) if tenant else (),
        )
        return [TokenInfo(t, te, tuple(r.split(",")), la, c, rv) for t, te, r, la, c, rv in rows]

    def empty(self) -> bool:
        return self._con.execute("SELECT 1 FROM tokens LIMIT 1").fetchone() is None

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def issue_first_admin(store: TokenStore, path: Path) -> IssuedToken | None:
    """On an empty store, issue the operator's admin token and write its secret to `path` (mode 0600);
    None when tokens already exist. A fresh install gets in with this token and issues the rest."""
    if not store.empty():
        return None
    issued = store.issue(SYSTEM_TENANT, ["admin"], label="first admin (mint up)")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(issued.secret + "\n")
    os.chmod(path, 0o600)  # O_CREAT's mode only applies to a new file
    return issued
