"""Replay equals live: rebuild the catalog up to the live projection's checkpoint and compare digests.

The live projection is read inside one read transaction (its checkpoint, digests and diff rows come
from the same snapshot), so a projector that keeps running cannot make a false alarm."""

from __future__ import annotations

import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from events.log import EventLog, Position
from mint.projection.store import Fold, combined_digest, store_tables, table_digests
from mint.projection.table import Row, Table
from replay.rebuild import ProgressCallback, rebuild


@dataclass(frozen=True)
class TableDiff:
    table: str
    live_only: list[Row]
    rebuilt_only: list[Row]


@dataclass(frozen=True)
class Verdict:
    position: Position
    records: int
    live_digest: str
    rebuilt_digest: str
    diffs: list[TableDiff] = field(default_factory=list)
    dead_letters: int = 0  # records the rebuild set aside (undecodable, refused): the live one did too

    @property
    def equal(self) -> bool:
        return self.live_digest == self.rebuilt_digest


def _rows(con: sqlite3.Connection, table: str) -> set[tuple[object, ...]]:
    return set(con.execute(f"SELECT * FROM {table}"))


def _diff(live: sqlite3.Connection, rebuilt: sqlite3.Connection, table: Table, sample: int) -> TableDiff:
    live_rows, rebuilt_rows = _rows(live, table.name), _rows(rebuilt, table.name)
    return TableDiff(
        table.name,
        [table.from_db(r) for r in sorted(live_rows - rebuilt_rows, key=repr)[:sample]],
        [table.from_db(r) for r in sorted(rebuilt_rows - live_rows, key=repr)[:sample]],
    )


async def verify(
    log: EventLog, fold: Fold, live_path: Path, on_progress: ProgressCallback | None = None, sample: int = 5
) -> Verdict:
    if not live_path.exists():
        raise FileNotFoundError(f"{live_path}: no live projection to verify")
    tables = store_tables(fold)
    live = sqlite3.connect(f"file:{live_path}?mode=ro", uri=True, isolation_level=None)
    try:
        live.execute("BEGIN")
        checkpoint = {
            int(p): int(o) for p, o in live.execute("SELECT partition, next_offset FROM _checkpoint")
        }
        live_tables = table_digests(live, tables)
        until = {p: checkpoint.get(p, 0) for p in await log.end_offsets()}
        with tempfile.TemporaryDirectory(prefix="mint-verify-") as tmp:
            rebuilt_info = await rebuild(
                log, fold, Path(tmp) / "rebuilt.db", until=until, on_progress=on_progress
            )
            rebuilt = sqlite3.connect(rebuilt_info.path)
            try:
                rebuilt_tables = table_digests(rebuilt, tables)
                diffs = [
                    _diff(live, rebuilt, table, sample)
                    for table in tables
                    if table.name in live_tables and live_tables[table.name] != rebuilt_tables.get(table.name)
                ]
            finally:
                rebuilt.close()
        return Verdict(
            until,
            rebuilt_info.records,
            combined_digest(live_tables),
            combined_digest(rebuilt_tables),
            diffs,
            rebuilt_info.dead_letters,
        )
    finally:
        live.close()
