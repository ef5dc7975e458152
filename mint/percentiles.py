"""Nearest-rank percentiles, for the simulator's waits and the benchmarks' latencies alike."""

from __future__ import annotations

from collections.abc import Sequence


def percentile_of_sorted(ordered: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of `ordered`, already sorted ascending; 0.0 when there is nothing."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def percentile(samples: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of `samples`, in any order."""
    return percentile_of_sorted(sorted(samples), q)
