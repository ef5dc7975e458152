"""The catalog actor and projector, running for real over a SQLite log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.system import System, running
from events.catalog import RetirePolicy, Rollback
from events.sqlite_log import SqliteLog
from mint.catalog.queries import Catalog
from mint.home import Home
from tests.records import evaluated, exported, promote, register

pytestmark = pytest.mark.anyio


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    home = Home(tmp_path / "home")
    async with SqliteLog(home.log, partitions=4) as log, running(home, log) as system:
        yield system


def catalog(system: System) -> Catalog:
    return Catalog(system.home.catalog)


async def test_register_promote_rollback(system: System) -> None:
    p = "acme/support"
    await system.log.append([register(p)])
    await system.log.append(
        [exported(p, "r1"), evaluated(p, "r1"), exported(p, "r2", parent="r1"), evaluated(p, "r2")]
    )
    await system.log.append([promote(p, "r1"), promote(p, "r2")])
    await system.settle()
    view = catalog(system)
    assert view.resolve(p) == "r2"
    await system.log.append([Rollback.create(policy=p, reason="canary regressed")])
    await system.settle()
    assert view.resolve(p) == "r1"
    moves = view.serving_history(p)
    assert [(m.kind, m.revision, m.previous) for m in moves] == [
        ("promoted", "r1", None),
        ("promoted", "r2", "r1"),
        ("rolled_back", "r1", "r2"),
    ]
    assert moves[-1].reason == "canary regressed"


@pytest.mark.parametrize(
    ("setup", "command", "reason", "field"),
    [
        ([], lambda p: promote(p, "r1"), "unknown policy 'acme/p'", "policy"),
        ([register], lambda p: promote(p, "r9"), "unknown revision acme/p@r9", "revision"),
        ([register, "r1"], lambda p: promote(p, "r1"), "has no evaluation", "revision"),
        (
            [register, "r1", "fail"],
            lambda p: promote(p, "r1"),
            "failed evaluation smoke v1: score 0.2",
            "revision",
        ),
        ([register], lambda p: Rollback.create(policy=p), "serves nothing", "policy"),
        (
            [register, "r1", "pass", "promote"],
            lambda p: Rollback.create(policy=p),
            "nothing earlier",
            "policy",
        ),
        ([register], lambda p: register(p), "already registered", "policy"),
        ([register, "retire"], lambda p: promote(p, "r1"), "is retired", "policy"),
    ],
)
async def test_refusals_name_the_reason_and_field(
    system: System, setup: list[object], command: object, reason: str, field: str
) -> None:
    p = "acme/p"
    for step in setup:
        if step is register:
            await system.log.append([register(p)])
        elif step == "r1":
            await system.log.append([exported(p, "r1")])
        elif step in ("pass", "fail"):
            await system.log.append([evaluated(p, "r1", verdict=step, score=0.2 if step == "fail" else 0.9)])
        elif step == "promote":
            await system.log.append([promote(p, "r1")])
        elif step == "retire":
            await system.log.append([RetirePolicy.create(policy=p)])
    cmd = command(p)  # type: ignore[operator]
    await system.log.append([cmd])
    await system.settle()
    (rejection,) = [r for r in catalog(system).rejections(p) if r.command_id == cmd.id]
    assert reason in rejection.reason
    assert rejection.field == field


async def test_the_decider_sees_its_own_writes_within_one_batch(system: System) -> None:
    """Two promotions and a rollback in one append: the rollback must be decided against state that
    already includes both promotions, though their facts land on the log after all three commands."""
    p = "acme/burst"
    await system.log.append(
        [register(p), exported(p, "r1"), evaluated(p, "r1"), exported(p, "r2"), evaluated(p, "r2")]
    )
    await system.settle()
    await system.log.append([promote(p, "r1"), promote(p, "r2"), Rollback.create(policy=p)])
    await system.settle()
    view = catalog(system)
    assert view.resolve(p) == "r1"
    assert view.rejections(p) == []
