"""A file written under a temporary name, hashed as it is written, and published under its final name
in one atomic step (after fsync), or removed. Readers see the whole file or nothing."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from types import TracebackType


class PendingFile:
    def __init__(self, final: Path, temp_dir: Path) -> None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        # An ordinary new file, so the process umask decides its mode (a MinT home's keeps it owner-only):
        # mkstemp's fixed 0600, or a chmod after it, would both ignore the umask.
        self.final = final
        self._temp = temp_dir / f".{final.name}.{secrets.token_hex(8)}.partial"
        fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self._published = False

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._published:
            self._file.close()
            self._temp.unlink(missing_ok=True)

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def publish(self, *, replace: bool) -> None:
        """Make the file visible under its final name. With `replace=False` an existing final file is
        left alone and FileExistsError raised (a hard link never overwrites, unlike a rename)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.final.parent.mkdir(parents=True, exist_ok=True)
        if replace:
            os.replace(self._temp, self.final)
        else:
            os.link(self._temp, self.final)
            self._temp.unlink()
        self._published = True
        _fsync_directory(self.final.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the new directory entry durable, not just the file's bytes."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
