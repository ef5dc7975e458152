"""The gate: a pure verdict from a candidate's score, its baseline's score and the policy's gate."""

from __future__ import annotations

from events.catalog import Gate
from events.evaluation import Verdict


def judge(gate: Gate | None, score: float, baseline: float, baseline_name: str) -> tuple[Verdict, str]:
    """`baseline_name` says what the baseline was ("r3", "the base model"), for the detail."""
    compared = f"score {score:.3f} vs {baseline:.3f} for {baseline_name} ({score - baseline:+.3f})"
    if gate is None:
        return "pass", f"{compared}; the policy has no gate"
    if score < baseline - gate.tolerance:
        return "fail", f"{compared}: regressed by more than the tolerance {gate.tolerance:g}"
    if gate.min_score is not None and score < gate.min_score:
        return "fail", f"{compared}: below the minimum score {gate.min_score:g}"
    return "pass", f"{compared}: within tolerance {gate.tolerance:g}" + (
        f" and above the minimum {gate.min_score:g}" if gate.min_score is not None else ""
    )
