"""A run's checkpoints in the artifact store, so any trainer replica, on any machine, resumes a run
whose worker died.

A checkpoint is the directory mint/training/checkpoint.py writes (per policy: adapter tensors and AdamW
moments as safetensors; `state.json`: step, optimizer scalars, failures), uploaded file by file under
`checkpoint_key(run, step, epoch, name)`, then a manifest naming each file's sha256. The manifest goes
last, so a checkpoint whose writer died while uploading it does not exist for a reader; every file is
checked against the manifest as it is fetched. Keys are write-once, and the lease epoch in them keeps
two workers that computed the same step (a stalled one and its successor) apart.

No random state is stored: each step draws from a generator seeded with (run seed, step), so a step
recomputed from a checkpoint repeats itself. Torch-free: it only moves files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import anyio

from mint.artifacts.keys import checkpoint_key, checkpoint_prefix
from mint.artifacts.store import ArtifactStore

MANIFEST = "manifest.json"
_MANIFEST_KEY = re.compile(r"/step-(\d{6})/epoch-(\d+)/" + re.escape(MANIFEST) + "$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,200}$")


class CheckpointError(ValueError):
    """A stored checkpoint that cannot be used (a manifest that says other than it should)."""


@dataclass(frozen=True, order=True)
class StoredCheckpoint:
    step: int
    epoch: int


async def upload(artifacts: ArtifactStore, run: str, epoch: int, step: int, directory: Path) -> None:
    """Store the checkpoint of `step` held in `directory` under the lease epoch `epoch`; a second
    upload of the same (step, epoch), a retry, is a no-op."""
    manifest_key = checkpoint_key(run, step, epoch, MANIFEST)
    if await artifacts.exists(manifest_key):
        return
    files: dict[str, str] = {}

    async def put(path: Path) -> None:
        files[path.name] = (await artifacts.put(checkpoint_key(run, step, epoch, path.name), path)).sha256

    async with anyio.create_task_group() as tg:  # the files side by side: a run of many policies has many
        for path in sorted(p for p in directory.iterdir() if p.is_file()):
            tg.start_soon(put, path)
    manifest = {"run": run, "step": step, "epoch": epoch, "files": files}
    await artifacts.put(manifest_key, json.dumps(manifest, indent=1, sort_keys=True).encode())


async def stored(artifacts: ArtifactStore, run: str) -> list[StoredCheckpoint]:
    """Every complete checkpoint of `run` (its manifest written), oldest first."""
    found = []
    for key in await artifacts.list(checkpoint_prefix(run)):
        match = _MANIFEST_KEY.search(key)
        if match is not None:
            found.append(StoredCheckpoint(int(match[1]), int(match[2])))
    return sorted(found)


def newest(found: list[StoredCheckpoint], at_most: int) -> StoredCheckpoint | None:
    """The checkpoint to resume from: the newest step not beyond `at_most` (the steps whose facts
    count on the log; a checkpoint past them would skip steps nobody sees), of its latest epoch."""
    usable = [c for c in found if c.step <= at_most]
    return max(usable) if usable else None


async def download(artifacts: ArtifactStore, run: str, checkpoint: StoredCheckpoint, dest: Path) -> Path:
    """Fetch `checkpoint` into the empty directory `dest`, each file checked against the manifest."""
    step, epoch = checkpoint.step, checkpoint.epoch
    raw = await artifacts.read(checkpoint_key(run, step, epoch, MANIFEST))
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        if (manifest["run"], manifest["step"], manifest["epoch"]) != (run, step, epoch):
            raise CheckpointError(
                f"manifest of {run} step {step} epoch {epoch} describes "
                f"{manifest['run']} step {manifest['step']} epoch {manifest['epoch']}"
            )
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"manifest of {run} step {step} epoch {epoch}: {exc}") from None
    for name, sha256 in sorted(files.items()):
        if not _FILE_NAME.match(name):  # a name with a path in it must not write outside `dest`
            raise CheckpointError(f"manifest of {run} step {step} epoch {epoch}: bad file name {name!r}")
        await artifacts.get(checkpoint_key(run, step, epoch, name), dest / name, verify=sha256)
    return dest
