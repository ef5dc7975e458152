"""The torch engine against the engine contract, on the tiny base with real adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from mint.serving.torch_engine import TorchEngine
from tests.engine_contract import EngineContract


class TestTorchEngine(EngineContract):
    @pytest.fixture
    async def engine(self, base_dir: Path) -> AsyncIterator[TorchEngine]:
        engine = TorchEngine(base_dir, slots=4)
        async with anyio.create_task_group() as tg:
            await tg.start(engine.serve)
            yield engine
            tg.cancel_scope.cancel()
