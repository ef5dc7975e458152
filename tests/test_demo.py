"""The README's main command, `mint demo`, through the real CLI on a fresh home: real GRPO on the tiny
base, real evaluations, real serving over HTTP. The tests below read what it left in the catalog and
on the log, so each lifecycle claim is checked against the facts, not only the printed story."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from mint.catalog.queries import Catalog
from mint.cli import cli
from mint.demo import SEARCH, SUPPORT, TRIAGE


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    home = tmp_path_factory.mktemp("demo") / "home"
    home.mkdir()  # an empty $MINT_HOME is the demo's home, as it is every other command's
    result = CliRunner().invoke(cli, ["demo", "--base", "tiny", "--exit"], env={"MINT_HOME": str(home)})
    return home, result


@pytest.fixture
def catalog(demo: tuple[Path, Result]) -> Catalog:
    home, _ = demo
    return Catalog(home / "projections" / "catalog.db")


def test_the_demo_tells_the_whole_story_and_exits_cleanly(demo: tuple[Path, Result]) -> None:
    _, result = demo
    assert result.exit_code == 0, result.output
    for said in (
        "built the tiny base",
        f"{SUPPORT} and {SEARCH} passed and were promoted automatically to run-1",
        f"{TRIAGE} passed too but waits for a person; we promote it: promoted",
        "Promoting run-2 by hand anyway: refused:",
        f"{SUPPORT} passed against run-1 and now serves run-3",
        "the watch rolled acme/support back to run-1",
        "answered by acme/support@run-1",
        "aborted: canary: live error rate",
        "promoted: canary: ",  # how many requests it had seen depends on when the traffic reports land
        f"{SUPPORT} now serves run-3 to everyone",
        "equal to the live catalog",
        "/admin/",
    ):
        assert said in result.output, said
    # What the story counts as failed is what serving failed: the healed canary's requests all answered
    # (the token's rate limit, which the story outruns, is waited out, not counted).
    faulty, healed = [line for line in result.output.splitlines() if "requests while it ran" in line]
    assert "failed" in faulty and "failed" not in healed, healed


def test_passing_revisions_are_promoted_automatically_and_manual_ones_wait(catalog: Catalog) -> None:
    support = catalog.serving_history(SUPPORT)
    assert [(m.kind, m.revision) for m in support[:2]] == [("promoted", "run-1"), ("promoted", "run-3")]
    assert all(m.reason.startswith("auto: passed reward:token:the v1") for m in support[:2])
    triage = catalog.serving_history(TRIAGE)
    assert [(m.reason, m.causation is not None) for m in triage] == [("reviewed", True)]
    run1 = {r.revision: r for r in catalog.revisions(SUPPORT)}["run-1"]
    assert run1.eval_baseline_revision is None and run1.eval_baseline_score is not None  # the base model
    assert run1.eval_score is not None and run1.eval_score > run1.eval_baseline_score


def test_the_gate_blocks_a_worse_revision_and_says_why(catalog: Catalog) -> None:
    search = catalog.policy(SEARCH)
    assert search is not None and search.pointer == "run-1" and search.served == ("run-1",)
    worse = {r.revision: r for r in catalog.revisions(SEARCH)}["run-2"]
    assert worse.eval_verdict == "fail" and worse.eval_baseline_revision == "run-1"
    assert worse.eval_delta is not None and worse.eval_delta < -0.05
    (refused,) = catalog.rejections(SEARCH)
    assert refused.command_type == "Promote" and refused.field == "revision"
    assert "failed evaluation reward:token:the v1" in refused.reason and "regressed" in refused.reason


def test_live_errors_roll_back_to_the_previous_revision_with_evidence(catalog: Catalog) -> None:
    (rollback,) = [m for m in catalog.serving_history(SUPPORT) if m.kind == "rolled_back"]
    assert (rollback.kind, rollback.previous, rollback.revision) == ("rolled_back", "run-3", "run-1")
    assert rollback.reason.startswith("auto: live error rate")
    assert rollback.evidence["error_rate"] > rollback.evidence["max_error_rate"] == 0.05
    assert rollback.evidence["requests"] >= 20
    bad = {t.revision: t for t in catalog.traffic(SUPPORT)}["run-3"]
    assert bad.errors > 0 and bad.scored > 0 and bad.score_sum / bad.scored > 0.5  # live scores sampled


def test_a_faulty_canary_is_aborted_on_its_slice_and_a_healthy_one_promoted(catalog: Catalog) -> None:
    aborted, promoted = catalog.canaries(SUPPORT)
    assert (aborted.revision, aborted.stable, aborted.status) == ("run-3", "run-1", "aborted")
    assert aborted.reason.startswith("canary: live error rate")
    evidence = aborted.evidence
    assert evidence["candidate_requests"] >= 20 and evidence["candidate_error_rate"] > 0.05
    # Only its slice met the faulty revision: the stable one answered the rest, without errors.
    assert evidence["stable_requests"] > 2 * evidence["candidate_requests"] and evidence["stable_errors"] == 0
    assert (promoted.revision, promoted.status) == ("run-3", "promoted")
    # Healed, it failed nothing: the aborted canary's late errors were reported before this one began.
    assert promoted.evidence["candidate_errors"] == 0
    support = catalog.policy(SUPPORT)
    assert support is not None and support.pointer == "run-3" and support.canary is None
    last = catalog.serving_history(SUPPORT)[-1]
    assert (last.kind, last.previous, last.revision) == ("promoted", "run-1", "run-3")


def test_replaying_the_demo_log_rebuilds_the_same_catalog(demo: tuple[Path, Result]) -> None:
    home, _ = demo
    verify = CliRunner().invoke(cli, ["replay", "verify", "--home", str(home)])
    assert verify.exit_code == 0 and "OK: replay equals live" in verify.output, verify.output
    audit = CliRunner().invoke(cli, ["replay", "audit", SUPPORT, "--home", str(home)])
    assert audit.exit_code == 0, audit.output
    assert "RevisionRolledBack" in audit.output and "Rollback" in audit.output


def test_the_demo_refuses_a_home_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    by_env = CliRunner().invoke(cli, ["demo", "--base", "tiny", "--exit"], env={"MINT_HOME": str(tmp_path)})
    assert by_env.exit_code == 2
    assert f"{tmp_path} ($MINT_HOME) is not an empty directory" in by_env.output and "--home" in by_env.output
    by_option = CliRunner().invoke(cli, ["demo", "--base", "tiny", "--exit", "--home", str(tmp_path)])
    assert by_option.exit_code == 2 and "(--home) is not an empty directory" in by_option.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"], "nothing was written"
