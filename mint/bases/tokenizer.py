"""A byte-level BPE tokenizer trained offline on the English text the project ships (mint/data/).

Byte-level, so any text round-trips exactly however small the vocabulary. Its special tokens and chat
template are ChatML, with the same ids as SmolLM2's, so prompts look alike on the tiny and the real base.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 0, 1, 2
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def shipped_corpus() -> str:
    return (resources.files("mint") / "data" / "corpus.txt").read_text(encoding="utf-8")


def train_byte_bpe(text: str, vocab_size: int) -> Tokenizer:
    """Train on `text`, one line per training sequence. Deterministic for the same text and size."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.splitlines(), trainer=trainer)
    return tokenizer


def save_for_transformers(tokenizer: Tokenizer, directory: Path, model_max_length: int) -> None:
    """Write tokenizer.json and tokenizer_config.json so `AutoTokenizer.from_pretrained(directory)` loads
    it. The config names the fast-tokenizer class that transformers 4 and 5 (and vLLM) all resolve."""
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": IM_START,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
