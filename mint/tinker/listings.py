"""The REST reads: the server's capabilities (its bases, each under its id and its aliases), and a
tenant's training runs (one per training client), checkpoints and sessions, in the JSON the SDKs'
`RestClient` reads."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, NamedTuple

from events.names import tenant_of
from mint.tinker.auth import Grant
from mint.tinker.bases import Bases
from mint.tinker.checkpoints import CHECKPOINT_TYPES, CheckpointDirectory, CheckpointInfo, TinkerPath
from mint.tinker.models import TrainingClients
from mint.tinker.samplers import Samplers
from mint.tinker.sessions import Sessions
from mint.tinker.wire import WireError


class Run(NamedTuple):
    base_id: str
    rank: int
    user_metadata: dict[str, str] | None


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def _cursor(offset: int, limit: int, total: int) -> dict[str, int]:
    return {"offset": offset, "limit": limit, "total_count": total}


def _checkpoint_json(path: TinkerPath, info: CheckpointInfo, size: int) -> dict[str, Any]:
    return {
        "checkpoint_id": path.checkpoint_id,
        "checkpoint_type": CHECKPOINT_TYPES[path.kind],
        "time": _iso(info.saved_at),
        "tinker_path": str(path),
        "size_bytes": size,
        "public": False,
        "expires_at": None if info.expires_at is None else _iso(info.expires_at),
    }


class Listings:
    def __init__(
        self,
        bases: Bases,
        checkpoints: CheckpointDirectory,
        clients: TrainingClients,
        sessions: Sessions,
        samplers: Samplers,
    ) -> None:
        self.bases = bases
        self.checkpoints = checkpoints
        self.clients = clients
        self.sessions = sessions
        self.samplers = samplers

    def capabilities(self) -> dict[str, Any]:
        """Every name a client may pass as `base_model`: each base's id, then its aliases (each
        naming the base it stands for in `base_id`)."""
        aliases = self.bases.aliases()
        names = [(b, b) for b in self.bases.ids()] + sorted(aliases.items())
        return {
            "supported_models": [
                {
                    "model_name": name,
                    "base_id": base_id,
                    "aliases": sorted(a for a, b in aliases.items() if b == base_id)
                    if name == base_id
                    else [],
                    "max_context_length": self.bases.context_length(base_id),
                    "trainable": True,
                    "sampleable": True,
                }
                for name, base_id in names
            ]
        }

    def _runs(self, owner: Grant) -> dict[str, Run]:
        """Training runs of the caller's tenant: live clients, and clients of earlier server lives
        that left checkpoints."""
        runs = {
            model_id: Run(info.base_id, info.rank, info.user_metadata)
            for model_id, info in self.checkpoints.runs().items()
            if tenant_of(info.policy) == owner.tenant
        }
        for model in self.clients.of_tenant(owner.tenant):
            runs[model.model_id] = Run(model.base.base_id, model.rank, model.user_metadata)
        return runs

    def _known(self, owner: Grant, run_id: str) -> Run:
        runs = self._runs(owner)
        if run_id not in runs:
            raise WireError("training_run_id", f"no training run {run_id!r}", 404)
        return runs[run_id]

    def training_run(self, owner: Grant, run_id: str) -> dict[str, Any]:
        return self._run_json(owner, run_id, self._known(owner, run_id))

    def _run_json(self, owner: Grant, run_id: str, run: Run) -> dict[str, Any]:
        checkpoints = self.checkpoints.listing(run_id)
        training = [c for c in checkpoints if c[0].kind == "weights"]
        sampler = [c for c in checkpoints if c[0].kind == "sampler_weights"]
        saved_at = max([c[1].saved_at for c in checkpoints], default=time.time())
        return {
            "training_run_id": run_id,
            "base_model": run.base_id,
            "model_owner": owner.tenant,
            "is_lora": True,
            "corrupted": False,
            "lora_rank": run.rank,
            "last_request_time": _iso(saved_at),
            "last_checkpoint": _checkpoint_json(*training[-1]) if training else None,
            "last_sampler_checkpoint": _checkpoint_json(*sampler[-1]) if sampler else None,
            "user_metadata": run.user_metadata,
        }

    def training_runs(self, owner: Grant, limit: int, offset: int) -> dict[str, Any]:
        runs = self._runs(owner)
        page = list(runs.items())[offset : offset + limit]
        return {
            "training_runs": [self._run_json(owner, run_id, run) for run_id, run in page],
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

    def sessions_of(self, owner: Grant, limit: int, offset: int) -> dict[str, Any]:
        """The caller's open sessions' ids, oldest first."""
        ids = [s.session_id for s in self.sessions.of_tenant(owner.tenant)]
        return {"sessions": ids[offset : offset + limit]}

    def session(self, owner: Grant, session_id: str) -> dict[str, Any]:
        session = self.sessions.get(session_id, owner)
        return {
            "training_run_ids": [
                m.model_id for m in self.clients.of_tenant(owner.tenant) if m.session_id == session_id
            ],
            "sampler_ids": self.samplers.of_session(session_id),
            "user_metadata": session.user_metadata,
            "display_name": session.display_name,
        }
