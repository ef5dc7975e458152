"""The console's canary panel in real headless Chromium: both revisions' live numbers side by side over
the canary's window, and the Abort button ending it."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import pytest
from playwright.async_api import BrowserContext, expect

from actors.system import System
from events.catalog import CanaryRules, StartCanary
from events.serving import PairedScores, RevisionTraffic, TrafficObserved
from mint.catalog.queries import Catalog
from mint.commands.up import serve_http
from tests.api_system import two_revisions_served
from tests.records import evaluated, exported
from tests.test_console import WAIT_MS, browser

pytestmark = pytest.mark.anyio
__all__ = ["browser"]  # the fixture, shared with the console's main test


def _observed(traffic: dict[str, RevisionTraffic], canary: str | None = None) -> TrafficObserved:
    """An engine's report; with `canary`, all of it served under that canary (as the host tags it)."""
    return TrafficObserved.create(
        engine="e1",
        interval_start=datetime.now(UTC),
        interval_s=1.0,
        traffic=traffic,
        canaries={canary: traffic} if canary else {},
    )


async def test_the_canary_panel_shows_both_revisions_and_aborts(
    bare_system: System, browser: BrowserContext
) -> None:
    await two_revisions_served(bare_system)  # acme/a serves r2
    await bare_system.log.append([exported("acme/a", "r3", parent="r2"), evaluated("acme/a", "r3")])
    before = _observed({"acme/a@r2": RevisionTraffic(requests=1000, errors=500)})  # outside the window
    await bare_system.log.append([before])
    await bare_system.settle()
    rules = CanaryRules(fraction=0.25, min_requests=10_000)
    await bare_system.log.append([StartCanary.create(policy="acme/a", revision="r3", rules=rules)])
    await bare_system.settle()
    policy = Catalog(bare_system.home.catalog).policy("acme/a")
    assert policy is not None and policy.canary is not None
    during = _observed(
        {
            "acme/a@r2": RevisionTraffic(requests=300, errors=3),
            "acme/a@r3": RevisionTraffic(
                requests=100,
                errors=1,
                scored=4,
                score_sum=3.0,
                # 4 runs against r2's answers to the same prompts: -0.1, -0.1, 0, +0.2 (mean 0).
                paired={"r2": PairedScores(pairs=4, diff_sum=0.0, diff_sq_sum=0.06, wins=1, losses=2)},
            ),
        },
        policy.canary,
    )
    await bare_system.log.append([during])
    await bare_system.settle()
    async with anyio.create_task_group() as tg:
        address = await tg.start(serve_http, bare_system, "127.0.0.1", 0)
        secret = bare_system.home.admin_token.read_text().strip()
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"{address}/admin/")
        await page.fill("#token", secret)
        await page.click("#login button")
        await expect(page.locator("#whoami")).to_contain_text("_system", timeout=WAIT_MS)
        await page.goto(f"{address}/admin/#/policy/acme/a")
        panel = page.locator("#canary")
        await expect(panel).to_contain_text("canary of r3 against r2", timeout=WAIT_MS)
        await expect(panel).to_contain_text("25% of requests")
        candidate = panel.locator("tr", has_text="candidate")
        stable = panel.locator("tr", has_text="stable")
        await expect(candidate).to_contain_text("100")
        await expect(candidate).to_contain_text("0.750 on 4")
        await expect(candidate).to_contain_text("+0.000 ± 0.071 on 4 prompts (1 won, 2 lost, 1 tied)")
        await expect(stable).to_contain_text("300")  # the window only: not the 1,300 it served in all
        await expect(stable).to_contain_text("1%")
        await page.click("#canary-abort")
        await expect(page.locator("#outcome")).to_contain_text(
            "AbortCanary applied: canary of r3 aborted", timeout=WAIT_MS
        )
        await expect(page.locator("text=no canary running")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#pointer")).to_have_text("r2")
        assert errors == []
        tg.cancel_scope.cancel()
