"""`mint bench soak`: what it computes from a run (lag, memory slope, errors by kind, latency per route),
the plot it draws, and its refusals; a real soak on a cluster is the slow test at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mint.bench.soak_bench import Samples, draw, error_kind, lag, rss_mib, slope_per_min, summary
from mint.chaos.ledger import Answer, Failure, FaultInjected
from mint.cli import cli

MINT = str(Path(sys.executable).parent / "mint")


def answer(route: str, status: int, ms: float, at: float, failure: Failure | None = None) -> Answer:
    return Answer(route, status, "1" if status in (429, 503) else None, ms / 1000, failure, at=at)


def test_lag_counts_what_a_replica_has_not_folded_on_the_partitions_it_reads() -> None:
    end = {0: 10, 1: 7, 2: 3}
    assert lag(end, {0: 10, 1: 5, 2: 0}, "projector") == 2 + 3
    assert lag(end, {1: 7}, "catalog") == 0  # an owner reports only what it owns
    assert lag(end, {}, "catalog") == 0  # owns nothing
    assert lag(end, {}, "api") == 20  # folds the whole log and has folded nothing yet
    assert lag(end, {0: 12}, "api") == 0  # ahead of an end read a moment earlier: no negative lag


def test_the_memory_slope_is_per_minute_and_flat_memory_has_none() -> None:
    assert slope_per_min([(0.0, 100.0), (60.0, 110.0), (120.0, 120.0)]) == pytest.approx(10.0)
    assert slope_per_min([(t, 50.0) for t in (0.0, 5.0, 10.0)]) == 0.0
    assert slope_per_min([(0.0, 1.0)]) == 0.0
    mine = rss_mib(os.getpid())
    assert mine is not None and mine > 1
    assert rss_mib(2**22 + 12345) is None  # no such process


def test_the_summary_names_errors_by_kind_and_latency_per_route() -> None:
    answers = [
        answer("POST /v1/completions", 200, 10, 1.0),
        answer("POST /v1/completions", 200, 30, 2.0),
        answer("POST /v1/completions", 503, 5, 3.0),
        answer("POST /v1/commands", 200, 4, 3.5),
        answer("POST /v1/commands", 429, 1, 4.0),
        answer("POST /v1/commands", 0, 30_000, 5.0, failure="timeout"),
    ]
    assert [error_kind(a) for a in answers] == [None, None, "503", None, "429", "timeout"]
    samples = Samples()
    samples.lag["catalog-1"] += [(0.0, 0), (5.0, 7)]
    samples.lag["catalog-2"] += [(0.0, 3)]
    samples.rss_mib["api-1"] += [(0.0, 100.0), (60.0, 101.0)]
    faults = [FaultInjected("kill", "catalog-1", "", 2.5, 4.0)]
    results = summary(answers, faults, samples, minutes=0.1, rate_per_s=1.0)
    assert results["requests"] == 6 and results["served"] == 3 and results["faults"] == 1
    assert (results["errors_503"], results["errors_429"], results["errors_timeout"]) == (1, 1, 1)
    assert results["post_v1_completions_p50_ms"] == pytest.approx(30)  # of the successes only
    assert results["post_v1_commands_p99_ms"] == pytest.approx(4)
    assert results["lag_max_catalog"] == 7
    assert results["rss_slope_mib_per_min_api_1"] == pytest.approx(1.0)


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    answers = [answer("POST /v1/completions", 200, 10 + i, 100.0 + i) for i in range(40)]
    samples = Samples()
    samples.lag["api-1"] += [(float(t), t % 3) for t in range(0, 60, 5)]
    samples.rss_mib["api-1"] += [(float(t), 100.0 + t / 60) for t in range(0, 60, 5)]
    plot = tmp_path / "soak.png"
    draw(plot, answers, [FaultInjected("stop", "api-1", "", 120.0, 125.0)], samples, began=100.0)
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--minutes", "0"], "--minutes"),
        (["--rate", "-1"], "--rate"),
        (["--plot", "soak.svg"], "--plot"),
    ],
)
def test_bad_options_are_refused_by_name_before_any_cluster_starts(
    tmp_path: Path, arguments: list[str], named: str
) -> None:
    done = CliRunner().invoke(cli, ["bench", "soak", *arguments])
    assert done.exit_code == 2 and named in done.output, done.output


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_short_soak_on_a_real_cluster_serves_reports_and_plots(tmp_path: Path) -> None:
    plot = tmp_path / "soak.png"
    done = subprocess.run(
        [MINT, "bench", "soak", "--json", "--minutes", "0.75", "--rate", "2", "--plot", str(plot)],
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout)
    assert report["bench"] == "soak" and report["requests"] > 20
    assert report["served"] >= 0.9 * report["requests"], report
    assert report["post_v1_commands_p50_ms"] > 0 and "rss_mib_api_1" in report
    assert plot.read_bytes().startswith(b"\x89PNG")
    series = json.loads(plot.with_suffix(".json").read_text())
    assert set(series) == {"latency", "lag", "rss_mib", "faults"} and series["lag"]
    answered = plot.with_suffix(".ledger.jsonl").read_text().splitlines()
    assert sum('"answer"' in line for line in answered) == report["requests"]
