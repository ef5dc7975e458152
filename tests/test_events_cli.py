"""`mint events produce|schema|tail` through the real CLI on a real SQLite log."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import msgspec
from click.testing import CliRunner

from events import codec
from events.catalog import RevisionPromoted
from events.sqlite_log import SqliteLog
from mint.cli import cli
from tests.records import exported, promote, register


def _ndjson(records: list[object]) -> str:
    return "".join(codec.encode(r).decode() + "\n" for r in records)  # type: ignore[arg-type]


def _count(home: Path) -> int:
    async def count() -> int:
        async with SqliteLog(home / "log.db") as log:
            return sum((await log.end_offsets()).values())

    return anyio.run(count)


def test_produce_appends_valid_records_once(tmp_path: Path) -> None:
    source = tmp_path / "in.ndjson"
    source.write_text(_ndjson([register("acme/a"), promote("acme/a", "r1")]) + "\n")
    runner = CliRunner()
    first = runner.invoke(cli, ["events", "produce", str(source), "--home", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert "appended 2 records" in first.output
    again = runner.invoke(cli, ["events", "produce", str(source), "--home", str(tmp_path)])
    assert "appended 0 records, 2 already on the log" in again.output
    assert _count(tmp_path) == 2


def test_a_bad_line_refuses_the_whole_input(tmp_path: Path) -> None:
    good = register("acme/a")
    bad = json.loads(codec.encode(promote("acme/a", "r1")))
    bad["revision"] = 12
    source = tmp_path / "in.ndjson"
    source.write_text(_ndjson([good]) + json.dumps(bad) + "\n" + "{not json\n")
    result = CliRunner().invoke(cli, ["events", "produce", str(source), "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert (
        f"in.ndjson: line 2: record {bad['id']!r} (Promote): Expected `str`, got `int` - at `$.revision`"
        in (result.output)
    )
    assert "in.ndjson: line 3: record: " in result.output
    assert "nothing was appended" in result.output
    assert not (tmp_path / "log.db").exists() or _count(tmp_path) == 0


def test_produce_refuses_a_deciders_fact_naming_its_writer(tmp_path: Path) -> None:
    forged = RevisionPromoted.create(policy="acme/a", revision="r1")
    result = CliRunner().invoke(
        cli, ["events", "produce", "-", "--home", str(tmp_path)], input=_ndjson([register("acme/a"), forged])
    )
    assert result.exit_code == 2
    assert f"line 2: record {forged.id!r} (RevisionPromoted): type: " in result.output
    assert "written only by MinT's catalog actor" in result.output
    assert not (tmp_path / "log.db").exists() or _count(tmp_path) == 0


def test_produce_refuses_an_export_whose_uri_is_another_policys_artifact(tmp_path: Path) -> None:
    """What the catalog would dead-letter is refused at this door too, as at POST /v1/events."""
    foreign = msgspec.structs.replace(exported("acme/a", "r1"), uri="file:///artifacts/globex/b/r1")
    source = tmp_path / "in.ndjson"
    source.write_text(_ndjson([register("acme/a"), foreign]))
    result = CliRunner().invoke(cli, ["events", "produce", str(source), "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert (
        f"in.ndjson: line 2: record {foreign.id!r} (RevisionExported): uri: "
        "'file:///artifacts/globex/b/r1' is not an artifact of 'acme/a'" in result.output
    )
    assert not (tmp_path / "log.db").exists() or _count(tmp_path) == 0


def test_produce_reads_stdin(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["events", "produce", "-", "--home", str(tmp_path)], input=_ndjson([register("acme/b")])
    )
    assert result.exit_code == 0 and "appended 1 records" in result.output


def test_schema_is_json_schema_with_every_type() -> None:
    result = CliRunner().invoke(cli, ["events", "schema"])
    schema = json.loads(result.output)
    assert "RegisterPolicy" in schema["$defs"] and schema["$schema"].endswith("2020-12/schema")
    # Who may write each type is published with it.
    assert schema["$defs"]["RevisionPromoted"]["x-mint-writers"] == ["catalog"]
    assert "written by: catalog" in schema["$defs"]["RevisionPromoted"]["description"]
    assert "RevisionExported" in schema["x-mint-producer-types"]
    assert "EvaluationCompleted" not in schema["x-mint-producer-types"]
    one = json.loads(CliRunner().invoke(cli, ["events", "schema", "--type", "Promote"]).output)
    assert one["title"] == "Promote"
    missing = CliRunner().invoke(cli, ["events", "schema", "--type", "Nope"])
    assert missing.exit_code == 2 and "unknown record type 'Nope'" in missing.output


def test_tail_prints_the_latest_records(tmp_path: Path) -> None:
    source = tmp_path / "in.ndjson"
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    records = [register(f"acme/t{i}", at=t0 + timedelta(seconds=i)) for i in range(5)]
    source.write_text(_ndjson(records))
    CliRunner().invoke(cli, ["events", "produce", str(source), "--home", str(tmp_path)])
    out = CliRunner().invoke(cli, ["events", "tail", "-n", "2", "--json", "--home", str(tmp_path)]).output
    lines = [msgspec.json.decode(line) for line in out.splitlines()]
    assert [line["id"] for line in lines] == [r.id for r in records[-2:]]
