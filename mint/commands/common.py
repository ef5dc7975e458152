"""What every command shares: the home and log options, running async code, and a progress bar."""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import click

from mint.config import ArtifactSpec, LogSpec
from mint.home import Home

if TYPE_CHECKING:
    from mint.api.openai import InferenceLimits

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

home_option = click.option(
    "--home",
    "home_dir",
    envvar="MINT_HOME",
    default=None,
    help="Data directory (default $MINT_HOME or ~/.mint).",
)
log_option = click.option(
    "--log",
    "log_url",
    envvar="MINT_LOG",
    default=None,
    help="sqlite (default), sqlite:///PATH, or kafka://HOST:PORT[/TOPIC][?partitions=N].",
)

artifacts_option = click.option(
    "--artifacts",
    "artifacts_url",
    envvar="MINT_ARTIFACTS",
    default=None,
    help="local (default: $MINT_HOME/artifacts), file:///DIR, or s3://BUCKET[/PREFIX].",
)


def inference_limit_options(command: F) -> F:
    """--inference-concurrency/-rate/-burst (MINT_INFERENCE_*), read with `inference_limits`."""
    for option in reversed(
        (
            click.option(
                "--inference-concurrency",
                envvar="MINT_INFERENCE_CONCURRENCY",
                type=click.IntRange(min=1),
                default=None,
                help="Inference requests one token may have in flight (429 over it). Default 8.",
            ),
            click.option(
                "--inference-rate",
                envvar="MINT_INFERENCE_RATE",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="Inference requests per second one token may start (429 over it). Default 10.",
            ),
            click.option(
                "--inference-burst",
                envvar="MINT_INFERENCE_BURST",
                type=click.IntRange(min=1),
                default=None,
                help="Inference requests one token may start at once above its rate. Default 20.",
            ),
        )
    ):
        command = option(command)
    return command


def inference_limits(
    concurrency: int | None, rate: float | None, burst: int | None
) -> InferenceLimits | None:
    """The limits given on the command line, the defaults for the rest; None when none was given."""
    if concurrency is None and rate is None and burst is None:
        return None
    from mint.api.openai import InferenceLimits

    default = InferenceLimits()
    return InferenceLimits(
        concurrency=default.concurrency if concurrency is None else concurrency,
        requests_per_s=default.requests_per_s if rate is None else rate,
        burst=default.burst if burst is None else burst,
    )


def artifacts_spec(home: Home, artifacts_url: str | None) -> ArtifactSpec:
    try:
        return ArtifactSpec.parse(artifacts_url, home)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--artifacts") from None


def context(home_dir: str | None, log_url: str | None) -> tuple[Home, LogSpec]:
    home = Home.resolve(home_dir)
    try:
        return home, LogSpec.parse(log_url, home)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--log") from None


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return anyio.run(fn, *args)


class ProgressBar:
    """A one-line bar on stderr when it is a terminal, else a line every few seconds."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.began = time.perf_counter()
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self._last < (0.1 if self._tty else 5.0) and done < total:
            return
        self._last = now
        rate = done / max(now - self.began, 1e-9)
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        line = f"{self.label} [{bar:<30}] {done:,}/{total:,} {rate:,.0f}/s"
        click.echo(("\r" + line) if self._tty else line, err=True, nl=not self._tty)

    def close(self) -> None:
        if self._tty:
            click.echo("", err=True)
