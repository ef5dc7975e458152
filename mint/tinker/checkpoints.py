"""Tinker checkpoints: `tinker://<model_id>/<weights|sampler_weights|external_weights>/<name>` paths and
the directories that hold them under `$MINT_HOME/tinker/checkpoints/`.

A `weights` (training) checkpoint holds the adapter and the optimizer state; a `sampler_weights` one
the adapter only. Both are safetensors (the same per-slot files as the trainer's own checkpoints) plus
a small JSON description, written to a staging directory and renamed, so a crash leaves all or none.
An `external_weights` one is only the description here: its files (the adapter in PEFT layout, for
download) are in the artifact store, under the keys it lists.

A checkpoint with `expires_at` in the past is as good as gone (the service deletes it, see
mint/tinker/expiry.py).
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from events.names import REVISION_PATTERN, tenant_of
from mint.tinker.futures import RequestFailed
from mint.tinker.wire import WireError

if TYPE_CHECKING:  # the tensor helpers load with torch, on first use
    import torch

CheckpointKind = Literal["weights", "sampler_weights", "external_weights"]
KINDS: tuple[CheckpointKind, ...] = ("weights", "sampler_weights", "external_weights")
# What the REST listings call each kind.
CHECKPOINT_TYPES = {"weights": "training", "sampler_weights": "sampler", "external_weights": "external"}
SCHEME = "tinker://"
SLOT_FILE = "lora"
GRADIENTS_FILE = "gradients.safetensors"  # an evicted client's gradients accumulated since its last step
_NAME = re.compile(REVISION_PATTERN)  # a named sampler checkpoint becomes a revision of that name
# A training client's id (`sess-…:train:N`) names a directory: never `.`, `..` or a hidden one.
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,127}$")


@dataclass(frozen=True)
class TinkerPath:
    model_id: str
    kind: CheckpointKind
    name: str

    @classmethod
    def parse(cls, path: str, field: str = "path") -> TinkerPath:
        parts = path.removeprefix(SCHEME).split("/") if path.startswith(SCHEME) else []
        if len(parts) != 3 or parts[1] not in KINDS or not _MODEL_ID.match(parts[0]):
            raise WireError(
                field,
                f"{path!r} is not tinker://<model_id>/<weights|sampler_weights|external_weights>/<name>",
            )
        kind = next(k for k in KINDS if k == parts[1])
        return cls(parts[0], kind, check_name(parts[2], field))

    @classmethod
    def of_checkpoint(cls, run_id: str, kind: str, name: str) -> TinkerPath:
        """The path of a REST route's `/training_runs/{run_id}/checkpoints/{kind}/{name}`."""
        return cls.parse(f"{SCHEME}{run_id}/{kind}/{name}", "checkpoint_id")

    def __str__(self) -> str:
        return f"{SCHEME}{self.model_id}/{self.kind}/{self.name}"

    @property
    def checkpoint_id(self) -> str:
        return f"{self.kind}/{self.name}"


def check_name(name: str, field: str = "path") -> str:
    if not _NAME.match(name):
        raise WireError(field, f"{name!r}: a checkpoint name is letters, digits, '.', '_' or '-' (up to 64)")
    return name


class CheckpointInfo(msgspec.Struct, frozen=True):
    model_id: str
    base_id: str
    policy: str
    rank: int
    alpha: float
    targets: list[str]
    with_optimizer: bool
    saved_at: float
    optimizer: dict[str, Any] = {}
    user_metadata: dict[str, str] | None = None  # the training client's, for the run listings
    expires_at: float | None = None  # unix time; None: kept until deleted
    files: dict[str, str] = {}  # an external checkpoint's files: name -> artifact key

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


