"""Artifact keys: immutable, slash-separated names, the same on every backend.

A key whose next-to-last segment is a sha256 (64 lowercase hex digits) names an object with that
content: the stores refuse to write other bytes under it and check the bytes on every read. Adapter
revisions are stored that way (`adapter_key`), so the sha256 in a RevisionExported fact is checked
before any engine loads the bytes.
"""

from __future__ import annotations

import re

from mint.adapters.peft_layout import WEIGHTS_FILE

# No segment starts with a dot: no '.' or '..', no hidden names, and room for a store's own files.
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@=+-]{0,254}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_KEY_LENGTH = 1024  # S3's limit


class InvalidKey(ValueError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"artifact key {key!r}: {problem}")
        self.key = key


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(key, f"must be 1 to {MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if not _SEGMENT.match(segment):
            raise InvalidKey(
                key,
                f"segment {segment!r} must be letters, digits and . _ @ = + -, not starting with a dot",
            )
    return key


def embedded_sha256(key: str) -> str | None:
    """The sha256 the key names its content by, if it names one."""
    segments = key.split("/")
    if len(segments) >= 2 and _SHA256.match(segments[-2]):
        return segments[-2]
    return None


def adapter_key(policy: str, revision: str, sha256: str) -> str:
    """`adapters/<tenant>/<name>/<revision>/<sha256>/adapter_model.safetensors` for policy `tenant/name`."""
    if not _SHA256.match(sha256):
        raise ValueError(f"sha256 {sha256!r} is not 64 lowercase hex digits")
    return check_key(f"adapters/{policy}/{revision}/{sha256}/{WEIGHTS_FILE}")


def checkpoint_prefix(run: str) -> str:
    """Where every checkpoint of run `tenant/run-id` lives: `checkpoints/<tenant>/<run-id>/`."""
    return check_key(f"checkpoints/{run}") + "/"


def checkpoint_key(run: str, step: int, epoch: int, name: str) -> str:
    """`checkpoints/<tenant>/<run-id>/step-<NNNNNN>/epoch-<E>/<name>`: one file of the checkpoint a
    run's lease holder of `epoch` wrote after `step`. The epoch keeps two workers that computed the
    same step (a stalled one and its successor) from writing one write-once key with other bytes."""
    if step < 0 or epoch < 0:
        raise ValueError(f"step {step} and epoch {epoch} must not be negative")
    return check_key(f"{checkpoint_prefix(run)}step-{step:06d}/epoch-{epoch}/{name}")
