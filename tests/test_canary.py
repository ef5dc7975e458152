"""Canaries: the decider, the fold, the split, and the evaluator's verdict, over a real SQLite log with
every actor running."""

from __future__ import annotations

import math
import statistics
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from actors.system import System, running
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
from events.serving import PairedScores, RevisionTraffic, TrafficObserved
from events.sqlite_log import SqliteLog
from mint.catalog.canary import answering, takes_candidate
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.queries import Catalog
from mint.catalog.rows import CanaryRow
from mint.evaluation.canary import Paired, Seen, canary_verdict
from mint.evaluation.live import PairedTally
from mint.home import Home
from replay.verify import verify
from tests.records import evaluated, exported, promote

P, Q = "acme/p", "acme/q"
RULES = CanaryRules(fraction=0.2, min_requests=20, max_error_rate=0.1, max_score_drop=0.1)
SHADOW = CanaryRules(fraction=0.2, mode="shadow", min_requests=20, max_error_rate=0.1, max_score_drop=0.1)


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    home = Home(tmp_path / "home")
    async with SqliteLog(home.log, partitions=4) as log, running(home, log) as system:
        yield system


def _catalog(system: System) -> Catalog:
    return Catalog(system.home.catalog)


def _observed(
    traffic: dict[str, RevisionTraffic], engine: str = "e1", canaries: dict[str, str] | None = None
) -> TrafficObserved:
    """An engine's report; `canaries` (policy -> canary id) tags its traffic as an engine host does
    what it serves while it sees that canary running."""
    under: dict[str, dict[str, RevisionTraffic]] = {}
    for ref, seen in traffic.items():
        canary = (canaries or {}).get(ref.partition("@")[0])
        if canary is not None:
            under.setdefault(canary, {})[ref] = seen
    return TrafficObserved.create(
        engine=engine, interval_start=datetime.now(UTC), interval_s=1.0, traffic=traffic, canaries=under
    )


def _running(system: System, *policies: str) -> dict[str, str]:
    """The canary each policy runs now, as the engine host tags what it serves."""
    view = _catalog(system)
    return {p: row.canary for p in policies if (row := view.policy(p)) is not None and row.canary}


async def _serving_r1(system: System, policy: str = P, **kw: object) -> None:
    """`policy` serves r1; r2 and r3 are exported and passed, r4 failed."""
    await system.log.append([RegisterPolicy.create(policy=policy, base_id="tiny", **kw)])
    await system.log.append(
        [
            exported(policy, "r1"),
            evaluated(policy, "r1"),
            exported(policy, "r2"),
            evaluated(policy, "r2", baseline_revision="r1"),
            exported(policy, "r3"),
            evaluated(policy, "r3", baseline_revision="r1"),
            exported(policy, "r4"),
            evaluated(policy, "r4", verdict="fail", score=0.1),
            promote(policy, "r1"),
        ]
    )
    await system.settle()


# -- the split -----------------------------------------------------------------------------------


def test_the_split_stays_within_a_binomial_bound_and_is_stable_per_request() -> None:
    n, fraction = 2000, 0.1
    chosen = sum(takes_candidate("acme/p/canary-1", f"req-{i}", fraction) for i in range(n))
    bound = 4 * math.sqrt(n * fraction * (1 - fraction))  # four standard deviations: ~1 in 15,000
    assert abs(chosen - n * fraction) <= bound, chosen
    again = [takes_candidate("acme/p/canary-1", f"req-{i}", fraction) for i in range(n)]
    assert sum(again) == chosen and again == [
        takes_candidate("acme/p/canary-1", f"req-{i}", fraction) for i in range(n)
    ]
    # Another canary draws another slice of the same request ids.
    other = [takes_candidate("acme/p/canary-2", f"req-{i}", fraction) for i in range(n)]
    assert other != again


def _canary_row(mode: str, fraction: float) -> CanaryRow:
    rules = CanaryRules(fraction=fraction, mode=mode)  # type: ignore[arg-type]
    return CanaryRow("c1", P, "r2", "r1", rules, "running", "2026-12-02T00:00:00+00:00")


