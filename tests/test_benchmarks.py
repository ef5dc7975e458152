"""Benchmarks must keep running: each runs here at a toy size and reports the numbers README quotes.
(Their speeds are not asserted: performance goals live in the benchmarks, not in timed tests.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

MINT = str(Path(sys.executable).with_name("mint"))


def _bench(*args: str) -> dict[str, object]:
    """`mint bench ... --json` in its own process: stdout must be exactly one JSON object, whatever
    the benchmark's libraries (vLLM's engine processes included) print meanwhile."""
    done = subprocess.run([MINT, "bench", *args, "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    assert report["bench"] == args[0]
    return report


def test_bench_replay_reports_rates_side_by_side() -> None:
    report = _bench("replay", "--facts", "3000", "--commits", "20")
    assert report["facts"] == 3020
    for key in (
        "append_facts_per_s",
        "append_commits_per_s",
        "rebuild_facts_per_s",
        "plain_loop_facts_per_s",
        "rebuild_jobs1_facts_per_s",
        "rebuild_jobs2_facts_per_s",
    ):
        assert isinstance(report[key], float) and report[key] > 0
    assert report["rebuild_digests_equal"] == 1.0  # one process, 1 job and 2 jobs rebuilt the same


def test_bench_catalog_resolves() -> None:
    report = _bench("catalog", "--policies", "2000", "--lookups", "200")
    assert report["policies"] == 2000 and report["resolve_p99_ms"] > 0  # type: ignore[operator]


def test_bench_kafka_against_the_bundled_broker() -> None:
    report = _bench("kafka", "--records", "2000")
    assert report["kafka_records"] == 2000


def test_bench_train_on_the_tiny_base(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    from mint.bases.tiny import create_tiny_base
    from mint.bench.train_bench import handoff, multi_policy

    base = tmp_path / "tiny"
    create_tiny_base(base, seed=0)
    moved = handoff(base, steps=1, say=lambda line: None)
    assert moved["merged_bytes"] > 10 * moved["adapter_bytes"], "a merged handoff ships the whole base"
    concurrency = multi_policy(base, policies=2, steps=2, say=lambda line: None)
    assert concurrency["sequential_s"] > 0 and concurrency["peak_rss_ratio"] > 0


def test_bench_serve_on_the_tiny_base(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    from mint.bases.tiny import create_tiny_base
    from mint.bench.serve_bench import mixed_batching, packed_loads

    base = tmp_path / "tiny"
    create_tiny_base(base, seed=0)
    mixed = mixed_batching(base, adapters=2, requests=4, tokens=3, say=lambda line: None)
    assert mixed["mixed_tokens_per_s"] > 0 and mixed["swap_tokens_per_s"] > 0
    loads = packed_loads(base, rank=4, repeats=2, say=lambda line: None)
    assert loads["per_tensor_load_ms"] > 0 and loads["packed_load_ms"] > 0


def test_bench_tinker_runs_the_step_both_ways() -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    report = _bench("tinker", "--steps", "2", "--rows", "2")
    for key in ("direct_step_ms", "api_step_ms", "asample_8x16_ms", "api_overhead_ratio"):
        assert isinstance(report[key], float) and report[key] > 0


def test_every_other_bench_json_is_one_object_on_stdout() -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    assert _bench("console", "--policies", "500", "--requests", "5")["policies"] == 500
    assert _bench("sim", "--policies", "1000", "--requests", "2000")["requests"] == 2000
    assert "multi_policy_speedup" in _bench("train", "--steps", "1", "--policies", "2")


def test_bench_serve_json_is_one_object_though_vllm_logs() -> None:
    """With vLLM installed, serve starts its engines, whose processes log at start: to stderr."""
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    report = _bench("serve", "--requests", "2", "--tokens", "2")
    assert report["a8_mixed_tokens_per_s"] > 0  # type: ignore[operator]
