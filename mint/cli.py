"""`mint`: the command line. The face of the system (it may import actors/ and replay/)."""

from __future__ import annotations

import logging
import os

import click

from mint.commands.actor import actor
from mint.commands.base import base_group
from mint.commands.bench import bench_group
from mint.commands.catalog import catalog_group
from mint.commands.chaos import chaos_group
from mint.commands.cluster import cluster_group
from mint.commands.demo import demo
from mint.commands.events import events_group
from mint.commands.policy import policy_group
from mint.commands.replay import replay_group
from mint.commands.services import services_group
from mint.commands.sim import sim
from mint.commands.tokens import tokens_group
from mint.commands.train import train
from mint.commands.up import up


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log actor activity to stderr.")
def cli(verbose: bool) -> None:
    """MinT: many LoRA policies over a few resident bases, as an event-sourced actor system."""
    # stdout is for what a command answers (`--json`: one object); vLLM logs to stdout unless told,
    # and its engine processes inherit this. Our own and transformers' logs go to stderr already.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s"
    )


cli.add_command(up)
cli.add_command(actor)
cli.add_command(demo)
cli.add_command(events_group)
cli.add_command(replay_group)
cli.add_command(catalog_group)
cli.add_command(policy_group)
cli.add_command(bench_group)
cli.add_command(services_group)
cli.add_command(train)
cli.add_command(base_group)
cli.add_command(sim)
cli.add_command(tokens_group)
cli.add_command(cluster_group)
cli.add_command(chaos_group)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
