"""Scoring live traffic: per policy, the reference-free scorer of its gate's suite, on a sample."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from events.catalog import Gate, Watch
from mint.evaluation.suites import SuiteError, load_suite
from mint.training.rewards import Reward

log = logging.getLogger(__name__)


@dataclass
class Tally:
    """One revision's live traffic over one reporting interval."""

    requests: int = 0
    errors: int = 0
    scored: int = 0
    score_sum: float = 0.0


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
        if gate.suite not in self._by_suite:
            try:
                self._by_suite[gate.suite] = load_suite(gate.suite, self.suites_dir, self.token_id_of).live
            except SuiteError as exc:  # the evaluator reports a bad suite; serving goes on unscored
                log.warning("live scoring off for suite %s: %s", gate.suite, exc)
                self._by_suite[gate.suite] = None
        return self._by_suite[gate.suite]
