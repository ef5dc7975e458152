"""The canary's verdict: promote or abort a candidate revision on live evidence, or wait for more.
Pure, so the evaluator's decision is tested without traffic and explained by the numbers it returns.

Both revisions are judged over the same window: what each one's live counters gained since the canary
started (CanaryStarted.window_start), so the stable revision's history before the canary does not
flatter or shame it.
"""

from __future__ import annotations

from dataclasses import dataclass

from events.catalog import CanaryRules
from events.serving import RevisionTraffic
from mint.catalog.rows import TrafficRow


@dataclass(frozen=True)
class Seen:
    """One revision's live traffic over the canary's window."""

    requests: int = 0
    errors: int = 0
    scored: int = 0
    score_sum: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def score(self) -> float | None:
        return self.score_sum / self.scored if self.scored else None


def seen_since(now: TrafficRow | None, start: RevisionTraffic | None) -> Seen:
    """What a revision's counters gained since `start`. Never below zero: a reader whose fold lags the
    catalog's when the canary started has simply seen nothing of the window yet."""
    if now is None:
        return Seen()
    start = start or RevisionTraffic()
    return Seen(
        max(0, now.requests - start.requests),
        max(0, now.errors - start.errors),
        max(0, now.scored - start.scored),
        max(0.0, now.score_sum - start.score_sum) if now.scored > start.scored else 0.0,
    )


@dataclass(frozen=True)
class CanaryVerdict:
    promote: bool
    reason: str
    evidence: dict[str, float]


def _evidence(rules: CanaryRules, candidate: Seen, stable: Seen, elapsed_s: float) -> dict[str, float]:
    numbers = {"elapsed_s": round(elapsed_s, 3), "max_error_rate": rules.max_error_rate}
    for name, seen in (("candidate", candidate), ("stable", stable)):
        numbers[f"{name}_requests"] = float(seen.requests)
        numbers[f"{name}_errors"] = float(seen.errors)
        numbers[f"{name}_error_rate"] = round(seen.error_rate, 6)
        numbers[f"{name}_scored"] = float(seen.scored)
        if seen.score is not None:
            numbers[f"{name}_score"] = round(seen.score, 6)
    numbers["max_score_drop"] = rules.max_score_drop
    return numbers


def canary_verdict(
    rules: CanaryRules, candidate: Seen, stable: Seen, elapsed_s: float
) -> CanaryVerdict | None:
    """Once the candidate has `min_requests`: abort over the error rate or past the score drop, else
    promote. Before that: wait, unless `max_duration_s` is over (abort). Scores are compared only when
    both revisions have sampled ones (live scoring needs the policy's watch, which sets the rate)."""
    evidence = _evidence(rules, candidate, stable, elapsed_s)
    if candidate.requests < rules.min_requests:
        if elapsed_s < rules.max_duration_s:
            return None
        return CanaryVerdict(
            False,
            f"canary: undecided after {elapsed_s:.0f}s (max {rules.max_duration_s:g}s): "
            f"{candidate.requests} of {rules.min_requests} requests seen",
            evidence,
        )
    if candidate.error_rate > rules.max_error_rate:
        return CanaryVerdict(
            False,
            f"canary: live error rate {candidate.error_rate:.1%} over {candidate.requests} requests "
            f"> {rules.max_error_rate:.1%} (stable {stable.error_rate:.1%} over {stable.requests})",
            evidence,
        )
    compared = ""
    if candidate.score is not None and stable.score is not None:
        drop = stable.score - candidate.score
        compared = f", live score {candidate.score:.3f} vs stable {stable.score:.3f}"
        if drop > rules.max_score_drop:
            return CanaryVerdict(
                False,
                f"canary: live score {candidate.score:.3f} on {candidate.scored} sampled requests is "
                f"{drop:.3f} below stable's {stable.score:.3f} (max drop {rules.max_score_drop:g})",
                evidence,
            )
    return CanaryVerdict(
        True,
        f"canary: {candidate.requests} requests, error rate {candidate.error_rate:.1%} "
        f"<= {rules.max_error_rate:.1%}{compared}",
        evidence,
    )
