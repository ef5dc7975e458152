"""Tokens: issued secrets verify to their tenant and roles, are stored hashed, and can be revoked."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from events.names import SYSTEM_TENANT
from mint.auth.tokens import Principal, TokenStore, issue_first_admin
from mint.cli import cli


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


def test_tokens_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    home = ["--home", str(tmp_path)]
    created = runner.invoke(cli, ["tokens", "create", "--tenant", "acme", "--role", "reader,producer", *home])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    principal = TokenStore(tmp_path / "tokens.db").verify(secret)
    assert principal is not None and principal.roles == {"reader", "producer"}
    bad = runner.invoke(cli, ["tokens", "create", "--tenant", "acme", "--role", "reader,god", *home])
    assert bad.exit_code == 2 and "--role" in bad.output and "'god'" in bad.output
    listed = json.loads(runner.invoke(cli, ["tokens", "list", "--json", *home]).stdout)
    assert [(t["token_id"], t["tenant"]) for t in listed] == [(principal.token_id, "acme")]
    assert secret not in json.dumps(listed)
    revoked = runner.invoke(cli, ["tokens", "revoke", principal.token_id, *home])
    assert revoked.exit_code == 0 and TokenStore(tmp_path / "tokens.db").verify(secret) is None


def test_first_admin_token_is_written_once_and_private(tmp_path: Path) -> None:
    with TokenStore(tmp_path / "tokens.db") as store:
        issued = issue_first_admin(store, tmp_path / "admin.token")
        assert issued is not None
        assert (tmp_path / "admin.token").read_text().strip() == issued.secret
        assert stat.S_IMODE((tmp_path / "admin.token").stat().st_mode) == 0o600
        principal = store.verify(issued.secret)
        assert principal is not None and principal.operator
        assert issue_first_admin(store, tmp_path / "admin.token") is None
