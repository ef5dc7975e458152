"""One data directory for all embedded state: `$MINT_HOME`, default `~/.mint`.

Two runs with different homes never collide, and deleting the folder forgets everything.

A home holds every tenant's data, so it is its owner's alone: opening one (constructing a `Home`)
sets the process umask to keep group and other out (directories 0700, files 0600, SQLite's -wal and
-shm files included, whoever creates them), and a home made before MinT kept homes private is
tightened once, the root first."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

# The permission bits of group and other: a home and everything in it has none of them.
NOT_OWNER = 0o077


@dataclass(frozen=True)
class Home:
    root: Path

    def __post_init__(self) -> None:
        # A stricter umask the user already has stays; a looser one is narrowed. The umask is the one
        # place that covers every file, including those SQLite creates beside its databases.
        os.umask(os.umask(NOT_OWNER) | NOT_OWNER)
        self._tighten()

    def _tighten(self) -> None:
        """Take group and other access from a home that has it: the root (which alone shuts every
        other user out), then each path MinT keeps in it. Nothing else under the root is touched, in
        case MINT_HOME names a directory that holds other things too."""
        try:
            mode = stat.S_IMODE(self.root.stat().st_mode)
        except FileNotFoundError:
            return
        if not mode & NOT_OWNER:
            return
        self.root.chmod(mode & ~NOT_OWNER)
        for kept in self._kept():
            _make_private(kept)
            if kept.is_dir():
                for here, dirs, files in os.walk(kept):
                    for name in (*dirs, *files):
                        _make_private(Path(here) / name)

    def _kept(self) -> list[Path]:
        """Every path MinT keeps in this home that exists now (SQLite's companions of a database too)."""
        named = [self.log, self.tokens, self.admin_token]
        files = [p for n in named for p in self.root.glob(f"{n.name}*") if p.is_file()]
        directories = [
            self.projections,
            self.actors,
            self.bases,
            self.artifacts,
            self.suites,
            self.cache,
            self.tinker,
        ]
        return files + [d for d in directories if d.is_dir()]

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

    @property
    def actors(self) -> Path:
        """Each actor's state database and its single-writer lock."""
        return self.root / "actors"

    def actor_state(self, actor: str) -> Path:
        return self.actors / f"{actor}.db"

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

    @property
    def tinker(self) -> Path:
        """The Tinker-compatible service's signing key and checkpoints (mint/tinker/)."""
        return self.root / "tinker"


def _make_private(path: Path) -> None:
    if path.is_symlink():  # a link's own mode means nothing; what it points at is not ours to change
        return
    mode = stat.S_IMODE(path.lstat().st_mode)
    if mode & NOT_OWNER:
        path.chmod(mode & ~NOT_OWNER)
