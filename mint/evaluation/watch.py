"""The watch: whether a served revision's live signals call for a rollback. Pure, so the evaluator
actor's decision can be tested without traffic and explained by the evidence it returns."""

from __future__ import annotations

from dataclasses import dataclass

from events.catalog import Watch
from mint.catalog.rows import TrafficRow


@dataclass(frozen=True)
class Regression:
    reason: str
    evidence: dict[str, float]


def regression(watch: Watch, traffic: TrafficRow, evaluated_score: float | None) -> Regression | None:
    if traffic.requests >= watch.min_requests:
        rate = traffic.errors / traffic.requests
        if rate > watch.max_error_rate:
            return Regression(
                f"auto: live error rate {rate:.1%} over {traffic.requests} requests "
                f"> {watch.max_error_rate:.1%}",
                {
                    "error_rate": rate,
                    "requests": float(traffic.requests),
                    "errors": float(traffic.errors),
                    "max_error_rate": watch.max_error_rate,
                },
            )
    scored_enough = traffic.scored >= watch.min_scored
    if watch.max_score_drop is not None and evaluated_score is not None and scored_enough:
        live = traffic.score_sum / traffic.scored
        if live < evaluated_score - watch.max_score_drop:
            return Regression(
                f"auto: live score {live:.3f} on {traffic.scored} sampled requests fell more than "
                f"{watch.max_score_drop:g} below its evaluation's {evaluated_score:.3f}",
                {
                    "live_score": live,
                    "scored": float(traffic.scored),
                    "evaluated_score": evaluated_score,
                    "max_score_drop": watch.max_score_drop,
                },
            )
    return None
