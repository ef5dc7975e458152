"""Who is calling: the `X-API-Key` of a Tinker request, as a `tml-…` token or the JWT it was exchanged for.

Keys are MinT's tokens (`mint/auth/tokens.py`): the token's tenant owns the policies its training
clients create, and its roles decide what it may do. MinT's SDK (mindlab-toolkit) sends `sk-…` keys
and only accepts them when the server offers the JWT exchange (`pjwt_auth_enabled`); an `sk-` key is
the same secret as the `tml-` token with that prefix swapped. The exchange hands out HS256 JWTs signed
with a secret kept in $MINT_HOME, naming the token (`jti`), its tenant and roles, with `iat` and `exp`
(the SDKs refresh them before they run out). A JWT is honoured only while its token is not revoked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from mint.auth.tokens import TokenStore

JWT_LIFETIME_S = 86_400
MINT_SDK_PREFIX, TINKER_PREFIX = "sk-", "tml-"


@dataclass(frozen=True)
class Grant:
    """What a verified key says about its holder."""

    token_id: str
    tenant: str
    roles: frozenset[str]

    def allows(self, role: str) -> bool:
        return "admin" in self.roles or role in self.roles


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Keys:
    def __init__(self, tokens: TokenStore, secret_file: Path) -> None:
        self.tokens = tokens
        self._secret = self._load_secret(secret_file)

    @staticmethod
    def _load_secret(path: Path) -> bytes:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(32))
            path.chmod(0o600)
        return path.read_bytes()

    def verify_key(self, key: str) -> Grant | None:
        """A raw key; `sk-X` is checked as `tml-X`."""
        if key.startswith(MINT_SDK_PREFIX):
            key = TINKER_PREFIX + key.removeprefix(MINT_SDK_PREFIX)
        principal = self.tokens.verify(key)
        return None if principal is None else Grant(principal.token_id, principal.tenant, principal.roles)

    def issue_jwt(self, grant: Grant) -> str:
        now = int(time.time())
        claims = {
            "jti": grant.token_id,
            "sub": grant.tenant,
            "org_id": grant.tenant,  # tinker 0.38's `whoami` reads the organisation from here
            "roles": sorted(grant.roles),
            "iat": now,
            "exp": now + JWT_LIFETIME_S,
        }
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64(signature)}"

    def sign(self, text: str) -> str:
        """An HMAC of `text` under the server's secret (what a signed download URL carries)."""
        return _b64(hmac.new(self._secret, text.encode(), hashlib.sha256).digest())

    def signed(self, text: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(text), signature)

    def verify(self, presented: str) -> Grant | None:
        """An X-API-Key value: one of our JWTs (signature, expiry and its token checked) or a raw key."""
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
        grant = Grant(str(claims["jti"]), str(claims["sub"]), frozenset(claims.get("roles", ())))
        return grant if self._live(grant) else None

    def _live(self, grant: Grant) -> bool:
        return any(
            t.token_id == grant.token_id and t.revoked_at is None for t in self.tokens.list(grant.tenant)
        )
