"""Replies to requests that start something, kept by (tenant, X-Idempotency-Key).

The SDK sends the same idempotency key when it retries a request at the HTTP level (a dropped
connection, a timeout). Without this, a retried create_model would be refused as a duplicate and a
retried forward_backward would run twice; with it, the retry gets the first reply (the same future,
session or model) and the work is done once. Retries come within seconds, so a bounded table of the
most recent replies is enough.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

KEEP = 10_000


class Replies:
    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._replies: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    def get(self, tenant: str, key: str) -> dict[str, Any] | None:
        return self._replies.get((tenant, key))

    def put(self, tenant: str, key: str, reply: dict[str, Any]) -> None:
        self._replies[(tenant, key)] = reply
        while len(self._replies) > self.keep:
            self._replies.popitem(last=False)
