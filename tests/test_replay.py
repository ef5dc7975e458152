"""replay/: verify (and its diff), audit with causation, point in time, incident recovery."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

from actors.system import System, running
from events.catalog import PolicyRegistered, Promote, RevisionPromoted
from events.log import Position
from events.sqlite_log import SqliteLog
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.queries import Catalog
from mint.cli import cli
from mint.home import Home
from replay import point_in_time, recovery
from replay.audit import history
from replay.rebuild import rebuild
from replay.verify import verify
from tests.records import evaluated, exported, promote, register

pytestmark = pytest.mark.anyio


async def invoke(*args: str) -> Result:
    """The real CLI, in a worker thread: it runs its own event loop, as it does from a shell."""
    return await anyio.to_thread.run_sync(lambda: CliRunner().invoke(cli, list(args)))


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    home = Home(tmp_path / "home")
    async with SqliteLog(home.log, partitions=4) as log, running(home, log) as system:
        yield system


async def _released(system: System, policy: str, revisions: list[str]) -> Position:
    """Export, evaluate and promote each revision in turn; returns the log's end after each."""
    await system.log.append([register(policy)])
    for rev in revisions:
        await system.log.append([exported(policy, rev), evaluated(policy, rev), promote(policy, rev)])
        await system.settle()
    return await system.log.end_offsets()


async def test_verify_finds_a_tampered_projection_and_names_the_rows(system: System) -> None:
    await _released(system, "acme/a", ["r1", "r2"])
    assert (await verify(system.log, CATALOG_FOLD, system.home.catalog)).equal
    with sqlite3.connect(system.home.catalog) as con:
        con.execute("DELETE FROM policies WHERE policy = 'acme/a'")
    verdict = await verify(system.log, CATALOG_FOLD, system.home.catalog)
    assert not verdict.equal
    (diff,) = verdict.diffs
    assert diff.table == "policies"
    assert diff.live_only == [] and diff.rebuilt_only[0].pointer == "r2"
    result = await invoke("replay", "verify", "--home", str(system.home.root))
    assert result.exit_code == 1
    assert "MISMATCH" in result.output and "table policies" in result.output
    assert "+ rebuilt only: PolicyRow(policy='acme/a'" in result.output


async def test_rebuild_refuses_to_fold_into_an_existing_file(system: System, tmp_path: Path) -> None:
    (tmp_path / "there.db").write_bytes(b"")
    with pytest.raises(FileExistsError, match=r"there\.db: already exists"):
        await rebuild(system.log, CATALOG_FOLD, tmp_path / "there.db")


async def test_audit_links_facts_to_the_commands_that_caused_them(system: System) -> None:
    await _released(system, "acme/a", ["r1"])
    entries = await history(system.log, "acme/a")
    types = [e.stored.type for e in entries]
    assert types[0] == "RegisterPolicy" and "PolicyRegistered" in types and "RevisionPromoted" in types
    promoted = next(e for e in entries if isinstance(e.record, RevisionPromoted))
    assert promoted.cause is not None and promoted.cause.type == "Promote"
    registered = next(e for e in entries if isinstance(e.record, PolicyRegistered))
    assert registered.record.source == "catalog"  # type: ignore[union-attr]
    out = (await invoke("replay", "audit", "acme/a", "--home", str(system.home.root))).output
    assert "RevisionPromoted" in out and "<- Promote" in out


async def test_point_in_time_by_position_says_what_served_and_why(system: System, tmp_path: Path) -> None:
    after_r1 = await _released(system, "acme/a", ["r1"])
    await _released(system, "acme/b", [])
    await system.log.append(
        [exported("acme/a", "r2"), evaluated("acme/a", "r2"), promote("acme/a", "r2", reason="v2")]
    )
    await system.settle()
    spec = ",".join(f"{p}@{o}" for p, o in after_r1.items())
    position = await point_in_time.resolve_until(system.log, spec)
    built = await point_in_time.projection_at(system.log, position, tmp_path / "then.db")
    then = point_in_time.served_then(built.path, "acme/a")
    assert then.revision == "r1" and then.because is not None and then.because.kind == "promoted"
    assert Catalog(system.home.catalog).resolve("acme/a") == "r2"
    out = await invoke("replay", "at", spec, "--policy", "acme/a", "--home", str(system.home.root))
    assert "acme/a served r1" in out.output and "because promoted" in out.output


