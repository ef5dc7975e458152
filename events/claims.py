"""Claims: how an owner fences the writers before it, without Kafka transactions.

Kafka fences a zombie only through transactional epochs; our brokers have none. So ownership is a fact
on the log, as Temporal does it with a shard's range id:
- A new owner appends a claim with an epoch above every claim before it on that partition, folds the
  partition up to its own claim, checks that its claim is the one that counts, and only then decides.
- Every fact it decides carries that epoch (`Fact.epoch`).
- Every fold ignores a fact whose epoch is not its fence's latest claim on that partition. A partition
  is totally ordered, so every reader agrees on what counts, whatever the zombie appends later.

A claim's fence is a scope: `actor:NAME` for a partition owned by a replica of that actor, or a run
lease's (events/training.py) on each of its policies' partitions.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, ClassVar

from msgspec import Meta

from events.envelope import Fact
from events.names import Name
from events.partitioning import partition_for

PartitionNumber = Annotated[int, Meta(ge=0, le=1_000_000, description="a partition of the topic")]
Epoch = Annotated[int, Meta(ge=1, le=2**63 - 1, description="a claim's epoch, from 1")]


class Claim(Fact, kw_only=True, frozen=True):
    """A claim on a fence scope for the partition it lands on. It counts only if its epoch is above
    the scope's latest counted claim there; then facts of older epochs stop counting."""

    def scope(self) -> str:
        raise NotImplementedError


class PartitionClaimed(Claim, kw_only=True, frozen=True):
    """A replica of `actor` took `partition` (a rebalance gave it to it). Keyed so that it lands on
    that partition (`claim_key`)."""

    KEY_FIELD: ClassVar[str] = "key"
    SYSTEM: ClassVar[bool] = True
    actor: Name
    partition: PartitionNumber
    replica: Name

    def scope(self) -> str:
        return f"actor:{self.actor}"


@lru_cache(maxsize=4096)
def claim_key(actor: str, partition: int, partitions: int) -> str:
    """A key that the partitioner maps to `partition`: claims must sit in the partition they fence."""
    salt = 0
    while partition_for(key := f"claim/{actor}/{partition}/{salt}", partitions) != partition:
        salt += 1
    return key
