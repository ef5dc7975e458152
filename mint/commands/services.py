"""`mint services`: the local Kafka-protocol broker the tests use, for trying the Kafka deployment."""

from __future__ import annotations

import contextlib
import signal
import threading

import click

from mint.local_services import LocalKafka


@click.group("services")
def services_group() -> None:
    """Local stand-ins for production services (loopback only)."""


@services_group.command("kafka")
@click.option("--port", type=int, default=None, help="Port on 127.0.0.1 (default: a free one).")
def kafka(port: int | None) -> None:
    """Run the bundled tansu broker (in memory) until Ctrl-C, and print its address."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalKafka(port=port) as broker:
        click.echo(f"Kafka-protocol broker on {broker.bootstrap}")
        click.echo(f"  MINT_LOG=kafka://{broker.bootstrap}/mint.records mint up")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
