"""The admin console in real headless Chromium against `mint up`'s HTTP server over a live system:
sign in with the first admin token, search a policy, open it, roll it back, watch the pointer move,
see a promotion made elsewhere arrive live; read durations, sizes, counts and times as people write
them, with the exact value on hover; keep a screenshot as an artifact."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import msgspec
import pytest
from playwright.async_api import BrowserContext, async_playwright, expect

from actors.system import System
from events.catalog import Promote
from events.serving import AdapterLoaded, EngineRegistered, RevisionTraffic, TrafficObserved
from events.training import StepCompleted, TrainingStarted
from mint.commands.up import serve_http
from tests.api_system import two_revisions_served
from tests.records import evaluated, exported, register

pytestmark = pytest.mark.anyio

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("MINT_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))
WAIT_MS = 20_000


@pytest.fixture
async def browser() -> AsyncIterator[BrowserContext]:
    with tempfile.TemporaryDirectory(prefix="mint-chromium-") as profile:
        async with async_playwright() as playwright:
            # A persistent context is how Playwright takes a fresh user-data-dir of our own.
            context = await playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=FLAGS, headless=True, locale="en-US"
            )
            yield context
            await context.close()


async def test_search_open_roll_back_and_watch_live(bare_system: System, browser: BrowserContext) -> None:
    await bare_system.log.append([register(f"acme/tail-{i:03d}") for i in range(60)])
    await two_revisions_served(bare_system)
    run = TrainingStarted.create(
        run="acme/run1", policies=["acme/a"], base_id="tiny", algo="grpo", task="token:the", steps=3
    )
    steps = [
        StepCompleted.create(run="acme/run1", policy="acme/a", step=i, loss=1.0 / i, reward_mean=0.2 * i)
        for i in (1, 2, 3)
    ]
    engine = EngineRegistered.create(engine="e1", base_id="tiny", kind="torch", gpu_slots=2, cpu_slots=4)
    # Loaded 200 s ago: "3 min ago" for the next 40 s, whatever the test's own pace.
    loaded_at = datetime.now(UTC) - timedelta(seconds=200)
    load_ms = 6.430965999982163
    loaded = AdapterLoaded.create(
        engine="e1", policy="acme/a", revision="r2", tier="gpu", ms=load_ms, at=loaded_at
    )
    r3 = msgspec.structs.replace(exported("acme/a", "r3", parent="r2"), bytes=1_900_000)
    held_back = [r3, evaluated("acme/a", "r3", verdict="fail", score=0.1)]
    traffic = TrafficObserved.create(
        engine="e1",
        interval_start=datetime.now(UTC),
        interval_s=1.0,
        traffic={"acme/a@r2": RevisionTraffic(requests=12_345, errors=2, scored=4, score_sum=3.0)},
    )
    await bare_system.log.append([run, *steps, engine, loaded, *held_back, traffic])
    await bare_system.settle()
    async with anyio.create_task_group() as tg:
        address = await tg.start(serve_http, bare_system, "127.0.0.1", 0)
        secret = bare_system.home.admin_token.read_text().strip()  # written by the first start
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"{address}/admin/")
        await page.fill("#token", secret)
        await page.click("#login button")
        await expect(page.locator("#whoami")).to_contain_text("_system", timeout=WAIT_MS)

        # The first page holds 50 of 62 policies; the search narrows to the one we want.
        await expect(page.locator("tbody tr")).to_have_count(50, timeout=WAIT_MS)
        await page.fill("#search-prefix", "acme/a")
        await page.click("#search button")
        await expect(page.locator("tbody tr")).to_have_count(1, timeout=WAIT_MS)
        await page.click("text=acme/a")

        pointer = page.locator("#pointer")
        await expect(pointer).to_have_text("r2", timeout=WAIT_MS)
        await expect(page.locator("#lineage circle")).to_have_count(3)  # r1 <- r2 <- r3
        await expect(page.locator("#rules")).to_contain_text("no gate")
        await expect(page.locator("td", has_text="0.750 on 4")).to_be_visible()  # live traffic of r2
        await expect(page.locator("td", has_text="12,345")).to_be_visible()
        size = page.locator("tr", has_text="r3").locator("span[title]", has_text="1.9 MB")
        await expect(size).to_have_attribute("title", "1,900,000 bytes")
        await page.fill("#reason", "regression seen by on-call")
        await page.click("#rollback")
        await expect(pointer).to_have_text("r1", timeout=WAIT_MS)
        await expect(page.locator("#outcome")).to_contain_text(
            "Rollback applied: rolled_back to r1", timeout=WAIT_MS
        )
        await expect(page.locator("text=regression seen by on-call").first).to_be_visible()

        # A revision that failed its evaluation: the promotion is refused, and the page says why.
        await page.click("button.promote[data-revision=r3]")
        await expect(page.locator("#outcome")).to_contain_text("Promote rejected:", timeout=WAIT_MS)
        await expect(page.locator("#outcome")).to_contain_text("failed evaluation")
        await expect(pointer).to_have_text("r1")

        # A promotion from another producer reaches the open page through the live stream.
        await bare_system.log.append([Promote.create(policy="acme/a", revision="r2", reason="fixed")])
        await expect(pointer).to_have_text("r2", timeout=WAIT_MS)

        # The other views render from the same API: a run's curves, engines, dead letters.
        await page.click("text=Runs")
        await page.click("text=acme/run1")
        await expect(page.locator("svg.chart polyline")).to_have_count(2, timeout=WAIT_MS)
        await page.click("text=Engines")
        card = page.locator(".engine")
        await expect(card).to_contain_text("loaded so far gpu: 1", timeout=WAIT_MS)
        await expect(card).to_contain_text("acme/a@r2")
        resident = card.locator("tr", has_text="acme/a@r2")
        load_time = resident.locator("span[title]")
        await expect(load_time).to_have_text("6.4 ms")
        await expect(load_time).to_have_attribute("title", f"{load_ms} ms")
        when = resident.locator("time")
        await expect(when).to_have_text("3 min ago")
        await expect(when).to_have_attribute("title", loaded_at.isoformat())
        await expect(when).to_have_attribute("datetime", loaded_at.isoformat())
        await expect(card).not_to_contain_text("+00:00")  # no raw timestamp left on the card
        await page.click("text=Dead letters")
        await expect(page.locator("th", has_text="reason")).to_be_visible(timeout=WAIT_MS)
        assert errors == []
        await page.goto(f"{address}/admin/#/policy/acme/a")
        await expect(pointer).to_have_text("r2", timeout=WAIT_MS)

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "console-policy.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        tg.cancel_scope.cancel()
