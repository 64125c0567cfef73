"""The tokenizer that goes with a checkpoint source, and prompts as token ids (chat template applied)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["load_tokenizer", "prompt_ids", "gguf_file_of"]


def gguf_file_of(src: str | os.PathLike) -> Path | None:
    """The GGUF file ``src`` names (a .gguf file, or a folder holding exactly one and no config.json)."""
    p = Path(src)
    if p.is_file() and p.suffix == ".gguf":
        return p
    if p.is_dir() and not (p / "config.json").exists():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
    return None


def load_tokenizer(src: str | os.PathLike):
    """A transformers tokenizer for ``src``: rebuilt from GGUF metadata, or ``AutoTokenizer`` on the folder."""
    gguf = gguf_file_of(src)
    if gguf is not None:
        from jquant.convert.gguf_tokenizer import load_tokenizer as load_gguf_tokenizer

        return load_gguf_tokenizer(gguf)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(src)


def prompt_ids(tokenizer, prompt: str, *, chat: bool = True, system: str | None = None) -> np.ndarray:
    """int32 [1, T] ids of ``prompt``; wrapped in the tokenizer's chat template when it has one and ``chat``."""
    if chat and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    return np.asarray([ids], dtype=np.int32)
