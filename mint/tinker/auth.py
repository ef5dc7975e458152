"""Who is calling: the `X-API-Key` of a Tinker request, as a `tml-…` key or the JWT it was exchanged for.

Keys are verified by one function (`KeyCheck`), so the server can use any key store: `mint up` passes
MinT's token store. MinT's SDK (mindlab-toolkit) sends `sk-…` keys and only accepts them when the server
offers the JWT exchange (`pjwt_auth_enabled`); an `sk-` key is the same secret as the `tml-` key with
that prefix swapped. The exchange hands out HS256 JWTs signed with a secret kept in $MINT_HOME, carrying
the tenant and roles, with `iat` and `exp` (the SDK refreshes them before they run out).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mint.auth.tokens import TokenStore

JWT_LIFETIME_S = 86_400
MINT_SDK_PREFIX, TINKER_PREFIX = "sk-", "tml-"


class KeyOwner(Protocol):
    """What a verified key says about its holder (MinT's token store's Principal has this shape)."""

    @property
    def tenant(self) -> str: ...

    def allows(self, role: str) -> bool: ...


KeyCheck = Callable[[str], KeyOwner | None]


@dataclass(frozen=True)
class Grant:
    """A key holder as a JWT describes it."""

    tenant: str
    roles: frozenset[str]

    def allows(self, role: str) -> bool:
        return "admin" in self.roles or role in self.roles


def token_check(tokens: TokenStore) -> KeyCheck:
    """Keys are MinT's tokens (`mint tokens issue`): the token's tenant owns what its clients train."""

    def check(key: str) -> KeyOwner | None:
        principal = tokens.verify(key)
        return None if principal is None else Grant(principal.tenant, principal.roles)

    return check


def single_tenant(tenant: str) -> KeyCheck:
    """Every `tml-`/`sk-` key acts for `tenant` with every role: for a private MinT without a token
    store, and for tests."""
    grant = Grant(tenant, frozenset({"admin"}))
    return lambda key: grant if key.startswith((TINKER_PREFIX, MINT_SDK_PREFIX)) else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Keys:
    def __init__(self, check: KeyCheck, secret_file: Path) -> None:
        self.check = check
        self._secret = self._load_secret(secret_file)

    @staticmethod
    def _load_secret(path: Path) -> bytes:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(32))
            path.chmod(0o600)
        return path.read_bytes()

    def verify_key(self, key: str) -> KeyOwner | None:
        """A raw key; `sk-X` is checked as `tml-X`."""
        if key.startswith(MINT_SDK_PREFIX):
            key = TINKER_PREFIX + key.removeprefix(MINT_SDK_PREFIX)
        return self.check(key)

    def issue_jwt(self, owner: KeyOwner) -> str:
        now = int(time.time())
        roles = sorted(r for r in ("reader", "producer", "trainer", "admin") if owner.allows(r))
        claims = {"sub": owner.tenant, "roles": roles, "iat": now, "exp": now + JWT_LIFETIME_S}
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64(signature)}"

    def verify(self, presented: str) -> KeyOwner | None:
        """An X-API-Key value: one of our JWTs (signature and expiry checked) or a raw key."""
        if presented.count(".") != 2:
            return self.verify_key(presented)
        head, body, signature = presented.split(".")
        expected = hmac.new(self._secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(expected, _unb64(signature)):
                return None
            claims = json.loads(_unb64(body))
        except ValueError:
            return None
        if not isinstance(claims, dict) or claims.get("exp", 0) < time.time():
            return None
        return Grant(str(claims["sub"]), frozenset(claims.get("roles", ())))
