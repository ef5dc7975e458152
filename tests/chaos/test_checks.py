"""The chaos checks on crafted logs and ledgers: each one holds on a clean run and names what broke on
a broken one. (On a real cluster they run in test_default_subset.py and the chaos-marked tests.)"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from events.catalog import PolicyRegistered, RevisionPromoted
from events.envelope import Record
from events.log import Encoded, Stored
from events.serving import RevisionTraffic, TrafficObserved
from events.sqlite_log import SqliteLog
from events.training import StepCompleted
from mint.catalog.fold import CATALOG_FOLD
from mint.chaos.checks import (
    acknowledged_on_log,
    answers_ok,
    applied_once,
    fold_counted,
    one_outcome_each,
    readers_agree,
    replay_equals_live,
    training_once,
)
from mint.chaos.ledger import Acknowledged, Answer, FaultInjected, Ledger, read_ledger
from mint.home import Home
from mint.projection.store import ProjectionStore
from tests.records import exported, register, registered

pytestmark = pytest.mark.anyio


def _stored(record: Record, partition: int, offset: int) -> Stored:
    e = Encoded.of(record)
    return Stored(partition, offset, e.id, e.key, e.type, e.v, e.at_ms, e.raw)


def _log(*records: Record) -> list[Stored]:
    return [_stored(r, 0, i) for i, r in enumerate(records)]


def test_readers_agree_unless_a_place_holds_another_record_or_a_gap() -> None:
    a, b, c = registered("acme/a"), registered("acme/b"), registered("acme/c")
    first = [_stored(a, 0, 0), _stored(b, 0, 1)]
    assert readers_agree(first, [*first, _stored(c, 0, 2)]) == []  # the log grew between the reads
    swapped = readers_agree(first, [_stored(a, 0, 0), _stored(c, 0, 1)])
    assert len(swapped) == 1 and swapped[0].startswith("0@1: reader 1 has ('" + b.id)
    (gap,) = readers_agree(first, [_stored(b, 0, 1)])
    assert gap.startswith(f"0@0: reader 1 has ('{a.id}'") and gap.endswith("reader 2 has None")


def test_a_record_appended_twice_is_applied_once_and_a_double_is_named(tmp_path: Path) -> None:
    a = registered("acme/a")
    folded = fold_counted(_log(a, a), tmp_path)  # a producer's retry: the same id twice on the log
    assert [r.id for r in folded.applied] == [a.id] and applied_once(folded.applied) == []
    assert applied_once([a, a]) == [f"PolicyRegistered {a.id} applied 2 times"]


def test_a_step_counted_twice_or_a_second_export_of_a_run_is_named() -> None:
    step = StepCompleted.create(run="acme/run", policy="acme/a", step=1, loss=0.5)
    again = StepCompleted.create(run="acme/run", policy="acme/a", step=1, loss=0.5)  # another id
    export = exported("acme/a", "r1", run="acme/run")
    assert training_once([step, export, exported("acme/b", "r1", run="acme/run")]) == []
    assert training_once([step, again]) == ["run acme/run: step 1 of acme/a counted 2 times"]
    assert training_once([export, exported("acme/a", "r2", run="acme/run")]) == [
        "run acme/run: 2 exports of acme/a"
    ]


def test_an_acknowledged_write_missing_from_the_log_is_named() -> None:
    on_log = registered("acme/a")
    ack = Acknowledged("POST /v1/commands", [on_log.id, "lost-1"], ["lost-1"], "0@1")
    assert acknowledged_on_log([ack], _log(on_log)) == [
        "POST /v1/commands: acknowledged lost-1 (position 0@1) is not on the log"
    ]
    assert acknowledged_on_log([ack], _log(on_log, registered("acme/b", id="lost-1"))) == []


def test_a_command_needs_exactly_one_counted_outcome(tmp_path: Path) -> None:
    command = register("acme/a")
    decided = PolicyRegistered.create(policy="acme/a", base_id="tiny", cause=command)
    twice = PolicyRegistered.create(policy="acme/a", base_id="tiny", cause=command)  # a second decision
    ack = [Acknowledged("POST /v1/commands", [command.id], [command.id], "0@1")]
    assert one_outcome_each(ack, fold_counted(_log(command, decided), tmp_path).outcomes) == []
    assert one_outcome_each(ack, {}) == [f"command {command.id}: 0 counted outcomes []"]
    outcomes = {command.id: {decided.id: 0, twice.id: 0}}
    (doubled,) = one_outcome_each(ack, outcomes)
    assert doubled.startswith(f"command {command.id}: 2 counted outcomes")


def _answer(status: int, retry_after: str | None = None, **kw: object) -> Answer:
    return Answer("POST /v1/completions", status, retry_after, 0.1, **kw)  # type: ignore[arg-type]


def test_answers_are_successes_or_a_retry_later_never_a_hang_a_500_or_an_unexcused_failure() -> None:
    fine = [_answer(200), _answer(202), _answer(429, "1"), _answer(503, "1")]
    assert answers_ok(fine) == []
    assert answers_ok([_answer(503, detail="x")]) == ["POST /v1/completions: 503 without Retry-After (x)"]
    assert answers_ok([_answer(500, detail="boom")]) == ["POST /v1/completions: 500 (boom)"]
    assert answers_ok([_answer(404, detail="gone")]) == ["POST /v1/completions: 404 (gone)"]
    hang = _answer(0, failure="timeout", detail="http://127.0.0.1:9: ReadTimeout", at=100.0)
    assert answers_ok([hang]) == [
        "POST /v1/completions: timeout after 0.1 s (http://127.0.0.1:9: ReadTimeout)"
    ]
    # A failure to the replica the plan had just killed is the fault's, not a hang; another one's is not.
    killed = FaultInjected("kill", "api-1", "http://127.0.0.1:9", at=99.0, recovered_at=104.0)
    assert answers_ok([killed, hang]) == []
    elsewhere = _answer(0, failure="transport", detail="http://127.0.0.1:10: refused", at=100.0)
    assert len(answers_ok([killed, elsewhere])) == 1
    long_after = _answer(0, failure="transport", detail="http://127.0.0.1:9: refused", at=200.0)
    assert len(answers_ok([killed, long_after])) == 1


def test_the_ledger_round_trips_and_a_last_line_cut_short_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    entries = [_answer(200, at=1.0), FaultInjected("stop", "catalog-1", "", 1.0, 2.0)]
    for entry in entries:
        ledger.write(entry)
    ledger.close()
    with path.open("ab") as out:
        out.write(b'{"type":"answer","rou')  # the writer was killed mid-line
    assert read_ledger(path) == entries
    path.write_bytes(b'{"type":"answer"}\n{"type":"fault"}\n')
    with pytest.raises(ValueError, match=r"ledger.jsonl:1: not a ledger entry"):
        read_ledger(path)


async def test_replay_equals_live_names_a_replica_whose_catalog_differs(tmp_path: Path) -> None:
    async with SqliteLog(tmp_path / "log.db", partitions=2) as log:
        placed = await log.append([registered("acme/a"), exported("acme/a", "r1")])
        for name in ("good", "bad"):
            store = ProjectionStore(Home(tmp_path / name).catalog, CATALOG_FOLD)
            for p in placed:
                (stored,) = await log.read(p.partition, p.offset, 1)
                store.apply(stored)
            store.commit()
            store.close()
        bad = ProjectionStore(Home(tmp_path / "bad").catalog, CATALOG_FOLD)
        bad.apply_own(exported("acme/a", "r9"))  # a row no record on the log made
        bad.commit()
        bad.close()
        homes = {"good": tmp_path / "good", "bad": tmp_path / "bad"}
        (wrong,) = await replay_equals_live(log, homes, settle_s=5)
    assert wrong.startswith("bad: replay ") and "r9" in wrong


def test_the_catalog_fold_does_not_depend_on_the_order_of_partitions(tmp_path: Path) -> None:
    """Regression (found by the chaos workload): a promotion deleted the revision's traffic row, so
    whether an engine's report (its partition) was folded before or after the promotion (the policy's)
    changed the row, and a replay, which reads partitions in its own order, differed from live."""
    policy = [
        registered("acme/a"),
        exported("acme/a", "r1"),
        RevisionPromoted.create(policy="acme/a", revision="r1"),
    ]
    report = TrafficObserved.create(
        engine="engine-1",
        interval_start=datetime(2026, 1, 1, tzinfo=UTC),
        interval_s=5.0,
        traffic={"acme/a@r1": RevisionTraffic(requests=3, errors=0, scored=0, score_sum=0.0)},
    )
    digests = set()
    for order, name in (([*policy, report], "policy-first"), ([report, *policy], "engine-first")):
        store = ProjectionStore(tmp_path / f"{name}.db", CATALOG_FOLD)
        for i, record in enumerate(order):
            store.apply(_stored(record, 0 if record is not report else 1, i))
        store.commit()
        digests.add(store.digest())
        store.close()
    assert len(digests) == 1
