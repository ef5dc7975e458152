"""The torch engine against the engine contract, on the tiny base with real adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from mint.adapters.peft_layout import write_peft
from mint.adapters.synthetic import random_adapter
from mint.bases.info import read_base_info
from mint.bases.tiny import create_tiny_base
from mint.serving.engine import AdapterRef
from mint.serving.torch_engine import TorchEngine
from tests.engine_contract import EngineContract

TARGETS = ("q_proj", "v_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("engine") / "tiny"
    create_tiny_base(directory, seed=0)
    return directory


def _adapter(base_dir: Path, root: Path, name: str, seed: int) -> AdapterRef:
    adapter = random_adapter(read_base_info(base_dir), r=4, alpha=8.0, targets=TARGETS, seed=seed, b_std=0.5)
    directory = root / name.replace("/", "_").replace("@", "_")
    sha = write_peft(directory, adapter)
    return AdapterRef(name, directory, sha, 4)


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def adapters(base_dir: Path, adapter_root: Path) -> list[AdapterRef]:
    return [
        _adapter(base_dir, adapter_root, "acme/a@r1", 1),
        _adapter(base_dir, adapter_root, "acme/b@r1", 2),
    ]


@pytest.fixture(scope="module")
def spare(base_dir: Path, adapter_root: Path) -> list[AdapterRef]:
    return [_adapter(base_dir, adapter_root, f"acme/s{i}@r1", 10 + i) for i in range(3)]


class TestTorchEngine(EngineContract):
    @pytest.fixture
    async def engine(self, base_dir: Path) -> AsyncIterator[TorchEngine]:
        engine = TorchEngine(base_dir, slots=4)
        async with anyio.create_task_group() as tg:
            await tg.start(engine.serve)
            yield engine
            tg.cancel_scope.cancel()
