"""`--tinker-training-slots` for the commands that serve the Tinker API (`mint up`, `mint actor api`):
exported to the environment that mint.tinker.residency.slots_from_env reads, like --device."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import click

from mint.tinker.residency import DEFAULT_SLOTS, SLOTS_ENV

F = TypeVar("F", bound=Callable[..., object])


def _export_slots(ctx: click.Context, param: click.Parameter, value: int) -> int:
    os.environ[SLOTS_ENV] = str(value)
    return value


def training_slots_option(command: F) -> F:
    """Add `--tinker-training-slots` (not passed to the command: it configures the process)."""
    return click.option(
        "--tinker-training-slots",
        type=click.IntRange(min=1),
        default=DEFAULT_SLOTS,
        show_default=True,
        envvar=SLOTS_ENV,
        expose_value=False,
        callback=_export_slots,
        help="Tinker API: training clients holding a slot on a base at once; beyond that the least "
        "recently used idle ones are evicted to disk and reloaded on their next request.",
    )(command)