async def test_point_in_time_by_time(tmp_path: Path) -> None:
    t0 = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)
    async with SqliteLog(tmp_path / "log.db", partitions=2) as log:
        await log.append([PolicyRegistered.create(policy="acme/t", base_id="tiny", at=t0)])
        await log.append(
            [RevisionPromoted.create(policy="acme/t", revision="r1", at=t0 + timedelta(minutes=5))]
        )
        position = await point_in_time.resolve_until(log, "2026-06-01T14:02:00Z")
        built = await point_in_time.projection_at(log, position, tmp_path / "at.db")
        assert built.records == 1
        assert point_in_time.served_then(built.path, "acme/t").revision is None
        # A position is read as the headers read one (events/positions.py), clipped at the log's end.
        ends = await log.end_offsets()
        assert await point_in_time.resolve_until(log, "1@99") == ends  # clipped; partition 0 to its end
        assert await point_in_time.resolve_until(log, "1@0") == {**ends, 1: 0}
        for spec, wrong in (
            ("0@1,0@2", "until: partition 0 is named twice"),
            ("0@01", "until: '0@01' in '0@01' is not PARTITION@OFFSET"),
            ("7@1", "until: partition 7 does not exist (the log has 2)"),
        ):
            with pytest.raises(point_in_time.UntilError, match=re.escape(wrong)):
                await point_in_time.resolve_until(log, spec)
    assert point_in_time.parse_time("14:02", now=t0) == t0.replace(minute=2)
    with pytest.raises(point_in_time.UntilError, match="until: 'yesterday' is neither a time"):
        point_in_time.parse_time("yesterday")


async def test_rollback_to_restores_every_pointer_that_moved(system: System, tmp_path: Path) -> None:
    before = await _released(system, "acme/a", ["r1"])
    await _released(system, "acme/b", ["r1"])
    before = await system.log.end_offsets()
    await system.log.append([exported("acme/a", "r2"), evaluated("acme/a", "r2"), promote("acme/a", "r2")])
    await system.log.append([exported("acme/b", "r2"), evaluated("acme/b", "r2"), promote("acme/b", "r2")])
    await system.settle()
    spec = ",".join(f"{p}@{o}" for p, o in before.items())
    dry = await invoke("replay", "rollback-to", spec, "--home", str(system.home.root))
    assert "acme/a: r2 -> r1  [rollback]" in dry.output and "dry run: 2 commands" in dry.output
    assert Catalog(system.home.catalog).resolve("acme/a") == "r2", "a dry run appends nothing"
    applied = await invoke("replay", "rollback-to", spec, "--apply", "--home", str(system.home.root))
    assert "appended 2 commands" in applied.output
    await system.settle()
    catalog = Catalog(system.home.catalog)
    assert (catalog.resolve("acme/a"), catalog.resolve("acme/b")) == ("r1", "r1")
    moves = catalog.serving_history("acme/a")
    assert moves[-1].kind == "rolled_back" and "incident recovery" in moves[-1].reason


async def test_recovery_promotes_when_rollback_cannot_reach(system: System, tmp_path: Path) -> None:
    """r1 -> r2 (time T) -> rollback to r1 -> r3: r2 is no longer on the served stack, so recovery
    proposes a Promote, which the catalog actor still gates on r2's passing evaluation."""
    await _released(system, "acme/a", ["r1", "r2"])
    at_t = await system.log.end_offsets()
    from events.catalog import Rollback

    await system.log.append([Rollback.create(policy="acme/a")])
    await system.settle()
    await system.log.append([exported("acme/a", "r3"), evaluated("acme/a", "r3"), promote("acme/a", "r3")])
    await system.settle()
    then = await point_in_time.projection_at(system.log, at_t, tmp_path / "then.db")
    now = await point_in_time.projection_at(system.log, await system.log.end_offsets(), tmp_path / "now.db")
    (step,) = recovery.plan(then.path, now.path, "restore")
    assert isinstance(step.command, Promote) and step.command.revision == "r2"
    await system.log.append([step.command])
    await system.settle()
    assert Catalog(system.home.catalog).resolve("acme/a") == "r2"
