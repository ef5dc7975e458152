"""The artifact store port: what every backend promises, and the errors it speaks in.

- Keys are write-once: a put under an existing key with other bytes is refused (ArtifactExists); with
  the same bytes it is a no-op, so a retried export is harmless.
- A put is all or nothing: until it returns, no reader sees the key; a put that fails or is cancelled
  part-way leaves nothing visible.
- Reads are checked: when the key embeds a sha256 (see keys.py) or the caller passes `verify`, bytes
  that do not hash to it raise ArtifactCorrupt, and `get` leaves no file at its destination.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from mint.artifacts.keys import embedded_sha256

# A put reads its source in chunks of this size, so a large artifact never sits in memory whole.
CHUNK_BYTES = 1 << 20

Content = bytes | Path | BinaryIO


class ArtifactError(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"artifact {key!r}: {problem}")
        self.key = key
        self.problem = problem


class ArtifactMissing(ArtifactError):
    pass


class ArtifactCorrupt(ArtifactError):
    pass


class ArtifactExists(ArtifactError):
    def __init__(self, key: str) -> None:
        super().__init__(key, "already exists with different content (keys are write-once)")


@dataclass(frozen=True)
class StoredArtifact:
    key: str
    sha256: str
    size: int


class ArtifactStore(Protocol):
    async def put(self, key: str, source: Content) -> StoredArtifact: ...

    async def get(self, key: str, dest: Path, verify: str | None = None) -> Path:
        """Download to the file `dest` (replacing it), checked; returns `dest`."""
        ...

    async def read(self, key: str, verify: str | None = None) -> bytes: ...

    async def exists(self, key: str) -> bool: ...

    # Last in the class: below it, `list` in an annotation would name this method, not the builtin.
    async def list(self, prefix: str = "") -> list[str]:
        """Keys that start with `prefix` (a plain string prefix), sorted."""
        ...


@contextmanager
def open_source(source: Content) -> Iterator[BinaryIO]:
    """A readable stream over any source; a caller's stream is left open for the caller to close."""
    if isinstance(source, bytes):
        yield io.BytesIO(source)
    elif isinstance(source, Path):
        with source.open("rb") as f:
            yield f
    else:
        yield source


def check_digest(key: str, actual: str, verify: str | None = None) -> None:
    """Raise ArtifactCorrupt unless `actual` is the sha256 the key embeds and the one asked for."""
    for expected, why in (
        (embedded_sha256(key), "the sha256 the key embeds"),
        (verify, "the sha256 to verify"),
    ):
        if expected is not None and actual != expected:
            raise ArtifactCorrupt(key, f"content sha256 {actual} does not match {expected} ({why})")
