"""The Tinker API against hostile and malformed requests, on the real `mint up` app (uvicorn, actors,
log, the tiny base): every malformed body is a JSON 4xx naming the field (never a plain-text 500), a
refused training request gives its turn (seq_id) up so the client's next request runs, and another
tenant's ids answer exactly as missing ones and change nothing of theirs.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from mint.home import Home
from tests.test_tinker_sdks import json_datum, new_model, sdk_python, tinker_server

pytestmark = pytest.mark.anyio
PROTOBUF = {"Content-Type": "application/x-protobuf"}
CONTEXT = VOCAB = 512  # the tiny base's
BATCH = {"data": [json_datum([5, 6, 7])], "loss_fn": "cross_entropy"}


# -- a ForwardBackwardRequest by hand (field numbers as in the SDK's tinker_public_pb2) ---------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s as protobuf writes them
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def pb(number: int, value: bytes | int) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def int64s(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}q", *values)


def pb_tensor(data: bytes, dtype: int, shape: list[int]) -> bytes:
    """A dense TensorData: dtype 1 float32, 2 int64."""
    return pb(1, data) + pb(3, dtype) + pb(4, b"".join(varint(d) for d in shape))


def pb_sparse_targets(shape: list[int], crow: list[int], col: list[int]) -> bytes:
    """Three int64 target tokens as a sparse (CSR) TensorData."""
    held = pb(1, int64s(2, 3, 4)) + pb(2, int64s(*crow)) + pb(3, int64s(*col))
    return pb(2, held) + pb(3, 2) + pb(4, b"".join(varint(d) for d in shape))


def pb_datum(inputs: Mapping[str, bytes], tokens: bytes = struct.pack("<3i", 1, 2, 3)) -> bytes:
    chunk = pb(1, pb(1, tokens))  # Chunk{encoded_text{tokens}}
    return pb(1, chunk) + b"".join(pb(2, pb(1, name.encode()) + pb(2, t)) for name, t in inputs.items())


TARGETS = pb_tensor(int64s(2, 3, 4), 2, [3])


def pb_request(model_id: str, seq_id: int, datums: list[bytes], loss_fn: bytes = b"cross_entropy") -> bytes:
    return pb(1, model_id.encode()) + pb(2, seq_id) + b"".join(pb(3, d) for d in datums) + pb(4, loss_fn)


def pb_good(model_id: str, seq_id: int) -> bytes:
    return pb_request(model_id, seq_id, [pb_datum({"target_tokens": TARGETS})])


# -- helpers -------------------------------------------------------------------------------------------


def fb(model_id: str, seq_id: int, datum: Mapping[str, object]) -> dict[str, Any]:
    batch = {"data": [datum], "loss_fn": "cross_entropy"}
    return {"model_id": model_id, "seq_id": seq_id, "forward_backward_input": batch}


def weighted(weights: dict[str, Any]) -> dict[str, object]:
    """A 4-token datum whose `weights` tensor is the hostile part."""
    datum = json_datum([5, 6, 7, 8, 9])
    targets = {"data": [6, 7, 8, 9], "dtype": "int64"}
    return {**datum, "loss_fn_inputs": {"target_tokens": targets, "weights": weights}}


def with_targets(targets: dict[str, Any]) -> dict[str, object]:
    return {**json_datum([5, 6, 7]), "loss_fn_inputs": {"target_tokens": targets}}


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def refused(response: httpx.Response, status: int, field: str) -> None:
    """A JSON error in the routes' own shape whose detail names `field`."""
    assert response.headers["content-type"] == "application/json", response.text[:200]
    assert response.status_code == status, response.text[:400]
    assert field in response.json()["detail"], response.json()


async def result(http: httpx.AsyncClient, pending: httpx.Response) -> dict[str, Any]:
    assert pending.status_code == 200, pending.text
    with anyio.fail_after(60):
        reply: dict[str, Any] = (await http.post("/retrieve_future", json=pending.json())).json()
    return reply


# -- the tests -------------------------------------------------------------------------------------------


