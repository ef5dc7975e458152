"""`mint bench tinker`: what the Tinker protocol costs over training in-process, on one base.

The same supervised step (forward_backward + optim_step on one batch) runs twice: directly on a
TrainingModel, and through the HTTP app as an SDK drives it (two POSTs answered with futures, two
long-polled retrieve_future calls, a StepCompleted appended to a SQLite log). Then asample latency.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
from starlette.applications import Starlette

from actors.system import running
from events.sqlite_log import SqliteLog
from mint.artifacts.local import LocalArtifactStore
from mint.auth.tokens import TokenStore
from mint.catalog.queries import Catalog
from mint.home import Home
from mint.tinker.app import tinker_routes
from mint.tinker.resident import ResidentBase
from mint.tinker.training import TrainingModel
from mint.tinker.wire import AdamParams, Datum, ForwardBackwardInput

WARMUP = 2  # untimed first steps: allocator and autograd warm up


def _batch(rows: int, length: int, vocab: int) -> list[list[int]]:
    generator = np.random.default_rng(0)
    return [generator.integers(3, vocab, length).tolist() for _ in range(rows)]


def _direct(base_dir: Path, batch: list[list[int]], steps: int) -> float:
    base = ResidentBase.load("tiny", base_dir)
    targets = base.targets_for(attention=True, mlp=True, unembed=True)  # what create_model trains
    model = TrainingModel.create(base, "bench", "bench", "bench/direct", "bench/direct", 8, targets, 0)
    data = [Datum(row[:-1], {"target_tokens": np.asarray(row[1:])}) for row in batch]
    work = ForwardBackwardInput(data, "cross_entropy", {}, False)
    times = []
    for _ in range(WARMUP + steps):
        began = time.perf_counter()
        model.forward_backward(work)
        model.optim_step(AdamParams(learning_rate=1e-3))
        times.append(time.perf_counter() - began)
    return statistics.median(times[WARMUP:]) * 1000


async def _through_api(
    home: Home, batch: list[list[int]], steps: int, say: Callable[[str], None]
) -> dict[str, float]:
    tokens = TokenStore(home.tokens)
    key = tokens.issue("bench", ["trainer"]).secret
    async with (
        SqliteLog(home.log) as log,
        running(home, log, only=frozenset({"catalog"})),  # it decides the client's RegisterPolicy
        tinker_routes(
            home, log, LocalArtifactStore(home.artifacts), lambda: Catalog(home.catalog), tokens
        ) as routes,
    ):
        transport = httpx.ASGITransport(app=Starlette(routes=routes))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://mint/api/v1", headers={"X-API-Key": key}
        ) as http:
            session = (await http.post("/create_session", json={})).json()["session_id"]
            create = {"session_id": session, "base_model": "tiny", "lora_config": {"rank": 8}}
            model_id = (await _call(http, "/create_model", create))["model_id"]
            step_times = await _steps(http, model_id, batch, steps)
            say(f"{steps} steps through the API")
            snapshot = {
                "model_id": model_id,
                "seq_id": 2 * (WARMUP + steps) + 1,
                "sampling_session_seq_id": 0,
            }
            sampler = (await _call(http, "/save_weights_for_sampler", snapshot))["sampling_session_id"]
            sample_times = await _samples(http, sampler, batch[0][:8], steps)
    return {
        "api_step_ms": statistics.median(step_times) * 1000,
        "asample_8x16_ms": statistics.median(sample_times) * 1000,
    }


async def _call(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Any:
    """A request that answers with a future, and the future's result."""
    pending = (await http.post(path, json=body)).json()
    return (await http.post("/retrieve_future", json=pending)).json()


async def _steps(http: httpx.AsyncClient, model_id: str, batch: list[list[int]], steps: int) -> list[float]:
    """Seconds per training step (forward_backward + optim_step, both awaited), warm-up included."""
    data = [
        {
            "model_input": {"chunks": [{"type": "encoded_text", "tokens": row[:-1]}]},
            "loss_fn_inputs": {"target_tokens": {"data": row[1:], "dtype": "int64"}},
        }
        for row in batch
    ]
    times = []
    for step in range(WARMUP + steps):
        began = time.perf_counter()
        fb = {
            "model_id": model_id,
            "seq_id": 2 * step + 1,
            "forward_backward_input": {"data": data, "loss_fn": "cross_entropy"},
        }
        backward = (await http.post("/forward_backward", json=fb)).json()
        optim = {"model_id": model_id, "seq_id": 2 * step + 2, "adam_params": {"learning_rate": 1e-3}}
        stepped = (await http.post("/optim_step", json=optim)).json()
        await http.post("/retrieve_future", json=backward)
        await http.post("/retrieve_future", json=stepped)
        times.append(time.perf_counter() - began)
    return times


async def _samples(http: httpx.AsyncClient, sampler: str, prompt: list[int], steps: int) -> list[float]:
    """Seconds per asample of 8 completions of 16 tokens, warm-up included."""
    times = []
    for _ in range(WARMUP + steps):
        began = time.perf_counter()
        asked = {
            "sampling_session_id": sampler,
            "num_samples": 8,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": prompt}]},
            "sampling_params": {"max_tokens": 16, "stop": []},
        }
        await _call(http, "/asample", asked)
        times.append(time.perf_counter() - began)
    return times


def bench_tinker(home: Home, steps: int, rows: int, say: Callable[[str], None]) -> dict[str, float]:
    batch = _batch(rows, 32, 512)

    async def both() -> dict[str, float]:
        # In a worker thread, as the service runs it: on this machine torch in the main thread ran the
        # same step 20x slower under load (its OpenMP team contends with the other processes).
        direct_ms = await anyio.to_thread.run_sync(_direct, home.base("tiny"), batch, steps)
        say(f"{steps} steps in-process")
        api = await _through_api(home, batch, steps, say)
        return {"direct_step_ms": direct_ms, **api, "api_overhead_ratio": api["api_step_ms"] / direct_ms}

    return {"steps": float(steps), "rows": float(rows), **anyio.run(both)}
