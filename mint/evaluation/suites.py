"""Evaluation suites: named, versioned prompt sets with a score function.

Two sources, one shape:
  built in   `reward:SPEC` — the held-out prompts below, scored by a GRPO reward (`reward:token:yes`,
             `reward:regex:^\\d+$`, ...). Reference-free, so the same scorer also scores live traffic.
  files      `$MINT_HOME/suites/NAME.json` — your own cases, scored by `exact` (the completion equals
             `expected`), `contains` (it contains `expected`), a `reward:SPEC`, or `perplexity` (each
             case's `prompt` is held-out text; nothing is generated):
             {"version": 1, "scorer": "exact", "cases": [{"prompt": "2+2=", "expected": "4"}],
              "samples": 1, "max_tokens": 8, "temperature": 0.0}
A suite's score is in [0, 1], higher is better: the mean over cases and samples of the completions'
scores, or for `perplexity` the geometric-mean probability of the texts' tokens (1 / perplexity).
Change a suite's prompts or scorer and bump its version: EvaluationCompleted carries it, so scores of
two versions are never compared as if they were one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from mint.training.rewards import Reward, RewardSpecError, parse_reward

# Held out: none of these is among the training prompts (mint/training/tasks.py), so a suite built on
# them measures what a policy learned, not what it memorised. Changing them changes BUILT_IN_VERSION.
HELD_OUT_PROMPTS = (
    "The forecast for tomorrow says",
    "Her first reaction was",
    "Give me one word:",
    "Reply in short:",
    "The manager wanted",
    "Long ago, in a village,",
    "The outcome of the trial was",
    "Kindly answer with",
)
BUILT_IN_VERSION = 1
REWARD_PREFIX = "reward:"


class SuiteError(ValueError):
    pass


@dataclass(frozen=True)
class Case:
    prompt: str
    expected: str | None = None


# (case, completion text, completion token ids) -> score in [0, 1]
Score = Callable[[Case, str, Sequence[int]], float]


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    cases: tuple[Case, ...]
    # How a completion is scored; None for a perplexity suite, which scores the cases' texts instead.
    score: Score | None
    # Scores a live request (prompt, completion, tokens) with no expected answer; None when the suite
    # needs references, so live traffic cannot be scored by it.
    live: Reward | None
    samples: int = 4  # completions per case, with seeds 0..samples-1
    max_tokens: int = 12
    temperature: float = 1.0


class _FileCase(msgspec.Struct, forbid_unknown_fields=True):
    prompt: Annotated[str, Meta(min_length=1)]
    expected: str | None = None


class _SuiteFile(msgspec.Struct, forbid_unknown_fields=True):
    version: Annotated[int, Meta(ge=1)]
    scorer: str
    cases: Annotated[list[_FileCase], Meta(min_length=1)]
    samples: Annotated[int, Meta(ge=1, le=64)] = 1
    max_tokens: Annotated[int, Meta(ge=1, le=512)] = 16
    temperature: Annotated[float, Meta(ge=0.0)] = 0.0


def _reward_score(reward: Reward) -> Score:
    return lambda case, completion, tokens: reward(case.prompt, completion, tokens)


def _reference_score(kind: Literal["exact", "contains"]) -> Score:
    def score(case: Case, completion: str, tokens: Sequence[int]) -> float:
        want = (case.expected or "").strip()
        got = completion.strip()
        return float(got == want if kind == "exact" else want in got)

    return score


def _reward(spec: str, token_id_of: Callable[[str], int], where: str) -> Reward:
    try:
        return parse_reward(spec, token_id_of)
    except RewardSpecError as exc:
        raise SuiteError(f"{where}: {exc}") from None


def built_in(name: str, token_id_of: Callable[[str], int]) -> Suite:
    reward = _reward(name.removeprefix(REWARD_PREFIX), token_id_of, f"suite {name!r}")
    return Suite(
        name=name,
        version=BUILT_IN_VERSION,
        cases=tuple(Case(p) for p in HELD_OUT_PROMPTS),
        score=_reward_score(reward),
        live=reward,
    )


def from_file(name: str, path: Path, token_id_of: Callable[[str], int]) -> Suite:
    try:
        spec = msgspec.json.decode(path.read_bytes(), type=_SuiteFile)
    except msgspec.ValidationError as exc:
        raise SuiteError(f"{path}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise SuiteError(f"{path}: not JSON: {exc}") from None
    cases = tuple(Case(c.prompt, c.expected) for c in spec.cases)
    live: Reward | None = None
    if spec.scorer == "perplexity":
        return Suite(name, spec.version, cases, None, None, samples=1, max_tokens=0)
    if spec.scorer in ("exact", "contains"):
        missing = [i for i, c in enumerate(cases) if c.expected is None]
        if missing:
            raise SuiteError(f"{path}: cases[{missing[0]}].expected is required by scorer {spec.scorer!r}")
        score = _reference_score("exact" if spec.scorer == "exact" else "contains")
    elif spec.scorer.startswith(REWARD_PREFIX):
        live = _reward(spec.scorer.removeprefix(REWARD_PREFIX), token_id_of, f"{path}: scorer")
        score = _reward_score(live)
    else:
        raise SuiteError(f"{path}: scorer {spec.scorer!r} is not exact, contains, perplexity or reward:SPEC")
    return Suite(name, spec.version, cases, score, live, spec.samples, spec.max_tokens, spec.temperature)


def suite_path(suites_dir: Path, name: str) -> Path:
    return suites_dir / f"{name}.json"


def load_suite(name: str, suites_dir: Path, token_id_of: Callable[[str], int]) -> Suite:
    """The suite called `name`: built in (`reward:SPEC`) or `suites_dir/NAME.json`."""
    if name.startswith(REWARD_PREFIX):
        return built_in(name, token_id_of)
    path = suite_path(suites_dir, name)
    if "/" in name or not path.is_file():
        raise SuiteError(
            f"suite {name!r}: not built in (reward:SPEC) and no file {suite_path(suites_dir, name)}"
        )
    return from_file(name, path, token_id_of)


def list_suites(suites_dir: Path) -> list[str]:
    """The file suites under `suites_dir` (the built-in ones are every `reward:SPEC`)."""
    return sorted(p.stem for p in suites_dir.glob("*.json")) if suites_dir.is_dir() else []
