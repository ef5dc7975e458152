"""Tokens: issued secrets verify to their tenant and roles, are stored hashed, and can be revoked."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from events.names import SYSTEM_TENANT
from mint.auth.tokens import Principal, TokenStore


def test_issue_verify_revoke(tmp_path: Path) -> None:
    with TokenStore(tmp_path / "tokens.db") as store:
        issued = store.issue("acme", "reader,producer", label="billing")
        assert issued.secret.startswith("tml-")
        principal = store.verify(issued.secret)
        assert principal == Principal(issued.token_id, "acme", frozenset({"reader", "producer"}))
        assert store.verify(issued.secret + "x") is None
        assert store.verify("not-a-token") is None
        store.revoke(issued.token_id)
        assert store.verify(issued.secret) is None
        (info,) = store.list("acme")
        assert info.revoked_at is not None and info.label == "billing"
        with pytest.raises(ValueError, match="token_id: no token 'tok_nope'"):
            store.revoke("tok_nope")
    stored = sqlite3.connect(tmp_path / "tokens.db").execute("SELECT * FROM tokens").fetchall()
    assert issued.secret not in repr(stored)  # only the sha256 is kept


def test_bad_roles_and_tenants_are_named(tmp_path: Path) -> None:
    with TokenStore(tmp_path / "tokens.db") as store:
        with pytest.raises(ValueError, match="roles: unknown role 'root'"):
            store.issue("acme", ["reader", "root"])
        with pytest.raises(ValueError, match="roles: give at least one"):
            store.issue("acme", "")
        with pytest.raises(ValueError, match="tenant: 'Acme Corp'"):
            store.issue("Acme Corp", "reader")
        assert store.empty()


def test_roles_and_tenant_walls() -> None:
    reader = Principal("t1", "acme", frozenset({"reader"}))
    admin = Principal("t2", "acme", frozenset({"admin"}))
    operator = Principal("t3", SYSTEM_TENANT, frozenset({"admin"}))
    system_reader = Principal("t4", SYSTEM_TENANT, frozenset({"reader"}))
    assert reader.allows("reader") and not reader.allows("producer")
    assert admin.allows("trainer") and admin.allows("producer")
    assert reader.sees("acme") and not reader.sees("globex")
    assert admin.sees("acme") and not admin.sees("globex")  # a tenant's admin stays in its tenant
    assert operator.sees("globex")
    assert not system_reader.sees("globex")
