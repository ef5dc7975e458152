"""The invariants a chaos run must leave intact, checked once its faults are over.

Each check is a function returning its violations (one string each, naming what broke); none means it
holds. They read the cluster's log (every record, from offset 0, by two independent readers), the
replicas' homes (their live catalogs) and the workload's ledger. `check_cluster` runs them all.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import anyio
import msgspec

from events.envelope import Fact, Record
from events.kafka_log import KafkaLog
from events.log import EventLog, Stored, caught_up
from events.seal import Seal
from events.training import RevisionExported, StepCompleted
from mint.catalog.fold import CATALOG_FOLD
from mint.chaos.ledger import Acknowledged, Answer, Entry, FaultInjected, read_ledger
from mint.cluster.table import ClusterDir, ClusterTable
from mint.home import Home
from mint.projection.store import ProjectionStore
from replay.verify import verify

# A transport failure or timeout up to this long after its target was back is still the fault's: a
# client's connection pool may hold a socket to the old process for a moment.
FAULT_GRACE_S = 5.0
READ_BATCH = 1000
# How long the checks wait for the cluster to settle: every command decided, every replica caught up.
SETTLE_S = 180.0


class Report(msgspec.Struct, kw_only=True):
    violations: dict[str, list[str]]  # check name -> what broke (every check is named, even when it held)
    counts: dict[str, int]  # records on the log, answers, acknowledged writes, commands, faults ...

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def broken(self, most: int = 20) -> str:
        """The checks that failed, each with (up to `most` of) its violations, one a line."""
        lines = []
        for name, wrong in self.violations.items():
            if wrong:
                lines.append(f"{name}: {len(wrong)} violations")
                lines.extend(f"  {line}" for line in wrong[:most])
        return "\n".join(lines)


# -- reading the log -----------------------------------------------------------------------------


async def read_everything(log: EventLog, unreadable: list[str] | None = None) -> list[Stored]:
    """Every record on the log up to its end now, partition by partition, from offset 0. A read that
    times out below the end is named in `unreadable` (the rest of that partition is skipped), or
    raised when no list is given."""
    end = await log.end_offsets()
    out: list[Stored] = []
    for partition, stop in sorted(end.items()):
        start = 0
        while start < stop:
            try:
                # No more than there is: the read then ends on its count, not on a high watermark.
                batch = await log.read(partition, start, min(READ_BATCH, stop - start))
            except TimeoutError:
                if unreadable is None:
                    raise
                unreadable.append(f"partition {partition}: no record from offset {start} (its end is {stop})")
                break
            if not batch:
                break
            out.extend(s for s in batch if s.offset < stop)
            start = batch[-1].offset + 1
    return out


class Folded(msgspec.Struct, kw_only=True):
    """What a reader folding the log from offset 0 counts (fenced and duplicated copies do not)."""

    applied: list[Record]
    outcomes: dict[str, dict[str, int]]  # command id -> {fact id: epoch} of the facts that answer it


def fold_counted(records: Iterable[Stored], workdir: Path) -> Folded:
    """The log folded like any reader of the catalog (dedupe on): what it applies, and per command the
    facts that answer it and count."""
    with tempfile.TemporaryDirectory(dir=workdir, prefix="mint-chaos-fold-") as tmp:
        store = ProjectionStore(Path(tmp) / "catalog.db", CATALOG_FOLD, dedupe=True)
        applied: list[Record] = []
        outcomes: dict[str, dict[str, int]] = defaultdict(dict)
        try:
            for stored in records:
                record = store.apply(stored)
                if record is None:
                    continue
                applied.append(record)
                if isinstance(record, Fact) and record.causation is not None:
                    outcomes[record.causation][record.id] = record.epoch
        finally:
            store.close()
    return Folded(applied=applied, outcomes=dict(outcomes))


async def counted_outcomes(log: KafkaLog, tmp: Path) -> dict[str, dict[str, int]]:
    """Per command id, the facts that answer it and count (id -> epoch): folded from offset 0 like
    any reader, so a fenced or duplicated copy is not one."""
    return fold_counted(await read_everything(log), tmp).outcomes


# -- the checks ----------------------------------------------------------------------------------


def readers_agree(first: Sequence[Stored], second: Sequence[Stored]) -> list[str]:
    """Two independent readers of the log see the same record at every (partition, offset) both read
    up to (the log grows between their reads), with no gap below."""

    def by_place(records: Sequence[Stored]) -> dict[tuple[int, int], tuple[str, str]]:
        return {(s.partition, s.offset): (s.id, hashlib.sha256(s.raw).hexdigest()) for s in records}

    def ends(records: Sequence[Stored]) -> dict[int, int]:
        end: dict[int, int] = {}
        for s in records:
            end[s.partition] = max(end.get(s.partition, 0), s.offset + 1)
        return end

    one, two = by_place(first), by_place(second)
    end_1, end_2 = ends(first), ends(second)
    both = {p: min(end_1.get(p, 0), end_2.get(p, 0)) for p in end_1.keys() | end_2.keys()}
    wrong = []
    for place in sorted(one.keys() | two.keys()):
        if place[1] >= both[place[0]]:
            continue
        a, b = one.get(place), two.get(place)
        if a != b:
            wrong.append(f"{place[0]}@{place[1]}: reader 1 has {a}, reader 2 has {b}")
    return wrong


def applied_once(applied: Sequence[Record]) -> list[str]:
    """No record id is applied twice by a projection folding the log (a retried append is one)."""
    seen = Counter(r.id for r in applied)
    named = {r.id: type(r).__name__ for r in applied}
    return [f"{named[i]} {i} applied {n} times" for i, n in seen.items() if n > 1]


def acknowledged_on_log(entries: Sequence[Entry], records: Sequence[Stored]) -> list[str]:
    """Every record of every acknowledged write is on the log."""
    on_log = {s.id for s in records}
    return [
        f"{e.route}: acknowledged {record_id} (position {e.position or 'none'}) is not on the log"
        for e in entries
        if isinstance(e, Acknowledged)
        for record_id in e.ids
        if record_id not in on_log
    ]


def training_once(applied: Sequence[Record]) -> list[str]:
    """No training step counts twice, and a run exports at most one revision per policy."""
    steps = Counter((r.run, r.policy, r.step) for r in applied if isinstance(r, StepCompleted))
    exports = Counter(
        (r.run, r.policy) for r in applied if isinstance(r, RevisionExported) and r.run is not None
    )
    return [
        f"run {run}: step {step} of {policy} counted {n} times"
        for (run, policy, step), n in steps.items()
        if n > 1
    ] + [f"run {run}: {n} exports of {policy}" for (run, policy), n in exports.items() if n > 1]


def one_outcome_each(entries: Sequence[Entry], outcomes: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Every command a write was acknowledged for has exactly one outcome that counts."""
    commands = sorted({c for e in entries if isinstance(e, Acknowledged) for c in e.commands})
    wrong = []
    for command in commands:
        answers = outcomes.get(command, {})
        if len(answers) != 1:
            wrong.append(f"command {command}: {len(answers)} counted outcomes {sorted(answers)}")
    return wrong


