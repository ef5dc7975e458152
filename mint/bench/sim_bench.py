"""`mint bench sim`: the wave scheduler against vLLM's LRU on the standard synthetic trace.

The standard configuration is `mint sim`'s defaults: a 1,000,000-policy catalog, 200,000 requests at
200/s (Zipf 1.1, bursts, drift, promotions), one engine with 128 GPU slots and a 1,024-slot host cache.
`sim_stall_ratio` is cold-load stalls of the wave scheduler / LRU's (goal <= 0.5); Belady's offline
optimum on the same trace says how low any policy that loads on demand could go.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mint.serving.sim import EngineSpec, TraceSpec, compare


def bench_sim(
    policies: int = 1_000_000, requests: int = 200_000, say: Callable[[str], None] = print
) -> dict[str, float]:
    started = time.perf_counter()
    comparison = compare(TraceSpec(policies=policies, requests=requests), EngineSpec(), say)
    return {**comparison.summary(), "wall_s": time.perf_counter() - started}
