"""Real gradient steps on the tiny base: GRPO and SFT learn, policies fail alone, runs resume exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from mint.bases.tiny import create_tiny_base  # noqa: E402
from mint.training import checkpoint  # noqa: E402
from mint.training.multi_policy import MultiPolicyTrainer, TrainConfig  # noqa: E402
from mint.training.tasks import parse_task, word_token  # noqa: E402


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bases") / "tiny"
    create_tiny_base(directory, seed=0)
    return directory


def trainer(base_dir: Path, spec: str, policies: list[str], **config: object) -> MultiPolicyTrainer:
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    task = parse_task(spec, word_token(tokenizer))
    return MultiPolicyTrainer(model, tokenizer, policies, task, TrainConfig(**config))  # type: ignore[arg-type]


def test_grpo_raises_the_reward_of_every_policy(base_dir: Path) -> None:
    run = trainer(base_dir, "token:the", ["acme/a", "acme/b"], seed=1)
    history = [run.step(s) for s in range(1, 61)]
    for policy in ("acme/a", "acme/b"):
        rewards = [h[policy].reward_mean for h in history]
        first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10  # type: ignore[arg-type]
        # Sampling at temperature 1 from a random base hits the target token about 1 time in 512;
        # a mean share above 0.5 over ten steps of 16 samples is far beyond chance.
        assert first < 0.05 and last > 0.5, (policy, first, last)
        assert all(h[policy].kl is not None and h[policy].kl >= 0 for h in history)


def test_sft_lowers_the_loss(base_dir: Path) -> None:
    run = trainer(base_dir, "sft-repeat:yes", ["acme/s"], seed=2, lr=1e-2)
    losses = [run.step(s)["acme/s"].loss for s in range(1, 31)]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_one_policys_nan_fails_that_policy_only(base_dir: Path) -> None:
    run = trainer(base_dir, "sft-repeat:yes", ["acme/ok", "acme/broken"], seed=3)
    with torch.no_grad():
        run.multi.parameters("acme/broken")[0].fill_(float("nan"))
    first = run.step(1)
    assert set(first) == {"acme/ok"}
    assert run.slots["acme/broken"].failed is not None and "nan" in run.slots["acme/broken"].failed
    later = [run.step(s) for s in range(2, 12)]
    assert all(set(m) == {"acme/ok"} for m in later)
    assert later[-1]["acme/ok"].loss < first["acme/ok"].loss


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(base_dir: Path, tmp_path: Path) -> None:
    policies = ["acme/a", "acme/b"]
    straight = trainer(base_dir, "token:the", policies, seed=4)
    for s in range(1, 9):
        straight.step(s)
    interrupted = trainer(base_dir, "token:the", policies, seed=4)
    for s in range(1, 5):
        interrupted.step(s)
    checkpoint.save(interrupted, tmp_path, 4)
    interrupted.step(5)  # work after the checkpoint is lost with the process
    resumed = trainer(base_dir, "token:the", policies, seed=4)
    saved = checkpoint.latest(tmp_path)
    assert saved is not None and checkpoint.restore(resumed, saved) == 4
    for s in range(5, 9):
        resumed.step(s)
    for policy in policies:
        for a, b in zip(
            straight.multi.state(policy).values(), resumed.multi.state(policy).values(), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
