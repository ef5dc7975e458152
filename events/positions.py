"""A log position's text form, `PARTITION@OFFSET[,PARTITION@OFFSET...]` (e.g. `0@13,3@7`: per
partition, the next offset to read, as events/log.py defines a position), shared by the HTTP headers
(`x-mint-position`, `x-mint-after`), the CLI's `--after` and `mint replay at`. The empty string is the
empty position. Parsing is strict: a malformed value is refused, naming where it came from and what is
wrong."""

from __future__ import annotations

import re
from collections.abc import Iterable

from events.log import Appended, Position

_PART = re.compile(r"(0|[1-9]\d{0,6})@(0|[1-9]\d{0,18})")  # partition@offset, no leading zeros


class PositionError(ValueError):
    pass


def format_position(position: Position) -> str:
    return ",".join(f"{p}@{o}" for p, o in sorted(position.items()))


def parse_position(text: str, where: str) -> Position:
    """The position `text` spells; PositionError naming `where` (a header, an option) otherwise."""
    if text == "":
        return {}
    position: Position = {}
    for part in text.split(","):
        match = _PART.fullmatch(part)
        if match is None:
            raise PositionError(
                f"{where}: {part[:40]!r} in {text[:80]!r} is not PARTITION@OFFSET "
                "(a position is e.g. 0@13,3@7: per partition, the next offset to read)"
            )
        partition, offset = int(match[1]), int(match[2])
        if partition in position:
            raise PositionError(f"{where}: partition {partition} is named twice in {text[:80]!r}")
        position[partition] = offset
    return position


def after_appended(placed: Iterable[Appended]) -> Position:
    """The position just past every record of `placed` (one append's answer)."""
    position: Position = {}
    for place in placed:
        position[place.partition] = max(position.get(place.partition, 0), place.offset + 1)
    return position


def merged(*positions: Position) -> Position:
    """Per partition, the furthest of `positions`: a client's highest position seen."""
    out: Position = {}
    for position in positions:
        for partition, offset in position.items():
            out[partition] = max(out.get(partition, 0), offset)
    return out
