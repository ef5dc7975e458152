"""Skipping records already applied, by id.

A producer that retries can append one record twice at two offsets (Kafka cannot refuse it). Retries
come close together, on the same key, so remembering the last RECENT_IDS_PER_KEY ids of each key is
enough to skip the second copy; tests/test_dedupe.py shows a retry inside that window is skipped. The
SQLite log refuses a second append outright, so there this is a second line of defence.
"""

from __future__ import annotations

RECENT_IDS_PER_KEY = 64


def remember(recent: tuple[str, ...], record_id: str, bound: int = RECENT_IDS_PER_KEY) -> tuple[str, ...]:
    """The window after applying `record_id`: newest last, oldest dropped beyond `bound`."""
    window = (*recent, record_id)
    return window[-bound:] if len(window) > bound else window


class RecentIds:
    """In-memory windows per key, for readers that keep no state of their own (tools, tests)."""

    def __init__(self, bound: int = RECENT_IDS_PER_KEY) -> None:
        self.bound = bound
        self._by_key: dict[str, tuple[str, ...]] = {}

    def first_time(self, key: str, record_id: str) -> bool:
        recent = self._by_key.get(key, ())
        if record_id in recent:
            return False
        self._by_key[key] = remember(recent, record_id, self.bound)
        return True
