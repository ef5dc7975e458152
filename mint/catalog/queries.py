"""Read-only queries over a catalog projection file: what the CLI, the API and the console ask."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, TypeVar

from events.log import Position
from mint.catalog.rows import (
    CANARIES,
    CANARY_TRAFFIC,
    ENGINES,
    EVALUATIONS,
    LOAD_FAILURES,
    POLICIES,
    REJECTIONS,
    RESIDENCY,
    REVISIONS,
    RUNS,
    SERVING_MOVES,
    STEPS,
    TRAFFIC,
    WAVES,
    CanaryRow,
    CanaryTrafficRow,
    EngineRow,
    EvaluationRow,
    LoadFailureRow,
    PolicyRow,
    RejectionRow,
    ResidencyRow,
    RevisionRow,
    RunRow,
    ServingMove,
    StepRow,
    TrafficRow,
    WaveRow,
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

    def revision(self, policy: str, revision: str) -> RevisionRow | None:
        found = self._rows(REVISIONS, "policy = ? AND revision = ?", (policy, revision))
        return found[0] if found else None

    def revisions(self, policy: str) -> list[RevisionRow]:
        return self._rows(REVISIONS, "policy = ?", (policy,), "exported_at, revision")

    def serving_history(self, policy: str) -> list[ServingMove]:
        return self._rows(SERVING_MOVES, "policy = ?", (policy,), "at, id")

    def traffic(self, policy: str) -> list[TrafficRow]:
        """Live traffic per revision over all its servings (what the watch reads)."""
        return self._rows(TRAFFIC, "policy = ?", (policy,), "revision")

    def canary_traffic(self, canary: str) -> list[CanaryTrafficRow]:
        """What each revision served under `canary` (its evidence)."""
        return self._rows(CANARY_TRAFFIC, "canary = ?", (canary,), "revision")

    def canary(self, canary: str) -> CanaryRow | None:
        found = self._rows(CANARIES, "canary = ?", (canary,))
        return found[0] if found else None

    def running_canary(self, policy: PolicyRow) -> CanaryRow | None:
        """The canary `policy` runs now, or None (no read at all when it runs none)."""
        return self.canary(policy.canary) if policy.canary else None

    def canaries(self, policy: str) -> list[CanaryRow]:
        """Every canary of `policy`, oldest first."""
        return self._rows(CANARIES, "policy = ?", (policy,), "started_at, canary")

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

    def evaluations(self, policy: str) -> list[EvaluationRow]:
        return self._rows(EVALUATIONS, "policy = ?", (policy,), "at, id")

    def outcome(self, policy: str, command_id: str) -> ServingMove | CanaryRow | RejectionRow | None:
        """What became of a command on `policy`: the pointer move it caused, the canary it started or
        ended, its rejection, or None while it is undecided (or not yet projected). Each lookup walks
        the policy's own index."""
        moves = [m for m in self.serving_history(policy) if m.causation == command_id]
        if moves:
            return moves[0]
        canaries = [c for c in self.canaries(policy) if command_id in (c.started_by, c.ended_by)]
        if canaries:
            return canaries[0]
        refused = [r for r in self.rejections(policy) if r.command_id == command_id]
        return refused[0] if refused else None

    def runs(self, tenant: str | None = None, limit: int = 100) -> list[RunRow]:
        where, args = ("tenant = ?", (tenant,)) if tenant else ("1", ())
        return self._rows(RUNS, where, args, f"run LIMIT {int(limit)}")

    def engines(self) -> list[EngineRow]:
        return self._rows(ENGINES, "1", (), "engine")

    def residency(self, engine: str) -> list[ResidencyRow]:
        return self._rows(RESIDENCY, "engine = ?", (engine,), "tier, policy, revision")

    def residency_counts(self) -> dict[tuple[str, str], int]:
        """(engine, tier) -> adapters resident there."""
        sql = "SELECT engine, tier, count(*) FROM residency GROUP BY engine, tier"
        return {(e, t): int(n) for e, t, n in self._con.execute(sql)}

    def waves(self, engine: str, limit: int = 20) -> list[WaveRow]:
        """The engine's latest waves, newest first."""
        return self._rows(WAVES, "engine = ?", (engine,), f"wave DESC LIMIT {int(limit)}")

    def load_failures(self, engine: str, limit: int = 20) -> list[LoadFailureRow]:
        return self._rows(LOAD_FAILURES, "engine = ?", (engine,), f"at DESC LIMIT {int(limit)}")

    def load_failure_counts(self) -> dict[str, int]:
        sql = "SELECT engine, count(*) FROM load_failures GROUP BY engine"
        return {e: int(n) for e, n in self._con.execute(sql)}

    def position(self) -> Position:
        """The projection's checkpoint: it moves exactly when facts have been folded in."""
        return dict(self._con.execute("SELECT partition, next_offset FROM _checkpoint"))

    def counts(self) -> dict[str, int]:
        tables = ("policies", "revisions", "serving_moves", "runs", "engines", "residency", "dead_letters")
        return {t: int(self._con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in tables}
