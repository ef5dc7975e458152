"""What both engines answer from the base's tokenizer: token counts and chat prompts."""

from __future__ import annotations

from typing import Any

from mint.training.tasks import word_token


class TokenizerPrompts:
    """Mixed into an engine that holds the base's Hugging Face tokenizer as `self.tokenizer`."""

    tokenizer: Any

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def word_token(self, word: str) -> int:
        """The token `word` gets mid-sentence: what `token:WORD` rewards and suites count."""
        return word_token(self.tokenizer)(word)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return str(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
