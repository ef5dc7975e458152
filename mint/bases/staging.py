"""Build a directory beside its destination and move it into place in one rename, so a reader never sees
a half-written base, and a failed or interrupted build leaves nothing at the destination."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DestinationNotEmpty(FileExistsError):
    def __init__(self, directory: Path) -> None:
        super().__init__(f"{directory}: already exists and is not empty; choose a new directory or remove it")
        self.directory = directory


@contextmanager
def staged_directory(destination: Path) -> Iterator[Path]:
    """Yield an empty directory on the destination's file system; rename it to `destination` when the
    block succeeds, delete it when the block raises. The destination must be absent or empty."""
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise DestinationNotEmpty(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it owner-only
        os.rename(staging, destination)  # replaces an empty destination directory atomically
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
