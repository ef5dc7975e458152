"""A projection table: a msgspec row type, its primary key, the columns queries filter on, indexes.

A row is stored as its key columns, its queryable columns, and `data`: the whole row as msgpack. SQL
filters and orders by the columns; readers decode `data`. Writing three or four bound values instead
of one per field is what lets a rebuild write rows at SQLite's speed rather than the binding's, and a
field added to a row type needs no migration (msgpack decodes the old rows with the new default).
"""

from __future__ import annotations

import operator
import sqlite3
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import sqlite_utils


class Row(msgspec.Struct, frozen=True, gc=False):
    """Base of projection rows. Rows hold scalars, tuples and flat dicts, never cycles, so the
    garbage collector need not track them (a large share of a rebuild's time otherwise)."""


_SQL_TYPES: dict[Any, type] = {str: str, int: int, float: float, bool: int}


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
    _key_of: Any = field(init=False, repr=False, compare=False)
    _stored_of: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stored", (*self.key, *self.columns))
        object.__setattr__(self, "_encoder", msgspec.msgpack.Encoder())
        object.__setattr__(self, "_decoder", msgspec.msgpack.Decoder(self.row))
        object.__setattr__(self, "_key_of", _fields_of(self.key))
        object.__setattr__(self, "_stored_of", _fields_of(self.stored))

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

    @property
    def insert_sql(self) -> str:
        marks = ",".join("?" * (len(self.stored) + 1))
        return f"INSERT OR REPLACE INTO {self.name} ({', '.join(self.stored)}, data) VALUES ({marks})"

    def key_of(self, row: Row) -> tuple[Any, ...]:
        key: tuple[Any, ...] = self._key_of(row)
        return key

    def to_db(self, row: Row) -> tuple[Any, ...]:
        return (*self._stored_of(row), self._encoder.encode(row))

    def from_db(self, values: tuple[Any, ...]) -> Any:
        """A row from `SELECT *` (its last column is `data`)."""
        return self._decoder.decode(values[-1])

    def from_data(self, data: bytes) -> Any:
        return self._decoder.decode(data)
