"""`--device` and `--dtype` for the commands that run torch: checked at once, exported to the
environment that mint.device.configured_placement reads (so the processes a command starts agree)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import click

from mint.device import (
    DEVICE_CHOICES,
    DEVICE_ENV,
    DTYPE_ENV,
    DTYPES,
    PlacementError,
    check_device,
    check_dtype,
)

F = TypeVar("F", bound=Callable[..., object])


def _export_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        check_device(value)
    except PlacementError as exc:
        raise click.BadParameter(str(exc).partition(": ")[2], ctx, param) from None
    if value.startswith("cuda"):  # an explicit GPU that is not there fails now, not at the first model
        from mint.device import choose_placement

        try:
            choose_placement(value)
        except PlacementError as exc:
            raise click.BadParameter(str(exc).partition(": ")[2], ctx, param) from None
    os.environ[DEVICE_ENV] = value
    return value


def _export_dtype(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        check_dtype(value)
    except PlacementError as exc:
        raise click.BadParameter(str(exc).partition(": ")[2], ctx, param) from None
    os.environ[DTYPE_ENV] = value
    return value


def placement_options(command: F) -> F:
    """Add `--device` and `--dtype` (not passed to the command: they configure the process)."""
    command = click.option(
        "--device",
        default="auto",
        show_default=True,
        envvar=DEVICE_ENV,
        expose_value=False,
        callback=_export_device,
        metavar=DEVICE_CHOICES,
        help="Where torch work runs (base, adapter slots, KV caches, training): auto is CUDA when present.",
    )(command)
    return click.option(
        "--dtype",
        default="auto",
        show_default=True,
        envvar=DTYPE_ENV,
        expose_value=False,
        callback=_export_dtype,
        metavar="auto|" + "|".join(DTYPES),
        help="The dtype of the base and the adapter slots: auto is bfloat16 on CUDA, float32 on the CPU.",
    )(command)
