"""Read-only queries over a catalog projection file: what the CLI, the API and the console ask."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, TypeVar

from mint.catalog.rows import (
    POLICIES,
    REJECTIONS,
    REVISIONS,
    RUNS,
    SERVING_MOVES,
    STEPS,
    PolicyRow,
    RejectionRow,
    RevisionRow,
    RunRow,
    ServingMove,
    StepRow,
)
from mint.projection.store import DEAD_LETTERS, DeadLetter
from mint.projection.table import Table

T = TypeVar("T")


class ProjectionMissing(FileNotFoundError):
    pass


class Catalog:
    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise ProjectionMissing(
                f"{path}: no catalog projection here yet (run `mint up` or `mint replay rebuild`)"
            )
        self.path = path
        self._con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def close(self) -> None:
        self._con.close()

    def _rows(self, table: Table, where: str, args: tuple[Any, ...], order: str = "") -> list[Any]:
        sql = f"SELECT * FROM {table.name} WHERE {where}" + (f" ORDER BY {order}" if order else "")
        return [table.from_db(values) for values in self._con.execute(sql, args)]

    def resolve(self, policy: str) -> str | None:
        """The revision `policy` serves now, or None."""
        row = self._con.execute("SELECT pointer FROM policies WHERE policy = ?", (policy,)).fetchone()
        return row[0] if row else None

    def policy(self, policy: str) -> PolicyRow | None:
        found = self._rows(POLICIES, "policy = ?", (policy,))
        return found[0] if found else None

    def revisions(self, policy: str) -> list[RevisionRow]:
        return self._rows(REVISIONS, "policy = ?", (policy,), "exported_at, revision")

    def serving_history(self, policy: str) -> list[ServingMove]:
        return self._rows(SERVING_MOVES, "policy = ?", (policy,), "at, id")

    def run(self, run: str) -> RunRow | None:
        found = self._rows(RUNS, "run = ?", (run,))
        return found[0] if found else None

    def steps(self, run: str) -> list[StepRow]:
        return self._rows(STEPS, "run = ?", (run,), "step, policy")

    def rejections(self, key: str) -> list[RejectionRow]:
        return self._rows(REJECTIONS, "key = ?", (key,), "at, id")

    def dead_letters(self) -> list[DeadLetter]:
        return self._rows(DEAD_LETTERS, "1", (), "partition, offset")

    def search(
        self,
        prefix: str = "",
        status: str | None = None,
        base_id: str | None = None,
        after: str = "",
        limit: int = 50,
    ) -> list[PolicyRow]:
        """Policies whose `tenant/name` starts with `prefix`, in name order, a page after `after`."""
        # One lower bound only: given two (`> after` and `>= prefix`), SQLite may range-scan from
        # the looser one, which walks the index from the start on every page.
        if after and after >= prefix:
            clauses, args = ["policy > ?"], [after]
        else:
            clauses, args = ["policy >= ?"], [prefix]
        if prefix:
            clauses.append("policy < ?")
            args.append(prefix + "\U0010ffff")
        if status:
            clauses.append("status = ?")
            args.append(status)
        if base_id:
            clauses.append("base_id = ?")
            args.append(base_id)
        return self._rows(
            POLICIES, " AND ".join(clauses) + f" ORDER BY policy LIMIT {int(limit)}", tuple(args)
        )

    def counts(self) -> dict[str, int]:
        tables = ("policies", "revisions", "serving_moves", "runs", "engines", "residency", "dead_letters")
        return {t: int(self._con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in tables}
