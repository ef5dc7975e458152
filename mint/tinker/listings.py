"""The REST reads: the server's capabilities, and a tenant's training runs (one per training client)
and checkpoints, in the JSON the SDKs' `RestClient` reads."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from events.names import tenant_of
from mint.tinker.auth import Grant
from mint.tinker.bases import Bases
from mint.tinker.checkpoints import CheckpointDirectory, CheckpointInfo, TinkerPath
from mint.tinker.models import TrainingClients
from mint.tinker.wire import WireError


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def _cursor(offset: int, limit: int, total: int) -> dict[str, int]:
    return {"offset": offset, "limit": limit, "total_count": total}


def _checkpoint_json(path: TinkerPath, info: CheckpointInfo, size: int) -> dict[str, Any]:
    return {
        "checkpoint_id": path.checkpoint_id,
        "checkpoint_type": "training" if path.kind == "weights" else "sampler",
        "time": _iso(info.saved_at),
        "tinker_path": str(path),
        "size_bytes": size,
        "public": False,
    }


class Listings:
    def __init__(self, bases: Bases, checkpoints: CheckpointDirectory, clients: TrainingClients) -> None:
        self.bases = bases
        self.checkpoints = checkpoints
        self.clients = clients

    def capabilities(self) -> dict[str, Any]:
        return {
            "supported_models": [
                {
                    "model_name": b,
                    "max_context_length": self.bases.context_length(b),
                    "trainable": True,
                    "sampleable": True,
                }
                for b in self.bases.ids()
            ]
        }

    def _runs(self, owner: Grant) -> dict[str, tuple[str, int]]:
        """Training runs of the caller's tenant, as (base, rank): live clients, and clients of earlier
        server lives that left checkpoints."""
        runs = {
            model_id: (info.base_id, info.rank)
            for model_id, info in self.checkpoints.runs().items()
            if tenant_of(info.policy) == owner.tenant
        }
        for model in self.clients.of_tenant(owner.tenant):
            runs[model.model_id] = (model.base.base_id, model.rank)
        return runs

    def _known(self, owner: Grant, run_id: str) -> tuple[str, int]:
        runs = self._runs(owner)
        if run_id not in runs:
            raise WireError("training_run_id", f"no training run {run_id!r}", 404)
        return runs[run_id]

    def training_run(self, owner: Grant, run_id: str) -> dict[str, Any]:
        return self._run_json(owner, run_id, *self._known(owner, run_id))

    def _run_json(self, owner: Grant, run_id: str, base_id: str, rank: int) -> dict[str, Any]:
        checkpoints = self.checkpoints.listing(run_id)
        training = [c for c in checkpoints if c[0].kind == "weights"]
        sampler = [c for c in checkpoints if c[0].kind == "sampler_weights"]
        saved_at = max([c[1].saved_at for c in checkpoints], default=time.time())
        return {
            "training_run_id": run_id,
            "base_model": base_id,
            "model_owner": owner.tenant,
            "is_lora": True,
            "corrupted": False,
            "lora_rank": rank,
            "last_request_time": _iso(saved_at),
            "last_checkpoint": _checkpoint_json(*training[-1]) if training else None,
            "last_sampler_checkpoint": _checkpoint_json(*sampler[-1]) if sampler else None,
            "user_metadata": None,
        }

    def training_runs(self, owner: Grant, limit: int, offset: int) -> dict[str, Any]:
        runs = self._runs(owner)
        page = list(runs.items())[offset : offset + limit]
        return {
            "training_runs": [self._run_json(owner, run_id, *run) for run_id, run in page],
            "cursor": _cursor(offset, limit, len(runs)),
        }

    def checkpoints_of(self, owner: Grant, run_id: str | None, limit: int, offset: int) -> dict[str, Any]:
        """The checkpoints of run `run_id`, or of every run of the caller's tenant."""
        if run_id is not None:
            self._known(owner, run_id)
        run_ids = [run_id] if run_id is not None else list(self._runs(owner))
        found = [c for r in run_ids for c in self.checkpoints.listing(r)]
        page = found[offset : offset + limit]
        return {
            "checkpoints": [_checkpoint_json(*c) for c in page],
            "cursor": _cursor(offset, limit, len(found)),
        }
