"""Every projection store of a home, read from outside its actor: checkpoints and dead letters.

A home holds the catalog projection (the projector's) and one state file per deciding actor. Tools
(`mint replay verify`, `mint catalog dead-letters`) read them read-only, so they never contend with the
running actors for the write lock.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from events.log import Position
from mint.home import Home
from mint.projection.store import DEAD_LETTERS, DeadLetter


def projection_states(home: Home) -> dict[str, Path]:
    """Actor name → its store file, for the stores that exist: `projector` for the catalog."""
    states = {"projector": home.catalog} if home.catalog.exists() else {}
    if home.actors.is_dir():
        states.update({path.stem: path for path in sorted(home.actors.glob("*.db"))})
    return states


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def checkpoint_of(path: Path) -> Position:
    con = _read_only(path)
    try:
        return {int(p): int(o) for p, o in con.execute("SELECT partition, next_offset FROM _checkpoint")}
    finally:
        con.close()


def dead_letters_of(path: Path) -> list[DeadLetter]:
    con = _read_only(path)
    try:
        rows = con.execute(f"SELECT * FROM {DEAD_LETTERS.name} ORDER BY partition, offset").fetchall()
    except sqlite3.OperationalError:  # a store opened before it ever committed has no table yet
        return []
    finally:
        con.close()
    return [DEAD_LETTERS.from_db(row) for row in rows]
