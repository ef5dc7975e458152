"""`mint replay`: rebuild, verify, audit, point-in-time and incident recovery over the log."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import click

from actors.locks import actor_runs
from events.codec import UnknownRecord
from events.envelope import Record
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.queries import Catalog
from mint.commands.common import ProgressBar, context, home_option, log_option, run
from mint.config import open_log
from mint.projection.states import projection_states
from replay import audit as audit_tool
from replay import point_in_time, recovery
from replay.lag import stuck
from replay.partitioned import RowsAcrossPartitions, rebuild_partitioned
from replay.rebuild import rebuild as rebuild_projection
from replay.verify import verify as verify_projection


@click.group("replay")
def replay_group() -> None:
    """Rebuild, verify and audit projections from the log; look back in time; recover."""


@replay_group.command("rebuild")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write (default: beside the live one).",
)
@click.option("--replace", is_flag=True, help="Replace the live catalog projection (stop `mint up` first).")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Fold the log's partitions in this many processes and merge them.",
)
@home_option
@log_option
def rebuild(out: Path | None, replace: bool, jobs: int, home_dir: str | None, log_url: str | None) -> None:
    """Fold the whole log from offset 0 into a fresh catalog projection."""
    home, spec = context(home_dir, log_url)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = out or home.projections / f"catalog.rebuilt-{stamp}.db"
    bar = ProgressBar("rebuild")

    async def go() -> None:
        result = None
        if jobs > 1:
            try:
                result = await rebuild_partitioned(spec, CATALOG_FOLD, target, jobs, on_progress=bar)
            except RowsAcrossPartitions as exc:
                click.echo(f"{exc}: rebuilding in one process instead", err=True)
        if result is None:
            async with open_log(spec) as log:
                result = await rebuild_projection(log, CATALOG_FOLD, target, on_progress=bar)
        bar.close()
        click.echo(
            f"rebuilt {result.records:,} records in {result.seconds:.2f}s "
            f"({result.records_per_s:,.0f}/s) into {result.path}"
        )
        if result.dead_letters:
            click.echo(f"{result.dead_letters} records went to the dead-letter table")
        if replace:
            for suffix in ("-wal", "-shm"):
                Path(f"{home.catalog}{suffix}").unlink(missing_ok=True)
            shutil.move(result.path, home.catalog)
            click.echo(f"replaced {home.catalog}")

    run(go)


@replay_group.command("verify")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="How long a running actor may take to reach the log's end before it counts as stuck.",
)
@home_option
@log_option
def verify(wait_s: float, home_dir: str | None, log_url: str | None) -> None:
    """Rebuild up to the live projection's checkpoint and compare digests; exit 1 and diff if unequal.
    Also exit 1 when a running actor's checkpoint stays behind the log's end (a stuck actor)."""
    home, spec = context(home_dir, log_url)
    bar = ProgressBar("verify")

    async def go() -> bool:
        async with open_log(spec) as log:
            verdict = await verify_projection(log, CATALOG_FOLD, home.catalog, on_progress=bar)
            bar.close()
            running = {n: p for n, p in projection_states(home).items() if actor_runs(home, n)}
            behind = await stuck(log, running, wait_s)
        for name, count in sorted(behind.items()):
            click.echo(f"STUCK: actor {name} is {count:,} records behind the log's end after {wait_s:g}s")
        if verdict.dead_letters:
            click.echo(
                f"{verdict.dead_letters:,} records were set aside as dead letters (mint catalog dead-letters)"
            )
        if verdict.equal:
            click.echo(
                f"OK: replay equals live over {verdict.records:,} records (digest {verdict.live_digest[:16]})"
            )
            return not behind
        click.echo(f"MISMATCH: live {verdict.live_digest[:16]} != rebuilt {verdict.rebuilt_digest[:16]}")
        for diff in verdict.diffs:
            click.echo(f"  table {diff.table}:")
            for row in diff.live_only:
                click.echo(f"    - live only:    {row}")
            for row in diff.rebuilt_only:
                click.echo(f"    + rebuilt only: {row}")
        return False

    try:
        equal = run(go)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(0 if equal else 1)


WHY_FIELDS = ("revision", "to_revision", "previous", "verdict", "score", "reason", "error")


def _why(record: Record | UnknownRecord | None) -> str:
    if record is None or isinstance(record, UnknownRecord):
        return ""
    said = [f"{name}={getattr(record, name)}" for name in WHY_FIELDS if getattr(record, name, None)]
    return " ".join(said)


@replay_group.command("audit")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@click.option("--request", "request_id", default=None, help="Say which revision answered this request id.")
@click.option("--at", "request_at", default=None, help="With --request: when it was sent (ISO-8601, HH:MM).")
@home_option
@log_option
def audit(
    key: str,
    as_json: bool,
    request_id: str | None,
    request_at: str | None,
    home_dir: str | None,
    log_url: str | None,
) -> None:
    """The full history of KEY (tenant/name, a run or an engine): who, what, when, why, caused by what."""
    home, spec = context(home_dir, log_url)
    if request_id is not None:
        _audit_request(home.catalog, key, request_id, request_at, as_json)
        return

    async def go() -> list[audit_tool.Entry]:
        async with open_log(spec) as log:
            return await audit_tool.history(log, key)

    entries = run(go)
    if not entries:
        raise click.ClickException(f"no records with key {key!r} on the log")
    for e in entries:
        record = e.record
        when = datetime.fromtimestamp(e.stored.at_ms / 1000, UTC).isoformat(timespec="milliseconds")
        who = f"{record.source or '-'} ({record.tenant})" if isinstance(record, Record) else "-"
        cause = f"<- {e.cause.type} {e.cause.id}" if e.cause else ""
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "at": when,
                        "place": f"{e.stored.partition}:{e.stored.offset}",
                        "type": e.stored.type,
                        "id": e.stored.id,
                        "who": who,
                        "why": _why(record),
                        "caused_by": e.cause.id if e.cause else None,
                        "error": e.error,
                    }
                )
            )
        else:
            what = e.error or _why(record)
            click.echo(f"{when} {e.stored.type:<20} {who:<28} {what} {cause}".rstrip())


def _audit_request(
    catalog: Path, policy: str, request_id: str, request_at: str | None, as_json: bool
) -> None:
    try:
        at = point_in_time.parse_time(request_at) if request_at else None
    except point_in_time.UntilError as exc:
        raise click.BadParameter(str(exc), param_hint="--at") from None
    view = Catalog(catalog)
    try:
        answers = audit_tool.who_answered(view, policy, request_id, at)
    finally:
        view.close()
    if not answers:
        click.echo(
            f"{policy} ran no canary {'then' if at else 'ever'}: its serving pointer answered {request_id}"
        )
    for a in answers:
        c = a.canary
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "canary": c.canary,
                        "from": c.started_at,
                        "until": c.ended_at,
                        "mode": c.rules.mode,
                        "answered_by": a.revision,
                        "shadowed": a.shadowed,
                    }
                )
            )
        else:
            also = f" (and {c.revision} ran it in the shadow)" if a.shadowed else ""
            click.echo(
                f"canary {c.canary} ({c.rules.mode} {c.rules.fraction:g} of {c.revision} vs {c.stable}, "
                f"{c.started_at} .. {c.ended_at or 'running'}): {request_id} answered by {a.revision}{also}"
            )


@replay_group.command("at")
@click.argument("until")
@click.option("--policy", default=None, help="Say what this policy served then, and why.")
@home_option
@log_option
def at(until: str, policy: str | None, home_dir: str | None, log_url: str | None) -> None:
    """The catalog as of UNTIL: a time (ISO-8601, or HH:MM today UTC) or a position P@O[,P@O...]."""
    _, spec = context(home_dir, log_url)

    async def go() -> None:
        async with open_log(spec) as log:
            position = await point_in_time.resolve_until(log, until)
            with tempfile.TemporaryDirectory(prefix="mint-at-") as tmp:
                built = await point_in_time.projection_at(log, position, Path(tmp) / "at.db")
                click.echo(f"as of {until}: {built.records:,} records (position {built.position})")
                if policy:
                    then = point_in_time.served_then(built.path, policy)
                    if then.revision is None:
                        click.echo(f"{policy} served nothing then")
                    else:
                        click.echo(f"{policy} served {then.revision}")
                    if then.because is not None:
                        m = then.because
                        click.echo(
                            f"  because {m.kind} at {m.at} (fact {m.id}, caused by {m.causation}): "
                            f"{m.reason or 'no reason given'}"
                        )
                    if then.canary is not None:
                        c = then.canary
                        click.echo(
                            f"  canary {c.canary} running: {c.rules.mode} of {c.revision} on "
                            f"{c.rules.fraction:g} of requests, since {c.started_at}"
                        )
                else:
                    catalog = Catalog(built.path)
                    for name, count in catalog.counts().items():
                        click.echo(f"  {name}: {count:,}")
                    catalog.close()

    try:
        run(go)
    except point_in_time.UntilError as exc:
        raise click.BadParameter(str(exc), param_hint="UNTIL") from None


@replay_group.command("rollback-to")
@click.argument("until")
@click.option(
    "--apply", "apply_", is_flag=True, help="Append the commands (default: a dry run that prints them)."
)
@click.option("--reason", default=None, help="Reason recorded on every command (default names the time).")
@home_option
@log_option
def rollback_to(
    until: str, apply_: bool, reason: str | None, home_dir: str | None, log_url: str | None
) -> None:
    """Incident recovery: put every serving pointer that moved since UNTIL back where it was."""
    _, spec = context(home_dir, log_url)
    why = reason or f"incident recovery: restore serving pointers as of {until}"

    async def go() -> None:
        async with open_log(spec) as log:
            then_pos = await point_in_time.resolve_until(log, until)
            with tempfile.TemporaryDirectory(prefix="mint-recovery-") as tmp:
                then = await point_in_time.projection_at(log, then_pos, Path(tmp) / "then.db")
                now = await point_in_time.projection_at(log, await log.end_offsets(), Path(tmp) / "now.db")
                steps = recovery.plan(then.path, now.path, why)
            if not steps:
                click.echo(f"no serving pointer moved since {until}")
                return
            for step in steps:
                click.echo(f"{step.policy}: {step.now} -> {step.then or '(nothing)'}  [{step.note}]")
            commands = [s.command for s in steps if s.command is not None]
            if not apply_:
                click.echo(f"dry run: {len(commands)} commands would be appended; add --apply")
                return
            await log.append(commands)
            click.echo(
                f"appended {len(commands)} commands; the catalog actor decides them (while `mint up` runs)"
            )

    try:
        run(go)
    except point_in_time.UntilError as exc:
        raise click.BadParameter(str(exc), param_hint="UNTIL") from None
