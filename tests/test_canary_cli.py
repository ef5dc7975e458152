"""The canary from the command line: start, refuse, abort, and audit which revision answered a request
id, or what ran at a time, from the facts alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from actors.system import System, running
from events.sqlite_log import SqliteLog
from mint.catalog.canary import takes_candidate
from mint.catalog.queries import Catalog
from mint.home import Home
from tests.test_canary import P, _serving_r1
from tests.test_replay import invoke

pytestmark = pytest.mark.anyio


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    home = Home(tmp_path / "home")
    async with SqliteLog(home.log, partitions=4) as log, running(home, log) as system:
        yield system


async def test_start_refuse_audit_and_abort_a_canary_from_the_cli(system: System) -> None:
    await _serving_r1(system)
    home = str(system.home.root)
    started = await invoke(
        "policy", "canary", f"{P}@r2", "--fraction", "0.3", "--min-requests", "5000", "--home", home
    )
    assert started.exit_code == 0 and "\nCanaryStarted: " in started.output, started.output
    again = await invoke("policy", "canary", f"{P}@r3", "--home", home)
    assert again.exit_code == 1 and "is running: promote or abort it first" in again.output
    bad = await invoke("policy", "canary", f"{P}@r3", "--fraction", "1.5", "--home", home)
    assert bad.exit_code == 2 and "--fraction" in bad.output and "fraction" in bad.output

    (canary,) = Catalog(system.home.catalog).canaries(P)
    then = await invoke("replay", "at", datetime.now(UTC).isoformat(), "--policy", P, "--home", home)
    assert f"canary {canary.canary} running: canary of r2 on 0.3 of requests" in then.output, then.output
    for request in ("q1", "q2", "q3", "q4"):
        audit = await invoke("replay", "audit", P, "--request", request, "--home", home)
        expected = "r2" if takes_candidate(canary.canary, request, 0.3) else "r1"
        assert audit.exit_code == 0 and audit.output.rstrip().endswith(f"{request} answered by {expected}")

    aborted = await invoke("policy", "canary-abort", P, "--home", home)
    assert aborted.exit_code == 0 and "\nCanaryAborted: " in aborted.output
    shadow = await invoke("policy", "canary", f"{P}@r3", "--shadow", "--fraction", "1", "--home", home)
    assert shadow.exit_code == 0, shadow.output
    audit = await invoke("replay", "audit", P, "--request", "q1", "--home", home)
    lines = audit.output.splitlines()
    assert len(lines) == 2 and lines[1].endswith("q1 answered by r1 (and r3 ran it in the shadow)")
    # Asked for a time before any canary: the pointer answered.
    before = await invoke(
        "replay", "audit", P, "--request", "q1", "--at", "2000-01-01T00:00:00", "--home", home
    )
    assert "ran no canary then" in before.output
    promoted = await invoke("policy", "canary-promote", P, "--home", home)
    assert promoted.exit_code == 0 and Catalog(system.home.catalog).resolve(P) == "r3"


async def test_register_and_configure_take_the_canary_rules_naming_a_bad_one(system: System) -> None:
    home = str(system.home.root)
    registered = await invoke(
        "policy", "register", "acme/c", "--base", "tiny", "--promotion", "canary",
        "--gate", "reward:token:the", "--canary-fraction", "0.3", "--canary-shadow",
        "--canary-min-requests", "7", "--home", home,
    )  # fmt: skip
    assert registered.exit_code == 0, registered.output
    await system.settle()
    row = Catalog(system.home.catalog).policy("acme/c")
    assert row is not None and row.promotion == "canary" and row.canary_rules is not None
    rules = row.canary_rules
    assert (rules.fraction, rules.mode, rules.min_requests) == (0.3, "shadow", 7)
    configured = await invoke("policy", "configure", "acme/c", "--canary-max-duration", "60", "--home", home)
    assert configured.exit_code == 0, configured.output
    await system.settle()
    row = Catalog(system.home.catalog).policy("acme/c")
    assert row is not None and row.canary_rules is not None and row.canary_rules.max_duration_s == 60.0
    bad = await invoke("policy", "configure", "acme/c", "--canary-fraction", "1.5", "--home", home)
    assert bad.exit_code == 2 and "--canary-fraction" in bad.output and "fraction" in bad.output
