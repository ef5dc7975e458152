"""Bringing a revision from the artifact store to a directory an engine can load: the disk tier.

The cache is keyed by the artifact's sha256 (an immutable id), never by a URL or a name, so a revision
is downloaded once however it is asked for, and a new revision can never hit a stale entry. Bytes are
checked against the sha256 before they land (the store does it on read); a directory appears whole or
not at all.

A cached copy is checked again each time it is handed out, since a disk can rot or a hand can edit it
after it landed: a copy whose weights no longer hash to the sha256 (or whose config no longer matches
them) is dropped and fetched from the store once more. Only a store copy that fails its check is an
error for the caller, so a bad cache entry never becomes a load failure that repeats every wave.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from mint.adapters.adapter import AdapterError
from mint.adapters.peft_layout import CONFIG_FILE, WEIGHTS_FILE, read_peft
from mint.artifacts.store import CHUNK_BYTES, ArtifactStore
from mint.serving.engine import AdapterRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fetched:
    adapter: AdapterRef
    source: str  # "disk" (already cached) or "store" (downloaded now)


class AdapterFetcher:
    def __init__(self, store: ArtifactStore, cache: Path) -> None:
        self.store = store
        self.cache = cache
        # Checking a cached copy and dropping a bad one happen under this lock, so a fetch never
        # drops a good copy that another fetch has just put in place of the bad one.
        self._checking = anyio.Lock()

    def directory(self, sha256: str) -> Path:
        return self.cache / sha256

    async def fetch(self, ref: str, uri: str, sha256: str, rank: int) -> Fetched:
        directory = self.directory(sha256)
        async with self._checking:
            if (directory / CONFIG_FILE).is_file():
                problem = await anyio.to_thread.run_sync(_cached_copy_problem, directory, sha256)
                if problem is None:
                    return Fetched(AdapterRef(ref, directory, sha256, rank), "disk")
                log.warning(
                    "%s: dropping the cached copy %s (%s); fetching it again", ref, directory, problem
                )
                await anyio.to_thread.run_sync(_drop, directory)
        self.cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=self.cache))
        try:
            await self.store.get(uri, staging / WEIGHTS_FILE, verify=sha256)
            await anyio.to_thread.run_sync(_write_config, staging)
            try:
                os.rename(staging, directory)
            except OSError:  # another fetch of the same sha256 finished first: theirs is identical
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return Fetched(AdapterRef(ref, directory, sha256, rank), "store")


def _config_text(directory: Path) -> str:
    """vLLM and peft read adapter_config.json; ours travels inside the safetensors metadata."""
    adapter = read_peft(directory)
    return json.dumps(adapter.config.peft_json(), indent=2) + "\n"


def _write_config(directory: Path) -> None:
    (directory / CONFIG_FILE).write_text(_config_text(directory))


def _cached_copy_problem(directory: Path, sha256: str) -> str | None:
    """Why the cached copy in `directory` is not the one the store shipped under `sha256`, or None.
    The weights are hashed as the store hashed them; the config must be the one they embed."""
    digest = hashlib.sha256()
    try:
        with (directory / WEIGHTS_FILE).open("rb") as weights:
            while chunk := weights.read(CHUNK_BYTES):
                digest.update(chunk)
        config = (directory / CONFIG_FILE).read_text()
        if digest.hexdigest() != sha256:
            return f"content sha256 {digest.hexdigest()} does not match {sha256}"
        if config != _config_text(directory):
            return f"{CONFIG_FILE} does not match the config its weights embed"
    except (OSError, UnicodeDecodeError, AdapterError) as exc:
        return f"unreadable: {exc}"
    return None


def _drop(directory: Path) -> None:
    """Move the entry aside in one step, then delete it: a reader never sees half a directory."""
    doomed = Path(tempfile.mkdtemp(prefix=f".drop-{directory.name[:12]}-", dir=directory.parent))
    os.rename(directory, doomed / directory.name)
    shutil.rmtree(doomed, ignore_errors=True)
