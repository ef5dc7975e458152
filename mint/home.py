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
    def tokens(self) -> Path:
        """Bearer tokens (sha256 only) that the HTTP API checks; managed with `mint tokens`."""
        return self.root / "tokens.db"

    @property
    def admin_token(self) -> Path:
        """The operator's first admin token, written once by `mint up` on an empty token store."""
        return self.root / "admin.token"

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
    def bases(self) -> Path:
        """Resident bases by id: `bases/<base_id>/` is a Hugging Face causal-LM directory."""
        return self.root / "bases"

    def base(self, base_id: str) -> Path:
        return self.bases / base_id

    def run_checkpoints(self, run: str) -> Path:
        return self.cache / "runs" / run.replace("/", "__")

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def suites(self) -> Path:
        """Evaluation suites of your own: `suites/<name>.json` (mint/evaluation/suites.py)."""
        return self.root / "suites"

    @property
    def cache(self) -> Path:
        return self.root / "cache"
