"""A step of the torch engine's loop that raises fails the requests it ran, never the engine.

Faults are injected into a real engine on the tiny base: a request whose sampling parameters make
its sampling raise (a NaN temperature), or one internal step (a prefill, a decode) wrapped to raise
when it runs one chosen prompt. Each test checks that the faulted request ends with StepFailed naming
the step and the cause, that the requests beside it get the tokens they get without the fault, and
that the engine serves a new request afterwards.

Then what a client sees (the HTTP mapping): a step failure is a 500 of OpenAI's shape naming the step
and the cause, in process and through the router, and a stream that began ends with it as its last
event; an engine host that hangs up mid-answer is a 503 with Retry-After (sent again, another host
takes it).
"""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from mint.serving.engine import AdapterRef, Completion, Delta, SamplingParams, complete
from mint.serving.torch_engine import StepFailed, TorchEngine
from mint.serving.wire import ENGINE_HEADER, NDJSON, DeltaLine, encode_line
from tests import test_router
from tests.test_router import REF, Routed, alive

pytestmark = pytest.mark.anyio

# An API replica routing to a real engine host's HTTP server, and the same API with the engine in process.
routed = test_router.routed

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)
LONG = SamplingParams(max_tokens=48, temperature=0.0)  # still decoding when a later one arrives
PROMPTS = ["The weather today is", "Once upon a time", "My favourite colour is"]
FAULTY = "A prompt whose step is made to fail"


@pytest.fixture
async def engine(base_dir: Path, adapters: list[AdapterRef]) -> AsyncIterator[TorchEngine]:
    engine = TorchEngine(base_dir, slots=4)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.serve)
        for ref in adapters:
            await engine.load(ref)
        yield engine
        tg.cancel_scope.cancel()


def _runs(
    engine: TorchEngine, prompt: str, step: Callable[..., Any], when: Callable[[Any], bool]
) -> list[weakref.ref[Any]]:
    """Wrap the engine's `step` (a bound method) to raise when a row of `prompt` is in what it runs
    and `when(rows)` holds: the fault of one request, injected into the real loop. Returns weak
    references to the KV caches of the batches it failed (a decode's)."""
    ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
    failed_caches: list[weakref.ref[Any]] = []

    def faulty(arg: Any) -> Any:
        rows = arg if isinstance(arg, list) else arg.rows
        if any(r.prompt == ids for r in rows) and when(rows):
            if not isinstance(arg, list):
                failed_caches.append(weakref.ref(arg.cache))
            raise ValueError(f"injected fault in {step.__name__}")
        return step(arg)

    setattr(engine, step.__name__, faulty)
    return failed_caches


async def _failure(
    engine: TorchEngine, prompt: str, adapter: str | None, params: SamplingParams
) -> tuple[Completion, StepFailed]:
    """What a failed request streamed before its error, and the error."""
    out = Completion()
    with pytest.raises(StepFailed) as failed:
        async for delta in engine.generate(prompt, adapter, params):
            out.add(delta)
    return out, failed.value


async def test_a_sampling_fault_fails_its_request_alone(
    engine: TorchEngine, adapters: list[AdapterRef]
) -> None:
    names = [adapters[0].ref, None, adapters[1].ref]
    alone = [await complete(engine, p, n, GREEDY) for p, n in zip(PROMPTS, names, strict=True)]
    together: list[Completion | None] = [None] * len(PROMPTS)
    failures: list[StepFailed] = []

    async def one(i: int) -> None:
        together[i] = await complete(engine, PROMPTS[i], names[i], GREEDY)

    async def faulty() -> None:  # a NaN temperature makes every probability NaN: multinomial raises
        failures.append(
            (await _failure(engine, FAULTY, adapters[0].ref, SamplingParams(temperature=float("nan"))))[1]
        )

    async with anyio.create_task_group() as tg:
        for i in range(len(PROMPTS)):
            tg.start_soon(one, i)
        tg.start_soon(faulty)
    [failed] = failures
    assert failed.step == "sampling"
    assert "its sampling step raised RuntimeError" in str(failed) and "probability" in str(failed)
    assert isinstance(failed.__cause__, RuntimeError)
    assert [c.tokens for c in together if c] == [c.tokens for c in alone]
    assert engine.step_failures == 1 and engine.active == 0
    assert (await complete(engine, PROMPTS[0], names[0], GREEDY)).tokens == alone[0].tokens


