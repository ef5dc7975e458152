"""The torch engine: one resident base, adapters as slots of a MultiLora model, continuous batching.

The base is held once; every adapter is a slot of stacked A/B tensors, and one forward pass serves a
batch that mixes adapters (a gathered LoRA matmul per row). A scheduling loop admits new requests at
every iteration: it prefills them together, merges their KV caches into the running batch (left-padded
to a common length, the padding masked out), decodes one token for every running row, streams it, and
drops finished rows. Model work (and tokenizing a prompt, which may be megabytes) runs in a worker
thread so the event loop keeps serving. A request must fit the base's context (prompt + max_tokens), and
one whose client went away is dropped at its next token (or before admission): `active` counts the
requests the engine holds, queued or decoding.

Placement (mint.device): the base, the adapter slots and the KV caches live on the engine's device (a
GPU when there is one), in its dtype; the host tier is in pinned memory on CUDA, so a reload is one
asynchronous host-to-device copy. Device memory is a budget, never a crash: a load that does not fit is
refused (DeviceMemoryExhausted, which the engine host reports as AdapterLoadFailed), and so is a request
whose KV cache would not fit beside the running batch (the API answers 503); the engine keeps serving.
On CUDA the budget is the device's own (torch.OutOfMemoryError is caught where memory is taken);
`memory_budget_bytes` sets a smaller one, on any device, counting the base, the slots and the KV caches.

A step that raises fails only the requests it ran, never the loop (which would take the engine host,
and every tenant it serves, down with it): a prefill fails its group, a decode its batch, dropping
finished rows from the batch's KV cache the rows kept (the caches are dropped with them), a sampling or
detokenizing error the one row. Their clients get StepFailed naming the step and the cause (or, out of
device memory, DeviceMemoryExhausted); the traceback is logged once and `step_failures` counts it; the
other requests and new ones are served on. Only a device that no longer runs work (a CUDA error that
poisons the context) stops the loop, so the host exits and is restarted.
"""

from __future__ import annotations

import logging
import traceback
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import torch
from anyio.streams.memory import MemoryObjectSendStream
from transformers import DynamicCache

from mint.adapters.peft_layout import read_peft
from mint.adapters.tensors import adapter_tensors
from mint.bases.info import read_base_info
from mint.bases.load import load_base
from mint.device import Placement, configured_placement
from mint.lora.multi import MultiLora
from mint.serving.engine import (
    AdapterNotLoaded,
    AdapterRef,
    Delta,
    DeviceMemoryExhausted,
    EngineError,
    FinishReason,
    Overloaded,
    SamplingParams,
    SlotsFull,
    check_context,
)
from mint.serving.in_flight import InFlight
from mint.serving.prompts import TokenizerPrompts

log = logging.getLogger(__name__)


class StepFailed(EngineError):
    """A step of the batching loop raised while it ran this request: the engine failed it (HTTP 500,
    naming the step and the cause, which is also its __cause__) and serves on."""

    def __init__(self, step: str, cause: Exception) -> None:
        super().__init__(f"its {step} step raised {type(cause).__name__}: {cause}")
        self.step = step
        self.__cause__ = cause


@dataclass
class _Request:
    prompt: list[int]
    adapter: str | None
    params: SamplingParams
    out: MemoryObjectSendStream[Delta]
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0  # of the newest token
    sent: int = 0  # characters of the decoded text already streamed
    done: bool = False
    failed: EngineError | None = None  # why the engine dropped it (its client gets this error)
    fault: Exception | None = None  # what its own sampling raised in the worker thread, failed at emit

    @property
    def abandoned(self) -> bool:
        """Its client went away: nobody reads what it would generate."""
        return self.out.statistics().open_receive_streams == 0


@dataclass
class _Batch:
    rows: list[_Request]
    cache: DynamicCache
    mask: torch.Tensor  # [rows, length]: 1 for real tokens, 0 for left padding
    positions: torch.Tensor  # [rows]: the position of each row's next token
    last: torch.Tensor  # [rows]: each row's last token, the next step's input
    # mask, positions and last stay on the host (small); the cache is on the engine's device


