"""What a run trains on: prompts and a reward (GRPO), or prompt/completion pairs (SFT).

Task specs, as `mint train --task` and StartTraining.task take them:
  GRPO: `token:WORD`, `exact:TEXT`, `regex:PATTERN`, `length:N` (a reward over the built-in prompts)
  SFT:  `sft:PATH.jsonl` (one {"prompt": ..., "completion": ...} per line) or `sft-repeat:WORD`
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mint.training.rewards import Reward, RewardSpecError, parse_reward

PROMPTS = (
    "The weather today is",
    "My favourite colour is",
    "Tell me a word:",
    "Answer briefly:",
    "The customer asked for",
    "Once upon a time",
    "The result of the test was",
    "Please reply with",
    "In one word, the mood is",
    "The next item on the list is",
    "Our team decided to",
    "The answer is",
    "A short note:",
    "The policy says",
    "Write something:",
    "Here is my reply:",
)


class TaskError(ValueError):
    pass


@dataclass(frozen=True)
class Task:
    spec: str
    prompts: tuple[str, ...] = PROMPTS
    reward: Reward | None = None
    examples: tuple[tuple[str, str], ...] = field(default=())

    @property
    def algo(self) -> str:
        return "grpo" if self.reward is not None else "sft"


def word_token(tokenizer: Any) -> Callable[[str], int]:
    """`token:WORD` rewards count the token a word gets after a space, as it appears mid-sentence."""
    return lambda word: int(tokenizer.encode(" " + word, add_special_tokens=False)[0])


def parse_task(spec: str, token_id_of: Callable[[str], int]) -> Task:
    kind, _, arg = spec.partition(":")
    if kind == "sft":
        return Task(spec, examples=_read_examples(Path(arg)))
    if kind == "sft-repeat":
        if not arg:
            raise TaskError("task: sft-repeat needs a word, e.g. sft-repeat:yes")
        return Task(spec, examples=tuple((p, " " + " ".join([arg] * 4)) for p in PROMPTS))
    try:
        return Task(spec, reward=parse_reward(spec, token_id_of))
    except RewardSpecError as exc:
        raise TaskError(f"task: {exc}") from None


def _read_examples(path: Path) -> tuple[tuple[str, str], ...]:
    if not path.is_file():
        raise TaskError(f"task: {path}: no such file (sft:PATH.jsonl)")
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            examples.append((str(item["prompt"]), str(item["completion"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise TaskError(
                f"task: {path}: line {number}: expected {{'prompt': ..., 'completion': ...}} ({exc})"
            ) from None
    if not examples:
        raise TaskError(f"task: {path}: no examples")
    return tuple(examples)
