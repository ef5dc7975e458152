"""`mint tokens`: issue, list and revoke the bearer tokens the HTTP API checks."""

from __future__ import annotations

import json

import click
import msgspec

from mint.auth.tokens import ROLES, TokenStore
from mint.commands.common import home_option
from mint.home import Home


@click.group("tokens")
def tokens_group() -> None:
    """Bearer tokens: each maps to one tenant and roles (reader, producer, trainer, admin)."""


@tokens_group.command("create")
@click.option("--tenant", required=True, help="The tenant the token acts for (`_system`: the operator).")
@click.option("--role", "roles", required=True, help=f"Comma-separated roles: {', '.join(ROLES)}.")
@click.option("--label", default="", help="A note saying who holds the token.")
@home_option
def create(tenant: str, roles: str, label: str, home_dir: str | None) -> None:
    """Issue a token and print its secret (shown once; only its sha256 is stored)."""
    with TokenStore(Home.resolve(home_dir).tokens) as store:
        try:
            issued = store.issue(tenant, roles, label)
        except ValueError as exc:
            hint = "--role" if str(exc).startswith("roles") else "--tenant"
            raise click.BadParameter(str(exc), param_hint=hint) from None
    click.echo(f"token {issued.token_id} for tenant {tenant} (shown once):", err=True)
    click.echo(issued.secret)


@tokens_group.command("list")
@click.option("--tenant", default=None, help="Only this tenant's tokens.")
@click.option("--json", "as_json", is_flag=True)
@home_option
def list_tokens(tenant: str | None, as_json: bool, home_dir: str | None) -> None:
    """Tokens (ids, tenants, roles, labels; never secrets)."""
    with TokenStore(Home.resolve(home_dir).tokens) as store:
        found = store.list(tenant)
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(found)))
        return
    for t in found:
        state = f"revoked {t.revoked_at}" if t.revoked_at else "live"
        click.echo(f"{t.token_id}  {t.tenant:<16} {','.join(t.roles):<28} {state:<30} {t.label}")


@tokens_group.command("revoke")
@click.argument("token_id")
@home_option
def revoke(token_id: str, home_dir: str | None) -> None:
    """Revoke a token: the API refuses it from the next request on."""
    with TokenStore(Home.resolve(home_dir).tokens) as store:
        try:
            store.revoke(token_id)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="TOKEN_ID") from None
    click.echo(f"revoked {token_id}")
