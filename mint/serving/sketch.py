"""How often each adapter was asked for, remembered across evictions: a count-min sketch with aging.

Why a sketch (TinyLFU, as in Caffeine) and not ARC or exact LRFU: the scheduler sees demand only as
counts aggregated per engine and interval, never the order of single requests, so ARC's ghost lists (an
order of misses) cannot be kept there; and a million-ref catalog is mostly asked for once, so an exact
per-ref history grows with the catalog. A sketch takes aggregated counts (`add(ref, count)`), answers
for any ref in O(depth) and has a fixed size. Aging halves every counter after `sample` additions (the
TinyLFU reset), so what was popular an epoch ago fades and drift is followed; counters saturate at 15
(4 bits in Caffeine: past that, more precision does not change an admission).
"""

from __future__ import annotations

import zlib

_MAX = 15
_HALF = bytes(count >> 1 for count in range(256))  # a translate table: every counter halved at once
# Odd 64-bit multipliers (splitmix / xxhash constants): one per row, so the rows' indexes are independent.
_SEEDS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)
_MASK64 = (1 << 64) - 1


class FrequencySketch:
    """Approximate, aged request counts per ref. An estimate never undercounts what was added since the
    last halving (halved with it); collisions only overcount. Deterministic across processes (crc32,
    not Python's salted `hash`), so a simulation is a function of its seed."""

    def __init__(self, capacity: int, *, sample_per_slot: int = 10) -> None:
        if capacity < 1 or sample_per_slot < 1:
            raise ValueError(f"a sketch needs capacity >= 1 and sample_per_slot >= 1, got {capacity}")
        width = 1 << max(4, (4 * capacity - 1).bit_length())  # >= 4 counters per cached entry, per row
        self._shift = 64 - (width.bit_length() - 1)
        self._rows = [bytearray(width) for _ in _SEEDS]
        self.sample = sample_per_slot * capacity  # additions between halvings
        self._added = 0

    def _indexes(self, ref: str) -> list[int]:
        digest = zlib.crc32(ref.encode()) | 1 << 32
        return [((digest * seed) & _MASK64) >> self._shift for seed in _SEEDS]

    def add(self, ref: str, count: int = 1) -> None:
        """Count `count` more requests for `ref` (conservative update: only the smallest counters grow,
        which keeps collisions from inflating every row)."""
        if count <= 0:
            return
        indexes = self._indexes(ref)
        target = min(_MAX, min(row[i] for row, i in zip(self._rows, indexes, strict=True)) + count)
        for row, i in zip(self._rows, indexes, strict=True):
            if row[i] < target:
                row[i] = target
        self._added += count
        if self._added >= self.sample:
            self._added //= 2
            self._rows = [bytearray(row.translate(_HALF)) for row in self._rows]

    def estimate(self, ref: str) -> int:
        return min(row[i] for row, i in zip(self._rows, self._indexes(ref), strict=True))