def test_canary_mode_answers_from_the_candidate_and_shadow_mode_never_does() -> None:
    canary = [answering(P, "r1", _canary_row("canary", 0.5), f"q{i}") for i in range(200)]
    assert {a.ref for a in canary} == {f"{P}@r1", f"{P}@r2"} and all(a.shadow is None for a in canary)
    shadow = [answering(P, "r1", _canary_row("shadow", 0.5), f"q{i}") for i in range(200)]
    assert {a.ref for a in shadow} == {f"{P}@r1"}
    # The same requests the canary would answer are the ones shadowed.
    assert [a.shadow == f"{P}@r2" for a in shadow] == [a.ref == f"{P}@r2" for a in canary]
    assert answering(P, "r1", None, "q1").ref == f"{P}@r1"


# -- the verdict ---------------------------------------------------------------------------------


def test_the_verdict_waits_for_min_requests_then_judges_errors_and_scores() -> None:
    stable = Seen(200, 2, 50, 40.0)  # 1% errors, score 0.8
    assert canary_verdict(RULES, Seen(19, 0), stable, 10.0) is None
    timed_out = canary_verdict(RULES, Seen(19, 0), stable, RULES.max_duration_s)
    assert timed_out is not None and not timed_out.promote and "undecided" in timed_out.reason
    failing = canary_verdict(RULES, Seen(20, 3), stable, 10.0)
    assert failing is not None and not failing.promote and failing.evidence["candidate_error_rate"] == 0.15
    worse = canary_verdict(RULES, Seen(20, 0, 10, 6.0), stable, 10.0)  # 0.6 vs 0.8
    assert worse is not None and not worse.promote and "below stable" in worse.reason
    good = canary_verdict(RULES, Seen(20, 1, 10, 7.5), stable, 10.0)
    assert good is not None and good.promote
    assert good.evidence["stable_score"] == 0.8 and good.evidence["candidate_score"] == 0.75


def _paired(diffs: list[float]) -> PairedScores:
    """What an engine host reports of shadow runs whose scores differ from the stable answers' by `diffs`."""
    tally = PairedTally()
    for diff in diffs:
        tally.add(0.5 + diff, 0.5)
    return tally.reported()


def _seen_paired(diffs: list[float], scored: int = 10, score_sum: float = 8.0) -> Seen:
    p = _paired(diffs)
    return Seen(
        len(diffs), 0, scored, score_sum, Paired(p.pairs, p.diff_sum, p.diff_sq_sum, p.wins, p.losses)
    )


def test_in_shadow_mode_the_paired_difference_decides_the_score() -> None:
    stable = Seen(200, 2, 50, 40.0)  # score 0.8
    worse = [-0.25] * 12 + [0.0] * 8  # on the same prompts, 0.15 below the stable answers
    # Its own sampled score (0.8 on 10) looks as good as stable's: only the pairs show the drop.
    aborted = canary_verdict(SHADOW, _seen_paired(worse), stable, 10.0)
    assert aborted is not None and not aborted.promote
    assert "paired score -0.150" in aborted.reason and "a drop of 0.150" in aborted.reason
    assert "won 0, lost 12, tied 8" in aborted.reason
    e = aborted.evidence
    assert (e["paired_pairs"], e["paired_mean_diff"], e["paired_losses"], e["paired_ties"]) == (
        20,
        -0.15,
        12,
        8,
    )
    assert math.isclose(e["paired_stderr"], statistics.stdev(worse) / math.sqrt(20), abs_tol=1e-6)
    # Within the drop on the same prompts, though its own sampled score (0.6) is confounded by which
    # prompts it was sampled on: promoted, the pairs named.
    close = [-0.05] * 10 + [0.03] * 10
    promoted = canary_verdict(SHADOW, _seen_paired(close, scored=10, score_sum=6.0), stable, 10.0)
    assert promoted is not None and promoted.promote and "paired score -0.010" in promoted.reason
    assert promoted.evidence["paired_pairs"] == 20 and promoted.evidence["paired_wins"] == 10
    # Without pairs (no gate suite to score them) a shadow is judged on its own sampled scores, and
    # in canary mode pairs do not decide.
    unpaired = canary_verdict(SHADOW, Seen(20, 0, 10, 6.0), stable, 10.0)
    assert unpaired is not None and not unpaired.promote and "below stable" in unpaired.reason
    canary = canary_verdict(RULES, _seen_paired(worse), stable, 10.0)
    assert canary is not None and canary.promote


