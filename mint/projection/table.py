"""A projection table: a msgspec row type, its primary key, the columns queries filter on, indexes.

A row is stored as its key columns, its queryable columns, and `data`: the whole row as msgpack. SQL
filters and orders by the columns; readers decode `data`. Writing three or four bound values instead
of one per field is what lets a rebuild write rows at SQLite's speed rather than the binding's, and a
field added to a row type needs no migration (msgpack decodes the old rows with the new default).
"""

from __future__ import annotations

import itertools
import operator
import sqlite3
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import sqlite_utils


class Row(msgspec.Struct, frozen=True, gc=False):
    """Base of projection rows. Rows hold scalars, tuples and flat dicts, never cycles, so the
    garbage collector need not track them (a large share of a rebuild's time otherwise)."""


_SQL_TYPES: dict[Any, type] = {str: str, int: int, float: float, bool: int}
# Rows bound into one INSERT statement. Each statement costs a round trip through the binding and
# the VM for the rows it carries, so many rows per statement write about twice as fast as one per
# statement; 100 rows of a few columns stay far below SQLite's limit on bound values (32766).
ROWS_PER_INSERT = 100


def _scalar(hint: Any) -> type:
    """The SQL-storable type behind `hint` (X or X | None); columns must be scalars."""
    if hint in _SQL_TYPES:
        return _SQL_TYPES[hint]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) == 1 and members[0] in _SQL_TYPES:
            return _SQL_TYPES[members[0]]
    raise TypeError(f"{hint!r} cannot be a column; keep it in the row's data")


def _fields_of(names: tuple[str, ...]) -> Callable[[Row], tuple[Any, ...]]:
    """A row's values of `names` as a tuple, read in C (a rebuild reads them for every row it writes).
    attrgetter of one name returns the bare value, so that case is wrapped."""
    getter = operator.attrgetter(*names)
    if len(names) == 1:
        return lambda row: (getter(row),)
    return getter


def _values_of(stored: tuple[str, ...], encoder: msgspec.msgpack.Encoder) -> Callable[[Row], tuple[Any, ...]]:
    """What a row is stored as: its `stored` columns, then `data`, the whole row as msgpack."""
    columns, encode = _fields_of(stored), encoder.encode

    def values(row: Row) -> tuple[Any, ...]:
        return (*columns(row), encode(row))

    return values


@dataclass(frozen=True)
class Table:
    name: str
    row: type[Row]
    key: tuple[str, ...]
    # Fields that queries filter or order on, stored as columns beside `data` (the key always is).
    columns: tuple[str, ...] = ()
    indexes: tuple[tuple[str, ...], ...] = ()
    # Rows are only ever inserted (keyed by a fact id or a sequence), so writes need no read first.
    append_only: bool = False
    # Bookkeeping tables (dedupe windows) are left out of the projection digest.
    digest: bool = True
    stored: tuple[str, ...] = field(init=False)
    _encoder: msgspec.msgpack.Encoder = field(init=False, repr=False, compare=False)
    _decoder: msgspec.msgpack.Decoder[Any] = field(init=False, repr=False, compare=False)
    # A row's key as a tuple (what Rows caches it under), and its values as SQL binds them. Made
    # once per table and called per row, so a fold and a write pay no method lookups for them.
    key_of: Callable[[Row], tuple[Any, ...]] = field(init=False, repr=False, compare=False)
    to_db: Callable[[Row], tuple[Any, ...]] = field(init=False, repr=False, compare=False)
    # Order rows, and their values, as their keys do, read in C: the bare value for a one-column
    # key, else the tuple (the key columns lead the values).
    sort_key: Callable[[Row], Any] = field(init=False, repr=False, compare=False)
    values_key: Callable[[tuple[Any, ...]], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stored", (*self.key, *self.columns))
        object.__setattr__(self, "_encoder", msgspec.msgpack.Encoder())
        object.__setattr__(self, "_decoder", msgspec.msgpack.Decoder(self.row))
        object.__setattr__(self, "key_of", _fields_of(self.key))
        object.__setattr__(self, "to_db", _values_of(self.stored, self._encoder))
        object.__setattr__(self, "sort_key", operator.attrgetter(*self.key))
        object.__setattr__(self, "values_key", operator.itemgetter(*range(len(self.key))))

    def __reduce__(self) -> tuple[Any, ...]:
        """A table pickles as its definition (its codecs are made anew), so a Fold can be sent to
        the processes of a partition-parallel rebuild."""
        definition = (self.name, self.row, self.key, self.columns, self.indexes)
        return (Table, (*definition, self.append_only, self.digest))

    def create(self, con: sqlite3.Connection, indexes: bool = True) -> None:
        hints = typing.get_type_hints(self.row)
        db = sqlite_utils.Database(con)
        columns: dict[str, Any] = {name: _scalar(hints[name]) for name in self.stored}
        columns["data"] = bytes
        db[self.name].create(columns, pk=self.key, not_null=self.key, if_not_exists=True)  # type: ignore[union-attr]
        if indexes:
            self.create_indexes(con)

    def create_indexes(self, con: sqlite3.Connection) -> None:
        table = sqlite_utils.Database(con)[self.name]
        for cols in self.indexes:
            table.create_index(cols, index_name=f"{self.name}__{'_'.join(cols)}", if_not_exists=True)  # type: ignore[union-attr]

    def insert_sql(self, rows: int = 1) -> str:
        marks = ",".join(["(" + ",".join("?" * (len(self.stored) + 1)) + ")"] * rows)
        return f"INSERT OR REPLACE INTO {self.name} ({', '.join(self.stored)}, data) VALUES {marks}"

    def write(self, con: sqlite3.Connection, rows: Sequence[Row]) -> None:
        """Insert or replace `rows`, in their order (a later row of a key replaces an earlier one),
        ROWS_PER_INSERT to a statement; the caller holds the transaction."""
        self.write_values(con, [self.to_db(row) for row in rows])

    def write_values(self, con: sqlite3.Connection, values: Sequence[tuple[Any, ...]]) -> None:
        """`write` of rows already made into their values (`to_db`)."""
        whole = len(values) - len(values) % ROWS_PER_INSERT
        if whole:
            bound = (
                tuple(itertools.chain.from_iterable(values[i : i + ROWS_PER_INSERT]))
                for i in range(0, whole, ROWS_PER_INSERT)
            )
            con.executemany(self.insert_sql(ROWS_PER_INSERT), bound)
        if whole < len(values):
            con.executemany(self.insert_sql(), values[whole:])

    def from_db(self, values: tuple[Any, ...]) -> Any:
        """A row from `SELECT *` (its last column is `data`)."""
        return self._decoder.decode(values[-1])

    def from_data(self, data: bytes) -> Any:
        return self._decoder.decode(data)
