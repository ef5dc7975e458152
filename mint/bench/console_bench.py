"""`mint bench console`: the console's JSON API over a catalog of a million policies, through HTTP
routing, token checks and JSON encoding (in process, over ASGI), as an operator and as one tenant."""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
from starlette.applications import Starlette

from events.sqlite_log import SqliteLog
from mint.api.console import routes
from mint.auth.tokens import TokenStore
from mint.bench.catalog_bench import build_catalog
from mint.catalog.queries import Catalog
from mint.percentiles import percentile


async def _measure(path: Path, tmp: Path, count: int, requests: int) -> dict[str, float]:
    async with SqliteLog(tmp / "log.db") as log:
        app = Starlette(routes=routes(lambda: Catalog(path), log, dict))
        app.state.tokens = tokens = TokenStore(tmp / "tokens.db")
        rng = random.Random(11)

        def client(tenant: str, role: str) -> httpx.AsyncClient:
            secret = tokens.issue(tenant, role).secret
            return httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://mint",
                headers={"Authorization": f"Bearer {secret}"},
            )

        operator, tenant = client("_system", "admin"), client("t42", "reader")

        def policy() -> str:
            i = rng.randrange(count)
            return f"t{i % 1000}/p{i}"

        def url(name: str) -> str:
            """One request of each kind, at a random place in the catalog."""
            return {
                "search_prefix": f"/admin/api/policies?prefix=t{rng.randrange(1000)}/p{rng.randrange(1, 10)}",
                "search_page_after": f"/admin/api/policies?after={policy()}",
                "search_tenant_token": f"/admin/api/policies?after=t42/p{rng.randrange(1, 9)}",
                "search_status_retired": f"/admin/api/policies?status=retired&after={policy()}",
                "search_base": f"/admin/api/policies?base=smollm2&prefix=t{rng.randrange(1000)}/",
                "policy_page": f"/admin/api/policies/{policy()}",
            }[name]

        cases = (
            "search_prefix",
            "search_page_after",
            "search_tenant_token",
            "search_status_retired",
            "search_base",
            "policy_page",
        )
        results: dict[str, float] = {"policies": float(count)}
        for name in cases:
            times, empty = [], 0
            for _ in range(requests):
                who = tenant if name == "search_tenant_token" else operator
                target = url(name)
                began = time.perf_counter()
                response = await who.get(target)
                times.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, (target, response.text)
                empty += response.json().get("policies", [None]) == []
            results[f"{name}_p50_ms"] = percentile(times, 0.5)
            results[f"{name}_p99_ms"] = percentile(times, 0.99)
            # An empty page (nothing after a random cursor) costs a scan to the end: the worst case.
            results[f"{name}_empty_pages"] = float(empty)
        return results


def bench_console(
    count: int = 1_000_000, requests: int = 500, say: Callable[[str], None] = print
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mint-bench-") as tmp:
        path = Path(tmp) / "catalog.db"
        say(f"building a catalog of {count:,} policies")
        build_catalog(path, count)
        say(f"{requests:,} console API requests per query")
        return anyio.run(_measure, path, Path(tmp), count, requests)
