"""The Tinker-compatible API against the unmodified SDKs from PyPI, on the tiny base.

`tinker` 0.38 and `mindlab-toolkit` 0.2.0 (which pins tinker 0.22) cannot share one environment, so
deploy/install.sh gives each its own virtualenv (.venv-tinker038, .venv-mint020) and the tests run
tests/tinker_clients/loops.py there as a subprocess, against a server started here on the real
system (actors, log, artifact store). Each SDK runs a supervised loop (the loss falls, the trained
adapter samples what it learnt) and an RL loop (sampling with logprobs, importance-sampling updates,
the reward rises); then the log must hold the facts that put those adapters in the catalog.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from actors.runtime import Backoff
from actors.system import System, running
from events.catalog import Promote, RegisterPolicy
from events.sqlite_log import SqliteLog
from events.tinker import CheckpointSaved, SamplerCreated, TrainingClientCreated
from events.training import RevisionExported, StepCompleted
from mint.api.app import create_app
from mint.auth.tokens import TokenStore
from mint.bases.tiny import create_tiny_base
from mint.catalog.queries import Catalog
from mint.commands.up import serve_http
from mint.home import Home
from mint.serving.torch_engine import TorchEngine
from mint.tinker.app import tinker_routes
from replay.audit import history
from tests.log_contract import read_all
from tests.records import evaluated

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
CLIENT = Path(__file__).parent / "tinker_clients" / "loops.py"


@dataclass
class Server:
    system: System
    url: str
    tokens: TokenStore
    requests: Counter[str]  # by path


class CountRequests:
    """ASGI middleware counting requests by path."""

    def __init__(self, app: ASGIApp, counts: Counter[str]) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.counts[scope["path"]] += 1
        await self.app(scope, receive, send)


@asynccontextmanager
async def tinker_server(home: Home) -> AsyncIterator[Server]:
    """What `mint up --serve tiny` runs: the actors, a torch engine, and one HTTP app with the
    OpenAI-compatible routes and the Tinker API, keys checked against the token store."""
    import uvicorn

    create_tiny_base(home.base("tiny"), seed=0)
    tokens = TokenStore(home.tokens)
    engine = TorchEngine(home.base("tiny"), slots=2)
    async with (
        SqliteLog(home.log, partitions=2) as log,
        running(home, log, backoff=Backoff(0.001, 0.01), engines={"e1": engine}) as system,
        anyio.create_task_group() as tg,
        # Batches of more than 2 datums reach the server in concurrent chunks (tinker 0.38).
        tinker_routes(
            home, log, system.artifacts, partial(Catalog, home.catalog), tokens, chunk_datums=2
        ) as tinker,
    ):
        listener = socket.create_server(("127.0.0.1", 0))
        requests: Counter[str] = Counter()
        app = CountRequests(create_app(system, tokens, tinker=tinker), requests)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        tg.start_soon(lambda: server.serve(sockets=[listener]))
        yield Server(system, f"http://127.0.0.1:{listener.getsockname()[1]}", tokens, requests)
        tg.cancel_scope.cancel()


def sdk_python(venv: str) -> Path:
    python = ROOT / venv / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"{python} is missing: deploy/install.sh creates the SDK environments")
    return python


async def run_client(venv: str, env: dict[str, str], *args: str) -> dict[str, object]:
    # The SDK's own environment; HF_HUB_OFFLINE proves the tokenizer loads without the hub.
    environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "HF_HUB_OFFLINE": "1"}
    environment |= {"TINKER_TELEMETRY": "0", **env}
    with anyio.fail_after(240):
        done = await anyio.run_process(
            [str(sdk_python(venv)), str(CLIENT), *args], env=environment, check=False, cwd="/"
        )
    if done.returncode != 0:
        sys.stderr.write(done.stderr.decode()[-6000:])
        pytest.fail(f"the {venv} client failed (exit {done.returncode}); its stderr is above")
    report: dict[str, object] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return report


async def check_loops_and_facts(server: Server, report: dict[str, object], reader: str) -> None:
    system = server.system
    assert "tiny" in report["bases"]  # type: ignore[operator]
    losses = report["sl_losses"]
    assert isinstance(losses, list)
    assert losses[-1] < 0.3 * losses[0], losses
    assert report["trained_tokens"] == report["answer"]  # greedy sampling from the trained adapter
    assert report["base_tokens"] != report["answer"]  # ... which the base alone does not say
    answer = report["answer"]
    assert isinstance(answer, list)
    assert report["stopped"] == [[answer[:2], "stop"], [answer[:3], "stop"], [answer, "length"]]
    for resumed in ("resumed_forward", "reloaded_forward"):
        assert abs(float(report[resumed]) - float(report["sl_forward"])) < 1e-4  # type: ignore[arg-type]
    assert {"weights/sl-state", "sampler_weights/sl-final"} <= set(report["checkpoints"])  # type: ignore[arg-type]
    assert report["run"] in report["runs"]  # type: ignore[operator]
    assert (report["run_base"], report["user_checkpoints"], report["weights_rank"]) == ("tiny", 2, 8)
    rewards = report["rl_rewards"]
    assert isinstance(rewards, list)
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards
    prompt_logprobs = report["prompt_logprobs"]
    assert isinstance(prompt_logprobs, list) and prompt_logprobs[0] is None
    assert all(isinstance(v, float) and v < 0 for v in prompt_logprobs[1:])
    for loss in ("ppo_loss", "cispo_loss", "dro_loss"):
        assert isinstance(report[loss], float)

    records = [stored.decode() for stored in await read_all(system.log)]
    created = [r for r in records if isinstance(r, TrainingClientCreated)]
    assert len(created) == 3 and all(r.tenant == "acme" and r.base_id == "tiny" for r in created)
    sl_policy = next(r.policy for r in created if r.model_id == report["run"])
    steps = [r for r in records if isinstance(r, StepCompleted) and r.policy == sl_policy]
    assert [s.step for s in steps] == list(range(1, 22))  # 20 in the loop, 1 before the reload
    assert steps[-1].loss < steps[0].loss
    # A sampler checkpoint's revision is named after it and its run (sampler names belong to the run).
    revision = {
        r.path.rsplit("/", 1)[-1]: r.revision
        for r in records
        if isinstance(r, CheckpointSaved) and r.revision
    }
    sl_final = revision["sl-final"]
    assert sl_final is not None and sl_final.startswith("sl-final-")
    exported = {(r.policy, r.revision) for r in records if isinstance(r, RevisionExported)}
    assert exported == {
        (sl_policy, sl_final),
        ("acme/rl-toy", revision["rl-final"]),
    }  # named by user_metadata
    assert any(isinstance(r, SamplerCreated) and r.policy == sl_policy for r in records)
    assert any(isinstance(r, CheckpointSaved) and r.kind == "training" for r in records)
    # The catalog folds them like any trainer's: the policy is registered, the revision listed; it can
    # be evaluated and promoted, and then served by name through the OpenAI-compatible API.
    with anyio.fail_after(30):
        await system.until(lambda: _revision_listed(system.home, sl_policy, sl_final))
    await system.log.append([evaluated(sl_policy, sl_final)])
    await system.log.append([Promote.create(policy=sl_policy, revision=sl_final)])
    with anyio.fail_after(30):
        await system.until(lambda: _pointer(system.home, sl_policy) == sl_final)
        await system.settle()  # the engine host folds the promotion too
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {reader}"}) as http:
        body = {"model": sl_policy, "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}
        with anyio.fail_after(60):
            response = await http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    completion = response.json()
    assert completion["choices"][0]["text"].startswith(" Paris."), completion
    audited = {entry.stored.type for entry in await history(system.log, sl_policy)}
    assert {"TrainingClientCreated", "StepCompleted", "RevisionExported", "RevisionPromoted"} <= audited


def _registered(home: Home, policy: str) -> bool:
    """Whether the catalog knows `policy` at all."""
    catalog = Catalog(home.catalog)
    try:
        return catalog.policy(policy) is not None
    finally:
        catalog.close()


def _pointer(home: Home, policy: str) -> str | None:
    catalog = Catalog(home.catalog)
    try:
        return catalog.resolve(policy)
    finally:
        catalog.close()


def _revision_listed(home: Home, policy: str, revision: str) -> bool:
    catalog = Catalog(home.catalog)
    try:
        return catalog.policy(policy) is not None and revision in {
            r.revision for r in catalog.revisions(policy)
        }
    finally:
        catalog.close()


async def test_tinker_038_supervised_and_rl_loops(tmp_path: Path) -> None:
    async with tinker_server(Home(tmp_path)) as server:
        key = server.tokens.issue("acme", ["trainer", "reader"]).secret
        report = await run_client(".venv-tinker038", {"TINKER_BASE_URL": server.url, "TINKER_API_KEY": key})
        assert report["sdk"] == "0.38.0"
        # The RL batches (32 datums) arrived as 16 concurrent chunks each, and still trained in order.
        assert server.requests["/api/v1/forward_backward"] > 10 * 16
        await check_loops_and_facts(server, report, key)


async def test_mindlab_toolkit_020_supervised_and_rl_loops(tmp_path: Path) -> None:
    async with tinker_server(Home(tmp_path)) as server:
        key = server.tokens.issue("acme", ["trainer", "reader"]).secret
        # MinT's SDK sends `sk-` keys, which work only through the JWT exchange (pjwt_auth_enabled).
        mint_key = "sk-" + key.removeprefix("tml-")
        report = await run_client(
            ".venv-mint020", {"MINT_BASE_URL": server.url, "MINT_API_KEY": mint_key}, "--mint"
        )
        assert report["sdk"] == "0.22.0"
        await check_loops_and_facts(server, report, key)


async def test_malformed_requests_get_a_4xx_that_names_the_problem(tmp_path: Path) -> None:
    async with tinker_server(Home(tmp_path)) as server:
        key = server.tokens.issue("acme", ["trainer"]).secret
        async with httpx.AsyncClient(base_url=server.url + "/api/v1", headers={"X-API-Key": key}) as http:
            session = (await http.post("/create_session", json={})).json()["session_id"]

            async def refused(path: str, body: object, status: int, field: str, **kw: object) -> None:
                response = await http.post(path, json=body, **kw)  # type: ignore[arg-type]
                assert response.status_code == status, response.text
                assert field in response.json()["detail"], response.json()

            await refused("/create_model", {"session_id": session, "base_model": "nope"}, 400, "base_model")
            await refused(
                "/create_model",
                {"session_id": session, "base_model": "tiny", "lora_config": {"rank": 0}},
                400,
                "lora_config.rank",
            )
            await refused("/create_model", {"session_id": session}, 400, "base_model")
            # A training client of an existing policy must be on the policy's base.
            await server.system.log.append([RegisterPolicy.create(policy="acme/elsewhere", base_id="other")])
            with anyio.fail_after(30):
                await server.system.until(lambda: _registered(server.system.home, "acme/elsewhere"))
            await refused(
                "/create_model",
                {"session_id": session, "base_model": "tiny", "user_metadata": {"policy": "elsewhere"}},
                400,
                "user_metadata.policy",
            )
            await refused("/create_model", {"session_id": "sess-x", "base_model": "tiny"}, 404, "session_id")
            created = (
                await http.post("/create_model", json={"session_id": session, "base_model": "tiny"})
            ).json()
            model_id = (await http.post("/retrieve_future", json=created)).json()["model_id"]
            datum = {
                "model_input": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]},
                "loss_fn_inputs": {"target_tokens": {"data": [2, 3, 4], "dtype": "int64"}},
            }
            fb = {"model_id": model_id, "seq_id": 1}
            await refused(
                "/forward_backward",
                {**fb, "forward_backward_input": {"data": [datum], "loss_fn": "magic"}},
                400,
                "loss_fn",
            )
            await refused(
                "/forward_backward",
                {**fb, "seq_id": 2, "forward_backward_input": {"data": [datum], "loss_fn": "ppo"}},
                400,
                "data[0].loss_fn_inputs.logprobs",
            )
            short = {**datum, "loss_fn_inputs": {"target_tokens": {"data": [2], "dtype": "int64"}}}
            await refused(
                "/forward_backward",
                {**fb, "seq_id": 3, "forward_backward_input": {"data": [short], "loss_fn": "cross_entropy"}},
                400,
                "data[0].loss_fn_inputs.target_tokens",
            )
            response = await http.post(
                "/forward_backward", content=b"\x0a\xff", headers={"Content-Type": "application/x-protobuf"}
            )
            assert response.status_code == 400 and "protobuf" in response.json()["detail"]
            await refused("/optim_step", {"model_id": model_id, "seq_id": 4}, 400, "adam_params")
            await refused("/save_weights", {"model_id": model_id, "seq_id": 5, "path": "a/b"}, 400, "path")
            await refused("/load_weights", {"model_id": model_id, "seq_id": 6, "path": "s3://x"}, 400, "path")
            await refused("/retrieve_future", {"request_id": "req-nope"}, 404, "request_id")
            await refused("/get_info", {"model_id": "sess-x:train:0"}, 404, "model_id")
            response = await http.post("/create_model", content=b"{not json")
            assert response.status_code == 400 and "JSON" in response.json()["detail"]
            response = await http.post("/create_session", json={}, headers={"X-API-Key": "wrong"})
            assert response.status_code == 401 and "X-API-Key" in response.json()["detail"]
            # A protobuf batch with an image chunk (not served) is refused and gives its seq_id 7 up.
            mid = model_id.encode()
            chunk = b"\x12\x00"  # Chunk{image: {}}
            image = b"\x0a" + bytes([len(chunk)]) + chunk  # Datum{model_input: [chunk]}
            body = b"\x0a" + bytes([len(mid)]) + mid + b"\x10\x07" + b"\x1a" + bytes([len(image)]) + image
            response = await http.post(
                "/forward_backward", content=body, headers={"Content-Type": "application/x-protobuf"}
            )
            assert response.status_code == 400 and "data[0].model_input" in response.json()["detail"]
            # The refused seq_ids 1-7 did not block the model's queue: seq 8 runs.
            good = {
                **fb,
                "seq_id": 8,
                "forward_backward_input": {"data": [datum], "loss_fn": "cross_entropy"},
            }
            pending = (await http.post("/forward_backward", json=good)).json()
            result = (await http.post("/retrieve_future", json=pending)).json()
            assert result["metrics"]["loss:sum"] > 0
            # A sampler checkpoint is a revision: a second one under the same name is refused.
            save = {"model_id": model_id, "path": "r1"}
            first = (await http.post("/save_weights_for_sampler", json={**save, "seq_id": 9})).json()
            again = (await http.post("/save_weights_for_sampler", json={**save, "seq_id": 10})).json()
            assert (await http.post("/retrieve_future", json=first)).json()["path"].endswith("/r1")
            failed = (await http.post("/retrieve_future", json=again)).json()
            assert failed["category"] == "user" and "already exists" in failed["error"]


def json_datum(tokens: list[int]) -> dict[str, object]:
    return {
        "model_input": {"chunks": [{"type": "encoded_text", "tokens": tokens[:-1]}]},
        "loss_fn_inputs": {"target_tokens": {"data": tokens[1:], "dtype": "int64"}},
    }


async def new_model(http: httpx.AsyncClient) -> str:
    session = (await http.post("/create_session", json={})).json()["session_id"]
    created = (await http.post("/create_model", json={"session_id": session, "base_model": "tiny"})).json()
    model_id: str = (await http.post("/retrieve_future", json=created)).json()["model_id"]
    return model_id


async def test_requests_of_a_model_run_in_seq_id_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tinker_server(Home(tmp_path)) as server:
        key = server.tokens.issue("acme", ["trainer"]).secret
        async with httpx.AsyncClient(base_url=server.url + "/api/v1", headers={"X-API-Key": key}) as http:
            model_id = await new_model(http)
            batch = {"data": [json_datum([5, 6, 7, 8, 9, 10])], "loss_fn": "cross_entropy"}
            # Sent last-first, as the SDK sends the chunks of a large batch: forward (seq 3) must see
            # the update of optim_step (seq 2), which must see the gradients of seq 1.
            forward = {"model_id": model_id, "seq_id": 3, "forward_input": batch}
            retry = {"X-Idempotency-Key": "stainless-python-retry-1"}  # as the SDK sends it
            after = await http.post("/forward", json=forward, headers=retry)
            # The SDK's retry of a request (same idempotency key) gets the first reply: one future.
            again = await http.post("/forward", json=forward, headers=retry)
            assert again.json() == after.json()
            monkeypatch.setattr("mint.tinker.routes.LONG_POLL_S", 0.05)
            pending = (await http.post("/retrieve_future", json=after.json())).json()
            assert pending == {
                "type": "try_again",
                "request_id": after.json()["request_id"],
                "queue_state": "active",
            }
            monkeypatch.setattr("mint.tinker.futures.PAUSE_AT_PENDING", 1)
            paused = (await http.post("/retrieve_future", json=after.json())).json()
            assert paused["queue_state"] == "paused_capacity"
            monkeypatch.undo()
            adam = {"learning_rate": 0.05}
            step = await http.post(
                "/optim_step", json={"model_id": model_id, "seq_id": 2, "adam_params": adam}
            )
            before = await http.post(
                "/forward_backward", json={"model_id": model_id, "seq_id": 1, "forward_backward_input": batch}
            )
            results = [
                (await http.post("/retrieve_future", json=r.json())).json() for r in (before, step, after)
            ]
            assert results[1]["metrics"]["step:max"] == 1.0
            assert results[2]["metrics"]["loss:sum"] < results[0]["metrics"]["loss:sum"]
            # An unnamed sampler snapshot lives until its session finishes.
            snap = {"model_id": model_id, "seq_id": 4, "sampling_session_seq_id": 0}
            pending = (await http.post("/save_weights_for_sampler", json=snap)).json()
            sampler_id = (await http.post("/retrieve_future", json=pending)).json()["sampling_session_id"]
            assert (await http.get(f"/samplers/{sampler_id}")).json()["base_model"] == "tiny"
            snapshots = list((tmp_path / "tinker" / "checkpoints").glob("*/sampler_weights/.snapshot-*"))
            assert len(snapshots) == 1
            await http.post(f"/sessions/{model_id.split(':')[0]}/finish", json={})
            assert (await http.get(f"/samplers/{sampler_id}")).status_code == 404
            assert not snapshots[0].exists()


async def test_tenants_are_walls_and_roles_are_checked(tmp_path: Path) -> None:
    async with tinker_server(Home(tmp_path)) as server:
        acme = server.tokens.issue("acme", ["trainer"]).secret
        globex = server.tokens.issue("globex", ["trainer"]).secret
        reader = server.tokens.issue("acme", ["reader"]).secret
        async with httpx.AsyncClient(base_url=server.url + "/api/v1", headers={"X-API-Key": acme}) as http:
            model_id = await new_model(http)
            other = {"X-API-Key": globex}
            response = await http.post("/get_info", json={"model_id": model_id}, headers=other)
            assert response.status_code == 404 and model_id in response.json()["detail"]
            pending = await http.post(
                "/forward",
                json={
                    "model_id": model_id,
                    "seq_id": 1,
                    "forward_input": {"data": [json_datum([5, 6, 7])], "loss_fn": "cross_entropy"},
                },
            )
            response = await http.post("/retrieve_future", json=pending.json(), headers=other)
            assert response.status_code == 404  # another tenant's future is nobody's
            assert (await http.post("/retrieve_future", json=pending.json())).json()["metrics"]
            response = await http.get("/training_runs", headers=other)
            assert response.json()["training_runs"] == []
            assert [
                r["training_run_id"] for r in (await http.get("/training_runs")).json()["training_runs"]
            ] == [model_id]
            session = (await http.post("/create_session", json={}, headers={"X-API-Key": reader})).json()
            response = await http.post(
                "/create_model",
                json={"session_id": session["session_id"], "base_model": "tiny"},
                headers={"X-API-Key": reader},
            )
            assert response.status_code == 403 and "trainer" in response.json()["detail"]
            # Finishing its session frees the training client.
            session_id = model_id.split(":")[0]
            assert (
                await http.post(f"/sessions/{session_id}/finish", json={"reason": {"type": "success"}})
            ).is_success
            assert (await http.post("/get_info", json={"model_id": model_id})).status_code == 404
            # The JWT exchange (what MinT's SDK does with `sk-` keys): honoured until the token is revoked.
            issued = server.tokens.issue("acme", ["reader"])
            sk_key = {"X-API-Key": "sk-" + issued.secret.removeprefix("tml-")}
            jwt = (await http.post("/auth/token", json={}, headers=sk_key)).json()["jwt"]
            assert (
                await http.post("/create_session", json={}, headers={"X-API-Key": jwt})
            ).status_code == 200
            server.tokens.revoke(issued.token_id)
            response = await http.post("/create_session", json={}, headers={"X-API-Key": jwt})
            assert response.status_code == 401 and "invalid_token" in response.headers["WWW-Authenticate"]


async def test_mint_up_serves_the_tinker_api_beside_the_others(tmp_path: Path) -> None:
    home = Home(tmp_path)
    create_tiny_base(home.base("tiny"), seed=0)
    async with (
        SqliteLog(home.log, partitions=2) as log,
        running(home, log, backoff=Backoff(0.001, 0.01)) as system,
        anyio.create_task_group() as tg,
    ):
        address = await tg.start(serve_http, system, "127.0.0.1", 0)
        admin = {"X-API-Key": home.admin_token.read_text().strip()}  # written by the first start
        async with httpx.AsyncClient(base_url=address, headers=admin) as http:
            capabilities = (await http.get("/api/v1/get_server_capabilities")).json()
            assert capabilities["supported_models"] == [
                {
                    "model_name": "tiny",
                    "base_id": "tiny",
                    "aliases": [],
                    "max_context_length": 512,
                    "trainable": True,
                    "sampleable": True,
                }
            ]
            assert (await http.post("/api/v1/client/config", json={})).json()["pjwt_auth_enabled"] is True
            # The operator's admin token belongs to no tenant, so it trains nothing.
            session = (await http.post("/api/v1/create_session", json={})).json()["session_id"]
            body = {"session_id": session, "base_model": "tiny"}
            response = await http.post("/api/v1/create_model", json=body)
            assert response.status_code == 403 and "tenant's token" in response.json()["detail"]
            assert (await http.get("/healthz")).status_code == 200
        tg.cancel_scope.cancel()
