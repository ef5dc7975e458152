"""The canary's verdict: promote or abort a candidate revision on live evidence, or wait for more.
Pure, so the evaluator's decision is tested without traffic and explained by the numbers it returns.

Both revisions are judged on what engine hosts served of them under the canary (they tag each
request with the canary they see running on its policy: TrafficObserved.canaries), so neither the
stable revision's history nor a late report of what came before the canary (the last errors of one
aborted a moment ago) flatters or shames either.

In shadow mode the engine host also scores each shadow run beside the answer the client got from the
stable revision to the same prompt. Those pairs decide the score rule: their mean difference is the
candidate's score drop with the prompt held fixed, so it is not confounded by which prompts each
revision happened to be sampled on (the unpaired means are), and it needs far fewer requests to see a
real drop. The standard error and the wins, losses and ties go in the evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from events.catalog import CanaryRules
from events.serving import PairedScores
from mint.catalog.rows import CanaryTrafficRow


@dataclass(frozen=True)
class Paired:
    """A revision's shadow runs over the canary's window, each scored beside the stable answer to the
    same prompt: `diff` is the candidate's score minus the stable answer's."""

    pairs: int = 0
    diff_sum: float = 0.0
    diff_sq_sum: float = 0.0
    wins: int = 0
    losses: int = 0

    @property
    def ties(self) -> int:
        return self.pairs - self.wins - self.losses

    @property
    def mean_diff(self) -> float | None:
        return self.diff_sum / self.pairs if self.pairs else None

    @property
    def stderr(self) -> float | None:
        """The standard error of the mean difference (the paired t-test's denominator)."""
        if self.pairs < 2:
            return None
        mean = self.diff_sum / self.pairs
        variance = max(0.0, (self.diff_sq_sum - self.pairs * mean * mean) / (self.pairs - 1))
        return math.sqrt(variance / self.pairs)


@dataclass(frozen=True)
class Seen:
    """One revision's live traffic over the canary's window."""

    requests: int = 0
    errors: int = 0
    scored: int = 0
    score_sum: float = 0.0
    paired: Paired = field(default_factory=Paired)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def score(self) -> float | None:
        return self.score_sum / self.scored if self.scored else None


def seen_under(row: CanaryTrafficRow | None, paired_against: str | None = None) -> Seen:
    """What a revision served under a canary (with its runs paired against revision
    `paired_against`, when named); nothing yet when no engine host has reported any."""
    if row is None:
        return Seen()
    tally = row.paired.get(paired_against, PairedScores()) if paired_against else PairedScores()
    paired = Paired(tally.pairs, tally.diff_sum, tally.diff_sq_sum, tally.wins, tally.losses)
    return Seen(row.requests, row.errors, row.scored, row.score_sum, paired)


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
    paired = candidate.paired
    if paired.pairs:
        numbers["paired_pairs"] = float(paired.pairs)
        numbers["paired_mean_diff"] = round(paired.diff_sum / paired.pairs, 6)
        if paired.stderr is not None:
            numbers["paired_stderr"] = round(paired.stderr, 6)
        numbers["paired_wins"] = float(paired.wins)
        numbers["paired_losses"] = float(paired.losses)
        numbers["paired_ties"] = float(paired.ties)
    numbers["max_score_drop"] = rules.max_score_drop
    return numbers


def canary_verdict(
    rules: CanaryRules, candidate: Seen, stable: Seen, elapsed_s: float
) -> CanaryVerdict | None:
    """Once the candidate has `min_requests`: abort over the error rate or past the score drop, else
    promote. Before that: wait, unless `max_duration_s` is over (abort). In shadow mode with paired
    scores, the drop is the paired mean difference; otherwise scores are compared only when both
    revisions have sampled ones (live scoring needs the policy's watch, which sets the rate)."""
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
    paired = candidate.paired
    if rules.mode == "shadow" and paired.mean_diff is not None:
        spread = f" ± {paired.stderr:.3f}" if paired.stderr is not None else ""
        on_pairs = (
            f"{paired.mean_diff:+.3f}{spread} vs stable's answers to the same {paired.pairs} prompts "
            f"(won {paired.wins}, lost {paired.losses}, tied {paired.ties})"
        )
        compared = f", paired score {on_pairs}"
        if -paired.mean_diff > rules.max_score_drop:
            return CanaryVerdict(
                False,
                f"canary: paired score {on_pairs} is a drop of {-paired.mean_diff:.3f} "
                f"(max drop {rules.max_score_drop:g})",
                evidence,
            )
    elif candidate.score is not None and stable.score is not None:
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
