"""`mint catalog`: read the catalog projection (policies, revisions, pointers, dead letters).

Each read waits until the home's catalog has folded the position of this CLI's last write to the log
(`--log`), or `--after POSITION`, for up to `--wait` seconds (mint/commands/positions.py): reading
another replica's home never shows a state older than what this CLI wrote.
"""

from __future__ import annotations

import click

from events.log import Position
from mint.catalog.queries import Catalog, ProjectionMissing
from mint.commands.common import context, home_option, log_option
from mint.commands.positions import read_bound, wait_for_position
from mint.home import Home
from mint.projection.states import dead_letters_of, projection_states


def _fresh(home_dir: str | None, log_url: str | None, after: Position | None, wait_s: float) -> Home:
    """The home, once its catalog has folded up to the position this read is bound by."""
    home, spec = context(home_dir, log_url)
    wait_for_position(home, spec, after, wait_s)
    return home


def _open(home: Home) -> Catalog:
    try:
        return Catalog(home.catalog)
    except ProjectionMissing as exc:
        raise click.ClickException(str(exc)) from None


@click.group("catalog")
def catalog_group() -> None:
    """Query the catalog projection."""


@catalog_group.command("search")
@click.argument("prefix", default="")
@click.option("--status", type=click.Choice(["active", "retired"]), default=None)
@click.option("--base", "base_id", default=None, help="Only policies on this base.")
@click.option("--page-after", "page_after", default="", help="Page after this policy name.")
@click.option("--limit", default=50, show_default=True)
@read_bound
@log_option
@home_option
def search(
    prefix: str,
    status: str | None,
    base_id: str | None,
    page_after: str,
    limit: int,
    home_dir: str | None,
    log_url: str | None,
    after: Position | None,
    wait_s: float,
) -> None:
    """Policies whose tenant/name starts with PREFIX."""
    catalog = _open(_fresh(home_dir, log_url, after, wait_s))
    for row in catalog.search(prefix, status, base_id, page_after, limit):
        click.echo(f"{row.policy:<40} {row.status:<8} base={row.base_id:<12} serving={row.pointer or '-'}")


@catalog_group.command("show")
@click.argument("policy")
@read_bound
@log_option
@home_option
def show(
    policy: str, home_dir: str | None, log_url: str | None, after: Position | None, wait_s: float
) -> None:
    """One policy: pointer, revisions with evaluations, serving history, refused commands."""
    catalog = _open(_fresh(home_dir, log_url, after, wait_s))
    row = catalog.policy(policy)
    if row is None:
        raise click.ClickException(f"unknown policy {policy!r}")
    click.echo(f"{row.policy}  status={row.status}  base={row.base_id}  promotion={row.promotion}")
    click.echo(f"serving: {row.pointer or '(nothing)'}   served so far: {' -> '.join(row.served) or '-'}")
    if row.gate:
        minimum = f", at least {row.gate.min_score:g}" if row.gate.min_score is not None else ""
        click.echo(f"gate: {row.gate.suite}, tolerance {row.gate.tolerance:g}{minimum}")
    if row.watch:
        click.echo(
            f"watch: roll back above {row.watch.max_error_rate:.1%} errors (>= {row.watch.min_requests} "
            f"requests) or a live score {row.watch.max_score_drop} below its evaluation"
        )
    click.echo("revisions:")
    for rev in catalog.revisions(policy):
        verdict = (
            f"{rev.eval_verdict} {rev.eval_suite} score={rev.eval_score}"
            if rev.eval_verdict
            else "not evaluated"
        )
        click.echo(f"  {rev.revision:<10} parent={rev.parent or '-':<8} rank={rev.rank} {verdict}")
        if rev.eval_detail:
            click.echo(f"             {rev.eval_detail}")
    traffic = catalog.traffic(policy)
    if traffic:
        click.echo("live traffic (over all of each revision's servings):")
        for t in traffic:
            score = f", live score {t.score_sum / t.scored:.3f} on {t.scored}" if t.scored else ""
            click.echo(f"  {t.revision:<10} {t.requests} requests, {t.errors} failed{score}")
    click.echo("serving history:")
    for move in catalog.serving_history(policy):
        click.echo(f"  {move.at} {move.kind:<11} {move.previous or '-'} -> {move.revision}  {move.reason}")
        if move.evidence:
            click.echo(f"{'':>35}evidence: {', '.join(f'{k}={v:g}' for k, v in move.evidence.items())}")
    rejections = catalog.rejections(policy)
    if rejections:
        click.echo("refused commands:")
        for r in rejections:
            click.echo(f"  {r.at} {r.command_type}: {r.reason}")


@catalog_group.command("dead-letters")
@read_bound
@log_option
@home_option
def dead_letters(home_dir: str | None, log_url: str | None, after: Position | None, wait_s: float) -> None:
    """Records an actor could not fold or decide (the projector's and every other actor's), with the
    reason: one line per actor and record."""
    home = _fresh(home_dir, log_url, after, wait_s)
    for actor, path in projection_states(home).items():
        for letter in dead_letters_of(path):
            where = f"{letter.partition}:{letter.offset}"
            click.echo(f"{actor} {where} {letter.type} {letter.id}: {letter.reason}")
