"""One run on one resident base, as the trainer actor drives it: open (resuming from a checkpoint the
actor fetched from the artifact store), step, checkpoint, and write each surviving policy's adapter
for export."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mint.adapters.adapter import LoraConfig
from mint.adapters.peft_layout import WEIGHTS_FILE, write_peft
from mint.adapters.tensors import adapter_from_tensors
from mint.bases.load import load_base
from mint.catalog.rows import RunRow
from mint.home import Home
from mint.training import checkpoint
from mint.training.multi_policy import MultiPolicyTrainer, TrainConfig
from mint.training.tasks import parse_task, word_token


@dataclass(frozen=True)
class WrittenAdapter:
    policy: str
    revision: str
    directory: Path
    sha256: str
    bytes: int
    rank: int
    alpha: float
    targets: tuple[str, ...]


def revision_of(run: str) -> str:
    """A run's revisions are named after it: run `acme/run-7` exports `tenant/name@run-7`."""
    return run.split("/", 1)[1]


@dataclass
class TrainingSession:
    home: Home
    run: RunRow
    trainer: MultiPolicyTrainer
    completed: int
    reported: set[str] = field(default_factory=set)

    @classmethod
    def open(
        cls, home: Home, run: RunRow, resume_from: Path | None, failed: Mapping[str, str]
    ) -> TrainingSession:
        """The run at step 0, or at the checkpoint in `resume_from`. `failed` are the policies the log
        already says have failed (with why): they stay out of the run, whatever the checkpoint says."""
        model, tokenizer = load_base(home.base(run.base_id))
        config = TrainConfig.from_dict(run.config, run.steps)
        trainer = MultiPolicyTrainer(
            model, tokenizer, list(run.policies), parse_task(run.task, word_token(tokenizer)), config
        )
        completed = checkpoint.restore(trainer, resume_from) if resume_from is not None else 0
        for policy, reason in failed.items():
            if policy in trainer.slots and trainer.slots[policy].failed is None:
                trainer.fail(policy, reason)
        # A failure the checkpoint holds and the log does not (its writer's lease was lost on the
        # run's partition first) is reported again with the next step's facts.
        return cls(home, run, trainer, completed, set(failed))

    def newly_failed(self) -> list[tuple[str, str]]:
        fresh = [(p, s.failed) for p, s in self.trainer.slots.items() if s.failed and p not in self.reported]
        self.reported.update(p for p, _ in fresh)
        return fresh

    def checkpoint(self, step: int) -> Path:
        """The run's state after `step`, written locally for the actor to store; returns its directory."""
        directory = checkpoint.save(self.trainer, self.home.run_checkpoints(self.run.run), step)
        self.completed = step
        return directory

    def write_adapters(self, policies: list[str]) -> list[WrittenAdapter]:
        """PEFT-layout adapters of `policies` (live ones), in fresh temporary directories."""
        cfg = self.trainer.config
        written = []
        for policy in policies:
            config = LoraConfig(
                r=cfg.rank, alpha=cfg.alpha, target_modules=cfg.targets, base_model=self.run.base_id
            )
            adapter = adapter_from_tensors(config, self.trainer.multi.state(policy))
            directory = Path(tempfile.mkdtemp(prefix="mint-export-")) / "adapter"
            sha256 = write_peft(directory, adapter)
            written.append(
                WrittenAdapter(
                    policy,
                    revision_of(self.run.run),
                    directory,
                    sha256,
                    (directory / WEIGHTS_FILE).stat().st_size,
                    cfg.rank,
                    cfg.alpha,
                    config.target_modules,
                )
            )
        return written
