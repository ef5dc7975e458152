"""The embedded log: one SQLite file in WAL mode.

Global order is commit order (`pos`, the rowid, assigned under the write lock); each record also gets a
Kafka-like (partition, offset) from its key, so consumers track positions the same way on both
backends. A second append of an id is refused: `append` reports the first copy's place instead.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.abc import AsyncResource

from events.envelope import Record
from events.log import DEFAULT_PARTITIONS, Appended, Encoded, Position, Stored
from events.partitioning import partition_for

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    pos INTEGER PRIMARY KEY,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    id TEXT NOT NULL,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    v INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    raw BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS records_place ON records (partition, offset);
CREATE UNIQUE INDEX IF NOT EXISTS records_id ON records (id);
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, partition)
);
"""

_COLUMNS = "partition, offset, id, key, type, v, at_ms, raw"


class LogFileError(RuntimeError):
    pass


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={synchronous}")
    return con


def _stored(row: tuple[int, int, str, str, str, int, int, bytes]) -> Stored:
    return Stored(*row)


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class SqliteLog(AsyncResource):
    """`synchronous` is FULL by default: a fact is durable on disk before anything acts on it
    (record before effect), power loss included. NORMAL survives process crashes only."""

    refuses_duplicates = True

    def __init__(
        self,
        path: str | Path,
        partitions: int | None = None,
        synchronous: str = "FULL",
        poll_interval: float = 0.05,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.poll_interval = poll_interval
        self._writer = _connect(self.path, synchronous)
        self._writer.executescript(_SCHEMA)
        self.partitions = self._settle_partitions(partitions)
        self._lock = threading.Lock()
        self._appended = anyio.Event()

    def _settle_partitions(self, requested: int | None) -> int:
        """None adopts the file's count (DEFAULT_PARTITIONS for a new file); a number must match it."""
        row = self._writer.execute("SELECT value FROM meta WHERE name = 'partitions'").fetchone()
        if row is None:
            count = requested or DEFAULT_PARTITIONS
            self._writer.execute("INSERT INTO meta VALUES ('partitions', ?)", (str(count),))
            return count
        stored = int(row[0])
        if requested is not None and stored != requested:
            raise LogFileError(f"{self.path}: log has {stored} partitions, asked for {requested}")
        return stored

    # -- appending -------------------------------------------------------------------------------

    async def append(self, records: Sequence[Record]) -> list[Appended]:
        return await self.append_encoded([Encoded.of(r) for r in records])

    async def append_encoded(self, records: Sequence[Encoded]) -> list[Appended]:
        if not records:
            return []
        result = await anyio.to_thread.run_sync(self._append_sync, records)
        self._appended.set()
        self._appended = anyio.Event()
        return result

    def _append_sync(self, records: Sequence[Encoded]) -> list[Appended]:
        with self._lock:
            con = self._writer
            con.execute("BEGIN IMMEDIATE")
            try:
                result = self._insert(con, records)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            return result

    def _insert(self, con: sqlite3.Connection, records: Sequence[Encoded]) -> list[Appended]:
        """Place and insert; a second copy of an id (in the log or in this batch) is not inserted
        and reports the first copy's place. Duplicates are rare, so the common path inserts at once
        and only a unique-constraint failure pays for looking ids up."""
        try:
            con.execute("SAVEPOINT optimistic")
            result = self._place(con, records, {})
            con.execute("RELEASE optimistic")
            return result
        except sqlite3.IntegrityError:
            con.execute("ROLLBACK TO optimistic")
            con.execute("RELEASE optimistic")
        placed: dict[str, tuple[int, int]] = {}
        for chunk in _chunks([r.id for r in records], 500):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT id, partition, offset FROM records WHERE id IN ({marks})"
            for rid, p, o in con.execute(sql, chunk):
                placed[rid] = (p, o)
        return self._place(con, records, placed)

    def _place(
        self, con: sqlite3.Connection, records: Sequence[Encoded], placed: dict[str, tuple[int, int]]
    ) -> list[Appended]:
        next_offset: dict[int, int] = {}
        rows = []
        result = []
        for r in records:
            if r.id in placed:
                result.append(Appended(*placed[r.id], duplicate=True))
                continue
            p = partition_for(r.key, self.partitions)
            if p not in next_offset:
                (next_offset[p],) = con.execute(
                    "SELECT coalesce(max(offset) + 1, 0) FROM records WHERE partition = ?", (p,)
                ).fetchone()
            o = next_offset[p]
            next_offset[p] = o + 1
            placed[r.id] = (p, o)
            rows.append((p, o, r.id, r.key, r.type, r.v, r.at_ms, r.raw))
            result.append(Appended(p, o))
        con.executemany(f"INSERT INTO records ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", rows)
        return result

    # -- reading ---------------------------------------------------------------------------------

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return self._writer.execute(sql, args).fetchall()

    async def read(self, partition: int, start: int, limit: int = 1000) -> list[Stored]:
        rows = await anyio.to_thread.run_sync(
            self._query,
            f"SELECT {_COLUMNS} FROM records WHERE partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
            (partition, start, limit),
        )
        return [_stored(row) for row in rows]  # type: ignore[arg-type]

    async def end_offsets(self) -> Position:
        rows = await anyio.to_thread.run_sync(
            self._query, "SELECT partition, max(offset) + 1 FROM records GROUP BY partition"
        )
        ends = dict.fromkeys(range(self.partitions), 0)
        ends.update({int(p): int(o) for p, o in rows})  # type: ignore[call-overload]
        return ends

    async def offsets_for_time(self, at_ms: int) -> Position:
        ends = await self.end_offsets()
        rows = await anyio.to_thread.run_sync(
            self._query,
            "SELECT partition, min(offset) FROM records WHERE at_ms >= ? GROUP BY partition",
            (at_ms,),
        )
        ends.update({int(p): int(o) for p, o in rows})  # type: ignore[call-overload]
        return ends

    async def committed(self, group: str) -> Position:
        rows = await anyio.to_thread.run_sync(
            self._query, "SELECT partition, next_offset FROM group_offsets WHERE grp = ?", (group,)
        )
        committed = dict.fromkeys(range(self.partitions), 0)
        committed.update({int(p): int(o) for p, o in rows})  # type: ignore[call-overload]
        return committed

    async def commit_group(self, group: str, position: Position) -> None:
        def write() -> None:
            with self._lock:
                self._writer.executemany(
                    "INSERT OR REPLACE INTO group_offsets VALUES (?, ?, ?)",
                    [(group, p, o) for p, o in position.items()],
                )

        await anyio.to_thread.run_sync(write)

    def subscribe(self, group: str, start: Position | None = None) -> SqliteSubscription:
        return SqliteSubscription(self, group, start)

    async def wait_for_append(self, timeout: float) -> None:
        """Wake on an append in this process, or after `timeout` (appends from other processes)."""
        with anyio.move_on_after(timeout):
            await self._appended.wait()

    async def aclose(self) -> None:
        with self._lock:
            self._writer.close()


class SqliteSubscription(AsyncResource):
    """Reads in commit order (`pos`) on its own connection, so it never waits behind the writer."""

    def __init__(self, log: SqliteLog, group: str, start: Position | None) -> None:
        self._log = log
        self._group = group
        self._start = start
        self._con = _connect(log.path, "NORMAL")
        self._lock = threading.Lock()
        self._position: Position = {}
        self._after_pos: int | None = None

    def _open_sync(self, start: Position) -> int:
        with self._lock:
            found = []
            for p, o in start.items():
                row = self._con.execute(
                    "SELECT pos FROM records WHERE partition = ? AND offset = ?", (p, o)
                ).fetchone()
                if row is not None:
                    found.append(int(row[0]))
            if found:
                return min(found) - 1
            (top,) = self._con.execute("SELECT coalesce(max(pos), 0) FROM records").fetchone()
            return int(top)

    async def _ensure_open(self) -> None:
        if self._after_pos is not None:
            return
        start = self._start if self._start is not None else await self._log.committed(self._group)
        self._position = {p: start.get(p, 0) for p in range(self._log.partitions)}
        self._after_pos = await anyio.to_thread.run_sync(self._open_sync, self._position)

    def _fetch_sync(self, after: int, limit: int) -> list[tuple[object, ...]]:
        with self._lock:
            return self._con.execute(
                f"SELECT pos, {_COLUMNS} FROM records WHERE pos > ? ORDER BY pos LIMIT ?", (after, limit)
            ).fetchall()

    async def next_batch(self, max_records: int = 1000, timeout: float = 1.0) -> list[Stored]:
        await self._ensure_open()
        assert self._after_pos is not None
        with anyio.move_on_after(timeout):
            while True:
                rows = await anyio.to_thread.run_sync(self._fetch_sync, self._after_pos, max_records)
                if rows:
                    self._after_pos = int(rows[-1][0])  # type: ignore[call-overload]
                    batch = []
                    for row in rows:
                        stored = _stored(row[1:])  # type: ignore[arg-type]
                        if stored.offset >= self._position[stored.partition]:
                            self._position[stored.partition] = stored.offset + 1
                            batch.append(stored)
                    if batch:
                        return batch
                    continue
                await self._log.wait_for_append(self._log.poll_interval)
        return []

    def position(self) -> Position:
        return dict(self._position)

    async def commit(self, position: Position) -> None:
        await self._log.commit_group(self._group, position)

    async def aclose(self) -> None:
        with self._lock:
            self._con.close()
