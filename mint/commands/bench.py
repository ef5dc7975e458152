"""`mint bench`: benchmarks with JSON output. Each compares side by side within one run."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from mint.commands.common import run
from mint.commands.placement import placement_options


def _report(name: str, results: Results, as_json: bool) -> None:
    """Print the results: one JSON object on stdout with --json, else a table."""
    report: dict[str, Any] = {
        "bench": name,
        "date": datetime.now(UTC).date().isoformat(),
        "machine": machine(),
        **{k: round(v, 4) for k, v in results.items()},
    }
    if as_json:
        click.echo(json.dumps(report))
    else:
        for key, value in report.items():
            click.echo(f"{key:>36}: {value:,}" if isinstance(value, float) else f"{key:>36}: {value}")


def machine() -> str:
    """CPU model and cores, so a quoted number says where it was measured."""
    model = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _say(line: str) -> None:
    click.echo(line, err=True)


@click.group("bench")
def bench_group() -> None:
    """Benchmarks (progress goes to stderr, results to stdout)."""


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")

Results = dict[str, float]


@contextlib.contextmanager
def _stdout_reserved(reserve: bool) -> Iterator[None]:
    """With --json, stdout carries the one object alone: while a benchmark runs, whatever writes to
    file descriptor 1 (vLLM's engine processes, native libraries, a stray print) lands on stderr."""
    if not reserve:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def benchmark(name: str) -> Callable[[Callable[..., Results]], Callable[..., None]]:
    """A `mint bench NAME` command from a function that returns its results: adds --json, keeps
    stdout for the report alone, and prints it."""

    def command(measure: Callable[..., Results]) -> Callable[..., None]:
        @json_option
        @functools.wraps(measure)
        def measured(*args: Any, as_json: bool, **kwargs: Any) -> None:
            with _stdout_reserved(as_json):
                results = measure(*args, **kwargs)
            _report(name, results, as_json)

        return bench_group.command(name)(measured)

    return command


@benchmark("replay")
@click.option("--facts", default=1_000_000, show_default=True, help="Facts on the log.")
@click.option("--commits", default=2_000, show_default=True, help="Facts appended one per commit.")
def replay(facts: int, commits: int) -> Results:
    """SQLite log append rates and catalog rebuild rate (vs a plain decode loop)."""
    from mint.bench.replay_bench import bench_replay

    return run(bench_replay, facts, commits, _say)


@benchmark("catalog")
@click.option("--policies", default=1_000_000, show_default=True)
@click.option("--lookups", default=20_000, show_default=True)
def catalog(policies: int, lookups: int) -> Results:
    """Resolve latency (tenant/name -> serving revision) and projection size at N policies."""
    from mint.bench.catalog_bench import bench_catalog

    return bench_catalog(policies, lookups, _say)


@benchmark("console")
@click.option("--policies", default=1_000_000, show_default=True)
@click.option("--requests", default=500, show_default=True, help="Requests per kind of query.")
def console(policies: int, requests: int) -> Results:
    """The admin console's JSON API (search pages, filters, policy page) at N policies."""
    from mint.bench.console_bench import bench_console

    return bench_console(policies, requests, _say)


@benchmark("kafka")
@click.option("--records", default=50_000, show_default=True)
@click.option("--bootstrap", default=None, help="A running broker (default: start the bundled tansu).")
def kafka(records: int, bootstrap: str | None) -> Results:
    """Produce and consume rates of the Kafka log against a real Kafka-protocol broker."""
    from mint.bench.kafka_bench import bench_kafka

    if bootstrap:
        results = run(bench_kafka, bootstrap, records)
    else:
        from mint.local_services import LocalKafka

        with LocalKafka() as broker:
            results = run(bench_kafka, broker.bootstrap, records)
    return results


@benchmark("cluster")
@click.option("--commands", default=2_000, show_default=True, help="RegisterPolicy commands per run.")
@click.option(
    "--replicas",
    default="1,2,4",
    show_default=True,
    help="Catalog replica counts, comma-separated (the first should be 1: ratios are against it).",
)
@click.option("--partitions", default=8, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--requests",
    default=200,
    show_default=True,
    type=click.IntRange(min=0),
    help="Completions through the router and as many straight to the engine host (0: skip).",
)
@click.option("--max-tokens", default=4, show_default=True, type=click.IntRange(min=1))
def cluster(commands: int, replicas: str, partitions: int, requests: int, max_tokens: int) -> Results:
    """Catalog decisions/s with 1, 2 and 4 replicas on one topic, each on a fresh `mint cluster`;
    then request latency through an api replica's router against straight to the engine host."""
    from mint.bench.cluster_bench import bench_cluster, bench_router

    try:
        counts = [int(n) for n in replicas.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"{replicas!r} is not a comma-separated list of counts", param_hint="--replicas"
        ) from None
    if any(n < 1 for n in counts):
        raise click.BadParameter(f"{replicas!r}: every count must be at least 1", param_hint="--replicas")
    results = bench_cluster(commands, counts, partitions, _say)
    if requests:
        results |= bench_router(requests, max_tokens, _say)
    return results


@benchmark("soak")
@click.option(
    "--minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="How long.",
)
@click.option(
    "--rate",
    "rate_per_s",
    type=click.FloatRange(min=0, min_open=True),
    default=4.0,
    show_default=True,
    help="Requests per second of the mixed workload (ingest, promotions, rollbacks, inference, training).",
)
@click.option("--faults", is_flag=True, help="Kill -9 or SIGSTOP a replica every 30 s (one of a pair).")
@click.option("--seed", default=0, show_default=True, help="Seeds the workload and the faults.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=Path("mint-soak.png"),
    show_default=True,
    help="The PNG written (latency, lag and memory over time); the series go beside it as .json.",
)
def soak(minutes: float, rate_per_s: float, faults: bool, seed: int, plot: Path) -> Results:
    """The mixed workload on a fresh `mint cluster` for minutes: served, errors by kind, latency per
    route, lag per actor and memory per process over time (a leak shows as a slope)."""
    from mint.bench.soak_bench import bench_soak

    if plot.suffix.lower() != ".png":
        raise click.BadParameter(f"{plot}: the plot is a PNG (name it *.png)", param_hint="--plot")
    return bench_soak(minutes, rate_per_s, faults, seed, plot, _say)


@benchmark("train")
@click.option("--steps", default=5, show_default=True, help="RL steps per handoff measurement.")
@click.option("--policies", default=4, show_default=True, help="K for the multi-policy comparison.")
@click.option(
    "--smollm2",
    "smollm2_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="Where the SmolLM2 base is (or goes).",
)
@click.option(
    "--base",
    "base_spec",
    default=None,
    help="tiny, synthetic-1b, synthetic-3b or a base directory: both measurements on it alone"
    " (default: handoffs on tiny and SmolLM2-135M, multi-policy on tiny).",
)
@placement_options
def train(steps: int, policies: int, smollm2_dir: Path | None, base_spec: str | None) -> Results:
    """Adapter-only vs merged handoff per RL step (tiny and SmolLM2-135M); K policies together vs in turn."""
    import tempfile

    from mint.bases.info import BaseError
    from mint.bases.smollm2 import SmolLM2Unavailable, import_smollm2
    from mint.bases.tiny import create_tiny_base
    from mint.bench.bench_bases import bench_base
    from mint.bench.train_bench import bench_train
    from mint.device import configured_placement
    from mint.home import Home

    home = Home.resolve()
    placement = configured_placement()
    with tempfile.TemporaryDirectory(prefix="mint-bench-") as tmp:
        if base_spec is not None:
            try:
                base = bench_base(base_spec, Path(tmp), _say)
            except BaseError as exc:
                raise click.BadParameter(str(exc).removeprefix("--base: "), param_hint="--base") from None
            label = base_spec if base_spec in ("tiny", "synthetic-1b", "synthetic-3b") else base.name
            return bench_train({label: base}, steps, policies, _say, placement, multi_on=label)
        bases = {"tiny": Path(tmp) / "tiny"}
        create_tiny_base(bases["tiny"], seed=0)
        try:
            bases["smollm2"] = Path(smollm2_dir or home.base("smollm2-135m"))
            import_smollm2(bases["smollm2"])
        except SmolLM2Unavailable as exc:
            del bases["smollm2"]
            _say(f"SmolLM2 skipped: {exc}")
        return bench_train(bases, steps, policies, _say, placement)


@benchmark("serve")
@click.option(
    "--base",
    "base_spec",
    default="tiny",
    show_default=True,
    help="tiny, synthetic-1b, synthetic-3b or a base directory.",
)
@click.option("--requests", default=64, show_default=True)
@click.option("--tokens", default=16, show_default=True)
@placement_options
def serve(base_spec: str, requests: int, tokens: int) -> Results:
    """Mixed-adapter batching vs adapter swapping (8 and 64 adapters); packed vs per-tensor loads into
    device memory; decode tokens/s against the memory-bandwidth bound."""
    import tempfile

    from mint.bases.info import BaseError
    from mint.bench.bench_bases import bench_base
    from mint.bench.serve_bench import bench_serve
    from mint.device import configured_placement
    from mint.home import Home

    smollm2 = Home.resolve().base(
        "smollm2-135m"
    )  # bigger adapters show the layouts apart; `mint bench train` imports it
    with tempfile.TemporaryDirectory(prefix="mint-bench-") as tmp:
        try:
            base = bench_base(base_spec, Path(tmp), _say)
        except BaseError as exc:
            raise click.BadParameter(str(exc).removeprefix("--base: "), param_hint="--base") from None
        # A synthetic base's adapters are already large; on tiny, SmolLM2's (if imported) show the layouts.
        small = base_spec == "tiny" and (smollm2 / "config.json").is_file()
        packed_base = smollm2 if small else base
        return bench_serve(base, packed_base, _say, configured_placement(), requests, tokens)


@benchmark("tinker")
@click.option("--steps", default=20, show_default=True, help="Training steps (and samples) measured.")
@click.option("--rows", default=8, show_default=True, help="Datums per batch (32 tokens each).")
def tinker(steps: int, rows: int) -> Results:
    """The Tinker API's cost over training in-process, on the tiny base; asample latency."""
    import tempfile

    from mint.bases.tiny import create_tiny_base
    from mint.bench.tinker_bench import bench_tinker
    from mint.home import Home

    with tempfile.TemporaryDirectory(prefix="mint-bench-tinker-") as tmp:
        home = Home(Path(tmp))
        create_tiny_base(home.base("tiny"), seed=0)
        return bench_tinker(home, steps, rows, _say)


@benchmark("sim")
@click.option("--policies", default=1_000_000, show_default=True, help="Catalog size (ranks drawn lazily).")
@click.option("--requests", default=200_000, show_default=True)
def sim(policies: int, requests: int) -> Results:
    """The wave scheduler vs vLLM's LRU on one synthetic trace in virtual time: sim_stall_ratio."""
    from mint.bench.sim_bench import bench_sim

    return bench_sim(policies, requests, _say)
