"""The engine host's urgent path: a request for a cold adapter loads it at once (no scheduler runs here,
so no wave could), into a free slot or in place of the coldest resident, whose eviction is on the log
before the load that displaces it (record before effect)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from actors.runtime import Backoff
from actors.system import System, running
from events.catalog import Promote, RegisterPolicy
from events.envelope import Record
from events.serving import AdapterEvicted, AdapterLoaded
from events.sqlite_log import SqliteLog
from mint.bases.tiny import create_tiny_base
from mint.home import Home
from mint.serving.engine import SamplingParams
from mint.serving.torch_engine import TorchEngine
from tests.serving_system import publish

pytestmark = pytest.mark.anyio


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    """The catalog, its projector and engine host e1 (one slot, one host slot), without the scheduler."""
    home = Home(tmp_path)
    create_tiny_base(home.base("tiny"), seed=0)
    engine = TorchEngine(home.base("tiny"), slots=1)
    only = frozenset({"catalog", "projector", "engine-e1"})
    async with (
        SqliteLog(home.log, partitions=2) as log,
        running(home, log, backoff=Backoff(0.001, 0.01), engines={"e1": engine}, only=only) as system,
    ):
        system.engines[0].load_deadline_s = 30.0
        yield system


async def served(system: System, policy: str, seed: int) -> str:
    await system.log.append([RegisterPolicy.create(policy=policy, base_id="tiny")])
    ref = await publish(system, policy, "r1", seed=seed)
    await system.log.append([Promote.create(policy=policy, revision="r1")])
    await system.settle()
    return ref


async def ask(system: System, model: str) -> str:
    text = ""
    with anyio.fail_after(60):
        async for delta in system.engines[0].generate(model, "x", SamplingParams(max_tokens=2, seed=1)):
            text += delta.text
    return text


async def engine_facts(system: System) -> list[Record]:
    """e1's residency facts in log order (they share e1's partition)."""
    out: list[Record] = []
    ends = await system.log.end_offsets()
    for partition, end in ends.items():
        for stored in await system.log.read(partition, 0, end + 1):
            record = stored.decode()
            if isinstance(record, AdapterLoaded | AdapterEvicted) and record.engine == "e1":
                out.append(record)
    return out


async def test_a_cold_request_loads_its_adapter_at_once_and_displaces_the_coldest(system: System) -> None:
    a = await served(system, "acme/a", seed=1)
    b = await served(system, "acme/b", seed=2)
    host = system.engines[0]
    assert host.engine.resident() == []
    await ask(system, "acme/a")  # no scheduler runs: only the urgent path can have loaded it
    assert list(host.engine.resident()) == [a]
    await ask(system, "acme/a")
    await ask(system, "acme/b")  # the one slot is a's: a goes (recorded first), b comes
    assert list(host.engine.resident()) == [b]
    with anyio.fail_after(30):
        await system.settle()
    facts = [(type(f).__name__, f"{f.policy}@{f.revision}", f.id) for f in await engine_facts(system)]
    loads = [(name, ref) for name, ref, _ in facts]
    assert loads == [("AdapterLoaded", a), ("AdapterEvicted", a), ("AdapterLoaded", b)], facts
    assert all("/urgent/" in fact_id for _, _, fact_id in facts), facts
    assert len({fact_id for _, _, fact_id in facts}) == 3  # each urgent load has its own ids
