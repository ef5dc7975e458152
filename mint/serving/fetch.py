"""Bringing a revision from the artifact store to a directory an engine can load: the disk tier.

The cache is keyed by the artifact's sha256 (an immutable id), never by a URL or a name, so a revision
is downloaded once however it is asked for, and a new revision can never hit a stale entry. Bytes are
checked against the sha256 before they land (the store does it on read); a directory appears whole or
not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from mint.adapters.peft_layout import CONFIG_FILE, WEIGHTS_FILE, read_peft
from mint.artifacts.store import ArtifactStore
from mint.serving.engine import AdapterRef


@dataclass(frozen=True)
class Fetched:
    adapter: AdapterRef
    source: str  # "disk" (already cached) or "store" (downloaded now)


class AdapterFetcher:
    def __init__(self, store: ArtifactStore, cache: Path) -> None:
        self.store = store
        self.cache = cache

    def directory(self, sha256: str) -> Path:
        return self.cache / sha256

    async def fetch(self, ref: str, uri: str, sha256: str, rank: int) -> Fetched:
        directory = self.directory(sha256)
        if (directory / CONFIG_FILE).is_file():
            return Fetched(AdapterRef(ref, directory, sha256, rank), "disk")
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


def _write_config(directory: Path) -> None:
    """vLLM and peft read adapter_config.json; ours travels inside the safetensors metadata."""
    adapter = read_peft(directory)
    (directory / CONFIG_FILE).write_text(json.dumps(adapter.config.peft_json(), indent=2) + "\n")