async def test_hostile_training_bodies_get_a_400_naming_the_field_and_give_their_turn_up(
    tmp_path: Path,
) -> None:
    async with tinker_server(Home(tmp_path)) as server:
        key = server.tokens.issue("acme", ["trainer"]).secret
        async with httpx.AsyncClient(base_url=server.url + "/api/v1", headers={"X-API-Key": key}) as http:
            model_id = await new_model(http)
            pair = {"data": [1.0, 1.0], "dtype": "float32", "sparse_col_indices": [0, 1]}
            hostile_json: list[tuple[Mapping[str, object], str]] = [
                (weighted({**pair, "shape": [-1, 2], "sparse_crow_indices": [0, 2]}), "weights.shape"),
                (weighted({**pair, "shape": [2, 2], "sparse_crow_indices": [0, 9, 2]}), "crow_indices"),
                (
                    weighted(
                        {
                            **pair,
                            "shape": [2, 2],
                            "sparse_crow_indices": [0, 1, 2],
                            "sparse_col_indices": [0, 7],
                        }
                    ),
                    "weights.sparse_col_indices",
                ),
                (weighted({**pair, "shape": [10**7, 10**7], "sparse_crow_indices": [0, 2]}), "weights.shape"),
                (weighted({"data": [1.0] * 4, "shape": [10**7, 10**7]}), "weights.shape"),
                (weighted({"data": [1.0] * 4, "shape": [2**62, 2**62]}), "weights.shape"),
                (weighted({"data": [1.0] * 4, "shape": [2**63]}), "[...].shape[0]"),  # past int64
                (weighted({"data": [1e300, 0, 0, 0]}), "data[0].loss_fn_inputs.weights"),  # inf as float32
                (with_targets({"data": [1e20, 0], "dtype": "int64"}), "target_tokens"),
                (with_targets({"data": [VOCAB, 1], "dtype": "int64"}), "target_tokens"),
                (json_datum([5, -1, 7]), "chunks[0].tokens[1]"),
                (json_datum([5, VOCAB, 7]), "data[0].model_input"),
                (json_datum([5] * (CONTEXT + 2)), "data[0].model_input"),
            ]
            seq = 0
            for datum, field in hostile_json:
                seq += 1
                refused(await http.post("/forward_backward", json=fb(model_id, seq, datum)), 400, field)
            # 100k-deep JSON in a field the decoder would skip: named where it passes 64 levels.
            seq += 1
            body = f'{{"model_id": "{model_id}", "seq_id": {seq}, "extra": {{"a": {deep(100_000)}}}}}'
            refused(await http.post("/forward", content=body), 400, "extra.a" + "[0]" * 62 + ":")
            nan = pb_tensor(struct.pack("<3f", 1, float("nan"), 1), 1, [3])
            hostile_proto: list[tuple[bytes, str]] = [
                (
                    pb_datum({"target_tokens": pb_sparse_targets([-1, 2], [0, 3], [0, 1, 2])}),
                    "target_tokens.shape",
                ),
                (
                    pb_datum({"target_tokens": pb_sparse_targets([3, 1], [0, 1, 2, 7], [0, 0, 0])}),
                    "crow_indices",
                ),
                (
                    pb_datum({"target_tokens": pb_sparse_targets([3, 1], [0, 1, 2, 3], [0, 0, 5])}),
                    "col_indices",
                ),
                (
                    pb_datum({"target_tokens": pb_sparse_targets([10**7, 10**7], [0, 3], [0, 1, 2])}),
                    "tokens.shape",
                ),
                (pb_datum({"target_tokens": pb_tensor(int64s(2, 3, 4), 2, [10**7, 10**7])}), "tokens.shape"),
                (pb_datum({"target_tokens": pb_tensor(b"\x00" * 7, 2, [])}), "target_tokens"),
                (pb_datum({"target_tokens": TARGETS, "weights": nan}), "weights"),
                (pb_datum({"target_tokens": TARGETS}, tokens=b"\x01\x00\x00"), "data[0].model_input"),
            ]
            for datum_bytes, field in hostile_proto:
                seq += 1
                response = await http.post(
                    "/forward_backward", content=pb_request(model_id, seq, [datum_bytes]), headers=PROTOBUF
                )
                refused(response, 400, field)
            seq += 1
            not_utf8 = pb_request(model_id, seq, [pb_datum({"target_tokens": TARGETS})], b"\xff\xfe")
            refused(await http.post("/forward_backward", content=not_utf8, headers=PROTOBUF), 400, "loss_fn")
            seq += 1
            config = pb(5, pb(1, b"beta") + b"\x10" + b"\xff" * 10 + b"\x01")  # an 11-byte varint
            long_varint = pb_good(model_id, seq) + config
            refused(
                await http.post("/forward_backward", content=long_varint, headers=PROTOBUF), 400, "varint"
            )
            # Ids that cannot be a turn are refused as such (and there is no turn to give up).
            refused(
                await http.post("/forward_backward", content=pb_good(model_id, 0), headers=PROTOBUF),
                400,
                "seq_id",
            )
            refused(
                await http.post("/forward_backward", json=fb(model_id, 2**63, json_datum([5, 6, 7]))),
                400,
                "seq_id",
            )
            # Every refused seq_id was given up: the next requests run at once, in JSON and in protobuf.
            seq += 1
            ran = await result(
                http, await http.post("/forward_backward", json=fb(model_id, seq, json_datum([5, 6, 7])))
            )
            assert ran["metrics"]["loss:sum"] > 0, ran
            seq += 1
            as_json = {**PROTOBUF, "Accept": "application/json"}
            pending = await http.post("/forward_backward", content=pb_good(model_id, seq), headers=as_json)
            assert (await result(http, pending))["metrics"]["loss:sum"] > 0


