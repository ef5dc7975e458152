"""Build a directory beside its destination and move it into place in one rename, so a reader never sees
a half-written base, and a failed or interrupted build leaves nothing at the destination."""

from __future__ import annotations

import os
import secrets
import shutil
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
    # An ordinary new directory, so the process umask decides its mode (mkdtemp's is always 0700).
    staging = destination.parent / f".{destination.name}.partial-{secrets.token_hex(8)}"
    staging.mkdir()
    try:
        yield staging
        os.rename(staging, destination)  # replaces an empty destination directory atomically
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
