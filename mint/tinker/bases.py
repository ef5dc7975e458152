"""The bases a Tinker client may name: those in the home (`$MINT_HOME/bases/<id>/config.json`), with
what their config says, each loaded once as a ResidentBase when a request first needs it.

Torch work on a base runs in a worker thread under the base's lock (`on_base`), one call at a time.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from mint.home import Home
from mint.tinker.futures import RequestFailed
from mint.tinker.wire import WireError

if TYPE_CHECKING:  # torch loads with the first base a request needs, not with `mint up`
    from mint.tinker.resident import ResidentBase

T = TypeVar("T")


class Bases:
    def __init__(self, home: Home) -> None:
        self.home = home
        self._resident: dict[str, ResidentBase] = {}
        self._loading = anyio.Lock()

    def ids(self) -> list[str]:
        if not self.home.bases.is_dir():
            return []
        return sorted(d.name for d in self.home.bases.iterdir() if (d / "config.json").is_file())

    def config(self, base_id: str) -> dict[str, Any]:
        config: dict[str, Any] = json.loads((self.home.base(base_id) / "config.json").read_text())
        return config

    def context_length(self, base_id: str) -> int:
        return int(self.config(base_id).get("max_position_embeddings", 0))

    def vocab_size(self, base_id: str) -> int:
        return int(self.config(base_id).get("vocab_size", 0))

    def check(self, base_id: str, field_name: str = "base_model") -> None:
        if base_id not in self.ids():
            raise WireError(field_name, f"{base_id!r} is not a base here (bases: {', '.join(self.ids())})")

    async def resident(self, base_id: str) -> ResidentBase:
        if importlib.util.find_spec("torch") is None:
            raise RequestFailed("this MinT has no training installed: pip install 'mint-lora[train]'")
        from mint.tinker.resident import ResidentBase

        async with self._loading:
            if base_id not in self._resident:
                directory = self.home.base(base_id)
                self._resident[base_id] = await anyio.to_thread.run_sync(
                    ResidentBase.load, base_id, directory
                )
            return self._resident[base_id]


async def on_base(base: ResidentBase, work: Callable[[], T]) -> T:
    """Run `work` (torch) in a worker thread, alone on its base."""
    async with base.lock:
        return await anyio.to_thread.run_sync(work)