# -- the decider and the fold --------------------------------------------------------------------


async def _decided(system: System, *commands: object) -> Catalog:
    await system.log.append(list(commands))  # type: ignore[arg-type]
    await system.settle()
    return _catalog(system)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("command", "field", "said"),
    [
        (lambda: StartCanary.create(policy=P, revision="r9"), "revision", "unknown revision"),
        (lambda: StartCanary.create(policy=P, revision="r4"), "revision", "failed evaluation"),
        (lambda: StartCanary.create(policy=P, revision="r1"), "revision", "already serving"),
        (lambda: StartCanary.create(policy=Q, revision="r1"), "policy", "unknown policy"),
        (lambda: PromoteCanary.create(policy=P), "policy", "runs no canary"),
        (lambda: AbortCanary.create(policy=P), "policy", "runs no canary"),
    ],
)
async def test_canary_commands_are_refused_naming_the_field(
    system: System, command: object, field: str, said: str
) -> None:
    await _serving_r1(system)
    view = await _decided(system, command())  # type: ignore[operator]
    (refused,) = [r for k in (P, Q) for r in view.rejections(k)]
    assert refused.field == field and said in refused.reason, refused


@pytest.mark.anyio
async def test_a_canary_needs_something_serving_and_runs_one_at_a_time(system: System) -> None:
    await system.log.append([RegisterPolicy.create(policy=P, base_id="tiny")])
    view = await _decided(
        system, exported(P, "r1"), evaluated(P, "r1"), StartCanary.create(policy=P, revision="r1")
    )
    assert "serves nothing yet" in view.rejections(P)[0].reason
    await _decided(system, promote(P, "r1"), exported(P, "r2"), evaluated(P, "r2", baseline_revision="r1"))
    await _decided(system, exported(P, "r3"), evaluated(P, "r3", baseline_revision="r1"))
    start = StartCanary.create(policy=P, revision="r2", rules=RULES)
    view = await _decided(system, start)
    row = view.policy(P)
    assert row is not None and row.canary == f"{start.id}/0" and row.pointer == "r1"
    (canary,) = view.canaries(P)
    assert (canary.revision, canary.stable, canary.status, canary.rules) == ("r2", "r1", "running", RULES)
    # A second canary, or a plain promotion, waits for an explicit abort.
    view = await _decided(system, StartCanary.create(policy=P, revision="r3"), promote(P, "r3"))
    assert [r.reason.split(":")[0] for r in view.rejections(P)[1:]] == [
        f"canary {canary.canary} of {P}@r2 is running"
    ] * 2
    view = await _decided(system, AbortCanary.create(policy=P, reason="by hand"))
    assert view.policy(P).canary is None  # type: ignore[union-attr]
    view = await _decided(system, StartCanary.create(policy=P, revision="r3"))
    assert [(c.revision, c.status) for c in view.canaries(P)] == [("r2", "aborted"), ("r3", "running")]
    # A verdict about the aborted canary does not land on the new one.
    view = await _decided(system, PromoteCanary.create(policy=P, canary=canary.canary))
    assert view.rejections(P)[-1].field == "canary" and view.policy(P).pointer == "r1"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_promoting_a_canary_moves_the_pointer_and_rollback_or_retire_end_one(system: System) -> None:
    await _serving_r1(system)
    await _decided(system, StartCanary.create(policy=P, revision="r2"))
    view = await _decided(system, PromoteCanary.create(policy=P, reason="looks good"))
    assert view.policy(P).pointer == "r2" and view.policy(P).canary is None  # type: ignore[union-attr]
    assert view.serving_history(P)[-1].reason.endswith(": looks good")
    await _decided(system, StartCanary.create(policy=P, revision="r3"))
    view = await _decided(system, Rollback.create(policy=P))
    assert view.policy(P).pointer == "r1"  # type: ignore[union-attr]
    ended = view.canaries(P)[-1]
    assert ended.status == "aborted" and "rolled back" in ended.reason
    await _decided(system, StartCanary.create(policy=P, revision="r3"))
    view = await _decided(system, RetirePolicy.create(policy=P))
    assert view.canaries(P)[-1].status == "aborted" and view.policy(P).canary is None  # type: ignore[union-attr]
    verdict = await verify(system.log, CATALOG_FOLD, system.home.catalog)
    assert verdict.equal