def _excused(answer: Answer, faults: Sequence[FaultInjected]) -> bool:
    """A request that got no answer from a process the plan had just killed or stopped."""
    sent, ended = answer.at, answer.at + answer.elapsed_s
    return any(
        f.url and answer.detail.startswith(f.url) and sent <= f.recovered_at + FAULT_GRACE_S and ended >= f.at
        for f in faults
    )


def answers_ok(entries: Sequence[Entry]) -> list[str]:
    """Every HTTP answer was a success, or a 429/503 with Retry-After: never a hang, a transport failure
    (but to a process the plan had just killed) or any other error."""
    faults = [e for e in entries if isinstance(e, FaultInjected)]
    wrong = []
    for e in entries:
        if not isinstance(e, Answer):
            continue
        if e.failure is not None:
            if not _excused(e, faults):
                wrong.append(f"{e.route}: {e.failure} after {e.elapsed_s:.1f} s ({e.detail})")
        elif e.status in (429, 503):
            if not e.retry_after:
                wrong.append(f"{e.route}: {e.status} without Retry-After ({e.detail})")
        elif not 200 <= e.status < 300:
            wrong.append(f"{e.route}: {e.status} ({e.detail})")
    return wrong


async def replay_equals_live(
    log: EventLog, homes: Mapping[str, Path], settle_s: float = SETTLE_S
) -> list[str]:
    """For each replica (name -> home): once it caught up to the log's end, a replay of the log up to
    its checkpoint has the digest of its live catalog."""
    end = await log.end_offsets()
    wrong = []
    for name, root in sorted(homes.items()):
        home = Home.resolve(str(root))
        deadline = anyio.current_time() + settle_s
        while not caught_up(_checkpoint(home.catalog), end):
            if anyio.current_time() > deadline:
                wrong.append(
                    f"{name}: not caught up to {end} within {settle_s:.0f} s ({_checkpoint(home.catalog)})"
                )
                break
            await anyio.sleep(0.5)
        else:
            verdict = await verify(log, CATALOG_FOLD, home.catalog)
            if not verdict.equal:
                wrong.append(
                    f"{name}: replay {verdict.rebuilt_digest} != live {verdict.live_digest}: {verdict.diffs}"
                )
    return wrong


