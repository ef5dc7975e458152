"""The projection store: one SQLite file holding a fold's rows, its checkpoint and its dead letters.

Effectively once (docs/design.md, invariant 3): the checkpoint (next offset per partition) is written
in the same transaction as the rows it produced, so a crash before `commit` loses both and the records are
simply folded again; a record below the checkpoint is skipped on redelivery; a record id seen again
on its key within the dedupe window (a producer retry on Kafka) is skipped.

Rows are cached in memory and written back at commit, so a batch of facts costs one transaction and
a fold never waits on a query for a row it has already seen. A table that was empty when the store
opened is known to hold only what the cache holds, until the cache sheds rows (then misses query).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from events.claims import Claim, PartitionClaimed
from events.codec import RecordError, UnknownRecord, read_header
from events.dedupe import remember
from events.envelope import Fact, Record
from events.log import UNREADABLE, Position, Stored
from events.schema import BY_NAME, producer_may_write, refusal_for_producer
from mint.projection.table import Row, Table

log = logging.getLogger(__name__)

_ABSENT: Any = object()


class Poison(ValueError):
    """A record a fold cannot apply (its facts contradict the schema's promises). It goes to the
    dead-letter table with this message, and the fold goes on."""


class RecentIdsRow(Row, frozen=True):
    key: str
    ids: tuple[str, ...]


class DeadLetter(Row, frozen=True):
    partition: int
    offset: int
    id: str
    type: str
    reason: str
    raw: str


class ClaimRow(Row, frozen=True):
    """The latest counted claim of a fence scope on one partition (events/claims.py)."""

    scope: str
    partition: int
    epoch: int
    replica: str
    claim: str  # the claim's record id: an owner checks that its own is the one that counted
    offset: int


class FencedRow(Row, frozen=True):
    """A fact ignored because its epoch was not its fence's latest claim: kept for audits."""

    partition: int
    offset: int
    id: str
    type: str
    scope: str
    epoch: int
    latest: int


RECENT_IDS = Table("_recent_ids", RecentIdsRow, key=("key",), digest=False)
DEAD_LETTERS = Table("dead_letters", DeadLetter, key=("partition", "offset"), append_only=True)
CLAIMS = Table("_claims", ClaimRow, key=("scope", "partition"), digest=False)
FENCED = Table("_fenced", FencedRow, key=("partition", "offset"), append_only=True, digest=False)
# Every store folds claims, whatever its fold: the fence holds in every reader.
CLAIM_TYPES = frozenset(name for name, cls in BY_NAME.items() if issubclass(cls, Claim))

Handler = Callable[[Any, "Rows"], None]


@dataclass(frozen=True)
class Fold:
    """A projection's definition: its tables and one handler per fact type it folds."""

    name: str
    tables: Sequence[Table]
    handlers: Mapping[str, Handler]


class Rows:
    """The unit of work a handler reads and writes. Changes of a record that turns out to be poison
    are undone, so a dead-lettered record leaves nothing behind."""

    def __init__(self, con: sqlite3.Connection, tables: Iterable[Table], complete: set[str]) -> None:
        self._con = con
        self._cache: dict[str, dict[tuple[Any, ...], Any]] = {t.name: {} for t in tables}
        self._dirty: dict[str, set[tuple[Any, ...]]] = {t.name: set() for t in tables}
        self._appended: dict[str, list[Any]] = {t.name: [] for t in tables}
        self._complete = complete
        # (cache or appended list, dirty set, key, value before, was dirty) per change of this record
        self._undo: list[tuple[Any, Any, Any, Any, bool]] = []
        self._select: dict[str, str] = {}

    def get(self, table: Table, *key: Any) -> Any:
        cached = self._cache[table.name].get(key, _ABSENT)
        if cached is not _ABSENT:
            return cached
        if table.name in self._complete:
            return None
        sql = self._select.get(table.name)
        if sql is None:
            where = " AND ".join(f"{k} = ?" for k in table.key)
            sql = self._select[table.name] = f"SELECT * FROM {table.name} WHERE {where}"
        values = self._con.execute(sql, key).fetchone()
        row = table.from_db(values) if values is not None else None
        self._cache[table.name][key] = row
        return row

    def put(self, table: Table, row: Any) -> None:
        self._set(table.name, table.key_of(row), row)

    def delete(self, table: Table, *key: Any) -> None:
        self._set(table.name, key, None)

    def add(self, table: Table, row: Any) -> None:
        """Insert into an append-only table (idempotent: its key is a fact id or a sequence). The row
        is final, so it is held as the values it is written as, made while the row is fresh in the
        CPU's cache rather than at commit, from up to a million rows scattered over the heap."""
        rows = self._appended[table.name]
        rows.append(table.to_db(row))
        self._undo.append((rows, None, None, None, False))

    def _set(self, name: str, key: tuple[Any, ...], row: Any) -> None:
        cache, dirty = self._cache[name], self._dirty[name]
        self._undo.append((cache, dirty, key, cache.get(key, _ABSENT), key in dirty))
        cache[key] = row
        dirty.add(key)

    def begin_record(self) -> None:
        self._undo.clear()

    def undo_record(self) -> None:
        """Forget every change since begin_record (the record was poison)."""
        for target, dirty, key, before, was_dirty in reversed(self._undo):
            if dirty is None:
                target.pop()  # an appended row
                continue
            if before is _ABSENT:
                target.pop(key, None)
            else:
                target[key] = before
            if not was_dirty:
                dirty.discard(key)
        self._undo.clear()

    def flush(self, tables: Iterable[Table]) -> None:
        """Write dirty rows in key order (sequential B-tree inserts); the caller holds the transaction."""
        for table in tables:
            dirty = self._dirty[table.name]
            appended = self._appended[table.name]
            if dirty:
                cache = self._cache[table.name]
                changed = [cache[k] for k in dirty]
                upserts = sorted((row for row in changed if row is not None), key=table.sort_key)
                deletes = [k for k in dirty if cache[k] is None]
                if upserts:
                    table.write(self._con, upserts)
                if deletes:
                    where = " AND ".join(f"{k} = ?" for k in table.key)
                    self._con.executemany(f"DELETE FROM {table.name} WHERE {where}", sorted(deletes))
                dirty.clear()
            if appended:
                # Stable: of two rows with one key (a fact folded twice), the later one stands.
                table.write_values(self._con, sorted(appended, key=table.values_key))
                appended.clear()

    def cached(self) -> int:
        return sum(len(c) for c in self._cache.values())

    def held(self) -> int:
        """Rows held in memory: cached and appended (a bulk fold flushes when this grows too big)."""
        return self.cached() + sum(len(a) for a in self._appended.values())

    def shed(self) -> None:
        """Drop clean cached rows; from now on a miss must query."""
        for cache in self._cache.values():
            cache.clear()
        self._complete.clear()


class ProjectionStore:
    """Open with a Fold; feed it records with `apply` (and, for deciders, their own facts with
    `apply_own`); `commit` writes rows and checkpoint atomically."""

    def __init__(
        self,
        path: str | Path,
        fold: Fold,
        *,
        dedupe: bool = True,
        bulk: bool = False,
        cache_limit: int = 500_000,
        decode_types: Iterable[str] = (),
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fold = fold
        self.dedupe = dedupe
        self.cache_limit = cache_limit
        self.tables = store_tables(fold)
        self._decode = set(fold.handlers) | set(decode_types) | CLAIM_TYPES
        self._con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._con.execute("PRAGMA cache_size=-65536")
        self.bulk = bulk
        if bulk:
            # A rebuild writes a fresh file that nobody reads until it is finished; if it dies, the
            # file is thrown away. So no WAL and no syncs until `finish`.
            self._con.execute("PRAGMA journal_mode=MEMORY")
            self._con.execute("PRAGMA synchronous=OFF")
        else:
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS _checkpoint (partition INTEGER PRIMARY KEY, next_offset INTEGER)"
        )
        self._con.execute("CREATE TABLE IF NOT EXISTS _own_pending (id TEXT PRIMARY KEY)")
        complete = set()
        for table in self.tables:
            table.create(self._con, indexes=not bulk)
            if self._con.execute(f"SELECT 1 FROM {table.name} LIMIT 1").fetchone() is None:
                complete.add(table.name)
        self.position: Position = dict(self._con.execute("SELECT partition, next_offset FROM _checkpoint"))
        self._committed: Position = dict(self.position)
        self._own: set[str] = {r for (r,) in self._con.execute("SELECT id FROM _own_pending")}
        self._own_changed = False
        self.rows = Rows(self._con, self.tables, complete)
        self.dead_letters = 0
        self.fenced = 0
        # Once a claim was seen, own facts are decoded on their way back: a zombie's may be fenced.
        self._claimed = CLAIMS.name not in complete

    def finish_bulk(self) -> None:
        """End a bulk load: build the indexes it deferred and make the file an ordinary projection."""
        for table in self.tables:
            table.create_indexes(self._con)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self.bulk = False

    # -- folding ---------------------------------------------------------------------------------

    def apply(self, stored: Stored) -> Record | None:
        """Fold one record from the log. Returns the decoded record when its type is one this store
        folds or was asked to decode (a decider's commands), None when it was skipped or refused.
        Nothing a record holds can stop the fold: whatever fails sends it to the dead letters."""
        p, offset = stored.partition, stored.offset
        if offset < self.position.get(p, 0):
            return None  # redelivered below the checkpoint
        self.position[p] = offset + 1
        if self._own and stored.id in self._own:
            if self._claimed and self._own_copy_fenced(stored):
                return None  # it does not count: it stays pending, for the rightful owner to decide
            self._own.discard(stored.id)
            self._own_changed = True
            return None  # a decider's own fact, folded when it was decided
        if stored.type not in self._decode:  # UNREADABLE names no record type, so never among them
            if stored.type == UNREADABLE:
                self.dead_letter(stored, f"not a record: {unreadable_reason(stored.raw)}")
            return None
        if not stored.sealed and not producer_may_write(stored.type):
            self.dead_letter(
                stored, f"type: unsealed, so not written by MinT: {refusal_for_producer(stored.type)}"
            )
            return None
        if self.dedupe and self._seen(stored.key, stored.id):
            return None
        try:
            record = stored.decode()
        except Exception as exc:  # a RecordError, or an upcaster that met fields it did not expect
            self.dead_letter(stored, _reason(exc))
            return None
        if isinstance(record, UnknownRecord):
            return None
        if record.key != stored.key or record.id != stored.id:
            self.dead_letter(stored, _envelope_mismatch(stored, record))
            return None
        # Fenced before it is remembered: a zombie's copy must not hide the rightful owner's, which
        # carries the same derived id and arrives later.
        if isinstance(record, Claim):
            self._claim(record, stored)
        elif isinstance(record, Fact) and record.epoch and self._is_fenced(record, stored):
            return None
        if self.dedupe:
            self._remember(stored.key, stored.id)
        if self._fold(record, stored):
            return record
        return None

    # -- fencing (events/claims.py) ----------------------------------------------------------------

    def claim_of(self, scope: str, partition: int) -> ClaimRow | None:
        """The latest counted claim of `scope` on `partition`, as far as this store has folded."""
        row: ClaimRow | None = self.rows.get(CLAIMS, scope, partition)
        return row

    def _claim(self, claim: Claim, stored: Stored) -> None:
        if isinstance(claim, PartitionClaimed) and claim.partition != stored.partition:
            self.dead_letter(stored, f"partition: claims {claim.partition} but sits on {stored.partition}")
            return
        scope = claim.scope()
        latest = self.claim_of(scope, stored.partition)
        self._claimed = True
        if latest is not None and claim.epoch <= latest.epoch:
            return  # a claim that lost a race: the one before it still counts
        replica = getattr(claim, "replica", claim.source)
        self.rows.put(
            CLAIMS, ClaimRow(scope, stored.partition, claim.epoch, replica, claim.id, stored.offset)
        )

    def _is_fenced(self, fact: Fact, stored: Stored) -> bool:
        scope = fact.fence()
        latest = self.claim_of(scope, stored.partition)
        if latest is None or fact.epoch == latest.epoch:
            return False
        self.fenced += 1
        log.info(
            "%s: fenced %s %s (epoch %d, %s is at %d)",
            self.fold.name,
            stored.type,
            stored.id,
            fact.epoch,
            scope,
            latest.epoch,
        )
        self.rows.add(
            FENCED,
            FencedRow(
                stored.partition, stored.offset, stored.id, stored.type, scope, fact.epoch, latest.epoch
            ),
        )
        return True

    def _own_copy_fenced(self, stored: Stored) -> bool:
        try:
            record = stored.decode()
        except Exception:  # our own fact always decodes; if not, it is nothing to keep pending
            return False
        if not isinstance(record, Fact) or isinstance(record, Claim) or not record.epoch:
            return False
        return self._is_fenced(record, stored)

    def apply_own(self, fact: Record) -> None:
        """Fold a fact this store's decider has just appended, so its next decision sees it (never
        decide from state that lags your own writes). The log's copy is skipped when it arrives."""
        self._own.add(fact.id)
        self._own_changed = True
        if type(fact).__name__ in self.fold.handlers:
            self._fold(fact, None)

    def own_pending(self, record_id: str) -> bool:
        """Whether `record_id` is a fact this store's decider folded whose counted copy it has not
        yet read back from the log."""
        return record_id in self._own

    def _fold(self, record: Record, stored: Stored | None) -> bool:
        handler = self.fold.handlers.get(type(record).__name__)
        if handler is None:
            return True
        self.rows.begin_record()
        try:
            handler(record, self.rows)
        except Exception as exc:  # a Poison, or one the fold did not foresee: the record is set aside
            self.rows.undo_record()
            if stored is None:
                raise
            self.dead_letter(stored, f"{type(record).__name__} {record.id!r}: {_reason(exc)}")
            return False
        return True

    def _seen(self, key: str, record_id: str) -> bool:
        row: RecentIdsRow | None = self.rows.get(RECENT_IDS, key)
        return row is not None and record_id in row.ids

    def _remember(self, key: str, record_id: str) -> None:
        row: RecentIdsRow | None = self.rows.get(RECENT_IDS, key)
        recent = row.ids if row is not None else ()
        self.rows.put(RECENT_IDS, RecentIdsRow(key, remember(recent, record_id)))

    def dead_letter(self, stored: Stored, reason: str) -> None:
        """Keep `stored` aside with why it could not be applied; it commits with the batch."""
        log.warning("%s: dead letter at %s/%s: %s", self.fold.name, stored.partition, stored.offset, reason)
        self.dead_letters += 1
        raw = stored.raw.decode("utf-8", errors="replace")
        self.rows.add(
            DEAD_LETTERS, DeadLetter(stored.partition, stored.offset, stored.id, stored.type, reason, raw)
        )

    # -- committing ------------------------------------------------------------------------------

    def commit(self) -> None:
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            self.rows.flush(self.tables)
            changed = [(p, o) for p, o in self.position.items() if self._committed.get(p) != o]
            con.executemany("INSERT OR REPLACE INTO _checkpoint VALUES (?, ?)", changed)
            if self._own_changed:
                con.execute("DELETE FROM _own_pending")
                con.executemany("INSERT INTO _own_pending VALUES (?)", [(i,) for i in self._own])
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        self._committed = dict(self.position)
        self._own_changed = False
        if self.rows.cached() > self.cache_limit:
            self.rows.shed()

    def close(self) -> None:
        self._con.close()

    # -- reading ---------------------------------------------------------------------------------

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._con.execute(sql, args).fetchall()

    def table_digests(self) -> dict[str, str]:
        return table_digests(self._con, self.tables)

    def digest(self) -> str:
        return combined_digest(self.table_digests())


def _reason(exc: Exception) -> str:
    """A dead letter's reason: our own errors say what is wrong; others also say what they are."""
    return str(exc) if isinstance(exc, RecordError | Poison) else f"{type(exc).__name__}: {exc}"


def _envelope_mismatch(stored: Stored, record: Record) -> str:
    """Why the log's header of a record disagrees with the record itself. A Kafka message keyed
    other than its record sits on a partition its key's other records are not on, so per-key order
    would not hold for it."""
    if record.key != stored.key:
        return f"key: the message key {stored.key!r} differs from the record's key {record.key!r}"
    return f"id: the message header id {stored.id!r} differs from the record's id {record.id!r}"


def unreadable_reason(raw: bytes) -> str:
    try:
        read_header(raw)
    except RecordError as exc:
        return exc.message
    return "its header names no type"


def table_digests(con: sqlite3.Connection, tables: Iterable[Table]) -> dict[str, str]:
    """sha256 per digested table over its rows in key order: equal digests, equal projections."""
    digests = {}
    for table in sorted(tables, key=lambda t: t.name):
        if not table.digest:
            continue
        h = hashlib.sha256()
        for row in con.execute(f"SELECT * FROM {table.name} ORDER BY {', '.join(table.key)}"):
            h.update(msgspec.json.encode(row))
            h.update(b"\n")
        digests[table.name] = h.hexdigest()
    return digests


def combined_digest(digests: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for name, d in sorted(digests.items()):
        h.update(f"{name}:{d}\n".encode())
    return h.hexdigest()


def store_tables(fold: Fold) -> tuple[Table, ...]:
    """Every table a store of `fold` holds, bookkeeping included."""
    return (*fold.tables, DEAD_LETTERS, RECENT_IDS, CLAIMS, FENCED)
