"""The seal: proof that a record was appended by a MinT process, not written straight onto the log.

Kafka accepts a message from anyone who can reach the topic, and a producer that follows the published
contract may write commands there. A decider's facts, though, must come from the decider
(events/authority.py). So every MinT process signs what it appends with the cluster's key, an
HMAC-SHA256 of the record's bytes carried in the `seal` header, and checks the seal of what it reads.
A record without a valid seal is still read (a producer's command is welcome); it just cannot count
as a decision. Every process of one cluster needs the same key (`MINT_CLUSTER_KEY`).

The SQLite log needs no seal: its file is private to the MinT home, and the only ways in are MinT's
own doors, which refuse what producers may not write.
"""

from __future__ import annotations

import hashlib
import hmac
import os

KEY_BYTES = 32


class Seal:
    """Signs and checks records' bytes under one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("cluster key: must be at least 16 bytes")
        self._key = key

    @classmethod
    def from_secret(cls, secret: str) -> Seal:
        """A key from an operator's secret of any length (e.g. `MINT_CLUSTER_KEY`)."""
        return cls(hashlib.sha256(secret.encode()).digest())

    @classmethod
    def of_this_process(cls) -> Seal:
        """A key only this process has: a log opened without the cluster's key trusts no other
        process's decisions (it fails closed), while its own records still count."""
        global _PROCESS_SEAL
        if _PROCESS_SEAL is None:
            _PROCESS_SEAL = cls(os.urandom(KEY_BYTES))
        return _PROCESS_SEAL

    def of(self, raw: bytes) -> bytes:
        return hmac.digest(self._key, raw, "sha256")

    def verifies(self, raw: bytes, seal: bytes | None) -> bool:
        return seal is not None and hmac.compare_digest(self.of(raw), seal)


_PROCESS_SEAL: Seal | None = None
