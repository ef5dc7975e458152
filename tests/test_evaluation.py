"""Evaluation gates, automatic promotion and the watch: the pure rules, the suites, and the evaluator
and catalog actors deciding over a real SQLite log (facts fed by hand where a test needs a score)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from actors.system import System, running
from events.catalog import ConfigurePolicy, Gate, RegisterPolicy, Watch
from events.evaluation import RequestEvaluation
from events.serving import RevisionTraffic, TrafficObserved
from events.sqlite_log import SqliteLog
from mint.catalog.queries import Catalog
from mint.catalog.rows import TrafficRow
from mint.evaluation.gate import judge
from mint.evaluation.suites import Case, SuiteError, load_suite
from mint.evaluation.watch import regression
from mint.home import Home
from tests.log_contract import read_all
from tests.records import evaluated, exported, promote

GATE = Gate(suite="reward:token:the", tolerance=0.05)
WATCH = Watch(max_error_rate=0.1, min_requests=10, max_score_drop=0.2, min_scored=5)
P = "acme/support"


# -- the pure rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gate", "score", "baseline", "verdict", "said"),
    [
        (GATE, 0.80, 0.82, "pass", "within tolerance 0.05"),
        (GATE, 0.70, 0.82, "fail", "regressed by more than the tolerance 0.05"),
        (Gate(suite="s", min_score=0.9), 0.85, 0.10, "fail", "below the minimum score 0.9"),
        (Gate(suite="s", min_score=0.9), 0.95, 0.10, "pass", "above the minimum 0.9"),
        (None, 0.10, 0.90, "pass", "the policy has no gate"),
    ],
)
def test_the_gate_compares_candidate_and_baseline(
    gate: Gate | None, score: float, baseline: float, verdict: str, said: str
) -> None:
    got, detail = judge(gate, score, baseline, "r1")
    assert got == verdict and said in detail and "for r1" in detail


def _traffic(requests: int, errors: int = 0, scored: int = 0, score_sum: float = 0.0) -> TrafficRow:
    return TrafficRow(P, "r2", requests, errors, scored, score_sum, "2026-11-24T00:00:00+00:00")


def test_the_watch_needs_enough_requests_before_the_error_rate_counts() -> None:
    assert regression(WATCH, _traffic(9, errors=9), 0.9) is None
    found = regression(WATCH, _traffic(10, errors=2), 0.9)
    assert found is not None and found.evidence["error_rate"] == 0.2 and "20.0% over 10" in found.reason
    assert regression(WATCH, _traffic(10, errors=1), 0.9) is None  # 10% is not above 10%


def test_the_watch_rolls_back_when_the_live_score_falls_below_the_evaluation() -> None:
    assert regression(WATCH, _traffic(10, scored=4, score_sum=0.0), 0.9) is None  # too few scored
    found = regression(WATCH, _traffic(10, scored=5, score_sum=2.5), 0.9)
    assert found is not None
    assert found.evidence["live_score"] == 0.5 and found.evidence["evaluated_score"] == 0.9
    assert regression(WATCH, _traffic(10, scored=5, score_sum=4.0), 0.9) is None  # 0.8: within 0.2
    assert regression(WATCH, _traffic(10, scored=5, score_sum=0.0), None) is None  # never evaluated


# -- suites --------------------------------------------------------------------------------------


def _token(word: str) -> int:
    return {"the": 7, "and": 9}[word]


def test_built_in_suites_score_held_out_prompts_with_a_reward(tmp_path: Path) -> None:
    suite = load_suite("reward:token:the", tmp_path, _token)
    assert suite.version == 1 and len(suite.cases) == 8 and suite.live is not None
    assert suite.score(suite.cases[0], " the the", [7, 7]) == 1.0
    assert suite.score(suite.cases[0], " the and", [7, 9]) == 0.5


def test_file_suites_score_against_expected_answers(tmp_path: Path) -> None:
    (tmp_path / "arith.json").write_text(
        json.dumps({"version": 3, "scorer": "exact", "cases": [{"prompt": "2+2=", "expected": "4"}]})
    )
    suite = load_suite("arith", tmp_path, _token)
    assert (suite.version, suite.live, suite.samples, suite.temperature) == (3, None, 1, 0.0)
    assert suite.score(Case("2+2=", "4"), " 4 ", []) == 1.0 and suite.score(Case("2+2=", "4"), "5", []) == 0.0


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("{not json", "not JSON"),
        ('{"version": 1, "scorer": "exact", "cases": []}', "$.cases"),
        ('{"version": 0, "scorer": "exact", "cases": [{"prompt": "a", "expected": "b"}]}', "$.version"),
        ('{"version": 1, "scorer": "exact", "cases": [{"prompt": "a"}]}', "cases[0].expected is required"),
        ('{"version": 1, "scorer": "bleu", "cases": [{"prompt": "a"}]}', "scorer 'bleu' is not exact"),
        ('{"version": 1, "scorer": "reward:token", "cases": [{"prompt": "a"}]}', "scorer"),
        ('{"version": 1, "scorer": "exact", "cases": [{"prompt": "a", "expected": "b"}], "x": 1}', "x"),
    ],
)
def test_a_bad_suite_file_is_refused_naming_the_file_and_field(
    tmp_path: Path, content: str, said: str
) -> None:
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(SuiteError) as caught:
        load_suite("bad", tmp_path, _token)
    assert str(tmp_path / "bad.json") in str(caught.value) and said in str(caught.value)


def test_an_unknown_suite_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="not built in"):
        load_suite("nope", tmp_path, _token)


# -- the actors ----------------------------------------------------------------------------------


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    home = Home(tmp_path / "home")
    async with SqliteLog(home.log, partitions=4) as log, running(home, log) as system:
        yield system


def _catalog(system: System) -> Catalog:
    return Catalog(system.home.catalog)


async def _register(system: System, **kw: object) -> None:
    await system.log.append([RegisterPolicy.create(policy=P, base_id="tiny", **kw)])


@pytest.mark.anyio
async def test_automatic_promotion_needs_a_gate(system: System) -> None:
    await _register(system, promotion="auto")
    await system.log.append([ConfigurePolicy.create(policy="acme/other", promotion="auto")])
    await system.settle()
    view = _catalog(system)
    (refused,) = view.rejections(P)
    assert refused.field == "gate" and "needs a gate" in refused.reason and view.policy(P) is None
    assert view.rejections("acme/other")[0].reason == "unknown policy 'acme/other'"


@pytest.mark.anyio
async def test_a_passed_evaluation_promotes_only_against_what_still_serves(system: System) -> None:
    # Exported before the gate is set, so the evaluator leaves them to the verdicts fed below.
    await _register(system)
    await system.log.append([exported(P, r) for r in ("r1", "r2", "r3")])
    await system.settle()
    await system.log.append([ConfigurePolicy.create(policy=P, promotion="auto", gate=GATE)])
    await system.settle()
    await system.log.append([evaluated(P, "r1")])  # against the base: promoted
    await system.log.append([evaluated(P, "r2", verdict="fail", score=0.1)])
    await system.log.append([evaluated(P, "r3")])  # against the base, not r1: stale
    await system.settle()
    view = _catalog(system)
    assert view.policy(P).pointer == "r1"  # type: ignore[union-attr]
    await system.log.append([evaluated(P, "r3", baseline_revision="r1", baseline_score=0.8)])
    await system.settle()
    assert view.policy(P).pointer == "r3"  # type: ignore[union-attr]
    moves = view.serving_history(P)
    assert [(m.revision, m.previous) for m in moves] == [("r1", None), ("r3", "r1")]
    assert all(m.reason.startswith("auto: passed smoke v1") for m in moves)


@pytest.mark.anyio
async def test_manual_policies_wait_for_a_person_even_when_the_gate_passes(system: System) -> None:
    await _register(system)
    await system.log.append([exported(P, "r1"), evaluated(P, "r1")])
    await system.settle()
    view = _catalog(system)
    assert view.policy(P).pointer is None  # type: ignore[union-attr]
    await system.log.append([promote(P, "r1")])
    await system.settle()
    assert view.policy(P).pointer == "r1"  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("setup", "command", "field", "said"),
    [
        (False, {"revision": "r1", "suite": "reward:token:the"}, "policy", "not registered"),
        (True, {"revision": "r9", "suite": "reward:token:the"}, "revision", "never exported"),
        (True, {"revision": "r1"}, "suite", "no gate to take one from"),
        (True, {"revision": "r1", "suite": "nope"}, "suite", "not built in"),
    ],
)
async def test_a_request_the_evaluator_cannot_run_is_refused(
    system: System, setup: bool, command: dict[str, str], field: str, said: str
) -> None:
    if setup:
        await _register(system)
        await system.log.append([exported(P, "r1")])
        await system.settle()
    await system.log.append([RequestEvaluation.create(policy=P, **command)])
    await system.settle()
    (refused,) = _catalog(system).rejections(P)
    assert refused.command_type == "RequestEvaluation" and refused.field == field and said in refused.reason


def _observed(ref: str, **traffic: float) -> TrafficObserved:
    return TrafficObserved.create(
        engine="e1",
        interval_start=datetime.now(UTC),
        interval_s=1.0,
        traffic={ref: RevisionTraffic(**traffic)},  # type: ignore[arg-type]
    )


async def _serving_r2(system: System) -> None:
    await _register(system, watch=WATCH)  # no gate: the verdicts are fed by hand
    await system.log.append(
        [exported(P, "r1"), evaluated(P, "r1"), exported(P, "r2"), evaluated(P, "r2", score=0.9)]
    )
    await system.log.append([promote(P, "r1"), promote(P, "r2")])
    await system.settle()


@pytest.mark.anyio
async def test_live_errors_roll_back_once_with_their_evidence(system: System) -> None:
    await _serving_r2(system)
    await system.log.append([_observed(f"{P}@r1", requests=50, errors=50)])  # not served: not watched
    await system.log.append([_observed(f"{P}@r2", requests=6, errors=3)])  # too few requests yet
    await system.settle()
    view = _catalog(system)
    assert view.policy(P).pointer == "r2"  # type: ignore[union-attr]
    await system.log.append([_observed(f"{P}@r2", requests=6, errors=0)])  # 3 of 12: 25% > 10%
    await system.log.append([_observed(f"{P}@r2", requests=6, errors=6)])  # still bad: no second one
    await system.settle()
    assert view.policy(P).pointer == "r1"  # type: ignore[union-attr]
    moves = [m for m in view.serving_history(P) if m.kind == "rolled_back"]
    assert len(moves) == 1 and moves[0].evidence == {
        "error_rate": 0.25,
        "requests": 12.0,
        "errors": 3.0,
        "max_error_rate": 0.1,
    }
    assert view.rejections(P) == []
    rollbacks = [s.decode() for s in await read_all(system.log) if s.type == "Rollback"]
    assert len(rollbacks) == 1 and rollbacks[0].source == "evaluator"


@pytest.mark.anyio
async def test_a_live_score_below_the_evaluation_rolls_back(system: System) -> None:
    await _serving_r2(system)
    await system.log.append([_observed(f"{P}@r2", requests=5, scored=5, score_sum=2.0)])
    await system.settle()
    view = _catalog(system)
    assert view.policy(P).pointer == "r1"  # type: ignore[union-attr]
    (move,) = [m for m in view.serving_history(P) if m.kind == "rolled_back"]
    assert move.evidence["live_score"] == 0.4 and "fell more than 0.2" in move.reason


@pytest.mark.anyio
async def test_an_evaluation_that_cannot_run_blocks_promotion_and_says_why(system: System) -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    from mint.bases.tiny import create_tiny_base

    create_tiny_base(system.home.base("tiny"), seed=0)
    await _register(system, gate=GATE)
    await system.settle()  # exports follow registrations, as the trainer's do
    await system.log.append([exported(P, "r1")])  # its uri points at no bytes in the store
    await system.settle()
    await system.log.append([promote(P, "r1")])
    await system.settle()
    view = _catalog(system)
    (row,) = view.revisions(P)
    assert row.eval_verdict == "error" and row.eval_suite == GATE.suite
    (refused,) = view.rejections(P)
    assert refused.reason.startswith(f"{P}@r1 could not be evaluated:") and refused.field == "revision"


@pytest.mark.anyio
async def test_a_perplexity_suite_scores_held_out_text_under_candidate_and_base(system: System) -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    import hashlib

    from events.training import RevisionExported
    from mint.adapters.peft_layout import encode_peft
    from mint.adapters.synthetic import random_adapter
    from mint.artifacts.keys import adapter_key
    from mint.bases.info import read_base_info
    from mint.bases.tiny import create_tiny_base

    home = system.home
    create_tiny_base(home.base("tiny"), seed=0)
    home.suites.mkdir(parents=True)
    texts = [{"prompt": "Once upon a time there was a model that learned"}, {"prompt": "The answer is yes."}]
    suite = {"version": 2, "scorer": "perplexity", "cases": texts}
    (home.suites / "heldout.json").write_text(json.dumps(suite))
    adapter = random_adapter(
        read_base_info(home.base("tiny")), r=4, alpha=8.0, targets=("q_proj",), seed=1, b_std=0.5
    )
    data = encode_peft(adapter)
    stored = await system.artifacts.put(adapter_key(P, "r1", hashlib.sha256(data).hexdigest()), data)
    await _register(system)
    await system.settle()
    exported_r1 = RevisionExported.create(
        policy=P, revision="r1", base_id="tiny", uri=stored.key, sha256=stored.sha256, bytes=stored.size,
        rank=4, alpha=8.0, targets=["q_proj"],
    )  # fmt: skip
    await system.log.append([exported_r1, RequestEvaluation.create(policy=P, revision="r1", suite="heldout")])
    await system.settle()
    (evaluation,) = _catalog(system).evaluations(P)
    assert (evaluation.suite, evaluation.suite_version, evaluation.samples) == ("heldout", 2, 1)
    assert evaluation.baseline_revision is None and evaluation.baseline_score is not None
    assert 0 < evaluation.score < 1 and 0 < evaluation.baseline_score < 1
    assert evaluation.score != evaluation.baseline_score  # the adapter changed the text's likelihood
    assert evaluation.verdict == "pass" and "no gate" in evaluation.detail
