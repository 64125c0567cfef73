"""Prompts as token ids (chat template applied); the tokenizer itself comes from `jquant.convert.tokenizer`."""

from __future__ import annotations

import numpy as np

from jquant.convert.tokenizer import load_tokenizer

__all__ = ["load_tokenizer", "prompt_ids"]


def prompt_ids(tokenizer, prompt: str, *, chat: bool = True, system: str | None = None) -> np.ndarray:
    """int32 [1, T] ids of ``prompt``; wrapped in the tokenizer's chat template when it has one and ``chat``."""
    if chat and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    return np.asarray([ids], dtype=np.int32)