async def test_hostile_bodies_elsewhere_get_a_4xx_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tinker_server(Home(tmp_path)) as server:
        key = server.tokens.issue("acme", ["trainer"]).secret
        async with httpx.AsyncClient(base_url=server.url + "/api/v1", headers={"X-API-Key": key}) as http:
            deep_metadata = f'{{"user_metadata": {{"k": {deep(100_000)}}}}}'
            refused(await http.post("/create_session", content=deep_metadata), 400, "user_metadata.k[0]")
            session = (await http.post("/create_session", json={})).json()["session_id"]
            create = {"session_id": session, "base_model": "tiny"}
            for body, field in [
                ({**create, "lora_config": {"rank": 10**30}}, "lora_config.rank"),
                ({**create, "lora_config": {"rank": 8, "seed": 2**64}}, "lora_config.seed"),
                ({**create, "model_seq_id": -1}, "model_seq_id"),
            ]:
                refused(await http.post("/create_model", json=body), 400, field)
            # A create_model refused for capacity (429) leaves nothing behind: its retry creates it.
            monkeypatch.setattr("mint.tinker.futures.REFUSE_AT_PENDING", 0)
            refused(await http.post("/create_model", json=create), 429, "request")
            monkeypatch.undo()
            assert "model_id" in await result(http, await http.post("/create_model", json=create))
            for path in ("tinker://../weights/x", "tinker://./weights/x", "tinker://a/b/c/d"):
                refused(await http.post("/weights_info", json={"tinker_path": path}), 400, "tinker_path")
            sampler = await http.post("/create_sampling_session", json=create)
            sample = {
                "sampling_session_id": sampler.json()["sampling_session_id"],
                "prompt": {"chunks": [{"tokens": [1, 2, 3]}]},
                "sampling_params": {"max_tokens": 4},
            }
            for body, field in [
                ({**sample, "num_samples": 10**6}, "num_samples"),
                ({**sample, "num_samples": 10**30}, "num_samples"),
                ({**sample, "sampling_params": {"max_tokens": 10**30}}, "sampling_params.max_tokens"),
                ({**sample, "sampling_params": {"max_tokens": 10**6}}, "sampling_params.max_tokens"),
                ({**sample, "sampling_params": {"seed": 2**64}}, "sampling_params.seed"),
                ({**sample, "sampling_params": {"stop": [2**64]}}, "sampling_params.stop[0]"),
                ({**sample, "prompt": {"chunks": [{"tokens": [1] * CONTEXT}]}}, "prompt:"),
                ({**sample, "prompt": {"chunks": [{"tokens": [1, VOCAB]}]}}, "prompt:"),
                ({**sample, "prompt": {"chunks": [{"tokens": [2**40]}]}}, "prompt.chunks[0].tokens[0]"),
            ]:
                refused(await http.post("/asample", json=body), 400, field)
            for query, field in [
                ("limit=abc", "limit"),
                (f"limit={10**6}", "limit"),
                ("offset=-1", "offset"),
                ("offset=" + "9" * 5000, "offset"),
            ]:
                refused(await http.get(f"/training_runs?{query}"), 400, field)
            model_id = await new_model(http)
            step = {"model_id": model_id, "seq_id": 1}
            for adam, field in [
                ('{"beta2": 1.0}', "adam_params.beta2"),
                ('{"eps": -1}', "adam_params.eps"),
                ('{"learning_rate": 1e999}', "adam_params.learning_rate"),
            ]:
                raw = f'{{"model_id": "{model_id}", "seq_id": 1, "adam_params": {adam}}}'
                refused(await http.post("/optim_step", content=raw), 400, field)
            load = {"model_id": model_id, "path": "tinker://x/weights/y"}
            refused(await http.post("/load_weights", json=load), 400, "seq_id")
            stepped = await result(
                http, await http.post("/optim_step", json={**step, "seq_id": 2, "adam_params": {}})
            )
            assert stepped["metrics"]["step:max"] == 1.0


