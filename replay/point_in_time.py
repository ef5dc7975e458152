"""The projection as of a time or a position: what served tenant/name at 14:02, and why."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from events.log import EventLog, Position
from events.positions import PositionError, parse_position
from mint.catalog.fold import CATALOG_FOLD
from mint.catalog.queries import Catalog
from mint.catalog.rows import CanaryRow, ServingMove
from replay.rebuild import ProgressCallback, Rebuilt, rebuild

_CLOCK = re.compile(r"^\d{1,2}:\d{2}(:\d{2})?$")


class UntilError(ValueError):
    pass


def parse_time(spec: str, now: datetime | None = None) -> datetime:
    """ISO-8601 (naive means UTC), or HH:MM[:SS] meaning today in UTC."""
    now = now or datetime.now(UTC)
    if _CLOCK.match(spec):
        parts = [int(x) for x in spec.split(":")]
        return now.replace(
            hour=parts[0], minute=parts[1], second=parts[2] if len(parts) > 2 else 0, microsecond=0
        )
    try:
        moment = datetime.fromisoformat(spec.replace("Z", "+00:00"))
    except ValueError:
        raise UntilError(
            f"until: {spec!r} is neither a time (ISO-8601 or HH:MM) nor a position (PARTITION@OFFSET,...)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def resolve_until(log: EventLog, spec: str) -> Position:
    """`PARTITION@OFFSET[,...]` (per partition, the first offset left out; partitions not named are
    read to their end) or a time (every record before it)."""
    ends = await log.end_offsets()
    if "@" in spec:
        try:
            named = parse_position(spec, "until")
        except PositionError as exc:
            raise UntilError(str(exc)) from None
        position = dict(ends)
        for p, o in named.items():
            if p not in ends:
                raise UntilError(f"until: partition {p} does not exist (the log has {log.partitions})")
            position[p] = min(o, ends[p])
        return position
    at_ms = int(parse_time(spec).timestamp() * 1000)
    return await log.offsets_for_time(at_ms)


@dataclass(frozen=True)
class ServedThen:
    policy: str
    revision: str | None
    because: ServingMove | None  # the move that set the pointer, with its reason and cause
    canary: CanaryRow | None = None  # the canary running then


async def projection_at(
    log: EventLog, until: Position, target: Path, on_progress: ProgressCallback | None = None
) -> Rebuilt:
    return await rebuild(log, CATALOG_FOLD, target, until=until, on_progress=on_progress)


def served_then(projection: Path, policy: str) -> ServedThen:
    catalog = Catalog(projection)
    try:
        moves = catalog.serving_history(policy)
        row = catalog.policy(policy)
        canary = catalog.running_canary(row) if row else None
        return ServedThen(policy, catalog.resolve(policy), moves[-1] if moves else None, canary)
    finally:
        catalog.close()
