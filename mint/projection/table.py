"""A projection table: a msgspec row type, its primary key and indexes, and row <-> SQLite conversion.

Scalar fields (str, int, float, bool, optionally None) become typed columns so the console and the
CLI can query them with plain SQL; any other field (tuples, dicts) is stored as JSON text.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from typing import Any

import msgspec


class Row(msgspec.Struct, frozen=True, gc=False):
    """Base of projection rows. Rows hold scalars, tuples and flat dicts, never cycles, so the
    garbage collector need not track them (a large share of a rebuild's time otherwise)."""


_SQL_TYPES: dict[Any, str] = {str: "TEXT", int: "INTEGER", float: "REAL", bool: "INTEGER"}


def _scalar(hint: Any) -> Any:
    """The scalar type behind `hint` (X or X | None), or None when the field is structured."""
    if hint in _SQL_TYPES:
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) == 1 and members[0] in _SQL_TYPES:
            return members[0]
    return None


@dataclass(frozen=True)
class Table:
    name: str
    row: type[Row]
    key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()
    # Rows are only ever inserted (keyed by a fact id or a sequence), so writes need no read first.
    append_only: bool = False
    # Bookkeeping tables (dedupe windows) are left out of the projection digest.
    digest: bool = True
    columns: tuple[str, ...] = field(init=False)
    sql_types: tuple[str, ...] = field(init=False)
    json_columns: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(self.row)
        names = tuple(f.name for f in msgspec.structs.fields(self.row))
        scalars = [_scalar(hints[n]) for n in names]
        object.__setattr__(self, "columns", names)
        object.__setattr__(self, "sql_types", tuple(_SQL_TYPES[s] if s else "TEXT" for s in scalars))
        object.__setattr__(self, "json_columns", frozenset(i for i, s in enumerate(scalars) if s is None))

    def create_sql(self) -> str:
        cols = ", ".join(f"{c} {t}" for c, t in zip(self.columns, self.sql_types, strict=True))
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({cols}, PRIMARY KEY ({', '.join(self.key)}))"

    def index_sql(self) -> list[str]:
        return [
            f"CREATE INDEX IF NOT EXISTS {self.name}__{'_'.join(cols)} ON {self.name} ({', '.join(cols)})"
            for cols in self.indexes
        ]

    def key_of(self, row: Row) -> tuple[Any, ...]:
        return tuple([getattr(row, k) for k in self.key])

    def to_db(self, row: Row) -> tuple[Any, ...]:
        values = msgspec.structs.astuple(row)
        if not self.json_columns:
            return values
        return tuple(_json_text(v) if i in self.json_columns else v for i, v in enumerate(values))

    def from_db(self, values: tuple[Any, ...]) -> Any:
        if not self.json_columns:
            return self.row(*values)
        fields = {
            name: msgspec.json.decode(v) if i in self.json_columns and v is not None else v
            for i, (name, v) in enumerate(zip(self.columns, values, strict=True))
        }
        return msgspec.convert(fields, self.row)


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()