def _checkpoint(path: Path) -> dict[int, int]:
    if not path.exists():
        return {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {int(p): int(o) for p, o in con.execute("SELECT partition, next_offset FROM _checkpoint")}
    except sqlite3.OperationalError:  # not created yet
        return {}
    finally:
        con.close()


# -- all of them ---------------------------------------------------------------------------------


def _log(cluster: ClusterDir, table: ClusterTable) -> KafkaLog:
    seal = Seal.from_secret(cluster.key.read_text().strip())
    return KafkaLog(table.kafka, topic=table.topic, seal=seal)


async def _settled(log: KafkaLog, commands: set[str], workdir: Path, settle_s: float) -> Folded:
    """The log folded once every acknowledged command has an outcome (or the deadline passed: the
    check then names those without one)."""
    deadline = anyio.current_time() + settle_s
    while True:
        unreadable: list[str] = []
        folded = fold_counted(await read_everything(log, unreadable), workdir)
        if unreadable or all(folded.outcomes.get(c) for c in commands) or anyio.current_time() > deadline:
            return folded
        await anyio.sleep(1.0)


async def check_cluster(cluster: ClusterDir, ledger_path: Path, settle_s: float = SETTLE_S) -> Report:
    entries = read_ledger(ledger_path)
    table = cluster.read()
    commands = {c for e in entries if isinstance(e, Acknowledged) for c in e.commands}
    homes = {p.name: Path(p.home) for p in table.processes if p.role in ("api", "projector") and p.home}
    async with _log(cluster, table) as first, _log(cluster, table) as second:
        folded = await _settled(first, commands, cluster.root, settle_s)
        unreadable: list[str] = []
        records_1 = await read_everything(first, unreadable)
        records_2 = await read_everything(second, unreadable)
        violations = {
            "log readable": unreadable,
            "replay equals live": await replay_equals_live(first, homes, settle_s),
            "acknowledged writes on the log": acknowledged_on_log(entries, records_1),
            "readers agree": readers_agree(records_1, records_2),
            "applied once": applied_once(folded.applied),
            "training once": training_once(folded.applied),
            "one outcome per command": one_outcome_each(entries, folded.outcomes),
            "answers": answers_ok(entries),
        }
    answers = [e for e in entries if isinstance(e, Answer)]
    counts = {
        "records": len(records_1),
        "answers": len(answers),
        "failed answers": sum(1 for a in answers if a.failure is not None),
        "acknowledged": sum(1 for e in entries if isinstance(e, Acknowledged)),
        "commands": len(commands),
        "faults": sum(1 for e in entries if isinstance(e, FaultInjected)),
        "replicas verified": len(homes),
    }
    return Report(violations=violations, counts=counts)
