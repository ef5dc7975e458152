"""Many adapters over one base: mixed batches equal single runs, equal PEFT, and train independently."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from peft import LoraConfig, get_peft_model  # noqa: E402

from mint.bases.load import load_base  # noqa: E402
from mint.bases.tiny import create_tiny_base  # noqa: E402
from mint.lora.multi import MultiLora  # noqa: E402

TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("multi") / "tiny"
    create_tiny_base(directory, seed=0)
    return directory


@pytest.fixture
def tiny(base_dir: Path) -> Callable[[], Any]:
    return lambda: load_base(base_dir)[0]


def randomise(multi: MultiLora, slot: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in multi.parameters(slot):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_a_mixed_batch_equals_each_row_alone(tiny: Callable[[], Any]) -> None:
    multi = MultiLora(tiny(), TARGETS)
    for i, slot in enumerate(("a", "b")):
        multi.add(slot, rank=4 + 4 * i, alpha=8.0)
        randomise(multi, slot, seed=i)
    ids = torch.randint(0, 512, (3, 10), generator=torch.Generator().manual_seed(1))
    slots = ["a", None, "b"]
    with torch.no_grad(), multi.route(slots):
        mixed = multi.model(input_ids=ids).logits
    for row, slot in enumerate(slots):
        with torch.no_grad(), multi.route([slot]):
            alone = multi.model(input_ids=ids[row : row + 1]).logits
        torch.testing.assert_close(mixed[row : row + 1], alone, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        base = multi.model(input_ids=ids[1:2]).logits  # no routing at all: the base
    torch.testing.assert_close(mixed[1:2], base)
    assert not torch.allclose(mixed[0], mixed[1])


def test_a_slot_gives_the_same_logits_as_peft_with_the_same_tensors(tiny: Callable[[], Any]) -> None:
    multi = MultiLora(tiny(), TARGETS)
    multi.add("a", rank=4, alpha=16.0)
    randomise(multi, "a", seed=3)
    peft_model = get_peft_model(
        tiny(), LoraConfig(r=4, lora_alpha=16.0, target_modules=TARGETS, lora_dropout=0.0)
    )
    state = {k.replace(".weight", ".default.weight"): v for k, v in multi.state("a").items()}
    missing = peft_model.load_state_dict(state, strict=False)
    assert not [k for k in missing.unexpected_keys]
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), multi.route(["a", "a"]):
        ours = multi.model(input_ids=ids).logits
    with torch.no_grad():
        theirs = peft_model.eval()(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_gradients_of_a_shared_batch_equal_each_policy_alone(tiny: Callable[[], Any]) -> None:
    multi = MultiLora(tiny(), TARGETS)
    for i, slot in enumerate(("a", "b")):
        multi.add(slot, rank=4, alpha=8.0)
        randomise(multi, slot, seed=10 + i)
    ids = torch.randint(0, 512, (4, 8), generator=torch.Generator().manual_seed(5))
    slots = ["a", "b", "b", "a"]

    def loss_of(rows: list[int], use: list[str]) -> torch.Tensor:
        with multi.route(use):
            logits = multi.model(input_ids=ids[rows]).logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, 512), ids[rows, 1:].reshape(-1), reduction="sum"
        )

    loss_of([0, 1, 2, 3], slots).backward()
    together = {s: [p.grad.clone() for p in multi.parameters(s)] for s in ("a", "b")}
    for slot, rows in (("a", [0, 3]), ("b", [1, 2])):
        for p in multi.parameters("a") + multi.parameters("b"):
            p.grad = None
        loss_of(rows, [slot] * len(rows)).backward()
        for shared, alone in zip(together[slot], multi.parameters(slot), strict=True):
            torch.testing.assert_close(shared, alone.grad, rtol=1e-4, atol=1e-6)
        other = "b" if slot == "a" else "a"
        assert all(p.grad is None or not p.grad.any() for p in multi.parameters(other)), (
            "rows of one policy never move another's parameters"
        )
