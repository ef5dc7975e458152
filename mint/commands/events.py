"""`mint events`: the published schema, producing records from NDJSON, tailing the log."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import IO

import click
import msgspec

from events import codec
from events.codec import RecordError
from events.log import Encoded, EventLog, Stored
from events.schema import BY_NAME, json_schema, producer_may_write, refusal_for_producer
from mint.commands.common import context, home_option, log_option, run
from mint.config import open_log
from mint.ingest import dead_on_arrival


@click.group("events")
def events_group() -> None:
    """The vocabulary and the log."""


@events_group.command("schema")
@click.option("--type", "type_name", default=None, help="Print one record type's schema only.")
def schema(type_name: str | None) -> None:
    """Print the JSON Schema upstream producers validate against."""
    published = json_schema()
    if type_name:
        if type_name not in BY_NAME:
            raise click.BadParameter(f"unknown record type {type_name!r}", param_hint="--type")
        published = {"$defs": published["$defs"], **published["$defs"][type_name]}
    click.echo(json.dumps(published, indent=2, sort_keys=True))


class BadLines(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def parse_ndjson(stream: IO[bytes], max_errors: int = 20) -> list[Encoded]:
    """Validate every line; any bad line refuses the whole input (nothing is appended). Like the HTTP
    door, it takes commands and the facts producers may write, never a decider's facts."""
    records: list[Encoded] = []
    errors: list[str] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            record = codec.validate(line.strip())
            name = type(record).__name__
            if not producer_may_write(name):  # the same door as POST /v1/events
                raise RecordError(f"record {record.id!r} ({name})", f"type: {refusal_for_producer(name)}")
            if dead := dead_on_arrival(record):
                raise RecordError(f"record {record.id!r} ({name})", f"{dead[0]}: {dead[1]}")
            records.append(Encoded.of(record))
        except RecordError as exc:
            errors.append(f"line {number}: {exc}")
            if len(errors) >= max_errors:
                errors.append("(stopped after this many errors)")
                break
    if errors:
        raise BadLines(errors)
    return records


@events_group.command("produce")
@click.argument("source", type=click.File("rb"))
@home_option
@log_option
def produce(source: IO[bytes], home_dir: str | None, log_url: str | None) -> None:
    """Append records from an NDJSON FILE (or - for stdin). Every line is validated first; one bad
    line refuses the whole input. Idempotent by record id: producing a file twice appends it once."""
    name = getattr(source, "name", "-")
    try:
        records = parse_ndjson(source)
    except BadLines as bad:
        for error in bad.errors:
            click.echo(f"{name}: {error}", err=True)
        click.echo(f"{name}: refused; nothing was appended", err=True)
        sys.exit(2)
    _, spec = context(home_dir, log_url)

    async def append() -> tuple[int, int]:
        async with open_log(spec) as log:
            placed = await log.append_encoded(records)
        duplicates = sum(1 for p in placed if p.duplicate)
        return len(placed) - duplicates, duplicates

    appended, duplicates = run(append)
    click.echo(
        f"{name}: appended {appended} records" + (f", {duplicates} already on the log" if duplicates else "")
    )


def _line(stored: Stored, as_json: bool) -> str:
    if as_json:
        return stored.raw.decode(errors="replace")
    try:
        record = stored.decode()
        fields = {
            k: v
            for k, v in msgspec.to_builtins(record).items()
            if k not in ("type", "id", "v", "key", "tenant", "at", "source", "causation", "correlation")
        }
        body = " ".join(f"{k}={v}" for k, v in fields.items()) if isinstance(fields, dict) else ""
    except RecordError as exc:
        body = f"UNDECODABLE: {exc}"
    return f"{stored.partition}:{stored.offset} {stored.type} key={stored.key} {body}".rstrip()


async def _last(log: EventLog, lines: int) -> list[Stored]:
    tail: list[Stored] = []
    for p, end in (await log.end_offsets()).items():
        tail.extend(await log.read(p, max(0, end - lines), limit=lines))
    tail.sort(key=lambda s: (s.at_ms, s.partition, s.offset))
    return tail[-lines:] if lines else []


@events_group.command("tail")
@click.option("-n", "--lines", default=20, show_default=True, help="How many of the latest records to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing records as they are appended.")
@click.option("--key", default=None, help="Only records of this key (a policy, run or engine).")
@click.option("--type", "type_name", default=None, help="Only records of this type.")
@click.option("--json", "as_json", is_flag=True, help="Print each record's JSON.")
@home_option
@log_option
def tail(
    lines: int,
    follow: bool,
    key: str | None,
    type_name: str | None,
    as_json: bool,
    home_dir: str | None,
    log_url: str | None,
) -> None:
    """Show the latest records, and follow new ones with -f."""
    _, spec = context(home_dir, log_url)

    def wanted(s: Stored) -> bool:
        return (key is None or s.key == key) and (type_name is None or s.type == type_name)

    async def show() -> None:
        async with open_log(spec) as log:
            for stored in await _last(log, lines):
                if wanted(stored):
                    click.echo(_line(stored, as_json))
            if not follow:
                return
            async with log.subscribe("tail", start=await log.end_offsets()) as mailbox:
                while True:
                    for stored in await mailbox.next_batch(timeout=1.0):
                        if wanted(stored):
                            click.echo(_line(stored, as_json))

    with contextlib.suppress(KeyboardInterrupt):
        run(show)