class CheckpointDirectory:
    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, path: TinkerPath) -> Path:
        return self.root / path.model_id.replace(":", "-") / path.kind / path.name

    def write(
        self,
        path: TinkerPath,
        tensors: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer | None,
        info: CheckpointInfo,
        gradients: dict[str, torch.Tensor] | None = None,
    ) -> int:
        """Write (or overwrite) a checkpoint; returns its size in bytes."""
        from safetensors.torch import save_file

        from mint.training.checkpoint import save_slot

        final = self.directory(path)
        staging = final.with_name(f".{final.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        saved = save_slot(staging, SLOT_FILE, tensors, optimizer)
        if gradients:
            save_file(gradients, str(staging / GRADIENTS_FILE))
        described = msgspec.structs.replace(info, optimizer=saved, with_optimizer=optimizer is not None)
        (staging / "info.json").write_bytes(msgspec.json.encode(described))
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        return sum(f.stat().st_size for f in final.iterdir())

    def describe(self, path: TinkerPath, info: CheckpointInfo) -> None:
        """Write (or replace) a checkpoint's description alone, in one rename: an external
        checkpoint's, or a new expiry."""
        directory = self.directory(path)
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / ".info.json.partial"
        staging.write_bytes(msgspec.json.encode(info))
        staging.replace(directory / "info.json")

    def delete(self, path: TinkerPath) -> None:
        """Remove a checkpoint: its description goes first, so a crash midway leaves no listed
        checkpoint with missing files."""
        directory = self.directory(path)
        (directory / "info.json").unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)

    def forget_unnamed(self, model_id: str) -> None:
        """Delete a model's unnamed checkpoints: its sampler snapshots and its evicted state (named
        checkpoints stay)."""
        folder = self.root / model_id.replace(":", "-")
        for directory in [*(folder / "sampler_weights").glob(".*"), *(folder / "weights").glob(".*")]:
            shutil.rmtree(directory, ignore_errors=True)

    def owned(self, raw: str, tenant: str, field: str = "path") -> tuple[TinkerPath, CheckpointInfo]:
        """The checkpoint `raw` names, if `tenant` owns it; another tenant's is as good as missing."""
        return self.owned_path(TinkerPath.parse(raw, field), tenant, field)

    def owned_path(
        self, path: TinkerPath, tenant: str, field: str = "path"
    ) -> tuple[TinkerPath, CheckpointInfo]:
        try:
            info = self.info(path)
        except RequestFailed:
            raise WireError(field, f"no checkpoint {path}", 404) from None
        if tenant_of(info.policy) != tenant or info.expired(time.time()):
            raise WireError(field, f"no checkpoint {path}", 404)
        return path, info

    def info(self, path: TinkerPath) -> CheckpointInfo:
        file = self.directory(path) / "info.json"
        if not file.is_file():
            raise RequestFailed(f"path: no checkpoint {path}")
        return msgspec.json.decode(file.read_bytes(), type=CheckpointInfo)

    def tensors(self, path: TinkerPath) -> dict[str, torch.Tensor]:
        from mint.training.checkpoint import load_slot_tensors

        return load_slot_tensors(self.directory(path), SLOT_FILE)

    def gradients(self, path: TinkerPath) -> dict[str, torch.Tensor]:
        """The gradients `write` kept beside the checkpoint (none if it kept none)."""
        from safetensors.torch import load_file

        file = self.directory(path) / GRADIENTS_FILE
        return load_file(str(file)) if file.is_file() else {}

    def restore_optimizer(self, path: TinkerPath, optimizer: torch.optim.Optimizer) -> None:
        from mint.training.checkpoint import restore_optimizer

        info = self.info(path)
        if not info.with_optimizer:
            raise RequestFailed(f"path: {path} holds no optimizer state (a sampler checkpoint)")
        restore_optimizer(optimizer, self.directory(path), SLOT_FILE, info.optimizer)

    def listing(self, model_id: str) -> list[tuple[TinkerPath, CheckpointInfo, int]]:
        """Every live checkpoint of a model: (path, info, bytes), oldest first."""
        return self._live(self._listing(self.root / model_id.replace(":", "-")))

    def expired(self, now: float) -> list[tuple[TinkerPath, CheckpointInfo]]:
        """Every checkpoint whose time to live has run out by `now`."""
        folders = sorted(self.root.iterdir()) if self.root.is_dir() else []
        return [(c[0], c[1]) for folder in folders for c in self._listing(folder) if c[1].expired(now)]

    @staticmethod
    def _live(
        found: list[tuple[TinkerPath, CheckpointInfo, int]],
    ) -> list[tuple[TinkerPath, CheckpointInfo, int]]:
        now = time.time()
        return [c for c in found if not c[1].expired(now)]

    def runs(self) -> dict[str, CheckpointInfo]:
        """Every model that saved a checkpoint, with its newest checkpoint's description."""
        found = {}
        for folder in sorted(self.root.iterdir()) if self.root.is_dir() else ():
            saved = self._live(self._listing(folder))
            if saved:
                found[saved[-1][0].model_id] = saved[-1][1]
        return found

    def _listing(self, folder: Path) -> list[tuple[TinkerPath, CheckpointInfo, int]]:
        found = []
        for kind in KINDS:
            # Names starting with a dot (staging, unnamed snapshots) are not listed.
            for directory in (folder / kind).glob("[!.]*"):
                file = directory / "info.json"
                if file.is_file():
                    info = msgspec.json.decode(file.read_bytes(), type=CheckpointInfo)
                    size = sum(f.stat().st_size for f in directory.iterdir())
                    found.append((TinkerPath(info.model_id, kind, directory.name), info, size))
        return sorted(found, key=lambda item: item[1].saved_at)
