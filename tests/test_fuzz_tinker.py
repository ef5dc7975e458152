"""The main Tinker routes fuzzed (tests/fuzz_strategies.py) on the real `mint up` app (uvicorn, the
actors, the tiny base): a body broken in one way is a JSON 4xx in the routes' own shape whose `field`
names a place on the path to the fault, never a 500; a refused request appends nothing; and the
server stays up: its model answers, and a training request in the next turn runs (a refused one gave
its seq_id up whenever its body still said which it was).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import example, given

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from events.tinker import CheckpointSaved, SamplerCreated, TrainingClientCreated
from mint.home import Home
from mint.tinker import wire
from tests.fuzz_strategies import SEQ, TinkerBody, bad_tinker_body, fuzz_settings, tinker_templates, top_field
from tests.test_fuzz_ingest import stored_since
from tests.test_tinker_sdks import Server, new_model, tinker_server

pytestmark = pytest.mark.anyio
# What a Tinker request appends; a refused one appends none of them.
TINKER_FACTS = {cls.__name__ for cls in (TrainingClientCreated, CheckpointSaved, SamplerCreated)}
DEEP = b"[" * 100_000 + b"]" * 100_000
SEQUENCED = {"/forward_backward", "/forward", "/optim_step", "/save_weights", "/save_weights_for_sampler"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Trainer:
    """A trainer's client of the server with a live session, model and sampler, and the model's next
    seq_id."""

    server: Server
    http: httpx.AsyncClient
    session: str
    model: str
    sampler: str
    seq: int = 1


@pytest.fixture(scope="module")
async def trainer(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Trainer]:
    # One server for every example of the module: that it stays up through them is checked too.
    async with tinker_server(Home(Path(tmp_path_factory.mktemp("fuzz-tinker")))) as server:
        key = server.tokens.issue("acme", ["trainer"]).secret
        headers = {"X-API-Key": key}
        async with httpx.AsyncClient(base_url=server.url + "/api/v1", headers=headers, timeout=120) as http:
            model = await new_model(http)
            session = (await http.post("/create_session", json={})).json()["session_id"]
            created = await http.post(
                "/create_sampling_session", json={"session_id": session, "base_model": "tiny"}
            )
            yield Trainer(server, http, session, model, created.json()["sampling_session_id"])


async def result(trainer: Trainer, pending: httpx.Response) -> dict[str, Any]:
    assert pending.status_code == 200, pending.text[:600]
    with anyio.fail_after(60):  # a turn never given up would wait here forever
        reply: dict[str, Any] = (await trainer.http.post("/retrieve_future", json=pending.json())).json()
    return reply


@fuzz_settings(examples=60)
@given(bad=bad_tinker_body())
# Found by the fuzzer: a body missing a required member was refused naming `body`, not the member.
@example(TinkerBody("/create_model", b'{"base_model": "tiny"}', ("session_id",), "drop-required"))
@example(
    TinkerBody("/optim_step", b'{"model_id": "fuzz-model", "seq_id": %d}' % SEQ, ("adam_params",), "drop")
)
# A body 100,000 levels deep in a typed field is still named by it.
@example(
    TinkerBody(
        "/forward",
        b'{"model_id": "fuzz-model", "seq_id": %d, "forward_input": %s}'
        % (SEQ, b"[" * 100_000 + b"]" * 100_000),
        ("forward_input",),
        "deep",
    )
)
async def test_a_bad_tinker_body_is_a_4xx_naming_the_field(trainer: Trainer, bad: TinkerBody) -> None:
    raw = bad.over(trainer.session, trainer.model, trainer.sampler, trainer.seq)
    before = await trainer.server.system.log.end_offsets()
    response = await trainer.http.post(bad.route, content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, (bad.how, bad.route, response.status_code, response.text[:600])
    assert response.headers["content-type"] == "application/json", response.text[:200]
    refusal = response.json()
    assert top_field(refusal["field"].replace("[", ".")) in bad.names, (
        bad.how,
        bad.route,
        bad.names,
        refusal,
    )
    assert refusal["detail"].startswith(f"{refusal['field']}: "), refusal
    appended = {stored.type for stored in await stored_since(trainer.server.system.log, before)}
    assert not appended & TINKER_FACTS, "a refused request appended"
    # A refused training request gave its turn up whenever its body still said which it was.
    if bad.route in SEQUENCED and wire.sequence_ids(raw) == (trainer.model, trainer.seq):
        trainer.seq += 1
    # The server is still up: the model answers, and the next turn runs.
    info = await trainer.http.post("/get_info", json={"model_id": trainer.model})
    assert info.status_code == 200, info.text[:600]
    forward = tinker_templates(trainer.session, trainer.model, trainer.sampler, trainer.seq)["/forward"]
    ran = await result(trainer, await trainer.http.post("/forward", json=forward))
    assert ran["loss_fn_output_type"], ran
    trainer.seq += 1
