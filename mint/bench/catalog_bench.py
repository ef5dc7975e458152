"""`mint bench catalog`: name -> serving revision lookups on a catalog of a million policies."""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.queries import Catalog
from mint.catalog.rows import POLICIES, PolicyRow
from mint.percentiles import percentile
from mint.projection.store import ProjectionStore

BASES = ("tiny", "small", "smollm2")


def build_catalog(path: Path, count: int) -> None:
    """A projection of `count` registered policies over 1,000 tenants and three bases, every other
    one serving a revision, one in a hundred retired. Rows go in through the same store and tables
    the projector uses."""
    store = ProjectionStore(path, CATALOG_FOLD, dedupe=False, bulk=True, cache_limit=0)
    at = "2026-01-01T00:00:00+00:00"
    for i in range(count):
        tenant = f"t{i % 1000}"
        served = ("r1",) if i % 2 == 0 else ()
        row = PolicyRow(
            f"{tenant}/p{i}",
            tenant,
            f"p{i}",
            BASES[i % len(BASES)],
            "manual",
            "retired" if i // 1000 % 100 == 37 else "active",
            served[-1] if served else None,
            served,
            at,
            at,
        )
        store.rows.put(POLICIES, row)
        if i % 100_000 == 99_999:
            store.commit()
    store.finish_bulk()
    store.commit()
    store.close()


def bench_catalog(
    count: int = 1_000_000, lookups: int = 20_000, say: Callable[[str], None] = print
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mint-bench-") as tmp:
        path = Path(tmp) / "catalog.db"
        say(f"building a catalog of {count:,} policies")
        build_catalog(path, count)
        catalog = Catalog(path)
        rng = random.Random(7)
        names = [f"t{(i := rng.randrange(count)) % 1000}/p{i}" for _ in range(lookups)]
        say(f"resolving {lookups:,} random policies")
        times = []
        for name in names:
            began = time.perf_counter()
            catalog.resolve(name)
            times.append((time.perf_counter() - began) * 1000)
        searches = []
        for prefix in (f"t{rng.randrange(1000)}/p{rng.randrange(10)}" for _ in range(500)):
            began = time.perf_counter()
            catalog.search(prefix, limit=50)
            searches.append((time.perf_counter() - began) * 1000)
        catalog.close()
        size = path.stat().st_size
    return {
        "policies": float(count),
        "resolve_p50_ms": percentile(times, 0.5),
        "resolve_p99_ms": percentile(times, 0.99),
        "search_p99_ms": percentile(searches, 0.99),
        "projection_mb": size / 1e6,
        "projection_bytes_per_policy": size / count,
    }
