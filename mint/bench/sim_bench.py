"""`mint bench sim`: the wave scheduler against vLLM's LRU on the standard synthetic trace and a second one.

The standard configuration is `mint sim`'s defaults: a 1,000,000-policy catalog, 200,000 requests at
200/s (Zipf 1.1, bursts, drift, promotions), one engine with 128 GPU slots and a 1,024-slot host cache.
`gap_closed` is how far the wave scheduler goes from LRU's cold-load stalls to Belady's offline optimum
of on-demand loading (goal >= 0.75), beside p50/p99/p99.9 waits of both (goal: wave p99 <= LRU's). The
second trace (`diurnal_*`: Zipf 0.9 and a daily cycle of the rate) must not regress: gap_closed > 0 and
a p99 no worse than LRU's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from mint.serving.sim import DIURNAL_TRACE, EngineSpec, TraceSpec, compare


def bench_sim(
    policies: int = 1_000_000, requests: int = 200_000, say: Callable[[str], None] = print
) -> dict[str, float]:
    started = time.perf_counter()
    standard = compare(TraceSpec(policies=policies, requests=requests), EngineSpec(), say)
    second = msgspec.structs.replace(DIURNAL_TRACE, policies=policies, requests=requests)
    diurnal = compare(second, EngineSpec(), say)
    return {
        **standard.summary(),
        **{f"diurnal_{name}": value for name, value in diurnal.summary().items()},
        "wall_s": time.perf_counter() - started,
    }
