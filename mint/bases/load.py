"""Load a base for tensor work: the model in eval mode and its tokenizer, from safetensors only."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from mint.bases.info import BaseError, read_base_info
from mint.device import Placement, configured_placement

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def load_base(
    directory: Path, placement: Placement | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model, in eval mode, in `placement`'s dtype on its device (None: the configured one, see
    mint.device), and its tokenizer. Attention is torch's scaled_dot_product_attention (its flash and
    memory-efficient kernels on CUDA)."""
    placement = placement or configured_placement()
    directory = Path(directory)
    # Refuses a directory without safetensors weights (or with pickle ones only) with a precise error,
    # before transformers could fall back to unpickling.
    read_base_info(directory)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise BaseError(f"{directory}: no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # logs are no terminal
    model = AutoModelForCausalLM.from_pretrained(
        directory, use_safetensors=True, dtype=placement.torch_dtype, attn_implementation="sdpa"
    )
    model.to(placement.torch_device)  # type: ignore[arg-type]  # transformers narrows .to's arguments
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model.eval()  # type: ignore[no-untyped-call]  # transformers leaves eval() unannotated
    return model, tokenizer
