"""Scoring live traffic: per policy, the reference-free scorer of its gate's suite, on a sample."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from events.catalog import Gate, Watch
from events.serving import PairedScores, RevisionTraffic
from mint.evaluation.suites import SuiteError, load_suite
from mint.training.rewards import Reward

log = logging.getLogger(__name__)


@dataclass
class PairedTally:
    """One revision's shadow runs scored beside another revision's answer, over one interval."""

    pairs: int = 0
    diff_sum: float = 0.0
    diff_sq_sum: float = 0.0
    wins: int = 0
    losses: int = 0

    def add(self, score: float, against: float) -> None:
        diff = score - against
        self.pairs += 1
        self.diff_sum += diff
        self.diff_sq_sum += diff * diff
        self.wins += diff > 0
        self.losses += diff < 0

    def reported(self) -> PairedScores:
        return PairedScores(
            pairs=self.pairs,
            diff_sum=self.diff_sum,
            diff_sq_sum=self.diff_sq_sum,
            wins=self.wins,
            losses=self.losses,
        )


@dataclass
class Tally:
    """One revision's live traffic over one reporting interval; `paired` per revision paired against."""

    requests: int = 0
    errors: int = 0
    scored: int = 0
    score_sum: float = 0.0
    paired: defaultdict[str, PairedTally] = field(default_factory=lambda: defaultdict(PairedTally))

    def reported(self) -> RevisionTraffic:
        return RevisionTraffic(
            requests=self.requests,
            errors=self.errors,
            scored=self.scored,
            score_sum=self.score_sum,
            paired={against: tally.reported() for against, tally in self.paired.items()},
        )


class LiveScorers:
    def __init__(self, suites_dir: Path, token_id_of: Callable[[str], int], seed: int | None = None) -> None:
        self.suites_dir = suites_dir
        self.token_id_of = token_id_of
        self.random = random.Random(seed)
        self._by_suite: dict[str, Reward | None] = {}

    def sample(self, gate: Gate | None, watch: Watch | None) -> Reward | None:
        """The scorer for this request if it is drawn for scoring, else None."""
        if gate is None or watch is None or self.random.random() >= watch.sample_rate:
            return None
        return self.scorer(gate)

    def scorer(self, gate: Gate) -> Reward | None:
        """The live scorer of the gate's suite (None when the suite has none or cannot be loaded)."""
        if gate.suite not in self._by_suite:
            try:
                self._by_suite[gate.suite] = load_suite(gate.suite, self.suites_dir, self.token_id_of).live
            except SuiteError as exc:  # the evaluator reports a bad suite; serving goes on unscored
                log.warning("live scoring off for suite %s: %s", gate.suite, exc)
                self._by_suite[gate.suite] = None
        return self._by_suite[gate.suite]
