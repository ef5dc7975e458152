"""Incident recovery: put every serving pointer back where it was at a time, by appending commands.

Recovery never writes facts: it proposes Rollback commands (or Promote, when the old revision is no
longer reachable by rollback) and the catalog actor decides them under the usual rules, so the
recovery itself is audited like any other change.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from events.catalog import Promote, Rollback
from events.envelope import Command, new_record_id
from mint.catalog.rows import POLICIES, PolicyRow

SOURCE = "replay.recovery"


@dataclass(frozen=True)
class Step:
    policy: str
    now: str | None
    then: str | None
    command: Command | None  # None: nothing can restore it (see `note`)
    note: str


def _pointers(path: Path) -> dict[str, PolicyRow]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        return {row[0]: POLICIES.from_db(row) for row in con.execute("SELECT * FROM policies")}


def plan(then_path: Path, now_path: Path, reason: str) -> list[Step]:
    then, now = _pointers(then_path), _pointers(now_path)
    correlation = new_record_id()  # one incident, one correlation id: the audit groups its commands
    steps = []
    for policy, current in sorted(now.items()):
        before = then.get(policy)
        old = before.pointer if before else None
        if current.pointer == old:
            continue
        if old is None:
            steps.append(
                Step(policy, current.pointer, None, None, "served nothing then; retire or promote by hand")
            )
        elif old in current.served[:-1]:
            command: Command = Rollback.create(
                policy=policy, to_revision=old, reason=reason, source=SOURCE, correlation=correlation
            )
            steps.append(Step(policy, current.pointer, old, command, "rollback"))
        else:
            command = Promote.create(
                policy=policy, revision=old, reason=reason, source=SOURCE, correlation=correlation
            )
            steps.append(Step(policy, current.pointer, old, command, "promote (not reachable by rollback)"))
    return steps
