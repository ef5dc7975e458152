"""Hypothesis drives commands, actor crashes (before the append, before and after the checkpoint
commit) and redeliveries against the real SQLite log, then checks the invariants: the live
projection (folded batch by batch, a transaction each) equals both bulk rebuilds of the log (in the
log's order, and partition by partition as a parallel rebuild folds), every command was decided
exactly once, and the catalog actor's own decision state agrees with the projector's."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from actors.catalog import CatalogActor
from actors.projector import CatalogProjector
from actors.runtime import StoreActor
from events.catalog import (
    AbortCanary,
    CanaryRules,
    ConfigurePolicy,
    Gate,
    PromoteCanary,
    RegisterPolicy,
    RetirePolicy,
    Rollback,
    StartCanary,
)
from events.codec import RecordError
from events.envelope import Command, Record
from events.log import Encoded, Stored, Subscription
from events.serving import PairedScores, RevisionTraffic, TrafficObserved
from events.sqlite_log import SqliteLog
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.rows import POLICIES as POLICY_TABLE
from mint.config import LogSpec
from mint.home import Home
from mint.projection.store import ProjectionStore
from replay.partitioned import rebuild_partitioned
from replay.rebuild import rebuild
from tests.log_contract import read_all
from tests.records import evaluated, exported, forged, promote

POLICIES = ("acme/a", "acme/b", "beta/c")
REVISIONS = ("r1", "r2", "r3")
CRASHES = (None, "before append", "before commit", "after commit")
GATE = Gate(suite="reward:token:the")


async def _open_log(path: Path) -> SqliteLog:
    return SqliteLog(path, partitions=3, synchronous="OFF")


def _decoded(stored: Stored) -> Record | None:
    try:
        record = stored.decode()
    except RecordError:
        return None
    return record if isinstance(record, Record) else None


class CatalogUnderFaults(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="mint-sm-"))
        self.home = Home(self.dir)
        self._portal_cm = start_blocking_portal()
        self.portal: BlockingPortal = self._portal_cm.__enter__()
        self.log = self.portal.call(_open_log, self.home.log)
        self.actors: dict[str, StoreActor] = {
            "catalog": CatalogActor(self.home),
            "projector": CatalogProjector(self.home),
        }
        self.stores: dict[str, ProjectionStore] = {}
        self.mailboxes: dict[str, Subscription] = {}
        for name in self.actors:
            self._start(name)
        self.appended: list[Record] = []
        self.canaries: list[str] = []  # the ids of canaries asked for (as the decider derives them)

    # -- the actor loop, one batch at a time, with a crash wherever hypothesis likes ----------------

    def _start(self, name: str) -> None:
        actor = self.actors[name]
        store = actor.open_store(self.log)
        self.stores[name] = store
        self.mailboxes[name] = self.log.subscribe(name, start=store.position)

    def _crash(self, name: str) -> None:
        self.stores[name].close()  # whatever was not committed is lost, as in a killed process
        self.portal.call(self.mailboxes[name].aclose)
        self._start(name)

    def _step(self, name: str, max_records: int, crash: str | None) -> int:
        batch: list[Stored] = self.portal.call(self.mailboxes[name].next_batch, max_records, 0.05)
        if not batch:
            return 0
        out = self.actors[name].handle(batch, self.stores[name]).decided
        if crash == "before append":
            self._crash(name)
            return len(batch)
        if out:
            self.portal.call(self.log.append, out)
        if crash == "before commit":
            self._crash(name)
            return len(batch)
        self.stores[name].commit()
        if crash == "after commit":
            self._crash(name)
        return len(batch)

    # -- rules -------------------------------------------------------------------------------------

    def _append(self, records: list[Any]) -> None:
        self.portal.call(self.log.append, records)
        self.appended.extend(records)

    @rule(policy=st.sampled_from(POLICIES), auto=st.booleans())
    def register(self, policy: str, auto: bool) -> None:
        gated = {"promotion": "auto", "gate": GATE} if auto else {}
        self._append([RegisterPolicy.create(policy=policy, base_id="tiny", **gated)])

    @rule(policy=st.sampled_from(POLICIES), auto=st.booleans())
    def configure(self, policy: str, auto: bool) -> None:
        mode = "auto" if auto else "manual"
        self._append([ConfigurePolicy.create(policy=policy, promotion=mode, gate=GATE)])

    @rule(
        policy=st.sampled_from(POLICIES),
        revision=st.sampled_from(REVISIONS),
        passed=st.booleans(),
        baseline=st.sampled_from((None, *REVISIONS)),
    )
    def export_and_evaluate(self, policy: str, revision: str, passed: bool, baseline: str | None) -> None:
        verdict = evaluated(policy, revision, "pass" if passed else "fail", baseline_revision=baseline)
        self._append([exported(policy, revision), verdict])  # an auto policy may promote on it

    @rule(policy=st.sampled_from(POLICIES), revision=st.sampled_from(REVISIONS))
    def promote(self, policy: str, revision: str) -> None:
        self._append([promote(policy, revision)])

    @rule(policy=st.sampled_from(POLICIES), to=st.sampled_from((None, *REVISIONS)))
    def rollback(self, policy: str, to: str | None) -> None:
        self._append([Rollback.create(policy=policy, to_revision=to)])

    @rule(policy=st.sampled_from(POLICIES))
    def retire(self, policy: str) -> None:
        self._append([RetirePolicy.create(policy=policy)])

    @rule(policy=st.sampled_from(POLICIES), revision=st.sampled_from(REVISIONS))
    def foreign_tenant_promotes(self, policy: str, revision: str) -> None:
        # Bytes crossing tenants (no MinT process makes them): every reader sets them aside.
        own = promote(policy, revision)
        crossing = msgspec.structs.replace(Encoded.of(own), raw=forged(own, tenant="mallory"))
        self.portal.call(self.log.append_encoded, [crossing])

    @rule()
    def producer_retries(self) -> None:
        if self.appended:
            self.portal.call(self.log.append, [self.appended[-1]])

    # -- canary commands (issue 18): starts, verdicts (also about a canary that is over), and a policy
    # whose passed gate starts one; crashes come from actor_runs_a_batch like every other command's ---

    @rule(policy=st.sampled_from(POLICIES), revision=st.sampled_from(REVISIONS), shadow=st.booleans())
    def start_canary(self, policy: str, revision: str, shadow: bool) -> None:
        rules = CanaryRules(fraction=0.25, mode="shadow" if shadow else "canary")
        command = StartCanary.create(policy=policy, revision=revision, rules=rules)
        self.canaries.append(f"{command.id}/0")
        self._append([command])

    @rule(policy=st.sampled_from(POLICIES), promote=st.booleans(), stale=st.booleans())
    def end_canary(self, policy: str, promote: bool, stale: bool) -> None:
        kind = PromoteCanary if promote else AbortCanary
        self._append([kind.create(policy=policy, canary="an-earlier-canary" if stale else None)])

    @rule(policy=st.sampled_from(POLICIES))
    def configure_canary(self, policy: str) -> None:
        self._append([ConfigurePolicy.create(policy=policy, promotion="canary", gate=GATE)])

    @rule(
        policy=st.sampled_from(POLICIES),
        revision=st.sampled_from(REVISIONS),
        against=st.sampled_from(REVISIONS),
        pairs=st.integers(0, 4),
        diff=st.sampled_from((-0.5, -0.25, 0.0, 0.25)),  # dyadic: sums are exact in any order
        under=st.integers(-1, 3),
    )
    def engine_reports_traffic(
        self, policy: str, revision: str, against: str, pairs: int, diff: float, under: int
    ) -> None:
        # Shadow runs paired against the stable answer: the fold sums them, per revision and, tagged
        # with a canary (one asked for lately, started, ended or refused), per canary too.
        scores = PairedScores(
            pairs=pairs,
            diff_sum=pairs * diff,
            diff_sq_sum=pairs * diff * diff,
            wins=pairs if diff > 0 else 0,
            losses=pairs if diff < 0 else 0,
        )
        seen = RevisionTraffic(requests=pairs + 1, paired={against: scores} if pairs else {})
        report = TrafficObserved.create(
            engine="e1",
            interval_start=datetime.now(UTC),
            interval_s=1.0,
            traffic={f"{policy}@{revision}": seen},
            canaries={self.canaries[-1 - under]: {f"{policy}@{revision}": seen}}
            if 0 <= under < len(self.canaries)
            else {},
        )
        self._append([report])

    # -- end of the canary commands --------------------------------------------------------------------

    @rule(
        name=st.sampled_from(("catalog", "projector")), size=st.integers(1, 6), crash=st.sampled_from(CRASHES)
    )
    def actor_runs_a_batch(self, name: str, size: int, crash: str | None) -> None:
        self._step(name, size, crash)

    # -- the invariants, once everything has been handled ------------------------------------------

    def _settle(self) -> None:
        while True:
            end = self.portal.call(self.log.end_offsets)
            moved = sum(self._step(name, 50, None) for name in self.actors)
            if not moved and all(
                self.stores[n].position.get(p, 0) >= o for n in self.actors for p, o in end.items()
            ):
                return

    def teardown(self) -> None:
        try:
            self._settle()
            stored = self.portal.call(read_all, self.log)
            self._check_each_command_decided_once(stored)
            self._check_replay_equals_live()
            self._check_decider_agrees_with_projector()
        finally:
            for name in self.actors:
                self.stores[name].close()
                self.portal.call(self.mailboxes[name].aclose)
            self.portal.call(self.log.aclose)
            self._portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.dir, ignore_errors=True)

    def _check_each_command_decided_once(self, stored: list[Stored]) -> None:
        records = [r for s in stored if (r := _decoded(s)) is not None]  # the forged ones do not decode
        commands = {r.id for r in records if isinstance(r, Command)}
        answers = [r for r in records if r.source == "catalog"]
        # A command's first fact (id `<command>/0`) is its decision; a second (a PromoteCanary's pointer
        # move, the canary a Rollback ends) is part of the same decision.
        decided = Counter(r.causation for r in answers if r.causation in commands and r.id.endswith("/0"))
        assert set(decided) == commands, "every command is decided"
        assert all(n == 1 for n in decided.values()), f"a command was decided twice: {decided}"
        # The rest are automatic promotions, each caused by one passed evaluation, once.
        reactions = Counter(r.causation for r in answers if r.causation not in commands)
        assert all(n == 1 for n in reactions.values()), f"an evaluation promoted twice: {reactions}"
        evaluations = {s.id for s in stored if s.type == "EvaluationCompleted"}
        assert set(reactions) <= evaluations
        assert len({s.id for s in stored}) == len(stored), "the SQLite log holds each id once"

    def _check_replay_equals_live(self) -> None:
        live = self.stores["projector"]
        until = {p: live.position.get(p, 0) for p in range(self.log.partitions)}
        in_log_order, by_partition = self.dir / "rebuilt.db", self.dir / "by-partition.db"
        self.portal.call(rebuild, self.log, CATALOG_FOLD, in_log_order, until)
        # One job: the partitions one after another in this process, as each worker folds its share
        # (tests/test_bulk_rebuild.py runs the worker processes and their merge).
        spec = LogSpec("sqlite", path=self.home.log)
        self.portal.call(rebuild_partitioned, spec, CATALOG_FOLD, by_partition, 1, until)
        for target in (in_log_order, by_partition):
            rebuilt = ProjectionStore(target, CATALOG_FOLD)
            try:
                assert rebuilt.table_digests() == live.table_digests(), target.name
            finally:
                rebuilt.close()

    def _check_decider_agrees_with_projector(self) -> None:
        def pointers(store: ProjectionStore) -> list[tuple[str, str, str | None, tuple[str, ...]]]:
            rows = [POLICY_TABLE.from_db(r) for r in store.query("SELECT * FROM policies ORDER BY policy")]
            return [(r.policy, r.status, r.pointer, r.served) for r in rows]

        assert pointers(self.stores["catalog"]) == pointers(self.stores["projector"])


CatalogUnderFaults.TestCase.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestCatalogUnderFaults = CatalogUnderFaults.TestCase
