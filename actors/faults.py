"""Fault injection: crash an actor at named points, to prove that restarts lose and double nothing.

`MINT_FAULTS="rate=0.05,seed=7"` (or `mint up --chaos 0.05`) makes every fault point raise
InjectedCrash with that probability; the supervisor restarts the actor as it would after a real crash.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


class InjectedCrash(RuntimeError):
    pass


@dataclass
class Faults:
    rate: float = 0.0
    seed: int | None = None
    injected: int = 0
    _random: random.Random = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate: must be within [0, 1], got {self.rate}")
        self._random = random.Random(self.seed)

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """`rate=0.05,seed=7`; an empty spec injects nothing."""
        values: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            if not sep or name not in ("rate", "seed"):
                raise ValueError(f"MINT_FAULTS: expected rate=R[,seed=S], got {part!r}")
            values[name] = value
        try:
            seed = int(values["seed"]) if "seed" in values else None
            return cls(rate=float(values.get("rate", "0")), seed=seed)
        except ValueError as exc:
            raise ValueError(f"MINT_FAULTS: {exc}") from None

    def point(self, where: str) -> None:
        if self.rate and self._random.random() < self.rate:
            self.injected += 1
            raise InjectedCrash(f"injected crash at {where}")


NO_FAULTS = Faults()