async def test_a_prefill_fault_fails_its_group_and_the_running_batch_decodes_on(
    engine: TorchEngine, adapters: list[AdapterRef]
) -> None:
    a = adapters[0].ref
    expected = await complete(engine, PROMPTS[0], a, LONG)
    later = await complete(engine, PROMPTS[1], None, GREEDY)
    running_at_fault: list[int] = []

    def while_running(rows: Any) -> bool:
        running_at_fault.append(engine.active)  # the faulty request and the long one, still decoding
        return True

    _runs(engine, FAULTY, engine._prefill, while_running)
    long = Completion()
    failures: list[StepFailed] = []
    async with anyio.create_task_group() as tg:
        first = anyio.Event()

        async def long_one() -> None:
            async for delta in engine.generate(PROMPTS[0], a, LONG):
                long.add(delta)
                first.set()

        tg.start_soon(long_one)
        await first.wait()  # its prefill is done: the faulty one is prefilled in a group of its own
        failures.append((await _failure(engine, FAULTY, None, GREEDY))[1])
    [failed] = failures
    assert running_at_fault == [2]
    assert failed.step == "prefill" and "ValueError: injected fault in _prefill" in str(failed)
    assert long.tokens == expected.tokens and long.finish == "length"
    assert engine.step_failures == 1 and engine.active == 0
    assert (await complete(engine, PROMPTS[1], None, GREEDY)).tokens == later.tokens


async def test_a_decode_fault_fails_its_batch_frees_its_kv_cache_and_the_engine_serves_on(
    engine: TorchEngine, adapters: list[AdapterRef], request: pytest.FixtureRequest
) -> None:
    a = adapters[0].ref
    expected = await complete(engine, PROMPTS[1], a, GREEDY)
    faulty_ids = engine.tokenizer.encode(FAULTY, add_special_tokens=False)

    def fourth_token(rows: Any) -> bool:  # the faulty request has streamed four tokens by then
        return any(r.prompt == faulty_ids and len(r.tokens) == 4 for r in rows)

    failed_caches = _runs(engine, FAULTY, engine._decode, fourth_token)
    results: dict[str, tuple[Completion, StepFailed]] = {}
    gc.disable()  # the failed batch's KV cache is freed by reference counting, not a later collection
    request.addfinalizer(gc.enable)

    async def one(prompt: str, adapter: str | None, params: SamplingParams, started: anyio.Event) -> None:
        out = Completion()
        with pytest.raises(StepFailed) as failed:
            async for delta in engine.generate(prompt, adapter, params):
                out.add(delta)
                started.set()
        results[prompt] = (out, failed.value)

    async with anyio.create_task_group() as tg:
        running = anyio.Event()
        tg.start_soon(one, PROMPTS[0], adapters[1].ref, LONG, running)
        await running.wait()  # decoding, with far more to go than the faulty one's four tokens
        tg.start_soon(one, FAULTY, None, GREEDY, anyio.Event())
    # One decode step ran both: both fail, after what they had streamed.
    assert len(results) == 2
    for _, failed in results.values():
        assert failed.step == "decode" and "ValueError: injected fault in _decode" in str(failed)
    assert len(results[FAULTY][0].tokens) == 4
    assert 4 < len(results[PROMPTS[0]][0].tokens) < LONG.max_tokens
    assert engine.step_failures == 1 and engine.active == 0
    after = await complete(engine, PROMPTS[1], a, GREEDY)
    assert after.tokens == expected.tokens and after.finish == "length"
    # Nothing of the failure (its logged traceback, the requests' errors) holds the batch's KV
    # cache. (An idle worker thread holds its last job's arguments: `after` ran since.)
    [cache] = failed_caches
    assert cache() is None


async def test_a_fault_dropping_finished_rows_fails_the_rows_kept_and_the_finished_one_completes(
    engine: TorchEngine, adapters: list[AdapterRef]
) -> None:
    a = adapters[0].ref
    expected = await complete(engine, PROMPTS[0], a, GREEDY)
    faulty_ids = engine.tokenizer.encode(FAULTY, add_special_tokens=False)
    decode = engine._decode

    def cache_that_fails_to_shrink(batch: Any) -> Any:
        decoded = decode(batch)
        if any(r.prompt == faulty_ids for r in decoded.rows):

            def select(indices: Any) -> None:
                raise ValueError("injected fault in batch_select_indices")

            decoded.cache.batch_select_indices = select
        return decoded

    engine._decode = cache_that_fails_to_shrink  # type: ignore[method-assign]
    done: list[Completion] = []
    failures: list[StepFailed] = []

    async def short() -> None:
        done.append(await complete(engine, PROMPTS[0], a, GREEDY))

    async def faulty() -> None:
        failures.append((await _failure(engine, FAULTY, None, LONG))[1])

    async with anyio.create_task_group() as tg:
        tg.start_soon(faulty)
        tg.start_soon(short)
    [failed] = failures
    assert failed.step == "row removal" and "ValueError: injected fault in batch_select_indices" in str(
        failed
    )
    assert [c.tokens for c in done] == [expected.tokens]  # it finished; the removal after it failed
    assert engine.step_failures == 1 and engine.active == 0
    assert (await complete(engine, PROMPTS[0], a, GREEDY)).tokens == expected.tokens


