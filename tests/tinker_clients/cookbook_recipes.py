"""tinker-cookbook 0.6.1's own recipes, unmodified, against MinT: run by tests/test_tinker_cookbook.py
in .venv-cookbook (never MinT's environment) with the server in TINKER_BASE_URL, the key in
TINKER_API_KEY, and the hub tokenizer pre-seeded in HF_HOME (HF_HUB_OFFLINE=1).

The only stand-in is the data: `datasets.load_dataset` answers the recipes' two hub datasets
(HuggingFaceH4/no_robots, openai/gsm8k) with a few rows made here. Everything else is the cookbook's
code: `recipes/sl_loop.py` and `recipes/rl_loop.py` (run, re-run, resumed from a checkpoint), its
`CheckpointManager` rolling checkpoints and `weights.download`. Prints one JSON line with what the
test asserts on; a failed step raises (exit status 1).

    cookbook_recipes.py WORKDIR MODEL_NAME
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import datasets
import tinker
from tinker import types
from tinker_cookbook import checkpoint_utils, weights
from tinker_cookbook.recipes import rl_loop, sl_loop

parser = argparse.ArgumentParser()
parser.add_argument("workdir", type=Path)
parser.add_argument("model_name")
args = parser.parse_args()
work: Path = args.workdir
base_url = os.environ["TINKER_BASE_URL"]
report: dict[str, Any] = {}


def hub_dataset(path: str, name: str | None = None, **_: Any) -> datasets.DatasetDict:
    """The recipes' datasets, offline: a few rows in each one's shape."""
    if path == "HuggingFaceH4/no_robots":
        messages = [
            [{"role": "user", "content": f"Name a colour, {i}."}, {"role": "assistant", "content": "Blue."}]
            for i in range(6)
        ]
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"messages": messages})})
    if path == "openai/gsm8k":
        rows = {
            "question": [f"What is {i} + 1?" for i in range(4)],
            "answer": [f"#### {i + 1}" for i in range(4)],
        }
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)})
    raise AssertionError(f"no offline stand-in for dataset {path!r}")


datasets.load_dataset = hub_dataset


def metrics(log_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (log_path / "metrics.jsonl").read_text().splitlines()]


def records(log_path: Path) -> list[dict[str, Any]]:
    return [r.to_dict() for r in checkpoint_utils.load_checkpoints_file(str(log_path))]


def sl(log_path: Path) -> None:
    config = sl_loop.Config(
        base_url=base_url,
        log_path=str(log_path),
        model_name=args.model_name,
        batch_size=2,
        lora_rank=8,
        max_length=64,
        save_every=1,
        learning_rate=1e-2,
    )
    sl_loop.main(config)


rest = tinker.RestClient(base_url=base_url)

# -- sl_loop: 3 steps, a checkpoint each after the first, final state and sampler weights -----------
sl_path = work / "sl"
sl(sl_path)
report["sl_nll"] = [m["train_mean_nll"] for m in metrics(sl_path) if "train_mean_nll" in m]
report["sl_records"] = records(sl_path)
final = report["sl_records"][-1]
report["sl_final"] = final
run_id = tinker.ParsedCheckpointTinkerPath.from_tinker_path(final["state_path"]).training_run_id
report["sl_checkpoints"] = [c.checkpoint_id for c in rest.list_checkpoints(run_id).result().checkpoints]
report["sl_expires"] = {
    c.checkpoint_id: None if c.expires_at is None else c.expires_at.isoformat()
    for c in rest.list_checkpoints(run_id).result().checkpoints
}

# -- weights.download of the final training checkpoint (through an age-encrypted external export) -----
adapter = work / "adapter"
weights.download(tinker_path=final["state_path"], output_dir=str(adapter), base_url=base_url)
report["downloaded"] = sorted(p.name for p in adapter.iterdir())
report["adapter_dir"] = str(adapter)

# -- the same recipe again: it resumes from its final checkpoint and saves `final` once more ----
sl(sl_path)
report["rerun_records"] = records(sl_path)

# -- a run started from a checkpoint: the log names only the first one, so it trains on from it --
resumed = work / "sl-resumed"
resumed.mkdir()
(resumed / "checkpoints.jsonl").write_text(json.dumps(report["sl_records"][0]) + "\n")
sl(resumed)
report["resumed_records"] = records(resumed)
report["resumed_nll"] = [m["train_mean_nll"] for m in metrics(resumed) if "train_mean_nll" in m]

# -- rl_loop: sampling with the renderer's stop sequences, a checkpoint, final weights -----------
rl_path = work / "rl"
rl_config = rl_loop.Config(
    base_url=base_url,
    log_path=str(rl_path),
    model_name=args.model_name,
    batch_size=2,
    group_size=2,
    lora_rank=8,
    max_tokens=8,
    save_every=1,
    loss_fn="importance_sampling",
)
rl_loop.main(rl_config)
report["rl_records"] = records(rl_path)
report["rl_batches"] = [m["progress/batch"] for m in metrics(rl_path) if "progress/batch" in m]

# -- rolling checkpoints: each save deletes the one before; the last goes at finalize -----------
service = tinker.ServiceClient(base_url=base_url)
training = service.create_lora_training_client(
    base_model=args.model_name, rank=8, user_metadata={"renderer_name": "role_colon"}
).result()
(work / "rolling").mkdir()
manager = checkpoint_utils.CheckpointManager(
    training, service, str(work / "rolling"), rolling_save_every=1, rolling_ttl_seconds=7200
)
rolling_run = training.model_id
listed = []
for step in (1, 2):
    manager.maybe_save_rolling(step, {"batch": step})
    listed.append(sorted(c.checkpoint_id for c in rest.list_checkpoints(rolling_run).result().checkpoints))
manager.finalize()
listed.append(sorted(c.checkpoint_id for c in rest.list_checkpoints(rolling_run).result().checkpoints))
report["rolling_listed"] = listed
run = rest.get_training_run(rolling_run).result()
report["run_metadata"] = run.user_metadata
report["whoami_org"] = rest.whoami().result().org_urn
report["sessions"] = len(rest.list_sessions().result().sessions)

# -- the RL losses the cookbook names: gspo trains, stable_reinforce is refused by name ----------
tokens = [5, 6, 7, 8, 9]
datum = types.Datum(
    model_input=types.ModelInput.from_ints(tokens[:-1]),
    loss_fn_inputs={
        "target_tokens": types.TensorData(data=tokens[1:], dtype="int64", shape=[4]),
        "logprobs": types.TensorData(data=[0.0, -3.0, -3.0, -3.0], dtype="float32", shape=[4]),
        "advantages": types.TensorData(data=[0.0, 1.0, 1.0, 1.0], dtype="float32", shape=[4]),
        "sequence_ratio_mask": types.TensorData(data=[0.0, 1.0, 1.0, 1.0], dtype="float32", shape=[4]),
    },
)
gspo = training.forward_backward([datum], loss_fn="gspo").result()
report["gspo_loss"] = gspo.metrics["loss:sum"]
try:
    training.forward_backward([datum], loss_fn="stable_reinforce").result()
    report["stable_reinforce"] = "accepted"
except tinker.BadRequestError as exc:
    report["stable_reinforce"] = str(exc)
service.close("success").result()

assert all(math.isfinite(v) for v in report["sl_nll"]), report["sl_nll"]
print(json.dumps(report))
