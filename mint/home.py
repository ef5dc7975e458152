"""One data directory for all embedded state: `$MINT_HOME`, default `~/.mint`.

Two runs with different homes never collide, and deleting the folder forgets everything."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, override: str | Path | None = None) -> Home:
        root = override or os.environ.get("MINT_HOME") or Path.home() / ".mint"
        return cls(Path(root).expanduser().resolve())

    @property
    def log(self) -> Path:
        return self.root / "log.db"

    @property
    def projections(self) -> Path:
        return self.root / "projections"

    @property
    def catalog(self) -> Path:
        """The catalog read model that the CLI, the API and the console query."""
        return self.projections / "catalog.db"

    def actor_state(self, actor: str) -> Path:
        return self.root / "actors" / f"{actor}.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def cache(self) -> Path:
        return self.root / "cache"