@pytest.mark.anyio
async def test_a_passed_gate_starts_a_canary_when_the_policy_says_so(system: System) -> None:
    view = await _decided(system, RegisterPolicy.create(policy=Q, base_id="tiny", promotion="canary"))
    assert (
        view.rejections(Q)[-1].field == "gate"
        and "canary promotion needs a gate" in view.rejections(Q)[-1].reason
    )
    # Exported before the gate is set, so the evaluator leaves the verdicts to this test.
    await system.log.append([RegisterPolicy.create(policy=P, base_id="tiny")])
    await _decided(
        system, exported(P, "r1"), evaluated(P, "r1"), promote(P, "r1"), exported(P, "r2"), exported(P, "r3")
    )
    gate = Gate(suite="reward:token:the")
    await _decided(system, ConfigurePolicy.create(policy=P, promotion="canary", gate=gate, canary=RULES))
    view = await _decided(system, evaluated(P, "r2", baseline_revision="r1"))
    (canary,) = view.canaries(P)
    assert canary.revision == "r2" and canary.rules == RULES and canary.reason.startswith("auto: passed")
    assert view.policy(P).pointer == "r1"  # type: ignore[union-attr]
    # Another pass while it runs starts nothing (and promotes nothing).
    view = await _decided(system, evaluated(P, "r3", baseline_revision="r1"))
    assert len(view.canaries(P)) == 1 and view.policy(P).pointer == "r1"  # type: ignore[union-attr]


# -- the evaluator's verdict on live traffic -----------------------------------------------------


async def _until(system: System, check: object) -> Catalog:
    with anyio.fail_after(20):
        await system.until(lambda: check(_catalog(system)))  # type: ignore[operator]
    return _catalog(system)


@pytest.mark.anyio
async def test_a_canary_failing_on_live_traffic_is_aborted_with_its_evidence(system: System) -> None:
    await _serving_r1(system)
    # Traffic r1 had before the canary is outside its window.
    await _decided(system, _observed({f"{P}@r1": RevisionTraffic(requests=500, errors=100)}))
    await _decided(system, StartCanary.create(policy=P, revision="r2", rules=RULES))
    under = _running(system, P)
    # Reported after the start but served before it (untagged): no evidence either.
    await _decided(system, _observed({f"{P}@r2": RevisionTraffic(requests=30)}))
    await _decided(
        system,
        _observed(
            {
                f"{P}@r1": RevisionTraffic(requests=40, errors=0),
                f"{P}@r2": RevisionTraffic(requests=10, errors=3),
            },
            canaries=under,
        ),
    )
    assert _catalog(system).canaries(P)[0].status == "running"  # 10 of 20 requests: not yet
    await system.log.append(
        [
            _observed(
                {f"{P}@r1": RevisionTraffic(requests=40), f"{P}@r2": RevisionTraffic(requests=10, errors=1)},
                "e2",
                canaries=under,
            )
        ]
    )
    view = await _until(system, lambda c: c.canaries(P)[0].status != "running")
    (canary,) = view.canaries(P)
    assert canary.status == "aborted" and "error rate 20.0%" in canary.reason
    assert canary.evidence["candidate_requests"] == 20 and canary.evidence["candidate_errors"] == 4
    assert canary.evidence["stable_requests"] == 80 and canary.evidence["stable_errors"] == 0
    assert view.policy(P).pointer == "r1"  # type: ignore[union-attr]
    # Started again at once, the aborted canary's late report (its errors, tagged with its id) is not
    # the new one's evidence: healthy traffic under the new id promotes it.
    await _decided(system, StartCanary.create(policy=P, revision="r2", rules=RULES))
    again = _running(system, P)
    late = {f"{P}@r2": RevisionTraffic(requests=10, errors=10)}
    healthy = {f"{P}@r1": RevisionTraffic(requests=80), f"{P}@r2": RevisionTraffic(requests=20)}
    await system.log.append([_observed(late, canaries=under), _observed(healthy, canaries=again)])
    view = await _until(system, lambda c: c.canaries(P)[1].status != "running")
    retried = view.canaries(P)[1]
    assert retried.status == "promoted" and retried.evidence["candidate_errors"] == 0, retried.reason
    assert view.canary_traffic(canary.canary)[1].errors == 14  # the late errors went to their own canary
    assert (await verify(system.log, CATALOG_FOLD, system.home.catalog)).equal


