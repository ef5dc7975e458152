"""Reward callables for GRPO: (prompt text, completion text, completion token ids) -> float in [0, 1].

Built in: exact match, a regex the completion must match, closeness to a target length, and the share
of completion tokens equal to a target token. `parse_reward("regex:^\\d+$")` builds one from a spec.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

Reward = Callable[[str, str, Sequence[int]], float]


class RewardSpecError(ValueError):
    pass


def exact_match(target: str) -> Reward:
    want = target.strip()
    return lambda prompt, completion, ids: 1.0 if completion.strip() == want else 0.0


def regex_format(pattern: str) -> Reward:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise RewardSpecError(f"reward: bad regex {pattern!r}: {exc}") from None
    return lambda prompt, completion, ids: 1.0 if compiled.search(completion) else 0.0


def length(target: int) -> Reward:
    """1 at exactly `target` characters, falling linearly to 0 at twice (or zero) that."""
    return lambda prompt, completion, ids: max(0.0, 1.0 - abs(len(completion) - target) / max(target, 1))


def token_share(token_id: int) -> Reward:
    """The share of completion tokens that are `token_id`: a dense signal even a tiny base can climb."""
    return lambda prompt, completion, ids: (sum(1 for t in ids if t == token_id) / len(ids)) if ids else 0.0


def parse_reward(spec: str, token_id_of: Callable[[str], int]) -> Reward:
    kind, _, arg = spec.partition(":")
    if kind == "exact":
        return exact_match(arg)
    if kind == "regex":
        return regex_format(arg)
    if kind == "length":
        try:
            return length(int(arg))
        except ValueError:
            raise RewardSpecError(f"reward: length needs an integer, got {arg!r}") from None
    if kind == "token":
        if not arg:
            raise RewardSpecError("reward: token needs a word, e.g. token:yes")
        return token_share(token_id_of(arg))
    raise RewardSpecError(f"reward: {spec!r} is not exact:TEXT, regex:PATTERN, length:N or token:WORD")