class TorchEngine(TokenizerPrompts, InFlight):
    kind = "torch"

    def __init__(
        self,
        base_dir: Path,
        *,
        slots: int = 8,
        cpu_slots: int = 32,
        max_batch: int = 32,
        queue: int = 256,
        max_rank: int = 64,
        placement: Placement | None = None,
        memory_budget_bytes: int | None = None,
    ) -> None:
        """`placement`: where the model runs (None: the configured one, mint.device).
        `memory_budget_bytes`: device memory the engine may take, the base included (None: all the
        device has; on the CPU, unbounded)."""
        self.base_dir = Path(base_dir)
        self.info = read_base_info(self.base_dir)
        self.base_id = self.info.base_id
        self.slots = slots
        self.cpu_slots = cpu_slots
        # The host tier: tensors of recently unloaded adapters, so reloading one is a copy, not a read.
        self._host: OrderedDict[str, tuple[dict[str, torch.Tensor], int, float]] = OrderedDict()
        self.max_batch = max_batch
        self.max_rank = max_rank
        self.placement = placement or configured_placement()
        model, self.tokenizer = load_base(self.base_dir, self.placement)
        self.memory_budget_bytes = memory_budget_bytes
        self.base_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        config = model.config
        heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        # Keys and values of every layer for one token of one row.
        self.kv_bytes_per_token = (
            2 * int(config.num_hidden_layers) * heads * head_dim * self.placement.torch_dtype.itemsize
        )
        self.context_length = int(model.config.max_position_embeddings)
        targets = sorted({name.rsplit(".", 1)[-1] for name in self.info.linear_shapes})
        self.multi = MultiLora(model, targets)
        self._send, self._receive = anyio.create_memory_object_stream[_Request](queue)
        self._draining: set[str] = set()
        self._active = 0  # requests queued or in the batch
        self._accounted = anyio.Event()  # set (and replaced) each time a request enters or leaves
        self.generated_tokens = 0  # sampled for every request since the engine started
        self.step_failures = 0  # steps that raised and failed their requests, the engine serving on
        InFlight.__init__(self)
        # The batching loop and text scoring both run the model in worker threads; the multi-LoRA
        # routing is state on the shared model, so one forward at a time.
        self._forward = anyio.Lock()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.eos_id: int | None = self.tokenizer.eos_token_id

    # -- adapters ---------------------------------------------------------------------------------

    async def load(self, adapter: AdapterRef) -> float:
        began = anyio.current_time()
        if adapter.ref in self.multi.slots:
            return 0.0
        if len(self.multi.slots) >= self.slots:
            raise SlotsFull(f"all {self.slots} slots hold adapters; evict one before loading {adapter.ref}")
        if adapter.rank > self.max_rank:
            raise EngineError(
                f"{adapter.ref}: rank {adapter.rank} exceeds this engine's max_rank {self.max_rank}"
            )

        def read() -> tuple[dict[str, torch.Tensor], int, float]:
            peft = read_peft(adapter.directory, self.info, expected_sha256=adapter.sha256)
            return adapter_tensors(peft), peft.config.r, peft.config.alpha

        held = self._host.pop(adapter.ref, None)
        tensors, rank, alpha = held if held is not None else await anyio.to_thread.run_sync(read)
        need = self.multi.slot_bytes(rank)
        if self.memory_budget_bytes is not None and self.device_bytes() + need > self.memory_budget_bytes:
            raise DeviceMemoryExhausted(
                f"{adapter.ref}: its slot needs {need:,} bytes; {self._free_bytes():,} of the engine's"
                f" {self.memory_budget_bytes:,}-byte memory budget are free"
            )
        try:
            async with self._forward:  # not while a forward in its thread stacks the slots (unload)
                self.multi.load(adapter.ref, tensors, rank, alpha)
        except torch.OutOfMemoryError as exc:
            _release_cached()
            raise DeviceMemoryExhausted(
                f"{adapter.ref}: its slot ({need:,} bytes) does not fit in"
                f" {self.placement.device} memory: {exc}"
            ) from None
        return (anyio.current_time() - began) * 1000

    def device_bytes(self) -> int:
        """Device memory the engine holds outside requests: the base and the adapter slots."""
        return self.base_bytes + sum(self.multi.slot_bytes(spec.rank) for spec in self.multi.slots.values())

    def _free_bytes(self) -> int:
        assert self.memory_budget_bytes is not None
        return max(self.memory_budget_bytes - self.device_bytes(), 0)

    def host_cached(self) -> Sequence[str]:
        """Adapters held in host memory, off the slots: the CPU tier, most recently used last."""
        return list(self._host)

    async def unload(self, ref: str) -> None:
        if ref not in self.multi.slots:
            raise AdapterNotLoaded(ref)
        self._draining.add(ref)
        try:
            await self.drained(ref)
            spec = self.multi.slots[ref]
            self._host[ref] = (self._to_host(self.multi.state(ref)), spec.rank, spec.alpha)
            while len(self._host) > self.cpu_slots:
                self._host.popitem(last=False)
            # Every forward stacks all slots, not just the ones its rows use: a slot removed while a
            # decode runs in its thread is a KeyError there, which fails the engine's loop.
            async with self._forward:
                self.multi.remove(ref)
        finally:
            self._draining.discard(ref)

    def resident(self) -> Sequence[str]:
        return list(self.multi.slots)

    def _to_host(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A slot's tensors in host memory: pinned on CUDA, so loading them back copies asynchronously."""
        if not self.placement.on_cuda:
            return tensors
        return {name: t.pin_memory() for name, t in tensors.items()}

    # -- requests ---------------------------------------------------------------------------------

    async def generate(
        self, prompt: str, adapter: str | None, params: SamplingParams
    ) -> AsyncIterator[Delta]:
        encoded = await anyio.to_thread.run_sync(
            lambda: self.tokenizer.encode(prompt, add_special_tokens=False)
        )
        ids: list[int] = encoded or [self.pad_id]
        check_context(len(ids), params, self.context_length)
        # From this check to holding the adapter nothing awaits, so an unload cannot slip between.
        if adapter is not None and (adapter not in self.multi.slots or adapter in self._draining):
            raise AdapterNotLoaded(adapter)
        send, receive = anyio.create_memory_object_stream[Delta](params.max_tokens + 1)
        generator = torch.Generator()
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        request = _Request(ids, adapter, params, send, generator)
        try:
            self._send.send_nowait(request)
        except anyio.WouldBlock:
            raise Overloaded("the engine's admission queue is full") from None
        self._account(+1)
        with self.holding(adapter):
            async with receive:
                async for delta in receive:
                    yield delta
        if request.failed is not None:
            raise request.failed

    @property
    def active(self) -> int:
        """Requests the engine holds (queued or decoding): 0 once every client is answered or gone."""
        return self._active

    async def until_active(self, count: int) -> None:
        """Return once the engine holds exactly `count` requests."""
        while self._active != count:
            await self._accounted.wait()

    def _account(self, change: int) -> None:
        self._active += change
        self._accounted.set()
        self._accounted = anyio.Event()

    def _retire(self, request: _Request) -> None:
        request.done = True
        self._account(-1)

    async def text_logprobs(self, text: str, adapter: str | None) -> list[float]:
        if adapter is not None and (adapter not in self.multi.slots or adapter in self._draining):
            raise AdapterNotLoaded(adapter)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) < 2:
            return []
        with self.holding(adapter):
            async with self._forward:
                return await anyio.to_thread.run_sync(self._score, ids, adapter)

    @torch.no_grad()
    def _score(self, ids: list[int], adapter: str | None) -> list[float]:
        tokens = torch.tensor([ids], dtype=torch.long)
        with self.multi.route([adapter]):
            logits = self.multi.model(input_ids=tokens.to(self.multi.device)).logits[0, :-1].float().cpu()
        chosen = torch.log_softmax(logits, dim=-1).gather(1, tokens[0, 1:, None]).squeeze(1)
        return [float(x) for x in chosen]

    # -- the scheduling loop ----------------------------------------------------------------------

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the batching loop until cancelled."""
        task_status.started()
        batch: _Batch | None = None
        while True:
            if batch is None:
                first = await self._receive.receive()
                fresh = [first, *self._admit(self.max_batch - 1)]
            else:
                fresh = self._admit(self.max_batch - len(batch.rows))
            fresh = await self._within_budget(batch, fresh)
            if fresh:
                batch = await self._prefilled(batch, fresh)
            batch = await self._finish_rows(batch)
            if batch is None:
                continue
            batch = await self._decoded(batch)
            batch = await self._finish_rows(batch)

    async def _step(
        self, step: str, rows: Sequence[_Request], work: Callable[[], Awaitable[_Batch]]
    ) -> _Batch | None:
        """`work`'s batch; or None when it raised, `rows` (what it ran) ended: out of device memory
        with DeviceMemoryExhausted (the KV cache grew past the device), anything else with StepFailed."""
        try:
            return await work()
        except torch.OutOfMemoryError as exc:
            await self._refuse(rows, f"the {step} ran out of {self.placement.device} memory: {exc}")
        except Exception as exc:
            await self._step_failed(step, rows, exc)
        return None

    async def _prefilled(self, batch: _Batch | None, fresh: list[_Request]) -> _Batch | None:
        """The running batch with `fresh` prefilled and merged in. A prefill that fails fails `fresh`
        alone: the running batch's KV cache is untouched until the merge makes a new one."""

        async def grow() -> _Batch:
            async with self._forward:
                prefilled = await anyio.to_thread.run_sync(self._prefill, fresh)
            return prefilled if batch is None else _merge(batch, prefilled)

        grown = await self._step("prefill", fresh, grow)
        if grown is None:
            return batch
        await self._emit(grown, range(len(grown.rows) - len(fresh), len(grown.rows)))
        return grown

    async def _decoded(self, batch: _Batch) -> _Batch | None:
        """The batch one token further. A decode that fails fails the batch's requests (its KV cache
        may be half updated, so it is dropped), and the loop goes on with the queue."""

        async def decode() -> _Batch:
            async with self._forward:
                return await anyio.to_thread.run_sync(self._decode, batch)

        decoded = await self._step("decode", batch.rows, decode)
        if decoded is not None:
            await self._emit(decoded, range(len(decoded.rows)))
        return decoded

    def _admit(self, room: int) -> list[_Request]:
        admitted: list[_Request] = []
        while len(admitted) < room:
            try:
                request = self._receive.receive_nowait()
            except anyio.WouldBlock:
                break
            if request.abandoned:  # its client left while it queued: no prefill for nobody
                self._retire(request)
            else:
                admitted.append(request)
        return admitted

    async def _within_budget(self, batch: _Batch | None, fresh: list[_Request]) -> list[_Request]:
        """The fresh requests whose KV caches, at their full length, fit the memory budget beside the
        running batch (padded to the longest row, as the cache is); the rest are refused."""
        if self.memory_budget_bytes is None or not fresh:
            return fresh
        rows = [] if batch is None else list(batch.rows)
        admitted, refused = [], []
        for request in fresh:
            need = self._kv_bytes([*rows, request])
            if self.device_bytes() + need <= self.memory_budget_bytes:
                rows.append(request)
                admitted.append(request)
            else:
                refused.append((request, need))
        for request, need in refused:
            await self._refuse(
                [request],
                f"its KV cache ({need:,} bytes with the running batch's) does not fit in the"
                f" {self._free_bytes():,} bytes free of the engine's"
                f" {self.memory_budget_bytes:,}-byte memory budget",
            )
        return admitted

    def _kv_bytes(self, rows: Sequence[_Request]) -> int:
        longest = max(len(r.prompt) + r.params.max_tokens for r in rows)
        return len(rows) * longest * self.kv_bytes_per_token

    async def _refuse(self, rows: Sequence[_Request], why: str) -> None:
        """End `rows` with DeviceMemoryExhausted (their clients get it), leaving the engine serving."""
        _release_cached()
        for r in rows:
            await self._end(r, DeviceMemoryExhausted(f"request refused: {why}"))

    async def _step_failed(self, step: str, rows: Sequence[_Request], exc: Exception) -> None:
        """End the requests a step ran with StepFailed; the engine serves on, unless the device is
        gone (then the step's error stops the loop)."""
        if not self._device_usable():
            raise exc
        self.step_failures += 1
        # The traceback as text, then dropped: its frames hold the step's tensors (a batch's KV cache,
        # on the device), which a log record's exc_info or the requests' errors would keep alive.
        log.error(
            "the %s step failed %d request(s); serving the others\n%s",
            step,
            len(rows),
            "".join(traceback.format_exception(exc)).rstrip(),
        )
        exc.__traceback__ = None
        for r in rows:
            await self._end(r, StepFailed(step, exc))

    async def _end(self, request: _Request, error: EngineError) -> None:
        request.failed = error
        self._retire(request)
        await request.out.aclose()

    def _device_usable(self) -> bool:
        """Whether the device still runs work after a step raised: a CUDA error that poisons the
        context (an illegal address, a device-side assert, a lost device) fails every later call too."""
        if not self.placement.on_cuda:
            return True
        try:
            torch.cuda.synchronize(self.placement.torch_device)
        except Exception:
            return False
        return True

    def _route(self, rows: list[_Request]) -> list[str | None]:
        return [r.adapter for r in rows]

    @torch.no_grad()
    def _prefill(self, rows: list[_Request]) -> _Batch:
        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        device = self.multi.device
        with self.multi.route(self._route(rows)):
            out = self.multi.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                past_key_values=cache,
                use_cache=True,
            )
        last = self._sample(rows, out.logits[:, -1, :])
        return _Batch(rows, out.past_key_values, mask, mask.sum(-1), last)

    @torch.no_grad()
    def _decode(self, batch: _Batch) -> _Batch:
        mask = torch.cat([batch.mask, torch.ones((len(batch.rows), 1), dtype=torch.long)], dim=1)
        device = self.multi.device
        with self.multi.route(self._route(batch.rows)):
            out = self.multi.model(
                input_ids=batch.last[:, None].to(device),
                attention_mask=mask.to(device),
                position_ids=batch.positions[:, None].to(device),
                past_key_values=batch.cache,
                use_cache=True,
            )
        last = self._sample(batch.rows, out.logits[:, -1, :])
        return _Batch(batch.rows, out.past_key_values, mask, batch.positions + 1, last)

    def _sample(self, rows: list[_Request], logits: torch.Tensor) -> torch.Tensor:
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()  # sampled on the host, seeded there
        chosen = []
        for i, r in enumerate(rows):
            try:
                token = _pick(logprobs[i], r.params, r.generator)
            except Exception as exc:  # this row's alone: the others' tokens stand
                r.fault = exc
                chosen.append(self.pad_id)  # its row is dropped before the next forward reads it
                continue
            r.tokens.append(token)
            self.generated_tokens += 1
            r.logprob = float(logprobs[i, token])
            chosen.append(token)
        return torch.tensor(chosen, dtype=torch.long)

    async def _emit(self, batch: _Batch, indices: range) -> None:
        for i in indices:
            r = batch.rows[i]
            if r.fault is not None:
                await self._step_failed("sampling", [r], r.fault)
                continue
            try:
                delta = self._delta(r)
            except Exception as exc:
                await self._step_failed("detokenizing", [r], exc)
                continue
            finish = delta.finish
            try:
                await r.out.send(delta)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                finish = "stop"  # the client went away: stop generating for it
            if finish is not None:
                self._retire(r)
                await r.out.aclose()

    def _delta(self, r: _Request) -> Delta:
        """What `r`'s newest token adds to its stream, and whether it ends it."""
        token = r.tokens[-1]
        text = str(self.tokenizer.decode(r.tokens, skip_special_tokens=True))
        finish: FinishReason | None = None
        end = _safe_end(text, r.params.stop)
        if self.eos_id is not None and token == self.eos_id:
            finish, end = "stop", len(text)
        elif (hit := _stop_hit(text, r.params.stop)) is not None:
            finish, end = "stop", hit
        elif len(r.tokens) >= r.params.max_tokens:
            finish, end = "length", len(text)
        delta = Delta(text[r.sent : end], (token,), (r.logprob,) if r.params.logprobs else (), finish)
        r.sent = max(r.sent, end)
        return delta

    async def _finish_rows(self, batch: _Batch | None) -> _Batch | None:
        if batch is None:
            return None
        keep = [i for i, r in enumerate(batch.rows) if not r.done]
        if not keep:
            return None
        if len(keep) == len(batch.rows):
            return batch
        index = torch.tensor(keep, dtype=torch.long)
        rows = [batch.rows[i] for i in keep]

        async def select() -> _Batch:
            # A copy of the kept rows' keys and values: on a full device, this can run out of memory.
            batch.cache.batch_select_indices(index.to(self.multi.device))
            return _Batch(rows, batch.cache, batch.mask[index], batch.positions[index], batch.last[index])

        return await self._step("row removal", rows, select)

    async def aclose(self) -> None:
        await self._send.aclose()


