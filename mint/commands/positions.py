"""The CLI reads its own writes: positions remembered across commands, `--after`, bounded reads.

A write command (`mint policy …`) prints the position of its outcome (mint/api/positions.py) and merges
it into a small file, one position per log, per partition the furthest seen. Every later read command
(`mint catalog …`) waits until the catalog projection of the home it reads (any replica's home) has
folded that far, up to `--wait` seconds, then fails naming both positions, so a promotion followed by a
read on another replica never shows the old pointer. `--after POSITION` replaces the remembered
position for one read (`--after ''`: read what the home has, at once).

The file is `$MINT_POSITION_FILE`, by default `$XDG_STATE_HOME/mint/positions.json`
(`~/.local/state/mint/positions.json`): it belongs to the person running the CLI, not to a home,
since it must outlive switching between replicas' homes. A log is known by its URL as the commands
spell it (`kafka://HOST:PORT/TOPIC`, `sqlite:///PATH`), so reads of a Kafka replica's home name the
log with `--log` or `$MINT_LOG`, as every command against a cluster does. The file is replaced
atomically under a lock, so two commands writing at once both count.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import click

from events.log import Position
from events.positions import PositionError, format_position, merged, parse_position
from mint.api.positions import Checkpoint
from mint.config import LogSpec
from mint.home import Home

POSITION_FILE_ENV = "MINT_POSITION_FILE"
DEFAULT_WAIT_S = 5.0  # the API's bound too (mint/api/positions.py DEFAULT_READ_WAIT_S)
MAX_LOGS = 64  # the file keeps the logs written to most recently


def position_file() -> Path:
    named = os.environ.get(POSITION_FILE_ENV)
    if named:
        return Path(named).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "mint" / "positions.json"


def log_name(spec: LogSpec) -> str:
    """What the file knows a log by."""
    if spec.kind == "kafka":
        return f"kafka://{spec.bootstrap}/{spec.topic}"
    assert spec.path is not None
    return f"sqlite://{spec.path.resolve()}"


def _load(path: Path) -> dict[str, Position]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        stored = json.loads(raw)
        if not isinstance(stored, dict):
            raise ValueError("not a JSON object")
        return {str(log): parse_position(str(wire), f"{path} [{log!r}]") for log, wire in stored.items()}
    except (ValueError, PositionError) as exc:
        raise click.ClickException(
            f"{path}: not the CLI's position memory ({exc}); delete it to forget every position"
        ) from None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def remember(spec: LogSpec, position: Position) -> None:
    """Merge `position` into what the file holds for `spec`'s log (per partition, the furthest)."""
    path, log = position_file(), log_name(spec)
    with _locked(path):
        known = _load(path)
        now = merged(known.pop(log, {}), position)
        kept = [*list(known.items())[-(MAX_LOGS - 1) :], (log, now)]
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        draft.write_text(json.dumps({name: format_position(p) for name, p in kept}, indent=1) + "\n")
        os.replace(draft, path)


def remembered(spec: LogSpec) -> Position:
    return _load(position_file()).get(log_name(spec), {})


def _after(ctx: click.Context, param: click.Parameter, value: str | None) -> Position | None:
    if value is None:
        return None
    try:
        return parse_position(value.strip(), "--after")
    except PositionError as exc:
        raise click.BadParameter(str(exc).removeprefix("--after: "), ctx, param) from None


def read_bound(fn: Callable[..., None]) -> Callable[..., None]:
    """`--after POSITION` and `--wait S`, for a command that reads a home's projections."""
    for option in (
        click.option(
            "--wait",
            "wait_s",
            type=click.FloatRange(min=0),
            default=DEFAULT_WAIT_S,
            show_default=True,
            help="Seconds to wait for the home's catalog to reach the position.",
        ),
        click.option(
            "--after",
            "after",
            default=None,
            callback=_after,
            metavar="POSITION",
            help="Read once the catalog has folded this far (P@O,…; '' reads at once). "
            "Default: the position of this CLI's last write to the log.",
        ),
    ):
        fn = option(fn)
    return fn


def wait_for_position(home: Home, spec: LogSpec, after: Position | None, wait_s: float) -> None:
    """Return once `home`'s catalog has folded up to `after` (default: the remembered position of
    `spec`'s log); a ClickException naming both positions when it has not within `wait_s`."""
    target = remembered(spec) if after is None else after
    if not target:
        return
    checkpoint = Checkpoint(home.catalog)
    if anyio.run(checkpoint.reached, target, wait_s):
        return
    have = {p: checkpoint.position().get(p, 0) for p in target}
    asked = (
        "as --after asked"
        if after is not None
        else f"the position of this CLI's last write to {log_name(spec)}, remembered in {position_file()}"
    )
    raise click.ClickException(
        f"the catalog in {home.root} has reached {format_position(have) or 'nothing'}, not "
        f"{format_position(target)} ({asked}), after waiting {wait_s:g}s: its projector is behind or "
        "not running. Retry, wait longer (--wait), or read what it has now (--after '')"
    )
