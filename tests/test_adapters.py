"""Adapters: the PEFT layout loads into peft and does what LoRA says, packed <-> PEFT is bit-exact, the
content address is stable, and bad adapters are refused naming the file and the problem."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import peft
import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict

from mint.adapters.adapter import Adapter, AdapterError, LoraConfig, lora_key
from mint.adapters.packed import DATA_FILE, INDEX_FILE, read_packed, write_packed
from mint.adapters.peft_layout import CONFIG_FILE, WEIGHTS_FILE, adapter_sha256, read_peft, write_peft
from mint.adapters.synthetic import random_adapter
from mint.adapters.tensors import adapter_tensors, load_packed_tensors, to_raw, to_tensor
from mint.bases.info import BaseInfo
from mint.bases.load import load_base
from mint.bases.safetensors_file import RawTensor, encode
from mint.bases.tiny import create_tiny_base

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> BaseInfo:
    return create_tiny_base(tmp_path_factory.mktemp("bases") / "tiny")


@pytest.fixture(scope="module")
def prompt(tiny: BaseInfo) -> torch.Tensor:
    _, tokenizer = load_base(tiny.path)
    ids: torch.Tensor = tokenizer("Question: What is seven plus five?", return_tensors="pt")["input_ids"]
    return ids


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(ids).logits
    return logits


def _peft_logits(base: BaseInfo, adapter_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    model, _ = load_base(base.path)
    return _logits(PeftModel.from_pretrained(model, adapter_dir).eval(), ids)


def test_a_peft_export_loads_into_peft_and_adds_scaled_b_times_a(
    tiny: BaseInfo, prompt: torch.Tensor, tmp_path: Path
) -> None:
    adapter = random_adapter(tiny, r=4, alpha=8, targets=ALL_LINEAR, seed=1, b_std=0.05)
    sha = write_peft(tmp_path / "adapter", adapter)
    assert sha == hashlib.sha256((tmp_path / "adapter" / WEIGHTS_FILE).read_bytes()).hexdigest()
    peft_config = json.loads((tmp_path / "adapter" / CONFIG_FILE).read_text())
    assert {
        k: peft_config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "base_model_name_or_path")
    } == {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 4,
        "lora_alpha": 8,
        "base_model_name_or_path": "tiny",
    }

    base_model, _ = load_base(tiny.path)
    plain = _logits(base_model, prompt)
    with_adapter = _peft_logits(tiny, tmp_path / "adapter", prompt)
    # What LoRA means: W + (alpha / r) * B @ A on every targeted layer.
    tensors = adapter_tensors(adapter)
    with torch.no_grad():
        for module in tiny.linear_shapes:
            layer = base_model.get_submodule(module)
            layer.weight += (
                adapter.config.scaling * tensors[lora_key(module, "B")] @ tensors[lora_key(module, "A")]
            )
    merged = _logits(base_model, prompt)
    assert (with_adapter - plain).abs().max() > 1e-3, "the adapter changes the logits"
    torch.testing.assert_close(with_adapter, merged, rtol=1e-4, atol=1e-5)


def test_a_zero_b_adapter_leaves_the_base_unchanged(
    tiny: BaseInfo, prompt: torch.Tensor, tmp_path: Path
) -> None:
    write_peft(tmp_path / "zero", random_adapter(tiny, zero_b=True))
    base_model, _ = load_base(tiny.path)
    torch.testing.assert_close(_peft_logits(tiny, tmp_path / "zero", prompt), _logits(base_model, prompt))


def test_peft_to_packed_to_peft_is_bit_exact(tiny: BaseInfo, prompt: torch.Tensor, tmp_path: Path) -> None:
    original = random_adapter(tiny, r=8, targets=("q_proj", "v_proj", "down_proj"), seed=2, b_std=0.05)
    sha = write_peft(tmp_path / "peft", original)
    index = write_packed(tmp_path / "packed", read_peft(tmp_path / "peft", base=tiny))
    assert index.sha256 == sha, "packing keeps the content address"
    assert all(e.offset % 64 == 0 for e in index.tensors.values())
    back = read_packed(tmp_path / "packed", base=tiny)
    assert write_peft(tmp_path / "again", back) == sha
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "peft" / name).read_bytes()

    config, views = load_packed_tensors(tmp_path / "packed", base=tiny)
    assert config == original.config
    expected = adapter_tensors(original)
    assert views.keys() == expected.keys()
    assert all(torch.equal(views[k], expected[k]) for k in views)
    storages = {v.untyped_storage().data_ptr() for v in views.values()}
    assert len(storages) == 1, "one buffer, read once; the tensors are views into it"

    torch.testing.assert_close(
        _peft_logits(tiny, tmp_path / "again", prompt),
        _peft_logits(tiny, tmp_path / "peft", prompt),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_adapters_round_trip(tiny: BaseInfo, tmp_path: Path, dtype: str) -> None:
    adapter = random_adapter(tiny, dtype=dtype, seed=3)
    write_packed(tmp_path / "packed", adapter)
    _, views = load_packed_tensors(tmp_path / "packed")
    expected = adapter_tensors(adapter)
    assert all(views[k].dtype == expected[k].dtype and torch.equal(views[k], expected[k]) for k in views)
    assert adapter_sha256(read_packed(tmp_path / "packed")) == adapter_sha256(adapter)


def test_an_adapter_saved_by_peft_itself_is_read_exactly(tiny: BaseInfo, tmp_path: Path) -> None:
    model, _ = load_base(tiny.path)
    trained = get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "up_proj"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1, generator=generator)
    trained.save_pretrained(tmp_path / "by-peft")
    adapter = read_peft(tmp_path / "by-peft", base=tiny)
    assert (adapter.config.r, adapter.config.alpha, adapter.config.target_modules) == (
        4,
        16.0,
        ("q_proj", "up_proj"),
    )
    state = get_peft_model_state_dict(trained)
    assert adapter.tensors.keys() == state.keys()
    assert all(torch.equal(to_tensor(adapter.tensors[k]), state[k]) for k in state)


def test_the_content_address_is_stable_and_covers_the_config(tiny: BaseInfo, tmp_path: Path) -> None:
    adapter = random_adapter(tiny, seed=4)
    first = write_peft(tmp_path / "a", adapter)
    assert write_peft(tmp_path / "b", read_peft(tmp_path / "a")) == first, "re-exporting gives the same bytes"
    from_torch = Adapter(adapter.config, {k: to_raw(t) for k, t in adapter_tensors(adapter).items()})
    assert adapter_sha256(from_torch) == first
    reordered = LoraConfig(r=8, alpha=16, target_modules=("v_proj", "q_proj", "q_proj"), base_model="tiny")
    assert adapter_sha256(Adapter(reordered, adapter.tensors)) == first, (
        "target order and duplicates do not matter"
    )
    other_alpha = dataclasses.replace(adapter, config=dataclasses.replace(adapter.config, alpha=32.0))
    assert adapter_sha256(other_alpha) != first
    # The store ships only the weights file: its embedded config is enough to read it back.
    (tmp_path / "a" / CONFIG_FILE).unlink()
    assert read_peft(tmp_path / "a", base=tiny, expected_sha256=first).config == adapter.config
    with pytest.raises(AdapterError, match=f"content sha256 {first} does not match the expected 00"):
        read_peft(tmp_path / "a", expected_sha256="00" * 32)


# --- refusals: each names the file and the problem ------------------------------------------------------


def _foreign_peft(directory: Path, tensors: dict[str, RawTensor], config: dict[str, object]) -> Path:
    """A PEFT directory as other tools write it (no embedded config), with whatever we put in it."""
    directory.mkdir()
    (directory / WEIGHTS_FILE).write_bytes(encode(tensors, {"format": "pt"}))
    (directory / CONFIG_FILE).write_text(json.dumps({"peft_type": "LORA", "lora_alpha": 16, **config}))
    return directory


def _refused(directory: Path, file: str, problem: str, base: BaseInfo | None = None) -> None:
    with pytest.raises(AdapterError) as caught:
        read_peft(directory, base=base)
    assert caught.value.path == directory / file
    assert str(caught.value).startswith(f"{directory / file}: ")
    assert problem in caught.value.problem, caught.value.problem


def test_corrupt_files_are_refused(tiny: BaseInfo, tmp_path: Path) -> None:
    write_peft(tmp_path / "a", random_adapter(tiny))
    weights = (tmp_path / "a" / WEIGHTS_FILE).read_bytes()
    (tmp_path / "a" / WEIGHTS_FILE).write_bytes(weights[:-10])
    _refused(tmp_path / "a", WEIGHTS_FILE, "data bytes but the file holds")
    (tmp_path / "a" / WEIGHTS_FILE).write_bytes(b"\xff" * 64)
    _refused(tmp_path / "a", WEIGHTS_FILE, "header length")
    (tmp_path / "a" / WEIGHTS_FILE).write_bytes(weights)
    (tmp_path / "a" / CONFIG_FILE).write_text("{not json")
    _refused(tmp_path / "a", CONFIG_FILE, "unreadable")
    (tmp_path / "a" / CONFIG_FILE).unlink()
    (tmp_path / "a" / WEIGHTS_FILE).unlink()
    _refused(tmp_path / "a", WEIGHTS_FILE, "missing")


def test_a_config_that_disagrees_with_the_weights_is_refused(tiny: BaseInfo, tmp_path: Path) -> None:
    write_peft(tmp_path / "a", random_adapter(tiny, alpha=16))
    config = json.loads((tmp_path / "a" / CONFIG_FILE).read_text()) | {"lora_alpha": 64}
    (tmp_path / "a" / CONFIG_FILE).write_text(json.dumps(config))
    _refused(
        tmp_path / "a",
        CONFIG_FILE,
        "disagrees with the config embedded in adapter_model.safetensors: lora_alpha 64",
    )


def test_wrong_shapes_are_refused(tiny: BaseInfo, tmp_path: Path) -> None:
    good = random_adapter(tiny, r=4, targets=("q_proj",))
    key = lora_key("model.layers.1.self_attn.q_proj", "A")
    tensors = dict(good.tensors) | {key: RawTensor("F32", (4, 32), bytes(4 * 32 * 4))}
    write_peft(tmp_path / "a", Adapter(good.config, tensors))
    _refused(
        tmp_path / "a",
        WEIGHTS_FILE,
        f"{key}: shape [4, 32] does not fit model.layers.1.self_attn.q_proj",
        tiny,
    )
    _refused(tmp_path / "a", WEIGHTS_FILE, "(64 out x 64 in): expected [4, 64]", tiny)


def test_adapters_for_another_base_are_refused(tiny: BaseInfo, tmp_path: Path) -> None:
    write_peft(tmp_path / "a", random_adapter(tiny, targets=("q_proj",)))
    one_layer = dataclasses.replace(
        tiny,
        base_id="one-layer",
        linear_shapes={k: v for k, v in tiny.linear_shapes.items() if ".layers.1." not in k},
    )
    _refused(
        tmp_path / "a",
        WEIGHTS_FILE,
        "module 'model.layers.1.self_attn.q_proj' is not a linear layer of base 'one-layer' (wrong base?)",
        one_layer,
    )
    gpt2_style = Adapter(
        LoraConfig(r=2, alpha=4, target_modules=("c_attn",)),
        {
            lora_key("transformer.h.0.attn.c_attn", "A"): RawTensor("F32", (2, 64), bytes(2 * 64 * 4)),
            lora_key("transformer.h.0.attn.c_attn", "B"): RawTensor("F32", (192, 2), bytes(192 * 2 * 4)),
        },
    )
    write_peft(tmp_path / "gpt2", gpt2_style)
    _refused(
        tmp_path / "gpt2",
        WEIGHTS_FILE,
        "target_modules ['c_attn'] match no linear layer of base 'tiny'",
        tiny,
    )
    partial = random_adapter(tiny, targets=("q_proj",))
    only_layer_0 = {k: v for k, v in partial.tensors.items() if ".layers.0." in k}
    write_peft(tmp_path / "partial", Adapter(partial.config, only_layer_0))
    _refused(
        tmp_path / "partial",
        WEIGHTS_FILE,
        "base layer 'model.layers.1.self_attn.q_proj' matches target_modules but the adapter has no lora_A",
        tiny,
    )


def test_a_wrong_rank_is_refused(tiny: BaseInfo, tmp_path: Path) -> None:
    rank_4 = random_adapter(tiny, r=4, targets=("v_proj",))
    _foreign_peft(tmp_path / "a", dict(rank_4.tensors), {"r": 8, "target_modules": ["v_proj"]})
    _refused(tmp_path / "a", WEIGHTS_FILE, "has rank 4, but the config says r=8")


def test_malformed_contents_are_refused(tiny: BaseInfo, tmp_path: Path) -> None:
    good = dict(random_adapter(tiny, r=2, targets=("o_proj",)).tensors)
    config = {"r": 2, "target_modules": ["o_proj"]}
    a_key = lora_key("model.layers.0.self_attn.o_proj", "A")
    cases: list[tuple[dict[str, RawTensor], dict[str, object], str, str]] = [
        (good | {"base_model.model.lm_head.weight": good[a_key]}, config, WEIGHTS_FILE, "unexpected key"),
        (
            good | {a_key: RawTensor("I64", (2, 64), bytes(2 * 64 * 8))},
            config,
            WEIGHTS_FILE,
            "dtype I64 is not allowed",
        ),
        ({k: v for k, v in good.items() if k != a_key}, config, WEIGHTS_FILE, "has no lora_A matrix"),
        (
            good,
            config | {"use_dora": True},
            CONFIG_FILE,
            "field 'use_dora' is True; only plain LoRA is supported",
        ),
        (good, config | {"r": 0}, CONFIG_FILE, "field 'r' must be a positive integer, got 0"),
        (good, config | {"target_modules": "o_proj|q_proj"}, CONFIG_FILE, "field 'target_modules' must be"),
        (good, config | {"peft_type": "IA3"}, CONFIG_FILE, "field 'peft_type' is 'IA3'"),
        (good, {"r": 2, "target_modules": ["q_proj"]}, WEIGHTS_FILE, "is not in target_modules ['q_proj']"),
    ]
    for n, (tensors, cfg, file, problem) in enumerate(cases):
        _refused(_foreign_peft(tmp_path / str(n), tensors, cfg), file, problem)


def test_pickle_files_are_refused_and_never_unpickled(
    tiny: BaseInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_: object, **__: object) -> None:
        raise AssertionError("torch.load must never be called on an adapter")

    monkeypatch.setattr(torch, "load", never)
    for name in ("adapter_model.bin", "adapter.pt", "weights.pkl"):
        directory = tmp_path / name.replace(".", "-")
        write_peft(directory, random_adapter(tiny))  # a valid adapter, with a pickle beside it
        (directory / name).write_bytes(b"\x80\x04K\x01.")  # pickle of the int 1
        _refused(directory, name, "pickle file refused")
        write_packed(tmp_path / f"packed-{name}", random_adapter(tiny))
        (tmp_path / f"packed-{name}" / name).write_bytes(b"\x80\x04K\x01.")
        with pytest.raises(AdapterError, match="pickle file refused"):
            load_packed_tensors(tmp_path / f"packed-{name}")


def test_a_corrupt_packed_adapter_is_refused(tiny: BaseInfo, tmp_path: Path) -> None:
    write_packed(tmp_path / "p", random_adapter(tiny))
    data = bytearray((tmp_path / "p" / DATA_FILE).read_bytes())
    data[100] ^= 0xFF
    (tmp_path / "p" / DATA_FILE).write_bytes(bytes(data))
    for load in (read_packed, load_packed_tensors):
        with pytest.raises(AdapterError) as caught:
            load(tmp_path / "p")  # type: ignore[operator]
        assert caught.value.path == tmp_path / "p" / DATA_FILE
        assert "does not match the index's data_sha256" in caught.value.problem
    index = json.loads((tmp_path / "p" / INDEX_FILE).read_text())
    first = next(iter(index["tensors"]))
    index["tensors"][first]["offset"] = 3
    (tmp_path / "p" / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(
        AdapterError, match=f"{INDEX_FILE}: tensor '{first}': offset 3 is not a 64-byte aligned"
    ):
        read_packed(tmp_path / "p")


def test_writing_into_a_full_directory_is_refused(tiny: BaseInfo, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        write_peft(tmp_path / "a", random_adapter(tiny))
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["notes.txt"]
