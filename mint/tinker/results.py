"""Results of futures that the wire carries as protobuf (tinker 0.38 accepts nothing else for these)
or as JSON (tinker 0.22 without protobuf in its Accept header)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mint.tinker import proto
from mint.tinker.generation import Sampled
from mint.tinker.wire import FloatArray


@dataclass(frozen=True)
class ForwardBackwardResult:
    outputs: list[dict[str, FloatArray]]
    metrics: dict[str, float]

    def protobuf(self) -> bytes:
        return proto.encode_forward_backward(self.outputs, self.metrics)

    def json(self) -> dict[str, Any]:
        return {
            "loss_fn_output_type": "ArrayRecord",
            "loss_fn_outputs": [
                {
                    name: {"data": values.tolist(), "dtype": "float32", "shape": [len(values)]}
                    for name, values in output.items()
                }
                for output in self.outputs
            ],
            "metrics": self.metrics,
        }


@dataclass(frozen=True)
class SampleResult:
    sequences: list[Sampled]
    prompt_logprobs: list[float] | None

    def protobuf(self) -> bytes:
        return proto.encode_sample(
            [(s.tokens, s.logprobs, s.stopped) for s in self.sequences], self.prompt_logprobs
        )

    def json(self) -> dict[str, Any]:
        return {
            "type": "sample",
            "sequences": [
                {"tokens": s.tokens, "logprobs": s.logprobs, "stop_reason": "stop" if s.stopped else "length"}
                for s in self.sequences
            ],
            "prompt_logprobs": None
            if self.prompt_logprobs is None
            else [None if math.isnan(v) else v for v in self.prompt_logprobs],
        }


WireResult = ForwardBackwardResult | SampleResult
