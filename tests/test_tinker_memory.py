"""What a Tinker API replica holds per training client: at most its slot budget of clients in slots on
a base (the least recently used idle ones evicted to disk), and an evicted client resumes exactly as it
was (weights, AdamW moments, gradients accumulated since its last step). Before the budget, every
client the chaos workload created kept its slot and optimizer state until its session went idle, and
an API replica's memory grew by megabytes per client. Over the route handlers, a real SQLite log, the
actors (the catalog registers each client's policy) and the tiny base."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

import anyio
import torch

from actors.runtime import Backoff
from actors.system import running
from events.sqlite_log import SqliteLog
from mint.auth.tokens import TokenStore
from mint.bases.tiny import create_tiny_base
from mint.catalog.queries import Catalog
from mint.home import Home
from mint.tinker import routes
from mint.tinker.auth import Grant, Keys
from mint.tinker.endpoint import Api
from mint.tinker.residency import SLOTS_ENV, slots_from_env
from mint.tinker.service import TinkerService
from mint.tinker.training import TrainingModel
from tests.test_tinker_routes import request

pytestmark = pytest.mark.anyio
ACME = Grant("tok-acme", "acme", frozenset({"reader", "trainer"}))
DATUM = {
    "model_input": {"chunks": [{"type": "encoded_text", "tokens": [5, 6, 7]}]},
    "loss_fn_inputs": {"target_tokens": {"data": [6, 7, 8], "dtype": "int64"}},
}


@asynccontextmanager
async def api_with_slots(root: Path, training_slots: int) -> AsyncIterator[Api]:
    home = Home(root)
    create_tiny_base(home.base("tiny"), seed=0)
    async with (
        SqliteLog(home.log) as log,
        running(home, log, backoff=Backoff(0.001, 0.01)) as system,
        anyio.create_task_group() as tg,
    ):
        catalog = partial(Catalog, home.catalog)
        service = TinkerService(home, log, system.artifacts, catalog, training_slots=training_slots)
        await tg.start(service.run)
        yield Api(service, Keys(TokenStore(home.tokens), home.root / "jwt.key"))
        tg.cancel_scope.cancel()


async def settled(api: Api, reply: dict[str, Any]) -> dict[str, Any]:
    with anyio.fail_after(120):
        while True:
            answer = await routes.retrieve_future(api, request({"request_id": reply["request_id"]}), ACME)
            assert isinstance(answer, dict)
            if answer.get("type") != "try_again":
                assert "error" not in answer, answer
                return answer


async def new_client(api: Api, seed: int = 0) -> str:
    session = (await routes.create_session(api, request({}), ACME))["session_id"]
    body = {"session_id": session, "base_model": "tiny", "lora_config": {"rank": 4, "seed": seed}}
    return str((await settled(api, await routes.create_model(api, request(body), ACME)))["model_id"])


async def forward_backward(api: Api, model_id: str, seq_id: int) -> dict[str, Any]:
    batch = {"data": [DATUM], "loss_fn": "cross_entropy"}
    body = {"model_id": model_id, "seq_id": seq_id, "forward_backward_input": batch}
    return await settled(api, await routes.forward_backward(api, request(body), ACME))


async def forward(api: Api, model_id: str, seq_id: int) -> dict[str, Any]:
    body = {
        "model_id": model_id,
        "seq_id": seq_id,
        "forward_input": {"data": [DATUM], "loss_fn": "cross_entropy"},
    }
    return await settled(api, await routes.forward(api, request(body), ACME))


async def optim_step(api: Api, model_id: str, seq_id: int) -> dict[str, Any]:
    body = {"model_id": model_id, "seq_id": seq_id, "adam_params": {"learning_rate": 0.01}}
    return await settled(api, await routes.optim_step(api, request(body), ACME))


def slots_on_base(api: Api) -> int:
    return len(api.service.bases._resident["tiny"].multi.slots)


def state_of(model: TrainingModel) -> dict[str, torch.Tensor]:
    """Everything a client resumes from: its slot, AdamW moments and accumulated gradients."""
    state = dict(model.base.multi.state(model.model_id))
    for index, entry in model.optimizer.state_dict()["state"].items():
        state |= {f"adam.{index}.{k}": torch.as_tensor(v).clone() for k, v in entry.items()}
    for index, param in enumerate(model.parameters):
        if param.grad is not None:
            state[f"grad.{index}"] = param.grad.clone()
    return state


async def test_the_chaos_workloads_clients_hold_at_most_the_slot_budget(tmp_path: Path) -> None:
    async with api_with_slots(tmp_path, training_slots=2) as api:
        for _ in range(6):  # the workload's Tinker sequence; nothing is ever deleted
            model_id = await new_client(api)
            await forward_backward(api, model_id, 1)
            await optim_step(api, model_id, 2)
            assert slots_on_base(api) <= 2
        assert len(api.service.clients.models) == 6  # every client is still there to be used
        assert len(api.service.residency.resident) == 2


async def test_an_evicted_client_resumes_with_its_weights_moments_and_gradients(tmp_path: Path) -> None:
    async with api_with_slots(tmp_path, training_slots=1) as api:
        first = await new_client(api, seed=7)
        await forward_backward(api, first, 1)
        await optim_step(api, first, 2)
        await forward_backward(api, first, 3)  # gradients pending: no step yet
        model = api.service.clients.models[first]
        before = state_of(model)
        expected_norm = float(
            torch.linalg.vector_norm(torch.stack([before[k].norm() for k in before if k.startswith("grad.")]))
        )

        second = await new_client(api)
        await forward_backward(api, second, 1)
        assert model.resident_optimizer is None and first not in model.base.multi.slots
        evicted = api.service.checkpoints.directory(model.evicted_path)
        assert (evicted / "info.json").is_file()

        await forward(api, first, 4)  # reloads it (and evicts the second)
        after = state_of(model)
        assert sorted(after) == sorted(before)
        for key, value in before.items():
            assert torch.equal(after[key], value), key
        assert api.service.residency.resident == [first] and slots_on_base(api) == 1
        stepped = await optim_step(api, first, 5)
        assert stepped["metrics"]["grad_norm:mean"] == pytest.approx(expected_norm, rel=1e-5)
        assert stepped["metrics"]["step:max"] == 2.0

        await api.service.finish_session(first.split(":")[0])  # its evicted state goes with it
        await api.service.finish_session(second.split(":")[0])
        assert not api.service.checkpoints.directory(model.evicted_path).exists()
        assert not any(tmp_path.glob("tinker/checkpoints/*/weights/.evicted"))


def test_the_slot_budget_is_a_whole_number_named_in_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SLOTS_ENV, raising=False)
    assert slots_from_env() == 16
    monkeypatch.setenv(SLOTS_ENV, "3")
    assert slots_from_env() == 3
    for bad in ("0", "-1", "many"):
        monkeypatch.setenv(SLOTS_ENV, bad)
        with pytest.raises(ValueError, match=SLOTS_ENV):
            slots_from_env()


def test_mint_up_and_the_api_actor_refuse_a_slot_budget_below_one() -> None:
    from click.testing import CliRunner

    from mint.commands.actor import actor
    from mint.commands.up import up

    for command, args in ((up, []), (actor, ["api", "--replica", "api-1"])):
        refused = CliRunner().invoke(command, [*args, "--tinker-training-slots", "0"])
        assert refused.exit_code == 2 and "'--tinker-training-slots': 0 is not in the range" in refused.output
