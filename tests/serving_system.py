"""A running system with a torch engine on the tiny base, and revisions published and loaded on it:
what the OpenAI API tests (tests/test_serving_api.py, tests/test_bounded_inference.py) serve from."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from actors.runtime import Backoff
from actors.system import System, running
from events.catalog import Promote, RegisterPolicy
from events.serving import WavePlanned
from events.sqlite_log import SqliteLog
from events.training import RevisionExported
from mint.adapters.peft_layout import encode_peft
from mint.adapters.synthetic import random_adapter
from mint.artifacts.keys import adapter_key
from mint.bases.info import read_base_info
from mint.bases.tiny import create_tiny_base
from mint.home import Home
from mint.serving.torch_engine import TorchEngine
from tests.records import evaluated


@asynccontextmanager
async def serving_system(root: Path, load_deadline_s: float = 2.0, slots: int = 2) -> AsyncIterator[System]:
    """The actors and engine host `e1` over a torch engine of `slots` slots on the tiny base in `root`."""
    home = Home(root)
    create_tiny_base(home.base("tiny"), seed=0)
    engine = TorchEngine(home.base("tiny"), slots=slots)
    async with (
        SqliteLog(home.log, partitions=2) as log,
        running(home, log, backoff=Backoff(0.001, 0.01), engines={"e1": engine}) as system,
    ):
        system.engines[0].load_deadline_s = load_deadline_s
        yield system


def torch_engine(system: System) -> TorchEngine:
    engine = system.engines[0].engine
    assert isinstance(engine, TorchEngine)
    return engine


async def publish(system: System, policy: str, revision: str, seed: int) -> str:
    """Export a revision the way the trainer does: bytes in the store, a RevisionExported fact."""
    info = read_base_info(system.home.base("tiny"))
    adapter = random_adapter(
        info, r=4, alpha=8.0, targets=("q_proj", "v_proj", "up_proj"), seed=seed, b_std=0.5
    )
    data = encode_peft(adapter)
    stored = await system.artifacts.put(adapter_key(policy, revision, hashlib.sha256(data).hexdigest()), data)
    await system.log.append(
        [
            RevisionExported.create(
                policy=policy,
                revision=revision,
                base_id="tiny",
                uri=stored.key,
                sha256=stored.sha256,
                bytes=stored.size,
                rank=4,
                alpha=8.0,
                targets=["q_proj", "v_proj", "up_proj"],
            ),
            evaluated(policy, revision),
        ]
    )
    return f"{policy}@{revision}"


async def ready(system: System) -> tuple[str, str]:
    """acme/a with revisions r1 (served) and r2, both loaded on e1."""
    await system.log.append([RegisterPolicy.create(policy="acme/a", base_id="tiny")])
    r1 = await publish(system, "acme/a", "r1", seed=1)
    r2 = await publish(system, "acme/a", "r2", seed=2)
    await system.log.append([Promote.create(policy="acme/a", revision="r1")])
    await system.log.append([WavePlanned.create(engine="e1", wave=1, load=[r1, r2], keep=[], evict=[])])
    with anyio.fail_after(60):
        await system.until(lambda: set(system.engines[0].engine.resident()) == {r1, r2})
        await system.settle()
    return r1, r2


async def export_unloadable(system: System, policy: str, revision: str) -> str:
    """A revision whose artifact is missing from the store: every load of it fails, so a request
    pinned to it waits (in flight) until the engine host's load deadline."""
    missing = f"adapters/{policy}/{revision}/" + "0" * 64 + "/adapter_model.safetensors"
    await system.log.append(
        [
            RevisionExported.create(
                policy=policy,
                revision=revision,
                base_id="tiny",
                uri=missing,
                sha256="0" * 64,
                bytes=1,
                rank=4,
                alpha=8.0,
                targets=["q_proj"],
            )
        ]
    )
    await system.settle()
    return missing
