"""The artifact store on a local directory: the object for key `a/b/c` is the file `<root>/a/b/c`.

Puts are written under `<root>/.partial/`, fsynced, then hard-linked into place: the link is atomic and
never replaces an existing file, so two racing puts of one key cannot both win. A crash mid-put leaves
at most a temporary file in `.partial/`, which no key can name and `list` never shows.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

import anyio.from_thread
import anyio.to_thread

from mint.artifacts.keys import check_key
from mint.artifacts.pending_file import PendingFile
from mint.artifacts.store import (
    CHUNK_BYTES,
    ArtifactExists,
    ArtifactMissing,
    Content,
    StoredArtifact,
    check_digest,
    open_source,
)

PARTIAL_DIR = ".partial"


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    async def put(self, key: str, source: Content) -> StoredArtifact:
        return await anyio.to_thread.run_sync(self._put, key, source)

    async def get(self, key: str, dest: Path, verify: str | None = None) -> Path:
        return await anyio.to_thread.run_sync(self._get, key, Path(dest), verify)

    async def read(self, key: str, verify: str | None = None) -> bytes:
        return await anyio.to_thread.run_sync(self._read, key, verify)

    async def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _put(self, key: str, source: Content) -> StoredArtifact:
        final = self._path(key)
        with open_source(source) as stream, PendingFile(final, self.root / PARTIAL_DIR) as pending:
            while chunk := stream.read(CHUNK_BYTES):
                anyio.from_thread.check_cancelled()  # a cancelled put stops here and publishes nothing
                pending.write(chunk)
            stored = StoredArtifact(key, pending.sha256, pending.size)
            check_digest(key, stored.sha256)
            try:
                pending.publish(replace=False)
            except FileExistsError:
                if _file_sha256(final) != stored.sha256:
                    raise ArtifactExists(key) from None
        return stored

    def _get(self, key: str, dest: Path, verify: str | None) -> Path:
        with self._open(key) as src, PendingFile(dest, dest.parent) as pending:
            while chunk := src.read(CHUNK_BYTES):
                anyio.from_thread.check_cancelled()
                pending.write(chunk)
            check_digest(key, pending.sha256, verify)
            pending.publish(replace=True)
        return dest

    def _read(self, key: str, verify: str | None) -> bytes:
        with self._open(key) as src:
            data = src.read()
        check_digest(key, hashlib.sha256(data).hexdigest(), verify)
        return data

    def _open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ArtifactMissing(key, f"no such object in {self.root}") from None

    def _list(self, prefix: str) -> list[str]:
        directory = prefix.rpartition("/")[0]
        start = self.root / check_key(directory) if directory else self.root
        keys: list[str] = []
        for here, dirs, files in os.walk(start):
            if Path(here) == self.root and PARTIAL_DIR in dirs:
                dirs.remove(PARTIAL_DIR)
            relative = Path(here).relative_to(self.root).as_posix()
            keys.extend(name if relative == "." else f"{relative}/{name}" for name in files)
        return sorted(k for k in keys if k.startswith(prefix))

    # Last in the class: below it, `list` in an annotation would name this method, not the builtin.
    async def list(self, prefix: str = "") -> list[str]:
        return await anyio.to_thread.run_sync(self._list, prefix)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
