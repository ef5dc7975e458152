"""`mint sim`: the wave scheduler against vLLM's LRU on one synthetic trace, in virtual time."""

from __future__ import annotations

import json

import click

from mint.serving.sim import Comparison, EngineSpec, PolicyResult, TraceSpec, compare

_ROWS: tuple[tuple[str, str], ...] = (
    ("hit ratio", "hit_ratio"),
    ("cold-load stalls", "cold_stalls"),
    ("warm stalls (not the store)", "warm_stalls"),
    ("p50 wait ms", "p50_wait_ms"),
    ("p99 wait ms", "p99_wait_ms"),
    ("p99.9 wait ms", "p999_wait_ms"),
    ("GPU loads/s", "loads_per_s"),
    ("store fetches/s", "fetches_per_s"),
    ("plans (waves, urgent loads)", "waves"),
)


@click.command("sim")
@click.option("--policies", default=1_000_000, show_default=True, help="Catalog size (ranks drawn lazily).")
@click.option("--requests", default=200_000, show_default=True)
@click.option("--gpu-slots", default=EngineSpec().gpu_slots, show_default=True)
@click.option("--cpu-slots", default=EngineSpec().cpu_slots, show_default=True, help="Host-cache slots.")
@click.option("--zipf", default=1.1, show_default=True, help="Zipf exponent of popularity.")
@click.option(
    "--diurnal",
    default=0.0,
    show_default=True,
    help="Amplitude (0 to <1) of a daily cycle of the request rate; the second trace of `mint bench sim` "
    "is --zipf 0.9 --diurnal 0.8.",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def sim(
    policies: int,
    requests: int,
    gpu_slots: int,
    cpu_slots: int,
    zipf: float,
    diurnal: float,
    seed: int,
    as_json: bool,
) -> None:
    """The wave scheduler and vLLM's LRU on the same synthetic trace (Zipf popularity with bursts,
    drift and promotions), in virtual time: hit ratio, cold-load stalls, waits and load rates."""
    try:
        trace = TraceSpec(policies=policies, requests=requests, zipf=zipf, diurnal=diurnal, seed=seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    engine = EngineSpec(gpu_slots=gpu_slots, cpu_slots=cpu_slots)
    comparison = compare(trace, engine, say=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(comparison.summary()))
    else:
        click.echo(render(comparison))


def render(comparison: Comparison) -> str:
    """A side-by-side table of both policies, then the ratios."""
    trace, engine = comparison.trace, comparison.engine
    lines = [
        f"{trace.policies:,} policies, {trace.requests:,} requests over {comparison.wave.duration_s:,.0f} "
        f"virtual s, zipf {trace.zipf}, diurnal {trace.diurnal}, "
        f"{engine.gpu_slots:,} GPU + {engine.cpu_slots:,} host slots, "
        f"seed {trace.seed}",
        "",
        f"{'':<26}{'wave':>12}{'lru':>12}",
    ]
    for label, metric in _ROWS:
        lines.append(f"{label:<26}{_cell(comparison.wave, metric):>12}{_cell(comparison.lru, metric):>12}")
    lines += [
        "",
        f"sim_stall_ratio (cold-load stalls, wave / lru): {comparison.stall_ratio:.3f}",
        f"Belady's offline optimum / lru: {comparison.belady_ratio:.3f};"
        f" first requests / lru: {comparison.first_request_ratio:.3f}",
        f"gap_closed (of the way from lru to the optimum): {comparison.gap_closed:.3f}  (goal >= 0.75)",
    ]
    return "\n".join(lines)


def _cell(result: PolicyResult, metric: str) -> str:
    value = getattr(result, metric)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}" if metric == "hit_ratio" else f"{value:,.1f}"
