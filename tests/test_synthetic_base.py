"""Synthetic bases: the size table's arithmetic (against transformers' own model, built on the meta
device: no memory), and a small shape built for real, in several shards, loaded and run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch", reason="needs the [train] extra (torch)")

from transformers import LlamaForCausalLM  # noqa: E402

from mint.bases.info import SHARDED_INDEX_FILE  # noqa: E402
from mint.bases.load import load_base  # noqa: E402
from mint.bases.synthetic import SIZES, SyntheticShape, create_synthetic_base  # noqa: E402
from mint.cli import cli  # noqa: E402
from mint.device import CPU  # noqa: E402


@pytest.mark.parametrize(("params", "low", "high"), [("1b", 0.9e9, 1.1e9), ("3b", 2.7e9, 3.1e9)])
def test_each_size_has_about_its_parameters_in_transformers_own_llama(
    params: str, low: float, high: float
) -> None:
    shape = SIZES[params]
    with torch.device("meta"):
        model = LlamaForCausalLM(shape.config(0, 1, 2))  # type: ignore[no-untyped-call, unused-ignore]
    theirs = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert theirs == shape.tensor_shapes()
    assert low < shape.num_parameters < high
    assert shape.num_parameters == sum(p.numel() for p in model.parameters())


def test_a_small_shape_builds_in_shards_that_load_and_run(tmp_path: Path) -> None:
    shape = SyntheticShape(64, 128, 3, 4, 2, 16)
    one_layer = sum(
        2 * torch.Size(s).numel() for n, s in shape.tensor_shapes().items() if n.startswith("model.layers.0.")
    )
    info = create_synthetic_base(tmp_path / "small", shape, seed=3, shard_bytes=one_layer)
    index = json.loads((tmp_path / "small" / SHARDED_INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) >= 3  # one shard never holds the whole model
    assert info.num_parameters == shape.num_parameters
    model, tokenizer = load_base(tmp_path / "small", CPU)
    ids = torch.tensor([tokenizer.encode("The answer is", add_special_tokens=False)])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], 512) and bool(torch.isfinite(logits).all())
    again = create_synthetic_base(tmp_path / "again", shape, seed=3, shard_bytes=one_layer)
    assert again.num_parameters == info.num_parameters
    first = sorted((tmp_path / "small").glob("*.safetensors"))
    second = sorted((tmp_path / "again").glob("*.safetensors"))
    assert [f.read_bytes() for f in first] == [f.read_bytes() for f in second]  # the seed decides


def test_the_command_refuses_an_unknown_size_and_a_used_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["base", "create", "synthetic", str(tmp_path / "x"), "--params", "7b"])
    assert result.exit_code == 2 and "'7b' is not one of '1b', '3b'" in result.output
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("")
    result = CliRunner().invoke(cli, ["base", "create", "synthetic", str(tmp_path / "used")])
    assert result.exit_code == 1 and "already exists and is not empty" in result.output
