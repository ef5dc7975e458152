"""Catalog search: prefix + keyset paging returns every match once, in order."""

from __future__ import annotations

from pathlib import Path

from mint.bench.catalog_bench import BASES, build_catalog
from mint.catalog.queries import Catalog


def test_paging_a_prefix_visits_every_match_once(tmp_path: Path) -> None:
    build_catalog(tmp_path / "c.db", 3000)  # policies t{i % 1000}/p{i}, half of them serving r1
    catalog = Catalog(tmp_path / "c.db")
    seen: list[str] = []
    after = ""
    while page := catalog.search("t7/", after=after, limit=2):
        seen += [row.policy for row in page]
        after = page[-1].policy
    assert seen == sorted(f"t7/p{i}" for i in (7, 1007, 2007))
    assert [r.policy for r in catalog.search("t7/p100")] == ["t7/p1007"]
    assert all(r.status == "active" for r in catalog.search("", status="active", limit=10))


def test_paging_by_status_or_base_visits_every_match_once(tmp_path: Path) -> None:
    build_catalog(tmp_path / "c.db", 40_000)  # i // 1000 % 100 == 37 retired; base BASES[i % 3]
    catalog = Catalog(tmp_path / "c.db")

    def every(**filters: str) -> list[str]:
        seen: list[str] = []
        after = ""
        while page := catalog.search(after=after, limit=100, **filters):
            seen += [row.policy for row in page]
            after = page[-1].policy
        return seen

    retired = every(status="retired")
    assert retired == sorted(f"t{i % 1000}/p{i}" for i in range(37_000, 38_000))
    on_base = every(prefix="t5/", base_id=BASES[2])
    assert on_base == sorted(f"t5/p{i}" for i in range(5, 40_000, 1000) if i % 3 == 2)
