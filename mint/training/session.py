"""One run on one resident base, as the trainer actor drives it: open (resuming from the newest
checkpoint), step, checkpoint, and write each surviving policy's adapter for export."""

from __future__ import annotations

import tempfile
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
    def open(cls, home: Home, run: RunRow) -> TrainingSession:
        model, tokenizer = load_base(home.base(run.base_id))
        config = TrainConfig.from_dict(run.config, run.steps)
        trainer = MultiPolicyTrainer(
            model, tokenizer, list(run.policies), parse_task(run.task, word_token(tokenizer)), config
        )
        latest = checkpoint.latest(home.run_checkpoints(run.run))
        completed = checkpoint.restore(trainer, latest) if latest else 0
        # Failures inside a checkpoint were appended with that step's facts, before it was written.
        reported = {p for p, slot in trainer.slots.items() if slot.failed}
        return cls(home, run, trainer, completed, reported)

    def newly_failed(self) -> list[tuple[str, str]]:
        fresh = [(p, s.failed) for p, s in self.trainer.slots.items() if s.failed and p not in self.reported]
        self.reported.update(p for p, _ in fresh)
        return fresh

    def checkpoint(self, step: int) -> None:
        checkpoint.save(self.trainer, self.home.run_checkpoints(self.run.run), step)
        self.completed = step

    def write_adapters(self) -> list[WrittenAdapter]:
        """PEFT-layout adapters of every live policy, in fresh temporary directories."""
        cfg = self.trainer.config
        written = []
        for policy in self.trainer.live:
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
