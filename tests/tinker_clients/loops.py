"""A supervised loop and an RL loop written against the unmodified Tinker SDK, run by
tests/test_tinker_sdks.py in an SDK's own virtualenv (never MinT's): `tinker` 0.38, or
`mindlab-toolkit` 0.2.0 (`import mint as tinker`, tinker 0.22) with `--mint`.

The server comes from TINKER_BASE_URL / MINT_BASE_URL and the key from TINKER_API_KEY / MINT_API_KEY.
Prints one JSON line with what the test asserts on; any failed check raises (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

parser = argparse.ArgumentParser()
parser.add_argument("--mint", action="store_true", help="use mindlab-toolkit (import mint as tinker)")
parser.add_argument("--base", default="tiny")
args = parser.parse_args()

if args.mint:
    import mint as tinker
else:
    import tinker
types = tinker.types

report: dict[str, Any] = {"sdk": tinker.__version__ if not args.mint else tinker.__tinker_version__}


def ready(client: Any) -> Any:
    """tinker 0.38 hands out clients as futures (using them directly is deprecated); 0.22 directly."""
    return client.result() if hasattr(client, "result") else client


def tensor(values: list[Any], dtype: str) -> Any:
    return types.TensorData(data=values, dtype=dtype, shape=[len(values)])


def datum(tokens: list[int], inputs: dict[str, tuple[list[Any], str]]) -> Any:
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens),
        loss_fn_inputs={name: tensor(values, dtype) for name, (values, dtype) in inputs.items()},
    )


service = tinker.ServiceClient()
capabilities = service.get_server_capabilities()
report["bases"] = [m.model_name for m in capabilities.supported_models]

# -- supervised: teach a completion, loss falls, the trained adapter samples it ----------------------
training = ready(service.create_lora_training_client(base_model=args.base, rank=8))
tokenizer = training.get_tokenizer()  # offline: get_info names the base's directory as tokenizer_id
prompt = tokenizer.encode("The capital of France is", add_special_tokens=False)
answer = tokenizer.encode(" Paris.", add_special_tokens=False)
tokens = prompt + answer
weights = [0.0] * (len(prompt) - 1) + [1.0] * len(answer)
example = datum(tokens[:-1], {"target_tokens": (tokens[1:], "int64"), "weights": (weights, "float32")})


def mean_nll(result: Any) -> float:
    logprobs = result.loss_fn_outputs[0]["logprobs"].tolist()
    return -sum(lp * w for lp, w in zip(logprobs, weights, strict=True)) / sum(weights)


losses = []
for _ in range(20):
    backward = training.forward_backward([example], "cross_entropy")
    step = training.optim_step(types.AdamParams(learning_rate=1e-2, grad_clip_norm=1.0))
    result = backward.result()
    assert "loss:sum" in result.metrics, result.metrics
    step.result()
    losses.append(mean_nll(result))
report["sl_losses"] = losses
report["sl_forward"] = mean_nll(training.forward([example], "cross_entropy").result())

state_path = training.save_state("sl-state").result().path
sampler_path = training.save_weights_for_sampler("sl-final").result().path
report["paths"] = [state_path, sampler_path]

greedy = types.SamplingParams(max_tokens=len(answer), temperature=0.0)
trained = ready(service.create_sampling_client(model_path=sampler_path))
sampled = trained.sample(types.ModelInput.from_ints(prompt), num_samples=1, sampling_params=greedy).result()
base_sampler = ready(service.create_sampling_client(base_model=args.base))
base_sampled = base_sampler.sample(
    types.ModelInput.from_ints(prompt), num_samples=1, sampling_params=greedy
).result()
report["answer"] = answer
# Stops: a token id ends the sequence and stays in it; a string cuts after the token completing it.
by_id = types.SamplingParams(max_tokens=len(answer), temperature=0.0, stop=[answer[1]])
by_text = types.SamplingParams(max_tokens=len(answer), temperature=0.0, stop=[tokenizer.decode(answer[2:3])])
nucleus = types.SamplingParams(max_tokens=len(answer), temperature=0.7, top_p=0.5, seed=3)
stopped = [
    trained.sample(types.ModelInput.from_ints(prompt), num_samples=1, sampling_params=p).result().sequences[0]
    for p in (by_id, by_text, nucleus)
]
report["stopped"] = [[list(s.tokens), s.stop_reason] for s in stopped]
report["trained_tokens"] = list(sampled.sequences[0].tokens)
report["base_tokens"] = list(base_sampled.sequences[0].tokens)

# Resuming: a client made from the saved state scores the example as the saved one did.
resumed = ready(service.create_training_client_from_state_with_optimizer(state_path))
report["resumed_forward"] = mean_nll(resumed.forward([example], "cross_entropy").result())
# ... and a client that trained on loads it back, optimizer state included.
training.forward_backward([example], "cross_entropy").result()
training.optim_step(types.AdamParams(learning_rate=1.0)).result()
training.load_state_with_optimizer(state_path).result()
report["reloaded_forward"] = mean_nll(training.forward([example], "cross_entropy").result())

rest = tinker.RestClient() if hasattr(tinker, "RestClient") else service.create_rest_client()
runs = rest.list_training_runs().result()
report["runs"] = [r.training_run_id for r in runs.training_runs]
run_id = state_path.removeprefix("tinker://").split("/")[0]
report["run"] = run_id
checkpoints = rest.list_checkpoints(run_id).result()
report["checkpoints"] = sorted(c.checkpoint_id for c in checkpoints.checkpoints)
report["run_base"] = rest.get_training_run(run_id).result().base_model
report["user_checkpoints"] = len(rest.list_user_checkpoints().result().checkpoints)
report["weights_rank"] = rest.get_weights_info_by_tinker_path(state_path).result().lora_rank

# -- RL: sample with logprobs, importance-sampling updates, the reward rises --------------------------
# Toy task: the reward of a sampled sequence is the share of its tokens whose id is a multiple of 8
# (about 1 in 8 under the untrained base).
policy = ready(
    service.create_lora_training_client(base_model=args.base, rank=8, user_metadata={"policy": "rl-toy"})
)
prompts = [tokenizer.encode(text, add_special_tokens=False) for text in ("Once upon a time", "The weather")]
group, length = 16, 4  # short samples, big groups: a clear signal for sequence-level advantages
rewards: list[float] = []
for _ in range(12):
    sampler = ready(policy.save_weights_and_get_sampling_client())
    params = types.SamplingParams(max_tokens=length, temperature=1.0, stop=[])
    futures = [
        sampler.sample(types.ModelInput.from_ints(p), num_samples=group, sampling_params=params)
        for p in prompts
    ]
    batch, step_rewards = [], []
    for prompt_tokens, future in zip(prompts, futures, strict=True):
        sequences = future.result().sequences
        assert len(sequences) == group
        scores = []
        for sequence in sequences:
            assert sequence.logprobs is not None and len(sequence.logprobs) == len(sequence.tokens)
            scores.append(sum(t % 8 == 0 for t in sequence.tokens) / max(len(sequence.tokens), 1))
        mean = sum(scores) / len(scores)
        step_rewards += scores
        for sequence, score in zip(sequences, scores, strict=True):
            sampled_tokens = list(sequence.tokens)
            pad = len(prompt_tokens) - 1
            batch.append(
                datum(
                    prompt_tokens + sampled_tokens[:-1],
                    {
                        "target_tokens": ([0] * pad + sampled_tokens, "int64"),
                        "logprobs": ([0.0] * pad + list(sequence.logprobs), "float32"),
                        "advantages": ([0.0] * pad + [score - mean] * len(sampled_tokens), "float32"),
                    },
                )
            )
    rewards.append(sum(step_rewards) / len(step_rewards))
    backward = policy.forward_backward(batch, "importance_sampling")
    policy.optim_step(types.AdamParams(learning_rate=2e-2)).result()
    assert "loss:sum" in backward.result().metrics
report["rl_rewards"] = rewards

# The other losses run, with their configs.
clip = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
report["ppo_loss"] = policy.forward(batch, "ppo", clip).result().metrics["loss:sum"]
report["cispo_loss"] = policy.forward(batch, "cispo", clip).result().metrics["loss:sum"]
report["dro_loss"] = policy.forward(batch, "dro", {"beta": 0.1}).result().metrics["loss:sum"]

logprobs = sampler.compute_logprobs(types.ModelInput.from_ints(prompts[0])).result()
report["prompt_logprobs"] = [None if v is None else float(v) for v in logprobs]
policy.save_weights_for_sampler("rl-final").result()

print(json.dumps(report))
sys.stdout.flush()
