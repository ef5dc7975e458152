"""deploy/gpu-check.sh: well-formed bash, precise refusals, and (slow) a whole dry run on this CPU that
writes every result file the GPU run writes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "gpu-check.sh"


def _check(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_the_script_is_well_formed_bash() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_an_unknown_argument_is_refused_naming_the_known_ones() -> None:
    done = _check("--gpu")
    assert done.returncode == 2
    assert "unknown argument --gpu (--out DIR, --cpu-dry-run, --fill-wheels)" in done.stderr


def test_without_carried_wheels_it_says_how_to_fill_them(tmp_path: Path) -> None:
    # A copy of the checkout's deploy/ without the wheels folder, so a filled one here does not count.
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "gpu-check.sh").write_text(SCRIPT.read_text())
    done = subprocess.run(
        ["bash", str(tmp_path / "deploy" / "gpu-check.sh"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "no wheels in deploy/gpu-wheels: run deploy/gpu-check.sh --fill-wheels" in done.stdout


@pytest.mark.slow
def test_a_cpu_dry_run_writes_every_result(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="needs the [train] extra (torch)")
    env = {**os.environ, "MINT_HOME": str(tmp_path / "home")}
    done = _check("--cpu-dry-run", "--out", str(tmp_path / "results"), env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    results = tmp_path / "results"
    assert sorted(p.name for p in results.iterdir()) == [
        "bench-serve.json",
        "bench-train.json",
        "check.log",
        "pytest.log",
        "pytest.xml",
        "summary.json",
    ]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["pytest_cuda_exit"] == 0
    assert "needs a CUDA GPU" in (results / "pytest.log").read_text()  # skipped, saying why
    assert summary["bench_train"]["multi_policy_speedup"] > 0
    assert summary["bench_serve"]["decode_fraction_of_bound"] > 0
    assert summary["bench_serve"]["packed_load_speedup"] > 0