async def test_a_device_that_no_longer_runs_work_stops_the_engine(
    base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = TorchEngine(base_dir, slots=1)
    _runs(engine, FAULTY, engine._decode, lambda rows: True)
    # As after a CUDA error that poisons the context: serving on would fail every later request.
    monkeypatch.setattr(engine, "_device_usable", lambda: False)

    async def faulty() -> None:
        await complete(engine, FAULTY, None, GREEDY)

    with pytest.raises(ExceptionGroup) as stopped:
        async with anyio.create_task_group() as tg:
            await tg.start(engine.serve)
            tg.start_soon(faulty)
    assert stopped.group_contains(ValueError, match="injected fault in _decode")
    assert engine.step_failures == 0


# -- what a client sees ---------------------------------------------------------------------------


async def test_a_step_failure_is_a_500_naming_the_step_and_cause_in_process_routed_and_streamed(
    routed: Routed,
) -> None:
    from tests.serving_system import torch_engine

    engine = torch_engine(routed.system)
    faulty_ids = engine.tokenizer.encode(FAULTY, add_special_tokens=False)
    _runs(
        engine,
        FAULTY,
        engine._decode,
        lambda rows: any(r.prompt == faulty_ids and len(r.tokens) == 2 for r in rows),
    )
    body = {"model": "acme/a", "prompt": FAULTY, "max_tokens": 6, "temperature": 0}
    cause = "the engine failed this request: its decode step raised ValueError: injected fault in _decode"
    for client in (routed.client, routed.direct):  # through the router to the engine host; in process
        answer = await client.post("/v1/completions", json=body)
        assert answer.status_code == 500, answer.text
        assert answer.json()["error"] == {
            "message": cause,
            "type": "server_error",
            "param": None,
            "code": 500,
        }
        assert "retry-after" not in answer.headers  # a failure, not a refusal to retry later
    async with routed.client.stream("POST", "/v1/completions", json={**body, "stream": True}) as streamed:
        assert streamed.status_code == 200
        events = [
            json.loads(line.removeprefix("data: "))
            async for line in streamed.aiter_lines()
            if line.startswith("data: ")
        ]
    assert [e["choices"][0]["text"] is not None for e in events[:-1]] == [True, True]  # the two tokens
    assert events[-1] == {"error": {"message": cause, "type": "server_error", "param": None, "code": 500}}
    assert engine.step_failures == 3 and engine.active == 0
    good = await routed.client.post("/v1/completions", json={**body, "prompt": PROMPTS[0]})
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 6


async def _hang_up_after_one_line(stream: anyio.abc.SocketStream) -> None:
    """An engine host that accepts, streams one delta and dies: the connection closes mid-body."""
    async with stream:
        received = b""
        while b"\r\n\r\n" not in received:
            received += await stream.receive()
        head, _, body = received.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += await stream.receive()
        line = encode_line(DeltaLine.of(Delta("x", (1,))))
        await stream.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: "
            + NDJSON.encode()
            + b"\r\n"
            + ENGINE_HEADER.encode()
            + b": dying\r\ntransfer-encoding: chunked\r\n\r\n"
            + f"{len(line):x}\r\n".encode()
            + line
            + b"\r\n"
        )


async def test_an_engine_host_that_hangs_up_mid_answer_is_a_503_with_retry_after(routed: Routed) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, _hang_up_after_one_line)
        # Warm and idle: it ranks before e1, which is warm but busy.
        await routed.system.log.append(
            [
                *alive("dying", holds=(REF,), url=f"http://127.0.0.1:{port}"),
                *alive("e1", holds=(REF,), url=routed.url, in_flight=3),
            ]
        )
        await routed.system.settle()
        body = {"model": "acme/a", "prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0}
        answer = await routed.client.post("/v1/completions", json=body)
        tg.cancel_scope.cancel()
    assert answer.status_code == 503 and answer.headers["retry-after"]
    error = answer.json()["error"]
    assert error["type"] == "server_error"
    assert error["message"] == "engine dying failed mid-answer (RemoteProtocolError): retry"