@pytest.mark.anyio
async def test_a_healthy_canary_is_promoted_and_an_idle_one_times_out(system: System) -> None:
    await _serving_r1(system)
    await _serving_r1(system, policy=Q)
    await _decided(
        system,
        StartCanary.create(policy=P, revision="r2", rules=RULES),
        StartCanary.create(policy=Q, revision="r2", rules=CanaryRules(max_duration_s=0.5)),
    )
    await system.log.append(
        [
            _observed(
                {
                    f"{P}@r1": RevisionTraffic(requests=80, scored=20, score_sum=16.0),
                    f"{P}@r2": RevisionTraffic(requests=20, scored=5, score_sum=4.0),
                },
                canaries=_running(system, P, Q),
            )
        ]
    )
    view = await _until(
        system, lambda c: c.policy(P).pointer == "r2" and c.canaries(Q)[0].status != "running"
    )
    assert view.canaries(P)[0].status == "promoted" and view.canaries(P)[0].evidence["candidate_score"] == 0.8
    idle = view.canaries(Q)[0]
    assert idle.status == "aborted" and "undecided" in idle.reason and view.policy(Q).pointer == "r1"  # type: ignore[union-attr]
    verdict = await verify(system.log, CATALOG_FOLD, system.home.catalog)
    assert verdict.equal


@pytest.mark.anyio
async def test_a_shadow_worse_on_the_same_prompts_is_aborted_on_the_paired_evidence_a_good_one_promoted(
    system: System,
) -> None:
    await _serving_r1(system)
    await _serving_r1(system, policy=Q)
    # Pairs before the canary (a glowing earlier shadow of r2) are outside its window.
    early = {f"{P}@r2": RevisionTraffic(requests=50, paired={"r1": _paired([0.5] * 50)})}
    await _decided(system, _observed(early))
    await _decided(
        system,
        StartCanary.create(policy=P, revision="r2", rules=SHADOW),
        StartCanary.create(policy=Q, revision="r2", rules=SHADOW),
    )
    worse = [-0.25] * 12 + [0.0] * 8
    better = [0.05] * 5 + [0.0] * 15
    report = {
        f"{P}@r1": RevisionTraffic(requests=100, scored=20, score_sum=16.0),
        f"{P}@r2": RevisionTraffic(requests=20, scored=5, score_sum=4.0, paired={"r1": _paired(worse)}),
        f"{Q}@r1": RevisionTraffic(requests=100, scored=20, score_sum=16.0),
        f"{Q}@r2": RevisionTraffic(requests=20, scored=5, score_sum=4.0, paired={"r1": _paired(better)}),
    }
    await system.log.append([_observed(report, canaries=_running(system, P, Q))])
    view = await _until(
        system, lambda c: c.canaries(P)[0].status != "running" and c.canaries(Q)[0].status != "running"
    )
    (bad,), (good,) = view.canaries(P), view.canaries(Q)
    assert bad.status == "aborted" and "paired score -0.150" in bad.reason
    assert bad.evidence["paired_pairs"] == 20 and bad.evidence["paired_mean_diff"] == -0.15
    assert bad.evidence["candidate_score"] == bad.evidence["stable_score"] == 0.8  # unpaired: no difference
    assert view.policy(P).pointer == "r1"  # type: ignore[union-attr]
    assert good.status == "promoted" and good.evidence["paired_mean_diff"] == 0.0125
    assert good.evidence["paired_wins"] == 5 and good.evidence["paired_ties"] == 15
    assert view.policy(Q).pointer == "r2"  # type: ignore[union-attr]
    verdict = await verify(system.log, CATALOG_FOLD, system.home.catalog)
    assert verdict.equal
