"""The base a torch benchmark runs on, by name: `tiny` (built fresh), `synthetic-1b` or `synthetic-3b`
(kept in $MINT_HOME/bases once built, since drawing a billion weights takes a while), or a directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mint.bases.info import BaseError
from mint.home import Home

SYNTHETIC_PREFIX = "synthetic-"
BASE_CHOICES = "tiny, synthetic-1b, synthetic-3b or a base directory"


def bench_base(spec: str, scratch: Path, say: Callable[[str], None]) -> Path:
    """The directory of the base `spec` names, built if need be (a tiny one under `scratch`)."""
    if spec == "tiny":
        from mint.bases.tiny import create_tiny_base

        create_tiny_base(scratch / "tiny", seed=0)
        return scratch / "tiny"
    if spec.startswith(SYNTHETIC_PREFIX):
        from mint.bases.synthetic import SIZES, create_synthetic_base

        size = spec.removeprefix(SYNTHETIC_PREFIX)
        if size not in SIZES:
            raise BaseError(f"--base: {spec!r} is not one of {BASE_CHOICES}")
        directory = Home.resolve().base(spec)
        if not (directory / "config.json").is_file():
            say(f"building the {spec} base into {directory} (kept for the next run)")
            create_synthetic_base(directory, size)
        return directory
    directory = Path(spec)
    if not (directory / "config.json").is_file():
        raise BaseError(f"--base: {spec!r} is not one of {BASE_CHOICES} (no config.json there)")
    return directory
