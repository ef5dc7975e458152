"""What a chaos workload was told: every HTTP answer it got, the writes acknowledged to it (with the
position each answered) and the commands accepted. The checks (mint/chaos/checks.py) hold the cluster's
log and projections against it. It is kept as JSON lines so a run killed halfway still leaves a ledger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

# What a request ended as, when it got no HTTP answer: the checks count these as failures.
Failure = Literal["timeout", "transport"]


class Answer(msgspec.Struct, frozen=True, tag="answer"):
    """One HTTP request: its route (`POST /v1/commands`), status (0 when it got none), Retry-After,
    how long it took, and why it got no answer (a timeout is a hang)."""

    route: str
    status: int
    retry_after: str | None
    elapsed_s: float
    failure: Failure | None = None
    detail: str = ""  # the replica asked (its URL), then the first bytes of an error body or the exception
    at: float = 0.0  # wall time (time.time()) when it was sent: the checks set it beside the faults


class Acknowledged(msgspec.Struct, frozen=True, tag="acknowledged"):
    """A write the cluster acknowledged: the ids of the records it appended (commands or events) and
    the position it answered (`x-mint-position`, wire form `P@O,...`)."""

    route: str
    ids: list[str]
    commands: list[str]  # those of `ids` that are commands: each must have exactly one outcome
    position: str


class TrainingStarted(msgspec.Struct, frozen=True, tag="training"):
    """A training run the workload started (`mint train`, or a Tinker client's run)."""

    run: str
    policy: str


class FaultInjected(msgspec.Struct, frozen=True, tag="fault"):
    """A fault the plan injected (mint/chaos/faults.py): `kind` (kill, stop) on the process `target`
    (its URL too, when it listens for clients), from `at` until it was back (`recovered_at`, wall time)."""

    kind: str
    target: str
    url: str
    at: float
    recovered_at: float


Entry = Answer | Acknowledged | TrainingStarted | FaultInjected


class Ledger:
    """Append-only, one JSON object per line, flushed per entry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab")
        self._encoder = msgspec.json.Encoder()

    def write(self, entry: Entry) -> None:
        self._file.write(self._encoder.encode(entry) + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_ledger(path: Path) -> list[Entry]:
    """The entries of a ledger; a last line cut short by a kill is left out, any other bad line is an
    error naming the file and line."""
    decoder = msgspec.json.Decoder(Entry)
    lines = path.read_bytes().split(b"\n")
    entries: list[Entry] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(decoder.decode(line))
        except msgspec.DecodeError as exc:
            if number == len(lines) or (number == len(lines) - 1 and not lines[-1]):
                break  # the writer was killed mid-line
            raise ValueError(f"{path}:{number}: not a ledger entry: {exc}") from None
    return entries