def _release_cached() -> None:
    """After an out-of-memory error, hand the allocator's cached blocks back, so what failed to fit
    leaves no fragmentation behind for the next request."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _pick(logprobs: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    # A temperature the logits' dtype cannot divide by (it rounds to 0) is greedy decoding.
    if params.temperature < torch.finfo(logprobs.dtype).tiny:
        return int(logprobs.argmax())
    # Shifted so the likeliest token's logit is 0: a temperature near 0 then sends the others to
    # -inf, never the whole row to NaN (which multinomial refuses, failing every request batched).
    probs = torch.softmax((logprobs - logprobs.max()) / params.temperature, dim=-1)
    if params.top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        keep = ordered.cumsum(-1) - ordered < params.top_p  # the smallest set reaching top_p
        keep[0] = True  # a top_p below the probabilities' resolution would keep no token at all
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _safe_end(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` may be streamed now: hold back a tail that may still grow into a stop
    string, and a trailing replacement character (half of a multi-byte character)."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    for stop in stops:
        for size in range(min(len(stop) - 1, end), 0, -1):
            if text[:end].endswith(stop[:size]):
                end -= size
                break
    return end


def _stop_hit(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string begins in `text`, if one occurs."""
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


def _merge(batch: _Batch, fresh: _Batch) -> _Batch:
    """One batch from two: left-pad the shorter KV cache and mask to a common length."""
    width = max(batch.mask.shape[1], fresh.mask.shape[1])
    cache = DynamicCache()
    for layer, (old, new) in enumerate(zip(batch.cache.layers, fresh.cache.layers, strict=True)):
        old_kv: Any = old  # decoder-only attention layers: DynamicLayer, with keys and values
        new_kv: Any = new
        keys = torch.cat([_pad_left(old_kv.keys, width), _pad_left(new_kv.keys, width)])
        values = torch.cat([_pad_left(old_kv.values, width), _pad_left(new_kv.values, width)])
        cache.update(keys, values, layer)
    mask = torch.cat([_pad_left_2d(batch.mask, width), _pad_left_2d(fresh.mask, width)])
    return _Batch(
        batch.rows + fresh.rows,
        cache,
        mask,
        torch.cat([batch.positions, fresh.positions]),
        torch.cat([batch.last, fresh.last]),
    )


def _pad_left(t: Any, width: int) -> torch.Tensor:
    missing = width - t.shape[2]
    return t if missing == 0 else torch.nn.functional.pad(t, (0, 0, missing, 0))


def _pad_left_2d(t: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - t.shape[1]
    return t if missing == 0 else torch.nn.functional.pad(t, (missing, 0))
