"""The bases a Tinker client may name: those in the home (`$MINT_HOME/bases/<id>/config.json`, where
the id may be `ORG/NAME` itself), by their id or an alias (mint/bases/aliases.py), with what their
config says, each loaded once as a ResidentBase when a request first needs it.

Torch work on a base runs in a worker thread under the base's lock (`on_base`), one call at a time.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from mint.bases.aliases import AliasError, read_aliases
from mint.home import Home
from mint.tinker.futures import RequestFailed
from mint.tinker.wire import WireError

if TYPE_CHECKING:  # torch loads with the first base a request needs, not with `mint up`
    from mint.tinker.resident import ResidentBase

T = TypeVar("T")
logger = logging.getLogger(__name__)


class Bases:
    def __init__(self, home: Home) -> None:
        self.home = home
        self._resident: dict[str, ResidentBase] = {}
        self._loading = anyio.Lock()

    def ids(self) -> list[str]:
        """Every base directory's id: `<id>` or, one level down, `<ORG>/<NAME>`."""
        root = self.home.bases
        if not root.is_dir():
            return []
        found = [*root.glob("*/config.json"), *root.glob("*/*/config.json")]
        return sorted(str(f.parent.relative_to(root)) for f in found if not f.parent.name.startswith("."))

    def aliases(self) -> dict[str, str]:
        """Alias -> base id. A base whose aliases file is unreadable answers to its id only."""
        found: dict[str, str] = {}
        for base_id in self.ids():
            try:
                found |= {alias: base_id for alias in read_aliases(self.home.base(base_id))}
            except AliasError as exc:
                logger.warning("base %s keeps its id only: %s", base_id, exc)
        return found

    def resolve(self, name: str, field_name: str = "base_model") -> str:
        """The base id `name` (an id or an alias) names, or a 400 listing every name there is."""
        ids, aliases = self.ids(), self.aliases()
        if name in ids:
            return name
        if name in aliases:
            return aliases[name]
        listed = ", ".join(ids) + (f"; aliases: {', '.join(sorted(aliases))}" if aliases else "")
        raise WireError(field_name, f"{name!r} is not a base here (bases: {listed})")

    def config(self, base_id: str) -> dict[str, Any]:
        config: dict[str, Any] = json.loads((self.home.base(base_id) / "config.json").read_text())
        return config

    def context_length(self, base_id: str) -> int:
        return int(self.config(base_id).get("max_position_embeddings", 0))

    def vocab_size(self, base_id: str) -> int:
        return int(self.config(base_id).get("vocab_size", 0))

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