async def test_an_unforeseen_failure_is_a_json_500_and_gives_the_turn_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tinker_server(Home(tmp_path)) as server:
        key = server.tokens.issue("acme", ["trainer"]).secret
        async with httpx.AsyncClient(base_url=server.url + "/api/v1", headers={"X-API-Key": key}) as http:
            model_id = await new_model(http)

            def broken(*args: object) -> None:
                raise RuntimeError("a bug nobody foresaw")

            monkeypatch.setattr("mint.tinker.models.TrainingClients.optim_step", broken)
            step = {"model_id": model_id, "seq_id": 1, "adam_params": {}}
            refused(await http.post("/optim_step", json=step), 500, "request")
            monkeypatch.undo()
            assert (await result(http, await http.post("/optim_step", json={**step, "seq_id": 2})))["metrics"]


async def test_another_tenants_ids_answer_as_missing_ones_and_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tinker_server(Home(tmp_path)) as server:
        base = server.url + "/api/v1"
        key = {
            tenant: {"X-API-Key": server.tokens.issue(tenant, ["trainer"]).secret}
            for tenant in ("acme", "globex")
        }
        globex_reader = {"X-API-Key": server.tokens.issue("globex", ["reader"]).secret}
        async with (
            httpx.AsyncClient(base_url=base, headers=key["acme"]) as acme,
            httpx.AsyncClient(base_url=base, headers=key["globex"]) as globex,
        ):
            model_id = await new_model(acme)
            session = model_id.split(":")[0]
            save = {"model_id": model_id, "seq_id": 1, "path": "kept"}
            checkpoint = (await result(acme, await acme.post("/save_weights", json=save)))["path"]
            sampling = {"session_id": session, "base_model": "tiny"}
            sampler = (await acme.post("/create_sampling_session", json=sampling)).json()[
                "sampling_session_id"
            ]
            forwarded = await acme.post(
                "/forward", json={"model_id": model_id, "seq_id": 2, "forward_input": BATCH}
            )
            await result(acme, forwarded)
            future = forwarded.json()
            globex_model = await new_model(globex)
            globex_session = globex_model.split(":")[0]

            # Each request names acme's thing, then the same with ids nobody has (every id acme's
            # session handed out starts with the session's).
            missing = {session: "sess-0000000000", future["request_id"]: "req-999-00000000"}

            def swapped(value: Any) -> Any:
                if isinstance(value, str):
                    for theirs, nobodys in missing.items():
                        value = value.replace(theirs, nobodys)
                    return value
                if isinstance(value, dict):
                    return {k: swapped(v) for k, v in value.items()}
                return value

            turn = {"model_id": model_id, "seq_id": 3}
            prompt = {"chunks": [{"tokens": [1]}]}
            probes: list[tuple[str, str, Any]] = [
                ("POST", "/session_heartbeat", {"session_id": session}),
                ("POST", f"/sessions/{session}/finish", {}),
                ("POST", "/create_model", {"session_id": session, "base_model": "tiny"}),
                ("POST", "/create_sampling_session", {"session_id": session, "base_model": "tiny"}),
                (
                    "POST",
                    "/create_sampling_session",
                    {"session_id": globex_session, "model_path": checkpoint},
                ),
                ("POST", "/get_info", {"model_id": model_id}),
                ("POST", "/forward_backward", {**turn, "forward_backward_input": BATCH}),
                ("POST", "/forward", {**turn, "forward_input": BATCH}),
                ("POST", "/optim_step", {**turn, "adam_params": {}}),
                ("POST", "/save_weights", {**turn, "path": "mine"}),
                ("POST", "/save_weights_for_sampler", {**turn, "path": "mine"}),
                ("POST", "/load_weights", {**turn, "path": checkpoint}),
                (
                    "POST",
                    "/load_weights",
                    {"session_id": globex_session, "model_seq_id": 9, "path": checkpoint},
                ),
                ("POST", "/weights_info", {"tinker_path": checkpoint}),
                ("GET", f"/samplers/{sampler}", None),
                (
                    "POST",
                    "/asample",
                    {"sampling_session_id": sampler, "prompt": prompt, "sampling_params": {}},
                ),
                ("POST", "/retrieve_future", future),
                ("GET", f"/training_runs/{model_id}", None),
                ("GET", f"/training_runs/{model_id}/checkpoints", None),
            ]
            for method, path, body in probes:
                theirs = await globex.request(method, path, json=body)
                nobodys = await globex.request(method, swapped(path), json=swapped(body))
                assert theirs.status_code in (404, 410), (path, theirs.text)
                assert (theirs.status_code, swapped(theirs.json())) == (nobodys.status_code, nobodys.json())
            runs = (await globex.get("/training_runs")).json()["training_runs"]
            assert [r["training_run_id"] for r in runs] == [globex_model]
            assert (await globex.get("/checkpoints")).json()["checkpoints"] == []

            # Bad requests naming acme's model and its next seq_id (3) cannot spend acme's turn: not a
            # refused body (JSON or protobuf), not a role globex lacks, not one too deep to decode.
            bad = {**turn, "forward_backward_input": {**BATCH, "loss_fn": "magic"}}
            refused(await globex.post("/forward_backward", json=bad), 400, "loss_fn")
            magic = pb_request(model_id, 3, [], b"magic")
            refused(await globex.post("/forward_backward", content=magic, headers=PROTOBUF), 400, "loss_fn")
            refused(await globex.post("/optim_step", json=turn), 400, "adam_params")
            too_deep = f'{{"model_id": "{model_id}", "seq_id": 3, "x": {deep(100_000)}}}'
            refused(await globex.post("/forward", content=too_deep), 400, "x[0]")
            refused(await globex.post("/forward_backward", json=bad, headers=globex_reader), 403, "trainer")
            # ... nor can globex's flood of requests that never get their turn refuse acme's.
            monkeypatch.setattr("mint.tinker.futures.REFUSE_AT_PENDING", 2)
            flood = [
                await globex.post(
                    "/forward", json={"model_id": globex_model, "seq_id": ahead, "forward_input": BATCH}
                )
                for ahead in (100, 101, 102)
            ]
            assert [r.status_code for r in flood[:2]] == [200, 200]
            refused(flood[2], 429, "request")
            # acme's session lives, and its seq 3 runs (it is not "already used").
            assert (await acme.post("/session_heartbeat", json={"session_id": session})).status_code == 200
            ran = await result(acme, await acme.post("/forward", json={**turn, "forward_input": BATCH}))
            assert ran["metrics"]["loss:sum"] > 0, ran
            assert (await acme.post("/weights_info", json={"tinker_path": checkpoint})).json()[
                "lora_rank"
            ] == 32


async def test_healthz_answers_the_sdks_health_check(tmp_path: Path) -> None:
    async with tinker_server(Home(tmp_path)) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.get("/api/v1/healthz")  # probes carry no key
        assert (response.status_code, response.json()) == (200, {"status": "ok"})
        key = server.tokens.issue("acme", ["reader"]).secret
        script = (
            "import asyncio, sys\n"
            "from tinker._client import AsyncTinker\n"
            "url, key = sys.argv[1:]\n"
            "client = AsyncTinker(base_url=url, api_key=key, _strict_response_validation=True)\n"
            "print(asyncio.run(client.service.health_check()).status)\n"
        )
        with anyio.fail_after(120):
            done = await anyio.run_process(
                [str(sdk_python(".venv-tinker038")), "-c", script, server.url, key],
                env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TINKER_TELEMETRY": "0"},
                check=False,
            )
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        assert done.stdout.decode().strip() == "ok"
